//! The HTTP API (SPEC §6.5) for tools and people: repositories and runs
//! as JSON, a run's live event stream, health. The executors' endpoints
//! are `executor_api`'s. Handlers only translate between HTTP and the
//! `runs` statements; what they share with the pages is in `http`.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use quire_core::id::{InvalidRunId, RepoName, RunId};
use serde_json::json;

use crate::db::Pool;
use crate::http::paging::{PageQuery, PAGE_SIZE};
use crate::http::run::load_run;
use crate::http::{require_user, with_db, ApiError, AppState, REPO_PATTERN};
use crate::live::feed::EndProbe;
use crate::runs;
use crate::{repos, spool};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(list_repos)
        .service(run_detail)
        .service(run_events)
        .service(health)
        .route(&format!("/api/repos/{REPO_PATTERN}/runs"), web::get().to(repo_runs));
}

/// `GET /api/repos`: every repository with its latest run.
#[get("/api/repos")]
async fn list_repos(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let root = state.root.clone();
    let repos = with_db(&state, move |conn| {
        let names = repos::list(&root).map_err(ApiError::internal)?;
        runs::latest_of_repos(conn, names).map_err(ApiError::internal)
    })
    .await?;
    let body: Vec<_> =
        repos.into_iter().map(|(name, latest)| json!({ "name": name, "latest_run": latest })).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/repos/{repo}/runs?before=ID` (or `?page=N`): newest first,
/// 50 a page.
async fn repo_runs(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let repo: RepoName = repo.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let start = query.start()?;
    let runs = with_db(&state, move |conn| {
        runs::list(conn, Some(&repo), PAGE_SIZE, start).map_err(ApiError::internal)
    })
    .await?;
    Ok(HttpResponse::Ok().json(runs))
}

/// The run id in a path, once the reader is allowed to see runs.
fn readable_run(state: &AppState, request: &HttpRequest, raw: &str) -> Result<RunId, ApiError> {
    require_user(state, request)?;
    raw.parse().map_err(|e: InvalidRunId| ApiError::not_found(e.to_string()))
}

/// `GET /api/runs/{id}`: the run with its jobs and commands.
#[get("/api/runs/{id}")]
async fn run_detail(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = readable_run(&state, &request, &id)?;
    let shared = state.clone();
    let loaded = with_db(&state, move |conn| load_run(conn, &shared.root, &shared.progress, id)).await?;
    let loaded = loaded.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let mut body = serde_json::to_value(&loaded.run).map_err(ApiError::internal)?;
    body["jobs"] = serde_json::to_value(&loaded.jobs).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/runs/{id}/events`: Server-Sent Events with the run's events
/// (`event: event`) and log lines (`event: log`) so far and as they happen,
/// each with an `id:`; `event: end` with the final state closes the stream.
/// `Last-Event-ID` resumes after that message. All viewers of a run share
/// one feed (`live::feed`).
#[get("/api/runs/{id}/events")]
async fn run_events(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = readable_run(&state, &request, &id)?;
    let run = with_db(&state, move |conn| runs::get(conn, id).map_err(ApiError::internal)).await?;
    let run = run.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let last_event_id = request.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let stream = state
        .feeds
        .subscribe(id, state.root.run_dir(&run.repo, id), last_event_id)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// How a feed asks whether its run has ended: the `end` message's data
/// once it has. A run that is gone (pruned) has ended too.
pub fn end_probe(pool: Pool) -> EndProbe {
    Arc::new(move |id| {
        let conn = pool.get().ok()?;
        match runs::get(&conn, id) {
            Ok(Some(run)) if run.state.is_finished() => {
                Some(json!({ "state": run.state, "failure_kind": run.failure_kind }).to_string())
            }
            Ok(Some(_)) | Err(_) => None,
            Ok(None) => Some(json!({ "state": "gone", "failure_kind": null }).to_string()),
        }
    })
}

/// `GET /api/health`: the server is up; how much it is following and
/// queueing (see "Operating" in docs/CI.md).
#[get("/api/health")]
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = with_db(&state, |conn| runs::queue_counts(conn).map_err(ApiError::internal)).await?;
    let spool_dir = state.root.spool_dir();
    let spooled = web::block(move || spool::pending(&spool_dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "live": state.feeds.stats(),
        "queue": counts,
        "spooled_pushes": spooled,
    })))
}
