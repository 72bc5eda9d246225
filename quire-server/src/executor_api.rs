//! The HTTP API of executors (SPEC §6.5 and §11): everything `quire-ci`
//! needs from the server in server mode, behind the run token — the
//! bootstrap payload, secrets, the workspace as a tar stream, and the
//! endpoints its events and logs arrive through (`output`) and it checks
//! in with (`heartbeat`). Every endpoint answers 401 once the run has left
//! `active` (the bootstrap also moves it there). Writing the output is
//! `run_output`'s; whether an executor is to stop is `executors`'.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use quire_core::output::{Batch, Reply, StopReason, HEARTBEAT_PATH, OUTPUT_PATH, WORKSPACE_PATH};
use quire_core::push::{Bootstrap, BootstrapMeta};
use serde_json::json;

use crate::executors::{DownloadRefused, WORKSPACE_DOWNLOADS, WORKSPACE_STREAMS};
use crate::http::{with_db, ApiError, AppState};
use crate::repos;
use crate::run_output::{self, OutputError};
use crate::runs::{self, Run};
use crate::token;

/// The largest request body `output` takes: a batch of
/// [`quire_core::output::MAX_BATCH_BYTES`] in base64, with room for the
/// JSON around it.
const MAX_OUTPUT_BODY: usize = 2 * quire_core::output::MAX_BATCH_BYTES + 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(bootstrap)
        .service(secret)
        .service(workspace)
        .service(heartbeat)
        .service(web::resource(OUTPUT_PATH).route(web::post().to(output)));
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

/// How an endpoint finds the run of a token hash (and which states it
/// accepts): one of the `runs::*_by_token` statements.
type TokenLookup = fn(&rusqlite::Connection, &str) -> rusqlite::Result<Option<Run>>;

/// The run whose token the request carries, found by `lookup`; 401 when
/// there is none.
async fn token_run(
    state: &web::Data<AppState>,
    request: &HttpRequest,
    lookup: TokenLookup,
) -> Result<Run, ApiError> {
    let hash = bearer_hash(request)?;
    let run = with_db(state, move |conn| lookup(conn, &hash).map_err(ApiError::internal)).await?;
    run.ok_or_else(|| ApiError::unauthorized(DEAD_TOKEN))
}

/// The active run whose token the request carries.
async fn active_run(state: &web::Data<AppState>, request: &HttpRequest) -> Result<Run, ApiError> {
    token_run(state, request, runs::live_run_by_token).await
}

/// `pending → active`, and the push facts the run is for.
#[get("/api/run/bootstrap")]
async fn bootstrap(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let run = token_run(&state, &request, runs::start_by_token).await?;
    state.executors.heard_from(run.id);
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
            trigger: run.trigger,
            scheduled_at_ms: run.scheduled_at_ms,
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
    let run = active_run(&state, &request).await?;
    // A secret scoped to other repositories is, for this run, not there.
    match state.config.secrets.get(name.as_str()).filter(|s| s.readable_by(&run.repo)) {
        Some(secret) => {
            tracing::info!(run = %run.id, secret = %name, "secret served");
            Ok(HttpResponse::Ok().json(json!({ "value": secret.value })))
        }
        None => Err(ApiError::not_found(format!("secret `{name}` is not declared in config.fnl"))),
    }
}

/// The run's commit as a tar stream (`git archive`), straight from the
/// repository: the executor unpacks it into a directory of its own. A
/// claimed run's token is enough, so that the executor can fetch it while
/// its bootstrap is on the way. The first request gets the archive the
/// launcher started with the executor, if it did; any other, a new one.
#[get("/api/run/workspace")]
async fn workspace(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    debug_assert_eq!(WORKSPACE_PATH, "/api/run/workspace");
    let run = token_run(&state, &request, runs::claimed_run_by_token).await?;
    state.executors.heard_from(run.id);
    let under_way = state.executors.start_workspace_stream(run.id).map_err(|refused| match refused {
        DownloadRefused::NotFollowed => {
            ApiError::new(StatusCode::CONFLICT, "the server follows no executor of this run".to_string())
        }
        DownloadRefused::UnderWay => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{WORKSPACE_STREAMS} downloads of this run's workspace are under way already; \
                 try again once one has ended"
            ),
        ),
        DownloadRefused::Exhausted => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this run has downloaded its workspace {WORKSPACE_DOWNLOADS} times already"),
        ),
    })?;
    let mut archive = match state.executors.take_archive(run.id) {
        Some(started) => started,
        None => {
            repos::start_archive(&state.root.repo_path(&run.repo), &run.sha).map_err(ApiError::internal)?
        }
    };
    let stdout = archive.stdout.take().expect("stdout is piped");
    // The child is reaped once the stream is done with it (or dropped);
    // the download counts as under way until then.
    let start = (stdout, Some(archive), under_way);
    let stream = futures_util::stream::unfold(start, |(mut out, child, under_way)| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0; 64 * 1024];
        match out.read(&mut buffer).await {
            Ok(0) => {
                if let Some(mut child) = child {
                    let status = child.wait().await;
                    if !matches!(status, Ok(s) if s.success()) {
                        // Cut short: the executor's tar sees a truncated
                        // archive and says so.
                        return Some((
                            Err(std::io::Error::other("git archive failed")),
                            (out, None, under_way),
                        ));
                    }
                }
                None
            }
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(web::Bytes::from(buffer)), (out, child, under_way)))
            }
            Err(e) => Some((Err(e), (out, None, under_way))),
        }
    });
    Ok(HttpResponse::Ok().content_type("application/x-tar").streaming(stream))
}

/// The executor checks in; the answer says whether to stop.
#[post("/api/run/heartbeat")]
async fn heartbeat(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    debug_assert_eq!(HEARTBEAT_PATH, "/api/run/heartbeat");
    let run = active_run(&state, &request).await?;
    Ok(HttpResponse::Ok().json(reply(&state, &run)))
}

/// Whether the run's executor is to stop; contact is recorded. A run the
/// runner does not follow (not launched by this server instance) has no
/// one to stop it but the executor's own end.
fn reply(state: &AppState, run: &Run) -> Reply {
    Reply { cancel: state.executors.heard_from(run.id).flatten() }
}

/// The request body, up to [`MAX_OUTPUT_BODY`] bytes; read only once the
/// token is known good, so that nobody else can make the server buffer.
async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(piece) = payload.next().await {
        let piece = piece
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        if body.len() + piece.len() > MAX_OUTPUT_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_OUTPUT_BODY} bytes; send smaller batches"),
            ));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// A batch of the executor's output, appended to the run's files.
async fn output(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let run = active_run(&state, &request).await?;
    let body = read_body(payload).await?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not an output batch: {e}"))
    })?;
    let dir = state.root.run_dir(&run.repo, run.id);
    let limits = state.config.ci.output_limits();
    let writing = state.executors.writing_lock(run.id);
    let written = web::block(move || match writing {
        Some(lock) => {
            let mut files = lock.lock().unwrap_or_else(|p| p.into_inner());
            run_output::write_batch(&dir, &batch, &limits, &mut files)
        }
        // A run nobody follows is counted afresh.
        None => run_output::write_batch(&dir, &batch, &limits, &mut run_output::FileTally::default()),
    })
    .await
    .map_err(ApiError::internal)?;
    match written {
        Ok(()) => Ok(HttpResponse::Ok().json(reply(&state, &run))),
        Err(OutputError::OutOfOrder { file, offset, have }) => Ok(HttpResponse::Conflict().json(json!({
            "error": format!("{file}: the chunk starts at byte {offset}, but the server holds {have} bytes"),
            "file": file,
            "have": have,
        }))),
        Err(OutputError::TooLarge { file, size, limit }) => Ok(HttpResponse::PayloadTooLarge().json(json!({
            "error": format!("{file} would grow to {size} bytes, past its limit of {limit} bytes"),
            "file": file,
        }))),
        Err(OutputError::TooManyFiles { file, count, limit }) => Ok(HttpResponse::PayloadTooLarge().json(json!({
            "error": format!("{file} would be file number {count} of the run, past its limit of {limit} files"),
            "file": file,
        }))),
        Err(OutputError::Io { file, source })
            if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
        {
            // Most likely this very run filled the disk (its workspace is on
            // it when the executor is local): stopping it is what frees it.
            tracing::error!(run = %run.id, %file, "no space left to write the run's output; stopping the run");
            state.executors.give_up(
                run.id,
                StopReason::Unrecordable,
                format!("quire: the server could not store the run's output ({source}); the run is stopped"),
            );
            Ok(HttpResponse::InsufficientStorage().json(json!({
                "error": format!("the server cannot store {file}: {source}"),
                "cancel": StopReason::Unrecordable,
            })))
        }
        Err(error @ OutputError::Io { .. }) => {
            tracing::error!(run = %run.id, %error, "cannot write an executor's output");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot write the run's files now; retry",
            ))
        }
    }
}
