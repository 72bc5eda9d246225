//! The HTTP API (SPEC §6.5) for `quire-ci` and for tools: run bootstrap
//! and secrets behind the run token, and JSON errors everywhere. Handlers
//! only translate between HTTP and the `runs` statements.

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse, ResponseError};
use quire_core::push::{Bootstrap, BootstrapMeta};
use serde_json::json;

use crate::config::Config;
use crate::db::Pool;
use crate::runs::{self, Run, RunId};

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

/// 404 for unknown paths: JSON under `/api/`, the HTML page elsewhere.
pub async fn not_found(request: HttpRequest) -> HttpResponse {
    if request.path().starts_with("/api/") {
        ApiError::not_found("no such endpoint").error_response()
    } else {
        crate::web::not_found_page().await
    }
}

/// `GET /api/repos`: every repository with its latest run.
#[get("/api/repos")]
async fn list_repos(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let root = state.root.clone();
    let repos = with_db(&state, move |conn| {
        let names = crate::repos::list(&root).map_err(ApiError::internal)?;
        names
            .into_iter()
            .map(|name| {
                let latest = runs::list(conn, Some(name.as_str()), 1, 0).map_err(ApiError::internal)?.pop();
                Ok(json!({ "name": name.as_str(), "latest_run": latest }))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    Ok(HttpResponse::Ok().json(repos))
}

/// `GET /api/repos/{repo}/runs?page=N`: newest first, 50 a page.
async fn repo_runs(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<crate::web::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let repo: crate::repos::RepoName = repo.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let page = query.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(crate::web::PAGE_SIZE);
    let runs = with_db(&state, move |conn| {
        runs::list(conn, Some(repo.as_str()), crate::web::PAGE_SIZE, offset).map_err(ApiError::internal)
    })
    .await?;
    Ok(HttpResponse::Ok().json(runs))
}

/// The run id in a path, once the reader is allowed to see runs.
fn readable_run(state: &AppState, request: &HttpRequest, raw: &str) -> Result<RunId, ApiError> {
    crate::web::require_user(state, request)?;
    raw.parse().map_err(|e: runs::InvalidRunId| ApiError::not_found(e.to_string()))
}

/// `GET /api/runs/{id}`: the run with its jobs and commands.
#[get("/api/runs/{id}")]
async fn run_detail(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = readable_run(&state, &request, &id)?;
    let root = state.root.clone();
    let view = with_db(&state, move |conn| crate::web::load_run(conn, &root, id)).await?;
    let view = view.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let mut body = serde_json::to_value(&view.run).map_err(ApiError::internal)?;
    body["jobs"] = serde_json::to_value(&view.jobs).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/runs/{id}/events`: Server-Sent Events with the run's events
/// (`event: event`) and log lines (`event: log`) so far and as they happen;
/// `event: end` with the final state closes the stream.
#[get("/api/runs/{id}/events")]
async fn run_events(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = readable_run(&state, &request, &id)?;
    let run = with_db(&state, move |conn| runs::get(conn, id).map_err(ApiError::internal)).await?;
    let run = run.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let repo: crate::repos::RepoName = run.repo.parse().map_err(ApiError::internal)?;
    let follower = crate::live::Follower::new(state.root.run_dir(&repo, id));
    let stream = futures_util::stream::unfold(
        (follower, state.clone(), Some(())),
        move |(mut follower, state, open)| async move {
            open?;
            loop {
                let finished = with_db(&state, move |conn| runs::get(conn, id).map_err(ApiError::internal))
                    .await
                    .ok()
                    .flatten()
                    .filter(|run| run.state.is_finished());
                let mut messages = follower.poll();
                if let Some(run) = finished {
                    // The files are complete once the run is: one last read.
                    messages.extend(follower.poll());
                    let end = json!({ "state": run.state, "failure_kind": run.failure_kind });
                    messages.push(crate::live::message("end", &end.to_string()));
                    let chunk: Vec<u8> = messages.concat();
                    return Some((
                        Ok::<_, actix_web::Error>(bytes::Bytes::from(chunk)),
                        (follower, state, None),
                    ));
                }
                if !messages.is_empty() {
                    let chunk: Vec<u8> = messages.concat();
                    return Some((Ok(bytes::Bytes::from(chunk)), (follower, state, Some(()))));
                }
                tokio::time::sleep(crate::live::POLL).await;
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(bootstrap)
        .service(secret)
        .service(list_repos)
        .service(run_detail)
        .service(run_events)
        .route(&format!("/api/repos/{}/runs", crate::web::REPO_PATTERN), web::get().to(repo_runs));
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
