//! The runner: turns pushes into runs and runs into executors. It owns the
//! queue discipline (oldest pending first, at most `max-concurrent-runs` at
//! once), run tokens and caches, launching executors through the
//! configured launcher (`launch`), watching them (the engine's word and
//! their heartbeats, `executors`), stopping them (supersede, cancel,
//! timeout, silence), and calling ingest and the final transition when one
//! is gone. The state changes themselves are `runs`' statements.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_core::clock::now_ms;
use quire_core::event::RunOutcome;
use quire_core::id::{RepoName, RunId};
use quire_core::output::StopReason;
use quire_core::run_dir::RunDir;
use tokio::sync::Notify;

use crate::config::{CiConfig, Config, LauncherConfig, SandboxMode};
use crate::db::Pool;
use crate::executors::Executors;
use crate::launch::{self, ExecutorSpec, Launch, Status};
use crate::root::DataRoot;
use crate::runs::{self, Ending, FailureKind, NewRun, Run};
use crate::{caches, db, ingest, repos, retention, spool, token};

/// The longest wait between two attempts to record a run's end.
const MAX_FINISH_RETRY: Duration = Duration::from_secs(30);

/// How often the spool is looked at while the server runs.
const SPOOL_REPLAY: Duration = Duration::from_secs(2);

/// How long an executor told to stop (by the launcher, and in the answer
/// to its next contact) gets to stop its commands and send what it has
/// before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a run could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database cannot take writes now (locked past its busy timeout,
    /// a full disk, I/O): the push belongs in the spool.
    #[error("the database cannot take the run now: {0}")]
    Unavailable(String),
    /// The run itself was refused (it breaks the schema's rules): trying
    /// again will not help.
    #[error("the run was refused: {0}")]
    Refused(String),
}

/// What a run's executor is started with, besides its run.
struct ExecutorSettings {
    token: String,
    /// The size of the file system runs are written to, for the disk floor.
    fs_size_mb: u64,
    cache_dir: Option<PathBuf>,
}

/// Marks a held ref cache free when dropped early (the run's task
/// panicked); disarmed (`shared` false) once the cache is given back in
/// order.
struct HeldCache {
    launcher: Launcher,
    key: (RepoName, String),
    shared: bool,
}

impl Drop for HeldCache {
    fn drop(&mut self) {
        if self.shared {
            if let Ok(mut held) = self.launcher.inner.caches_held.lock() {
                held.remove(&self.key);
            }
        }
    }
}

/// The cache a run holds.
struct RunCache {
    ref_name: String,
    path: PathBuf,
    /// The ref's own cache (else a private copy, removed after the run).
    shared: bool,
}

#[derive(Clone)]
pub struct Launcher {
    inner: Arc<Inner>,
}

struct Inner {
    root: DataRoot,
    db: Pool,
    config: Config,
    launch: Arc<dyn Launch>,
    /// Where executors reach the server.
    server_url: String,
    /// Wakes the queue: a push arrived or a run ended.
    wake: Notify,
    /// Wakes the watchers: a run is to stop.
    stops: Notify,
    executors: Arc<Executors>,
    /// The ref caches runs hold now.
    caches_held: Mutex<HashSet<(RepoName, String)>>,
}

/// The launcher `:ci {:launcher …}` asks for.
fn launcher_for(ci: &CiConfig, root: &DataRoot, quire_ci: PathBuf) -> Arc<dyn Launch> {
    match &ci.launcher {
        LauncherConfig::Process => Arc::new(launch::process::ProcessLauncher::new(
            quire_ci,
            root.path().to_path_buf(),
            ci.sandbox == SandboxMode::Bwrap,
        )),
        LauncherConfig::Slurm(slurm) => {
            Arc::new(launch::slurm::SlurmLauncher::new(slurm.clone(), quire_ci, ci.timeout))
        }
    }
}

/// Where the executor binary is: `$QUIRE_CI_BIN`, else next to `quire`.
pub fn quire_ci_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("QUIRE_CI_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("quire-ci")))
        .unwrap_or_else(|| PathBuf::from("quire-ci"))
}

impl Launcher {
    /// `listen_url`: the server's own address, which executors use unless
    /// `:ci {:public-url}` says otherwise.
    pub fn new(
        root: DataRoot,
        db: Pool,
        config: Config,
        listen_url: String,
        executors: Arc<Executors>,
    ) -> Launcher {
        let launch = launcher_for(&config.ci, &root, quire_ci_binary());
        let server_url = config.ci.public_url.clone().unwrap_or(listen_url);
        Launcher {
            inner: Arc::new(Inner {
                root,
                db,
                config,
                launch,
                server_url,
                wake: Notify::new(),
                stops: Notify::new(),
                executors,
                caches_held: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The launcher's description, for the server log.
    pub fn describe(&self) -> String {
        self.inner.launch.describe()
    }

    /// Runs database work on the blocking pool; errors come back as text
    /// for the log or the socket's reply.
    async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let pool = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|e| e.to_string())?;
            work(&mut conn)
        })
        .await
        .map_err(|e| format!("database task failed: {e}"))?
    }

    /// Supersedes the ref's unfinished runs asked for before this one and
    /// queues it, then adds its commit's subject and author from git.
    pub async fn queue(&self, new: NewRun) -> Result<RunId, QueueError> {
        let pool = self.inner.db.clone();
        let bare = self.inner.root.repo_path(&new.repo);
        let sha = new.sha.clone();
        let queued = tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|e| QueueError::Unavailable(e.to_string()))?;
            let classify = |e: rusqlite::Error| {
                if db::is_transient(&e) {
                    QueueError::Unavailable(e.to_string())
                } else {
                    QueueError::Refused(e.to_string())
                }
            };
            // `enqueue` supersedes the pending ones; these are also the
            // active ones, whose processes must stop.
            let older: Vec<RunId> = runs::unfinished_of_ref(&conn, &new.repo, &new.ref_name)
                .map_err(classify)?
                .into_iter()
                .filter(|run| run.pushed_at_ms <= new.pushed_at_ms)
                .filter(|run| run.trigger.is_scheduled() == new.trigger.is_scheduled())
                .map(|run| run.id)
                .collect();
            let (id, _pending) = runs::enqueue(&mut conn, &new).map_err(classify)?;
            Ok((id, older))
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("database task failed: {e}")))?;
        let (id, superseded) = queued?;
        for old in superseded {
            self.stop(old, StopReason::Superseded);
        }
        tracing::info!(run = %id, "run queued");
        self.inner.wake.notify_one();
        // Asking git is not on the way to the run's first command (the
        // launcher may be starting it meanwhile); the pusher's hook still
        // hears back only once the run has its summary.
        let summarized = self
            .db(move |conn| {
                let commit = repos::commit_summary(&bare, &sha);
                runs::record_commit(conn, id, &commit).map_err(|e| e.to_string())
            })
            .await;
        if let Err(e) = summarized {
            // Only the pages miss it.
            tracing::warn!(run = %id, error = %e, "cannot record the commit's subject and author");
        }
        Ok(id)
    }

    /// Where pushes the database could not take wait.
    pub fn spool_dir(&self) -> PathBuf {
        self.inner.root.spool_dir()
    }

    /// Queues every spooled push, oldest first, as if it had just arrived
    /// (a push older than the ref's newest run is recorded as superseded).
    /// Stops at the first run the database still cannot take, leaving the
    /// rest of that push (the file rewritten without the refs already
    /// queued) and the later pushes for the next time; a ref the database
    /// refuses outright is logged and dropped, so one bad push cannot hold
    /// up the others. Returns how many runs were queued.
    pub async fn replay_spool(&self) -> usize {
        let dir = self.inner.root.spool_dir();
        let files = match tokio::task::spawn_blocking(move || spool::spooled(&dir)).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot list the push spool");
                return 0;
            }
            Err(_) => return 0,
        };
        let mut queued = 0;
        for path in files {
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || spool::read(&path)).await
            };
            let push = match read {
                Ok(Ok(push)) => push,
                Ok(Err(reason)) => {
                    let _ = tokio::task::spawn_blocking(move || spool::set_aside(&path, &reason)).await;
                    continue;
                }
                Err(_) => return queued,
            };
            for (at, new) in push.runs() {
                match self.queue(new).await {
                    Ok(_) => queued += 1,
                    Err(QueueError::Refused(e)) => {
                        tracing::error!(file = %path.display(), error = %e, "a spooled run was refused; dropped")
                    }
                    Err(QueueError::Unavailable(e)) => {
                        tracing::warn!(error = %e, "the database still cannot take a spooled push; retrying later");
                        let rest = push.from_ref(at);
                        let _ = tokio::task::spawn_blocking(move || spool::rewrite(&path, &rest)).await;
                        return queued;
                    }
                }
            }
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::error!("cannot remove a replayed push from the spool; it may run twice");
            }
        }
        queued
    }

    /// Replays the spool every [`SPOOL_REPLAY`] for as long as the server runs.
    pub async fn keep_replaying_spool(self) {
        loop {
            tokio::time::sleep(SPOOL_REPLAY).await;
            let queued = self.replay_spool().await;
            if queued > 0 {
                tracing::info!(runs = queued, "queued runs of pushes the database could not take at first");
            }
        }
    }

    /// Cancels a run: a pending one fails at once, a running one is stopped
    /// and fails when its executor is gone.
    pub async fn cancel(&self, id: RunId) -> Result<(), String> {
        if self.stop(id, StopReason::Canceled) {
            return Ok(());
        }
        self.db(move |conn| {
            let run = runs::get(conn, id).map_err(|e| e.to_string())?.ok_or(format!("no run {id}"))?;
            if run.state.is_finished() {
                return Err(format!("run {id} already finished ({})", run.state.as_str()));
            }
            runs::finish(conn, id, &Ending::Failed(FailureKind::Canceled)).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
    }

    /// Asks a run's executor to stop: the launcher ends it now (the
    /// executor sends what it has on the way out) and it hears so at its
    /// next contact too; see `watch`. False when the run has no executor.
    fn stop(&self, id: RunId, why: StopReason) -> bool {
        let asked = self.inner.executors.request_stop(id, why);
        if asked {
            tracing::info!(run = %id, reason = ?why, "stopping the run's executor");
            self.inner.stops.notify_waiters();
        }
        asked
    }

    /// The runner: starts pending runs while there is room, then sleeps
    /// until a push arrives or a run ends.
    pub async fn run_queue(self) {
        loop {
            while self.running_count() < self.inner.config.ci.max_concurrent_runs {
                match self.db(|conn| runs::next_pending(conn).map_err(|e| e.to_string())).await {
                    Ok(Some(run)) => self.start(run).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the run queue failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            self.inner.wake.notified().await;
        }
    }

    fn running_count(&self) -> usize {
        self.inner.executors.count()
    }

    /// Claims one run and launches its executor. Failures before the
    /// executor runs fail the run (with the reason in its quire-ci.log)
    /// rather than the server.
    async fn start(&self, run: Run) {
        let (id, repo) = (run.id, run.repo);
        let run_dir = self.inner.root.run_dir(&repo, id);
        let token = token::mint();
        let claimed = {
            let (dir, hash) = (run_dir.path().to_path_buf(), token::hash(&token));
            self.db(move |conn| {
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                runs::claim(conn, id, &hash).map_err(|e| e.to_string())
            })
            .await
        };
        match claimed {
            Ok(true) => {}
            // Superseded or canceled meanwhile.
            Ok(false) => return,
            Err(reason) => {
                tracing::error!(run = %id, %reason, "preparing the run failed");
                self.finish_without_executor(id, &run_dir, &reason).await;
                return;
            }
        }
        self.inner.executors.follow(id);
        if self.inner.launch.starts_promptly() {
            // The workspace is the executor's first request: git produces
            // it (up to a pipe's worth) while the executor starts.
            match repos::start_archive(&self.inner.root.repo_path(&repo), &run.sha) {
                Ok(archive) => self.inner.executors.hold_archive(id, archive),
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "cannot start git archive ahead of the executor")
                }
            }
        }
        let executors_dir = self.inner.root.executors_dir();
        let fs_size_mb = tokio::task::spawn_blocking(move || {
            let _ = std::fs::create_dir_all(&executors_dir);
            file_system_size_mb(&executors_dir)
        })
        .await
        .unwrap_or(u64::MAX);
        let cache = match self.inner.launch.local_cache() {
            true => Some(self.take_cache(&repo, &run.ref_name, &run_dir).await),
            false => None,
        };
        let settings =
            ExecutorSettings { token, fs_size_mb, cache_dir: cache.as_ref().map(|c| c.path.clone()) };
        match self.launch(id, &repo, settings).await {
            Ok(handle) => {
                tracing::info!(run = %id, %handle, "executor launched");
                self.supervise_in_background(id, repo, handle, cache, Duration::ZERO);
            }
            Err(reason) => {
                tracing::error!(run = %id, %reason, "launching the executor failed");
                self.inner.executors.forget(id);
                if let Some(cache) = cache {
                    self.release_cache(&repo, cache).await;
                }
                self.finish_without_executor(id, &run_dir, &reason).await;
            }
        }
    }

    /// Starts the executor and records its handle with the run.
    async fn launch(&self, id: RunId, repo: &RepoName, settings: ExecutorSettings) -> Result<String, String> {
        let spec = ExecutorSpec {
            run: id,
            token: settings.token,
            server_url: self.inner.server_url.clone(),
            args: self.executor_arguments(repo, settings.fs_size_mb),
            cache_dir: settings.cache_dir,
            sentry_dsn: self.inner.config.sentry_dsn.clone(),
        };
        let launch = self.inner.launch.clone();
        let handle = tokio::task::spawn_blocking(move || launch.start(&spec))
            .await
            .map_err(|e| format!("launch task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let recorded = handle.clone();
        if let Err(e) =
            self.db(move |conn| runs::record_executor(conn, id, &recorded).map_err(|e| e.to_string())).await
        {
            // Only a restart needs it; the run goes on.
            tracing::warn!(run = %id, error = %e, "cannot record the executor's handle");
        }
        Ok(handle)
    }

    /// Supervises a launched executor on its own task, giving its cache
    /// back at the end. `elapsed`: how long the run has already been going
    /// (for one adopted after a restart).
    fn supervise_in_background(
        &self,
        id: RunId,
        repo: RepoName,
        handle: String,
        cache: Option<RunCache>,
        elapsed: Duration,
    ) {
        let launcher = self.clone();
        tokio::spawn(async move {
            // Should supervising panic, the ref's cache is not left
            // marked held until a restart.
            let mut held = cache.as_ref().map(|cache| HeldCache {
                launcher: launcher.clone(),
                key: (repo.clone(), cache.ref_name.clone()),
                shared: cache.shared,
            });
            launcher.supervise(id, repo.clone(), handle, elapsed).await;
            // Given back below, in order; the guard must not free the ref
            // again once a later run may hold it.
            if let Some(held) = held.as_mut() {
                held.shared = false;
            }
            if let Some(cache) = cache {
                launcher.release_cache(&repo, cache).await;
            }
        });
    }

    /// Follows again, after a restart, the runs whose executors outlive
    /// the server (claimed Slurm jobs): still there → supervised as
    /// before; gone → recorded as any ended executor.
    pub fn adopt(&self, runs: Vec<(Run, String)>) {
        for (run, handle) in runs {
            if !handle.starts_with(&format!("{}:", self.inner.launch.kind())) {
                // Nobody here can ask after it: like a local executor lost
                // with the previous server.
                tracing::error!(run = %run.id, %handle, "a run's executor belongs to another launcher than the configured one; the run is orphaned");
                let launcher = self.clone();
                tokio::spawn(async move {
                    launcher.finish_until_written(run.id, Ending::Failed(FailureKind::Orphaned)).await;
                });
                continue;
            }
            let elapsed = run
                .started_at_ms
                .map(|at| Duration::from_millis(now_ms().saturating_sub(at).max(0) as u64))
                .unwrap_or_default();
            tracing::info!(run = %run.id, %handle, "following a run's executor again after a restart");
            self.inner.executors.follow(run.id);
            self.supervise_in_background(run.id, run.repo, handle, None, elapsed);
        }
    }

    /// The cache a run of `ref_name` gets: the ref's own when no other run
    /// holds it (a new ref's starts from the default branch's unless a run
    /// holds that one), else an empty private one in the run's directory;
    /// an empty private one too when the ref's cannot be made.
    async fn take_cache(&self, repo: &RepoName, ref_name: &str, run_dir: &RunDir) -> RunCache {
        let default = {
            let (root, repo) = (self.inner.root.clone(), repo.clone());
            tokio::task::spawn_blocking(move || caches::default_ref(&root, &repo))
                .await
                .unwrap_or_else(|_| "refs/heads/main".to_string())
        };
        let key = (repo.clone(), ref_name.to_string());
        let (shared, default_held) = {
            let mut held = self.inner.caches_held.lock().expect("caches lock");
            let shared = held.insert(key.clone());
            (shared, held.contains(&(repo.clone(), default)))
        };
        let (root, repo_owned, ref_owned) = (self.inner.root.clone(), repo.clone(), ref_name.to_string());
        let private_path = run_dir.path().join("cache");
        let cap = self.inner.config.ci.cache_mb.saturating_mul(1024 * 1024);
        let made = tokio::task::spawn_blocking(move || {
            if shared {
                caches::prepare(&root, &repo_owned, &ref_owned, !default_held, cap)
            } else {
                caches::private_empty(&private_path)
            }
        })
        .await;
        match made {
            Ok(Ok(path)) => RunCache { ref_name: ref_name.to_string(), path, shared },
            failed => {
                let error = failed
                    .map_or_else(|e| e.to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                tracing::warn!(%repo, r#ref = ref_name, %error, "cannot prepare the run's cache; it gets an empty one");
                if shared {
                    self.inner.caches_held.lock().expect("caches lock").remove(&key);
                }
                let private_path = run_dir.path().join("cache");
                let _ = tokio::task::spawn_blocking({
                    let private_path = private_path.clone();
                    move || caches::private_empty(&private_path)
                })
                .await;
                RunCache { ref_name: ref_name.to_string(), path: private_path, shared: false }
            }
        }
    }

    /// Gives a run's cache back: a shared one is released and the
    /// repository's caches are brought under `:ci {:cache-mb}`; a private
    /// one is removed.
    async fn release_cache(&self, repo: &RepoName, cache: RunCache) {
        if cache.shared {
            self.inner
                .caches_held
                .lock()
                .expect("caches lock")
                .remove(&(repo.clone(), cache.ref_name.clone()));
        }
        let held: Vec<String> = self
            .inner
            .caches_held
            .lock()
            .expect("caches lock")
            .iter()
            .filter(|(r, _)| r == repo)
            .map(|(_, name)| name.clone())
            .collect();
        let (root, repo) = (self.inner.root.clone(), repo.clone());
        let cap = self.inner.config.ci.cache_mb.saturating_mul(1024 * 1024);
        let done = tokio::task::spawn_blocking(move || {
            if !cache.shared {
                if let Err(e) = std::fs::remove_dir_all(&cache.path) {
                    tracing::warn!(error = %e, "cannot remove a run's private cache");
                }
            }
            caches::evict(&root, &repo, cap, &held)
        })
        .await;
        match done {
            Ok(Ok(evicted)) if !evicted.is_empty() => {
                tracing::info!(evicted = evicted.len(), "caches evicted to stay under :ci {{:cache-mb}}")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot tidy the caches"),
            Err(e) => tracing::warn!(error = %e, "cache task failed"),
        }
    }

    /// The arguments after `quire-ci run`: the sandbox and limits it
    /// applies to the run's commands. `fs_size_mb`: the size of the file
    /// system the executor's directory is on.
    fn executor_arguments(&self, repo: &RepoName, fs_size_mb: u64) -> Vec<std::ffi::OsString> {
        let ci = &self.inner.config.ci;
        let mut args: Vec<std::ffi::OsString> = vec!["--sandbox".into(), ci.sandbox.as_str().into()];
        if ci.sandbox == SandboxMode::Bwrap {
            // Nothing of the data root (database, config, repositories, other
            // runs) is visible to commands.
            args.push("--hide".into());
            args.push(self.inner.root.path().into());
            if ci.network.contains(repo) {
                args.push("--network".into());
            }
        }
        let limits = &ci.limits;
        for (flag, value) in [
            ("--jobs", ci.max_parallel_jobs),
            ("--max-log-mb", limits.max_log_mb),
            ("--max-commands", ci.max_commands),
            ("--max-tmp-mb", limits.max_tmp_mb),
            ("--lua-memory-mb", limits.lua_memory_mb),
            ("--min-free-disk-mb", limits.disk_floor_mb(fs_size_mb)),
            ("--max-processes", limits.max_processes),
            ("--max-file-size-mb", limits.max_file_size_mb),
            ("--max-cpu-secs", limits.max_cpu_secs),
            ("--max-memory-mb", limits.max_memory_mb),
            ("--job-timeout", ci.timeout.as_secs()),
        ] {
            args.push(flag.into());
            args.push(value.to_string().into());
        }
        args
    }

    /// Watches an executor until it is gone — stopping it when the run is
    /// to stop, times out or falls silent — then records the run: ingest,
    /// transition, retention.
    async fn supervise(&self, id: RunId, repo: RepoName, handle: String, elapsed: Duration) {
        let run_dir = self.inner.root.run_dir(&repo, id);
        let deadline = tokio::time::Instant::now() + self.inner.config.ci.timeout.saturating_sub(elapsed);
        let (clean, how) = self.watch(id, &handle, deadline).await;
        let launch = self.inner.launch.clone();
        let cleaned = {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || launch.clean_up(id, &handle)).await
        };
        match cleaned {
            Ok(0) => {}
            Ok(swept) => tracing::warn!(run = %id, swept, "killed processes the run left behind"),
            Err(e) => tracing::error!(run = %id, error = %e, "cleaning up after the executor failed"),
        }
        let stop = self.inner.executors.stop_request(id).map(|(why, _)| why);
        // The log says why before the run is seen to end.
        if let Some(note) = self.inner.executors.take_note(id) {
            note_in_executor_log(&run_dir, &note).await;
        }
        let events = run_dir.events();
        let ingested = self
            .db(move |conn| {
                let report = ingest::ingest_file(conn, id, &events, now_ms()).map_err(|e| e.to_string())?;
                if report.skipped_lines > 0 {
                    tracing::warn!(run = %id, skipped = report.skipped_lines, "events.jsonl had unreadable lines");
                }
                Ok(report.run_finished)
            })
            .await;
        let recorded = match ingested {
            Ok(run_finished) => {
                if run_finished.is_none() && stop.is_none() {
                    note_in_executor_log(
                        &run_dir,
                        &format!("quire: the executor ended without finishing the run: {how}"),
                    )
                    .await;
                }
                let ending = ending_for(stop, clean, run_finished);
                let written = ending.clone();
                self.db(move |conn| runs::finish(conn, id, &written).map_err(|e| e.to_string()))
                    .await
                    .map(|_| ending)
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(Ending::Complete) => tracing::info!(run = %id, %repo, "run complete"),
            Ok(Ending::Failed(FailureKind::PipelineFailure)) => {
                tracing::info!(run = %id, %repo, "run failed: the pipeline failed")
            }
            Ok(Ending::Failed(kind)) => tracing::warn!(run = %id, %repo, %kind, %how, "run failed"),
            Ok(Ending::Superseded) => tracing::info!(run = %id, %repo, "run superseded"),
            Err(e) => {
                tracing::error!(run = %id, error = %e, "recording the run failed");
                note_in_executor_log(
                    &run_dir,
                    &format!("quire: recording the run failed ({e}); it is marked failed"),
                )
                .await;
                self.finish_until_written(id, Ending::Failed(FailureKind::ProcessCrashed)).await;
            }
        }
        self.inner.executors.forget(id);
        self.inner.wake.notify_one();
        self.apply_retention(repo).await;
    }

    /// Asks the engine after the executor until it is gone; returns
    /// whether it exited cleanly and how it ended. Meanwhile a run past
    /// `deadline` or silent past `:heartbeat-timeout-secs` is stopped, and
    /// a run told to stop has its executor ended.
    async fn watch(&self, id: RunId, handle: &str, deadline: tokio::time::Instant) -> (bool, String) {
        let launch = self.inner.launch.clone();
        let executors = &self.inner.executors;
        let silence_limit = self.inner.config.ci.heartbeat_timeout;
        // 1 once terminated, 2 once killed.
        let mut force = 0u8;
        let mut engine_errors = 0u32;
        loop {
            let status = {
                let (launch, handle) = (launch.clone(), handle.to_string());
                tokio::task::spawn_blocking(move || launch.status(&handle)).await
            };
            match status {
                Ok(Ok(Status::Ended { clean, how })) => return (clean, how),
                Ok(Ok(Status::Queued)) => executors.excuse_silence(id),
                Ok(Ok(Status::Running)) => engine_errors = 0,
                Ok(Err(e)) => {
                    engine_errors += 1;
                    if engine_errors == 1 || engine_errors.is_multiple_of(60) {
                        tracing::warn!(run = %id, error = %e, "cannot ask the engine about the executor");
                    }
                }
                Err(e) => tracing::error!(run = %id, error = %e, "status task failed"),
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop(id, StopReason::Timeout);
            }
            if executors.silent_for(id).is_some_and(|silent| silent > silence_limit)
                && executors.stop_request(id).is_none()
            {
                tracing::warn!(run = %id, silent = ?silence_limit, "the executor fell silent; ending it");
                executors.give_up(
                    id,
                    StopReason::Abandoned,
                    format!(
                        "quire: the executor was not heard from for {} s (:ci {{:heartbeat-timeout-secs}}); the run is given up",
                        silence_limit.as_secs()
                    ),
                );
            }
            // Told to stop: ended at once (it sends what it has on the way
            // out), killed if still there [`STOP_GRACE`] later; one that
            // fell silent is killed at once.
            if let Some((why, since)) = executors.stop_request(id) {
                let (launch, handle) = (launch.clone(), handle.to_string());
                if (why == StopReason::Abandoned || since >= STOP_GRACE) && force < 2 {
                    force = 2;
                    let _ = tokio::task::spawn_blocking(move || launch.kill(&handle)).await;
                } else if force < 1 {
                    force = 1;
                    let _ = tokio::task::spawn_blocking(move || launch.terminate(&handle)).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.launch.poll_interval()) => {}
                _ = self.inner.stops.notified() => {}
            }
        }
    }

    /// Records a run's ending, retrying until the database takes it (a full
    /// disk, a lock held too long): no run stays `active` because one write
    /// failed. A run that has already ended is left as it is.
    async fn finish_until_written(&self, id: RunId, ending: Ending) {
        let mut wait = Duration::from_millis(500);
        loop {
            let attempt = ending.clone();
            match self.db(move |conn| runs::finish(conn, id, &attempt).map_err(|e| e.to_string())).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(run = %id, error = %e, retry_in = ?wait, "cannot record the run's end; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_FINISH_RETRY);
                }
            }
        }
    }

    /// Prunes the repository's runs that `:ci {:retention …}` no longer keeps.
    async fn apply_retention(&self, repo: RepoName) {
        let policy = self.inner.config.ci.retention;
        if policy.keeps_everything() {
            return;
        }
        let root = self.inner.root.clone();
        let pruned = self
            .db(move |conn| {
                retention::prune_repo(conn, &root, &repo, &policy, now_ms()).map_err(|e| e.to_string())
            })
            .await;
        match pruned {
            Ok(runs) if runs.is_empty() => {}
            Ok(runs) => tracing::info!(pruned = runs.len(), "old runs pruned (:ci {{:retention …}})"),
            Err(e) => tracing::error!(error = %e, "pruning old runs failed"),
        }
    }

    /// Fails a run that never got an executor, leaving the reason where its
    /// logs would be.
    async fn finish_without_executor(&self, id: RunId, run_dir: &RunDir, reason: &str) {
        let _ = tokio::fs::create_dir_all(run_dir.path()).await;
        let _ =
            tokio::fs::write(run_dir.executor_log(), format!("quire: the run could not start: {reason}\n"))
                .await;
        self.finish_until_written(id, Ending::Failed(FailureKind::ProcessCrashed)).await;
        self.inner.wake.notify_one();
    }
}

/// The size of the file system holding `dir`, in MiB; the largest possible
/// when it cannot be told (which keeps the default disk floor).
fn file_system_size_mb(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(u64::MAX, |s| s.f_blocks.saturating_mul(s.f_frsize) / (1024 * 1024))
}

/// Appends a line for the reader of the run page to quire-ci.log; on a
/// full disk this may fail too, and the server log has it anyway.
async fn note_in_executor_log(run_dir: &RunDir, line: &str) {
    use tokio::io::AsyncWriteExt;
    let opened = tokio::fs::OpenOptions::new().create(true).append(true).open(run_dir.executor_log()).await;
    if let Ok(mut file) = opened {
        let _ = file.write_all(format!("{line}\n").as_bytes()).await;
    }
}

/// The transition table of SPEC §6.4: how a run ends given why the server
/// stopped it (if it did), whether the executor exited cleanly and its
/// last event.
fn ending_for(stop: Option<StopReason>, exited_cleanly: bool, run_finished: Option<RunOutcome>) -> Ending {
    match (stop, exited_cleanly, run_finished) {
        (Some(StopReason::Superseded), _, _) => Ending::Superseded,
        (Some(StopReason::Canceled), _, _) => Ending::Failed(FailureKind::Canceled),
        (Some(StopReason::Timeout), _, _) => Ending::Failed(FailureKind::Timeout),
        (Some(StopReason::Abandoned | StopReason::Unrecordable), _, _) => {
            Ending::Failed(FailureKind::ProcessCrashed)
        }
        (None, true, Some(RunOutcome::Success)) => Ending::Complete,
        (None, true, Some(RunOutcome::PipelineFailure)) => Ending::Failed(FailureKind::PipelineFailure),
        (None, _, _) => Ending::Failed(FailureKind::ProcessCrashed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_a_run_ends_follows_the_spec_transition_table() {
        use FailureKind::*;
        let ok = Some(RunOutcome::Success);
        let failed = Some(RunOutcome::PipelineFailure);
        assert_eq!(ending_for(None, true, ok), Ending::Complete);
        assert_eq!(ending_for(None, true, failed), Ending::Failed(PipelineFailure));
        assert_eq!(ending_for(None, false, ok), Ending::Failed(ProcessCrashed));
        assert_eq!(ending_for(None, true, None), Ending::Failed(ProcessCrashed));
        assert_eq!(ending_for(Some(StopReason::Timeout), false, None), Ending::Failed(Timeout));
        assert_eq!(ending_for(Some(StopReason::Canceled), true, ok), Ending::Failed(Canceled));
        assert_eq!(ending_for(Some(StopReason::Superseded), false, None), Ending::Superseded);
        assert_eq!(ending_for(Some(StopReason::Abandoned), true, ok), Ending::Failed(ProcessCrashed));
    }
}
