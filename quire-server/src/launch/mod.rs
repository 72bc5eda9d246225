//! Launchers: how a run's executor (`quire-ci run` in server mode) is
//! started, watched and stopped on some machine. The runner (`launcher`)
//! knows only the [`Launch`] trait; each implementation is one module:
//! [`process`] (a confined child of the server) and [`slurm`] (a batch job
//! on a Slurm cluster). A new engine — Kubernetes, Nomad — is one more
//! module and one more arm where the runner picks its launcher
//! (`launcher::launcher_for`).
//!
//! A launcher does not carry the run's data: the executor fetches its
//! workspace and sends its events and logs over HTTP (`executor_api`),
//! wherever it runs. A launcher only hands it the server's address and
//! the run token, says whether it is still there, and ends it.

pub mod process;
pub mod slurm;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use quire_core::id::RunId;

/// What an executor is started with.
pub struct ExecutorSpec {
    pub run: RunId,
    /// The run token; it must not appear on any command line.
    pub token: String,
    /// Where the executor reaches the server.
    pub server_url: String,
    /// The arguments after `quire-ci run`: sandbox and limits.
    pub args: Vec<OsString>,
    /// A directory of the server's machine the executor uses as its cache,
    /// for launchers whose executors share the machine ([`Launch::local_cache`]).
    pub cache_dir: Option<PathBuf>,
    pub sentry_dsn: Option<String>,
}

/// What the engine says of an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Waiting for a machine; it cannot have been heard from yet.
    Queued,
    Running,
    /// Gone. `clean`: it exited with status 0.
    Ended {
        clean: bool,
        how: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the executor: {0}")]
    Start(String),
    /// The engine cannot be asked now (a controller down, a timeout).
    #[error("cannot ask {engine} about {handle}: {reason}")]
    Unreachable { engine: &'static str, handle: String, reason: String },
}

/// One way of running executors. Handles are what [`Launch::start`]
/// returns (`process:<pid>`, `slurm:<job id>`); they are stored with the
/// run so that a restarted server can find its executors again. Every
/// method may block for as long as asking the engine takes.
pub trait Launch: Send + Sync {
    /// The handle's prefix, e.g. `slurm`.
    fn kind(&self) -> &'static str;
    fn start(&self, spec: &ExecutorSpec) -> Result<String, LaunchError>;
    fn status(&self, handle: &str) -> Result<Status, LaunchError>;
    /// Asks the executor to end now (it gets a moment to stop its commands).
    fn terminate(&self, handle: &str);
    /// Ends it without a moment's grace.
    fn kill(&self, handle: &str);
    /// After the executor ended: whatever it left on this machine goes.
    /// Returns how many stray processes were killed.
    fn clean_up(&self, run: RunId, handle: &str) -> usize;
    /// Whether executors run on this machine and can use a cache directory
    /// of the data root.
    fn local_cache(&self) -> bool;
    /// Whether an executor starts within moments of [`Launch::start`] (a
    /// local process; not a scheduler's job, which may wait in its queue):
    /// the runner then starts the workspace archive alongside it.
    fn starts_promptly(&self) -> bool;
    /// How often the runner asks [`Launch::status`].
    fn poll_interval(&self) -> Duration;
    /// How the launcher presents itself in the server log.
    fn describe(&self) -> String;
}

/// The number in a handle of the given kind.
pub(crate) fn handle_number(handle: &str, kind: &str) -> Option<u64> {
    handle.strip_prefix(kind)?.strip_prefix(':')?.parse().ok()
}
