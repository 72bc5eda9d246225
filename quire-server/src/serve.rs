//! `quire serve`: one process running the HTTP server (API and web UI), the
//! push-socket listener and the runner, on tokio. It is the only process
//! that migrates the database. Startup order matters: claim the push socket
//! (so a second server stops before it touches anything), migrate,
//! reconcile what a previous instance left, bind the HTTP port (so runs
//! know the server's URL), replay the spool, then start taking pushes and
//! running.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};

use crate::config::{Config, SandboxMode};
use crate::db::{self, Pool};
use crate::executors::Executors;
use crate::http::{self, ApiError, AppState};
use crate::launcher::Launcher;
use crate::live::feed::{FeedLimits, Feeds};
use crate::root::DataRoot;
use crate::{api, executor_api, runs, scheduler, socket, web as pages};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the data root {}: {source}", path.display())]
    Root { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("reconciling runs left by a previous server failed: {0}")]
    Reconcile(rusqlite::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the push socket {}: {source}", path.display())]
    Socket { path: std::path::PathBuf, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

pub async fn serve(root: DataRoot, config: Config, listen: Option<SocketAddr>) -> Result<(), ServeError> {
    for dir in [root.path().to_path_buf(), root.repos_dir(), root.runs_dir()] {
        std::fs::create_dir_all(&dir).map_err(|source| ServeError::Root { path: dir.clone(), source })?;
    }
    // Processes a run detaches outlive their quire-ci; as their subreaper
    // the server can sweep them when the run ends.
    if let Err(e) = quire_core::runtime::become_subreaper() {
        tracing::warn!(error = %e, "cannot become the reaper of processes runs detach");
    }
    let socket_path = root.socket_path();
    let listener = socket::bind(&socket_path)
        .map_err(|source| ServeError::Socket { path: socket_path.clone(), source })?;
    let mut conn = db::open_and_migrate(&root.db_path())?;
    let reconciled = runs::reconcile(&conn).map_err(ServeError::Reconcile)?;
    record_leftovers(&root, &mut conn, &reconciled);
    drop(conn);

    let pool = Pool::new(&root.db_path());
    let addr = listen.unwrap_or(config.listen);
    let limits = FeedLimits {
        max_streams: config.http.max_live_streams,
        backlog_bytes: config.http.live_backlog_bytes,
    };
    let feeds = Feeds::new(limits, api::end_probe(pool.clone()));
    let executors = Arc::new(Executors::default());
    let state = web::Data::new(AppState {
        executors: executors.clone(),
        db: pool.clone(),
        config: config.clone(),
        root: root.clone(),
        feeds,
        progress: http::run::Progress::default(),
        pages: http::cache::PageCache::new(root.db_path()),
    });
    let http = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(http::path_errors())
            .app_data(http::query_errors())
            .configure(api::configure)
            .configure(executor_api::configure)
            .configure(pages::configure)
            .default_service(web::to(not_found))
    })
    .workers(config.http.workers)
    .bind(addr)
    .map_err(|source| ServeError::Listen { addr, source })?;
    let bound = http.addrs().first().copied().unwrap_or(addr);
    let url = format!("http://{bound}");

    let launcher = Launcher::new(root.clone(), pool.clone(), config.clone(), url.clone(), executors);
    tracing::info!(
        root = %root.path().display(),
        %url,
        launcher = %launcher.describe(),
        max_concurrent_runs = config.ci.max_concurrent_runs,
        sandbox = config.ci.sandbox.as_str(),
        "quire serving"
    );
    match config.ci.sandbox {
        SandboxMode::Bwrap if quire_core::runtime::find_bwrap().is_none() => tracing::error!(
            "config asks for the bwrap sandbox but bubblewrap is not installed: runs will fail until it is"
        ),
        SandboxMode::Bwrap => tracing::info!("run commands are sandboxed with bubblewrap"),
        SandboxMode::None => tracing::warn!("run commands are NOT sandboxed (:ci {{:sandbox :none}})"),
    }
    // Tests and scripts wait for this line on stdout.
    println!("quire: listening on {url}");

    launcher.adopt(reconciled.adoptable);
    // Pushes saved while the server was down go first, oldest first.
    let replayed = launcher.replay_spool().await;
    if replayed > 0 {
        tracing::info!(runs = replayed, "queued runs of pushes saved while the server was down");
    }
    tokio::spawn(socket::serve(listener, launcher.clone()));
    tokio::spawn(launcher.clone().keep_replaying_spool());
    tokio::spawn(scheduler::run(config.schedules.clone(), launcher.clone(), pool.clone(), root.clone()));
    tokio::spawn(launcher.run_queue());
    let result = http.disable_signals().run().await.map_err(ServeError::Http);
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// What a previous instance left behind: an orphaned run's events are
/// ingested (its page then shows what it did before the server died), and
/// the directories of local executors, which died with that server, go.
fn record_leftovers(root: &DataRoot, conn: &mut rusqlite::Connection, reconciled: &runs::Reconciled) {
    if !reconciled.orphaned.is_empty() {
        tracing::warn!(
            orphaned = reconciled.orphaned.len(),
            "runs left active by a previous server were marked failed (orphaned)"
        );
    }
    if !reconciled.released.is_empty() {
        tracing::info!(
            released = reconciled.released.len(),
            "pending runs claimed by a previous server were queued again"
        );
    }
    for run in &reconciled.orphaned {
        let dir = root.run_dir(&run.repo, run.id);
        if let Err(e) = crate::ingest::ingest_file(conn, run.id, &dir.events(), quire_core::clock::now_ms()) {
            tracing::warn!(run = %run.id, error = %e, "cannot ingest an orphaned run's events");
        }
    }
    // Local executors die with the server; their directories go too.
    let executors = root.executors_dir();
    if executors.exists() {
        if let Err(e) = std::fs::remove_dir_all(&executors) {
            tracing::warn!(dir = %executors.display(), error = %e, "cannot remove executors' directories left behind");
        }
    }
}

/// 404 for unknown paths: JSON under `/api/`, the HTML page elsewhere.
async fn not_found(request: HttpRequest) -> HttpResponse {
    if request.path().starts_with("/api/") {
        ApiError::not_found("no such endpoint").error_response()
    } else {
        pages::not_found_page().await
    }
}
