//! The runner: turns pushes into runs and runs into `quire-ci` processes.
//! It owns the queue discipline (oldest pending first, at most
//! `max-concurrent-runs` at once), workspace materialization, run tokens,
//! spawning and stopping quire-ci (supersede, cancel, timeout), and calling
//! ingest and the final transition when a process exits. The state changes
//! themselves are `runs`' statements.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_core::clock::now_ms;
use quire_core::event::RunOutcome;
use quire_core::id::{RepoName, RunId};
use quire_core::run_dir::RunDir;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::sync::Notify;

use crate::config::{Config, SandboxMode};
use crate::db::Pool;
use crate::root::DataRoot;
use crate::runs::{self, Ending, FailureKind, NewRun, Run};
use crate::{caches, db, ingest, repos, retention, spool, token};

/// The longest wait between two attempts to record a run's end.
const MAX_FINISH_RETRY: Duration = Duration::from_secs(30);

/// How often the spool is looked at while the server runs.
const SPOOL_REPLAY: Duration = Duration::from_secs(2);

/// How long quire-ci gets to stop its commands after SIGTERM before the
/// whole process group is killed.
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

/// Why the server stopped a run's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Superseded,
    Canceled,
    Timeout,
}

/// What a run's executor is started with, besides its run.
struct ExecutorSettings {
    token: String,
    /// The size of the file system runs are written to, for the disk floor.
    fs_size_mb: u64,
    cache_dir: PathBuf,
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

/// A quire-ci process the runner is waiting for.
struct Running {
    group: Pid,
    stop: Option<Stop>,
}

#[derive(Clone)]
pub struct Launcher {
    inner: Arc<Inner>,
}

struct Inner {
    root: DataRoot,
    db: Pool,
    config: Config,
    quire_ci: PathBuf,
    server_url: String,
    wake: Notify,
    running: Mutex<HashMap<RunId, Running>>,
    /// The ref caches runs hold now.
    caches_held: Mutex<HashSet<(RepoName, String)>>,
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
    pub fn new(root: DataRoot, db: Pool, config: Config, server_url: String) -> Launcher {
        Launcher {
            inner: Arc::new(Inner {
                root,
                db,
                config,
                quire_ci: quire_ci_binary(),
                server_url,
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                caches_held: Mutex::new(HashSet::new()),
            }),
        }
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
    /// queues it, with its commit's subject and author from git.
    pub async fn queue(&self, mut new: NewRun) -> Result<RunId, QueueError> {
        let pool = self.inner.db.clone();
        let bare = self.inner.root.repo_path(&new.repo);
        let queued = tokio::task::spawn_blocking(move || {
            new.commit = repos::commit_summary(&bare, &new.sha);
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
            self.stop(old, Stop::Superseded);
        }
        tracing::info!(run = %id, "run queued");
        self.inner.wake.notify_one();
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
    /// and fails when its process is gone.
    pub async fn cancel(&self, id: RunId) -> Result<(), String> {
        if self.stop(id, Stop::Canceled) {
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

    /// Asks a running quire-ci to stop (SIGTERM to its process group, SIGKILL
    /// after a grace period). False when the run has no process.
    fn stop(&self, id: RunId, why: Stop) -> bool {
        let group = {
            let mut running = self.inner.running.lock().expect("running lock");
            let Some(run) = running.get_mut(&id) else { return false };
            run.stop.get_or_insert(why);
            run.group
        };
        tracing::info!(run = %id, reason = ?why, "stopping quire-ci");
        let _ = kill_process_group(group, Signal::TERM);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            let still_there =
                inner.running.lock().expect("running lock").get(&id).map(|r| r.group) == Some(group);
            if still_there {
                let _ = kill_process_group(group, Signal::KILL);
            }
        });
        true
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
        self.inner.running.lock().expect("running lock").len()
    }

    /// Prepares and spawns one run. Failures before quire-ci runs fail the
    /// run (with the reason in its quire-ci.log) rather than the server.
    async fn start(&self, run: Run) {
        let (id, repo) = (run.id, run.repo);
        let run_dir = self.inner.root.run_dir(&repo, id);
        let workspace = run_dir.workspace();
        let token = token::mint();
        let prepared = {
            let bare = self.inner.root.repo_path(&repo);
            let (workspace, sha, hash) = (workspace.clone(), run.sha, token::hash(&token));
            self.db(move |conn| {
                std::fs::create_dir_all(&workspace)
                    .map_err(|e| format!("cannot create {}: {e}", workspace.display()))?;
                materialize(&bare, &sha, &workspace)?;
                runs::claim(conn, id, &hash, &workspace.display().to_string()).map_err(|e| e.to_string())
            })
            .await
        };
        match prepared {
            Ok(true) => {}
            Ok(false) => {
                // Superseded or canceled while the checkout was made.
                let _ = tokio::fs::remove_dir_all(&workspace).await;
                return;
            }
            Err(reason) => {
                tracing::error!(run = %id, %reason, "preparing the run failed");
                self.finish_without_process(id, &run_dir, &reason).await;
                return;
            }
        }
        let runs_dir = self.inner.root.runs_dir();
        let fs_size_mb =
            tokio::task::spawn_blocking(move || file_system_size_mb(&runs_dir)).await.unwrap_or(u64::MAX);
        let cache = self.take_cache(&repo, &run.ref_name, &run_dir).await;
        let settings = ExecutorSettings { token, fs_size_mb, cache_dir: cache.path.clone() };
        match self.spawn(id, &repo, &run_dir, &workspace, &settings) {
            Ok(child) => {
                let launcher = self.clone();
                tokio::spawn(async move {
                    // Should supervising panic, the ref's cache is not left
                    // marked held until a restart.
                    let mut held = HeldCache {
                        launcher: launcher.clone(),
                        key: (repo.clone(), cache.ref_name.clone()),
                        shared: cache.shared,
                    };
                    launcher.supervise(id, repo.clone(), run_dir, workspace, child).await;
                    // Given back below, in order; the guard must not free
                    // the ref again once a later run may hold it.
                    held.shared = false;
                    launcher.release_cache(&repo, cache).await;
                });
            }
            Err(reason) => {
                tracing::error!(run = %id, %reason, "spawning quire-ci failed");
                let _ = tokio::fs::remove_dir_all(&workspace).await;
                self.release_cache(&repo, cache).await;
                self.finish_without_process(id, &run_dir, &reason).await;
            }
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

    /// The sandbox and limits quire-ci applies to the run's commands.
    /// `fs_size_mb`: the size of the file system runs are written to.
    fn sandbox_arguments(&self, command: &mut tokio::process::Command, repo: &RepoName, fs_size_mb: u64) {
        let ci = &self.inner.config.ci;
        command.arg("--sandbox").arg(ci.sandbox.as_str());
        if ci.sandbox == SandboxMode::Bwrap {
            // Nothing of the data root (database, config, repositories, other
            // runs) is visible to commands.
            command.arg("--hide").arg(self.inner.root.path());
            if ci.network.contains(repo) {
                command.arg("--network");
            }
        }
        let limits = &ci.limits;
        command
            .arg("--jobs")
            .arg(ci.max_parallel_jobs.to_string())
            .arg("--max-log-mb")
            .arg(limits.max_log_mb.to_string())
            .arg("--max-commands")
            .arg(ci.max_commands.to_string())
            .arg("--max-tmp-mb")
            .arg(limits.max_tmp_mb.to_string())
            .arg("--lua-memory-mb")
            .arg(limits.lua_memory_mb.to_string())
            .arg("--min-free-disk-mb")
            .arg(limits.disk_floor_mb(fs_size_mb).to_string())
            .arg("--max-processes")
            .arg(limits.max_processes.to_string())
            .arg("--max-file-size-mb")
            .arg(limits.max_file_size_mb.to_string())
            .arg("--max-cpu-secs")
            .arg(limits.max_cpu_secs.to_string())
            .arg("--max-memory-mb")
            .arg(limits.max_memory_mb.to_string())
            .arg("--job-timeout")
            .arg(ci.timeout.as_secs().to_string());
    }

    fn spawn(
        &self,
        id: RunId,
        repo: &RepoName,
        run_dir: &RunDir,
        workspace: &Path,
        settings: &ExecutorSettings,
    ) -> Result<tokio::process::Child, String> {
        let log_path = run_dir.executor_log();
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(&self.inner.quire_ci);
        command
            .arg("run")
            .arg("--workspace")
            .arg(workspace)
            .arg("--events")
            .arg(run_dir.events())
            .arg("--out-dir")
            .arg(run_dir.path())
            .env("QUIRE__SERVER_URL", &self.inner.server_url)
            .env("QUIRE__RUN_TOKEN", &settings.token)
            .env_remove("QUIRE_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dsn) = &self.inner.config.sentry_dsn {
            command.env("QUIRE__SENTRY_DSN", dsn);
        }
        command.arg("--cache-dir").arg(&settings.cache_dir);
        self.sandbox_arguments(&mut command, repo, settings.fs_size_mb);
        // SAFETY: only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // If the server dies, its runs stop with it instead of running
                // on unsupervised (restart marks them orphaned). SIGTERM, so
                // that quire-ci stops its command on the way out.
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                Ok(())
            });
        }
        // Spawned and registered under the lock, so that a sweep for
        // leftovers never takes a new executor for one.
        let mut running = self.inner.running.lock().expect("running lock");
        let child =
            command.spawn().map_err(|e| format!("cannot start {}: {e}", self.inner.quire_ci.display()))?;
        let pid = child.id().ok_or("quire-ci exited before it could be tracked")?;
        let group = Pid::from_raw(pid as i32).ok_or("quire-ci has no pid")?;
        running.insert(id, Running { group, stop: None });
        tracing::info!(run = %id, pid, "quire-ci started");
        Ok(child)
    }

    /// Waits for quire-ci (killing it at the run timeout), then records the
    /// run: ingest, transition, cleanup.
    async fn supervise(
        &self,
        id: RunId,
        repo: RepoName,
        run_dir: RunDir,
        workspace: PathBuf,
        mut child: tokio::process::Child,
    ) {
        let timeout = self.inner.config.ci.timeout;
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.stop(id, Stop::Timeout);
                child.wait().await
            }
        };
        let (group, stop) = {
            let running = self.inner.running.lock().expect("running lock");
            let run = running.get(&id).expect("a supervised run is registered until it is recorded");
            (run.group, run.stop)
        };
        // Whatever is left of the process group goes now, and so does
        // anything that left the group and outlived quire-ci.
        let _ = kill_process_group(group, Signal::KILL);
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || sweep_leftovers(&inner)).await {
            Ok(0) => {}
            Ok(swept) => tracing::warn!(run = %id, swept, "killed processes the run left behind"),
            Err(e) => tracing::error!(run = %id, error = %e, "sweeping the run's leftovers failed"),
        }
        let exited_cleanly = matches!(&status, Ok(s) if s.success());
        if let Err(e) = &status {
            tracing::error!(run = %id, error = %e, "waiting for quire-ci failed");
        }

        // Nobody needs the checkout any more; it goes before the run is
        // recorded, so a finished run never has one.
        if let Err(e) = tokio::fs::remove_dir_all(&workspace).await {
            tracing::warn!(run = %id, error = %e, "cannot remove the workspace");
        }
        let events = run_dir.events();
        let recorded = self
            .db(move |conn| {
                let report = ingest::ingest_file(conn, id, &events, now_ms()).map_err(|e| e.to_string())?;
                if report.skipped_lines > 0 {
                    tracing::warn!(run = %id, skipped = report.skipped_lines, "events.jsonl had unreadable lines");
                }
                let ending = ending_for(stop, exited_cleanly, report.run_finished);
                runs::finish(conn, id, &ending).map_err(|e| e.to_string())?;
                Ok(ending)
            })
            .await;

        match recorded {
            Ok(Ending::Complete) => tracing::info!(run = %id, %repo, "run complete"),
            Ok(Ending::Failed(FailureKind::PipelineFailure)) => {
                tracing::info!(run = %id, %repo, "run failed: the pipeline failed")
            }
            Ok(Ending::Failed(kind)) => tracing::warn!(run = %id, %repo, %kind, "run failed"),
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
        self.inner.running.lock().expect("running lock").remove(&id);
        self.inner.wake.notify_one();
        self.apply_retention(repo).await;
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

    /// Fails a run that never got a process, leaving the reason where its
    /// logs would be.
    async fn finish_without_process(&self, id: RunId, run_dir: &RunDir, reason: &str) {
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

/// Kills the server's children that are neither a running executor nor
/// one of its own helpers (git and tar share the server's process group):
/// processes a run detached from its process group, re-parented to the
/// server (a subreaper) when their quire-ci ended.
fn sweep_leftovers(inner: &Inner) -> usize {
    let own_group = rustix::process::getpgid(None).ok();
    let running = inner.running.lock().expect("running lock");
    let executors: Vec<Pid> = running.values().map(|r| r.group).collect();
    quire_core::runtime::sweep_children(|pid| {
        executors.contains(&pid) || rustix::process::getpgid(Some(pid)).ok() == own_group
    })
}

/// The transition table of SPEC §6.4: how a run ends given why the server
/// stopped it (if it did), quire-ci's exit status and its last event.
fn ending_for(stop: Option<Stop>, exited_cleanly: bool, run_finished: Option<RunOutcome>) -> Ending {
    match (stop, exited_cleanly, run_finished) {
        (Some(Stop::Superseded), _, _) => Ending::Superseded,
        (Some(Stop::Canceled), _, _) => Ending::Failed(FailureKind::Canceled),
        (Some(Stop::Timeout), _, _) => Ending::Failed(FailureKind::Timeout),
        (None, true, Some(RunOutcome::Success)) => Ending::Complete,
        (None, true, Some(RunOutcome::PipelineFailure)) => Ending::Failed(FailureKind::PipelineFailure),
        (None, _, _) => Ending::Failed(FailureKind::ProcessCrashed),
    }
}

/// `git archive <sha> | tar -x` into the workspace.
fn materialize(bare: &Path, sha: &str, workspace: &Path) -> Result<(), String> {
    use std::process::Command;
    let mut archive = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["archive", "--format=tar", sha])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git archive: {e}"))?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(workspace)
        .stdin(archive.stdout.take().expect("piped"))
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let archived = archive.wait_with_output().map_err(|e| format!("git archive failed: {e}"))?;
    if !archived.status.success() {
        return Err(format!(
            "git archive of {sha} failed: {}",
            String::from_utf8_lossy(&archived.stderr).trim()
        ));
    }
    if !tar.status.success() {
        return Err(format!("tar failed: {}", String::from_utf8_lossy(&tar.stderr).trim()));
    }
    Ok(())
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
        assert_eq!(ending_for(Some(Stop::Timeout), false, None), Ending::Failed(Timeout));
        assert_eq!(ending_for(Some(Stop::Canceled), true, ok), Ending::Failed(Canceled));
        assert_eq!(ending_for(Some(Stop::Superseded), false, None), Ending::Superseded);
    }
}
