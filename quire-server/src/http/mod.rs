//! What the JSON API (`api`) and the pages (`web`) share, so that neither
//! imports the other: the state every handler gets, database access on the
//! blocking pool, the trusted-user check, path and query extractors that
//! answer bad input with JSON errors, errors (`error`), paging (`paging`),
//! loading a run with its jobs (`run`) and rendered pages kept while the
//! database is unchanged (`cache`). Routing and the fallback for
//! unknown paths are `serve`'s.

pub mod cache;
pub mod error;
pub mod paging;
pub mod run;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};

use std::sync::Arc;

use crate::config::Config;
use crate::db::Pool;
use crate::live::feed::Feeds;
use crate::root::DataRoot;
pub use error::ApiError;

/// Shared by every handler.
pub struct AppState {
    pub db: Pool,
    pub config: Config,
    pub root: DataRoot,
    /// The live feeds of followed runs.
    pub feeds: Arc<Feeds>,
    /// How far the pages have folded each unfinished run's events.
    pub progress: run::Progress,
    /// Rendered lists of runs, while the database is unchanged.
    pub pages: cache::PageCache,
    /// The executors being followed, which the run endpoints hear from.
    pub executors: Arc<crate::executors::Executors>,
}

/// The path pattern of a repository name inside URLs.
pub const REPO_PATTERN: &str = r"{repo:[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)?\.git}";

/// Runs a database closure on the blocking pool.
pub async fn with_db<T: Send + 'static>(
    state: &web::Data<AppState>,
    work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = state.db.clone();
    web::block(move || {
        let mut conn = db.get().map_err(ApiError::internal)?;
        work(&mut conn)
    })
    .await
    .map_err(ApiError::internal)?
}

/// When `:web {:trusted-user-header …}` is set, run pages, logs and run
/// data need that header (set by the trusted reverse proxy).
pub fn require_user(state: &AppState, request: &HttpRequest) -> Result<(), ApiError> {
    match &state.config.web.trusted_user_header {
        Some(header) if request.headers().get(header.as_str()).is_none_or(|v| v.is_empty()) => {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("sign in through the proxy: the {header} header is required"),
            ))
        }
        _ => Ok(()),
    }
}

/// Turns bad path values into JSON 404s.
pub fn path_errors() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _| ApiError::not_found(format!("bad path parameter: {err}")).into())
}

/// Turns bad query values (`?page=abc`) into JSON 400s.
pub fn query_errors() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("bad query parameter: {err}")).into()
    })
}
