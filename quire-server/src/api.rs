//! The HTTP API (SPEC §6.5) for `quire-ci` and for tools: run bootstrap
//! and secrets behind the run token, and JSON errors everywhere. Handlers
//! only translate between HTTP and the `runs` statements.

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse, ResponseError};
use quire_core::push::{Bootstrap, BootstrapMeta};
use serde_json::json;

use crate::config::Config;
use crate::db::Pool;
use crate::runs::{self, Run};

/// Shared by every handler.
pub struct AppState {
    pub db: Pool,
    pub config: Config,
    pub root: crate::root::DataRoot,
}

/// An error answered as `{"error": "..."}` with its status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

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

/// The SHA-256 of the request's bearer token, if it carries one.
fn bearer_hash(request: &HttpRequest) -> Result<String, ApiError> {
    let header = request
        .headers()
        .get("authorization")
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <run token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("malformed Authorization header; expected Bearer <run token>")
        })?;
    Ok(runs::token_hash(token))
}

const DEAD_TOKEN: &str = "unknown or expired run token";

/// `pending → active`, and the push facts the run is for.
#[get("/api/run/bootstrap")]
async fn bootstrap(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let hash = bearer_hash(&request)?;
    let run =
        with_db(&state, move |conn| runs::start_by_token(conn, &hash).map_err(ApiError::internal)).await?;
    let run = run.ok_or_else(|| ApiError::unauthorized(DEAD_TOKEN))?;
    tracing::info!(run = %run.id, "run bootstrapped");
    Ok(HttpResponse::Ok().json(bootstrap_body(&run)))
}

fn bootstrap_body(run: &Run) -> Bootstrap {
    Bootstrap {
        run_id: run.id.to_string(),
        repo: run.repo.clone(),
        meta: BootstrapMeta {
            sha: run.sha.clone(),
            ref_name: run.ref_name.clone(),
            pushed_at_ms: run.pushed_at_ms,
            previous_sha: run.previous_sha.clone(),
        },
    }
}

/// A declared secret's value, for the run holding the token.
#[get("/api/run/secrets/{name}")]
async fn secret(
    state: web::Data<AppState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let hash = bearer_hash(&request)?;
    let run =
        with_db(&state, move |conn| runs::live_run_by_token(conn, &hash).map_err(ApiError::internal)).await?;
    let run = run.ok_or_else(|| ApiError::unauthorized(DEAD_TOKEN))?;
    match state.config.secrets.get(name.as_str()) {
        Some(value) => {
            tracing::info!(run = %run.id, secret = %name, "secret served");
            Ok(HttpResponse::Ok().json(json!({ "value": value })))
        }
        None => Err(ApiError::not_found(format!("secret `{name}` is not declared in config.fnl"))),
    }
}

/// JSON 404 for unknown API paths.
pub async fn not_found() -> HttpResponse {
    ApiError::not_found("no such endpoint").error_response()
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(bootstrap).service(secret);
}

/// Turns extractor failures (bad path or query values) into JSON errors.
pub fn json_errors() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|err, _| ApiError::not_found(format!("bad path parameter: {err}")).into())
}
