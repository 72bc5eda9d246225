//! The HTTP API (SPEC §6.5) for `quire-ci` and for tools: run bootstrap
//! and secrets behind the run token, repositories and runs as JSON, and a
//! run's live event stream. Handlers only translate between HTTP and the
//! `runs` statements; what they share with the pages is in `http`.

use actix_web::{get, web, HttpRequest, HttpResponse};
use quire_core::id::{InvalidRunId, RepoName, RunId};
use quire_core::push::{Bootstrap, BootstrapMeta};
use serde_json::json;

use crate::http::paging::{Page, PageQuery, PAGE_SIZE};
use crate::http::run::load_run;
use crate::http::{require_user, with_db, ApiError, AppState, REPO_PATTERN};
use crate::live::{self, Follower};
use crate::runs::{self, Run};
use crate::{repos, token};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(bootstrap)
        .service(secret)
        .service(list_repos)
        .service(run_detail)
        .service(run_events)
        .route(&format!("/api/repos/{REPO_PATTERN}/runs"), web::get().to(repo_runs));
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
    Ok(token::hash(token))
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
        repo: run.repo.to_string(),
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
    // A secret scoped to other repositories is, for this run, not there.
    match state.config.secrets.get(name.as_str()).filter(|s| s.readable_by(&run.repo)) {
        Some(secret) => {
            tracing::info!(run = %run.id, secret = %name, "secret served");
            Ok(HttpResponse::Ok().json(json!({ "value": secret.value })))
        }
        None => Err(ApiError::not_found(format!("secret `{name}` is not declared in config.fnl"))),
    }
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

/// `GET /api/repos/{repo}/runs?page=N`: newest first, 50 a page.
async fn repo_runs(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let repo: RepoName = repo.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let page = Page::from_query(&query);
    let runs = with_db(&state, move |conn| {
        runs::list(conn, Some(&repo), PAGE_SIZE, page.offset).map_err(ApiError::internal)
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
    let root = state.root.clone();
    let loaded = with_db(&state, move |conn| load_run(conn, &root, id)).await?;
    let loaded = loaded.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let mut body = serde_json::to_value(&loaded.run).map_err(ApiError::internal)?;
    body["jobs"] = serde_json::to_value(&loaded.jobs).map_err(ApiError::internal)?;
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
    let follower = Follower::new(state.root.run_dir(&run.repo, id));
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
                let mut messages;
                (follower, messages) = poll_off_thread(follower).await;
                if let Some(run) = finished {
                    // The files are complete once the run is: one last read.
                    let last;
                    (follower, last) = poll_off_thread(follower).await;
                    messages.extend(last);
                    let end = json!({ "state": run.state, "failure_kind": run.failure_kind });
                    messages.push(live::message("end", &end.to_string()));
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
                tokio::time::sleep(live::POLL).await;
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// Reads the run's files on the blocking pool, never on the async threads.
async fn poll_off_thread(mut follower: Follower) -> (Follower, Vec<bytes::Bytes>) {
    tokio::task::spawn_blocking(move || {
        let messages = follower.poll();
        (follower, messages)
    })
    .await
    .expect("polling a run's files does not panic")
}
