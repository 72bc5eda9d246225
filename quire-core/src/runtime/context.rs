//! What a run is given and what it tells: the context (workspace, run
//! directory, limits, sandbox, push facts, where secrets come from), the
//! sink its events and notes go to, the notes for the person watching, and
//! why a run can fail.
//! Shared by the runner and the job threads, so it depends on neither.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::limits::Limits;
use super::sandbox::Sandbox;
use super::schedule::UnknownJob;
use crate::event::Event;
use crate::id::JobId;
use crate::push::PushFacts;
use crate::run_dir::RunDir;

/// Where a run's secrets come from. Jobs run on their own threads, so the
/// source is shared between them.
pub trait SecretSource: Send + Sync {
    /// The value of secret `name`; [`SecretError::Undeclared`] when the
    /// operator did not declare it (or not for this repository).
    fn secret(&self, name: &str) -> Result<String, SecretError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}` is not declared{hint}")]
    Undeclared { name: String, hint: String },
    #[error("secret `{name}` could not be fetched: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Human-facing details of a run, beside the events. Text in them is
/// already redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A command exited non-zero (or never started); its log has the output.
    CommandFailed { job: JobId, exit_code: i32, log: PathBuf },
    /// A job failed, with the reason (and its `.fnl` line).
    JobFailed { job: JobId, reason: String },
    /// A job was skipped because an input failed or was skipped.
    JobSkipped { job: JobId, because: JobId },
    /// A run-fn called `print`.
    Printed { job: JobId, text: String },
}

/// Everything a run needs besides the pipeline.
pub struct RunContext {
    /// The checkout, canonicalized.
    pub workspace: PathBuf,
    /// Where logs go (`jobs/<job-id>/sh-<n>.log`, `job.log`).
    pub run_dir: RunDir,
    /// Run only these jobs and their ancestors; empty means all.
    pub only: Vec<JobId>,
    /// Start the stream with a `pipeline` event (server runs, whose pages
    /// draw the job graph from it).
    pub announce_pipeline: bool,
    /// How many jobs may run at once (at least 1).
    pub parallel: usize,
    /// How long one job (its Lua code and its commands) may take.
    pub job_timeout: Duration,
    /// The environment commands start from, without quire's own variables.
    pub base_env: Vec<(OsString, OsString)>,
    pub sandbox: Sandbox,
    pub limits: Limits,
    /// Bytes of output each command's log keeps.
    pub log_cap: u64,
    /// Commands the whole run may start; past it `sh` fails.
    pub max_commands: u64,
    /// Commands started so far, by every job.
    pub commands_started: std::sync::atomic::AtomicU64,
    /// A command is killed when the workspace's file system has less free
    /// than this, in bytes.
    pub disk_floor: Option<u64>,
    pub push: PushFacts,
    pub secrets: Arc<dyn SecretSource>,
}

/// Why a run could not reach an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot write the event stream: {0}")]
    Events(#[source] io::Error),
    #[error("cannot write logs under {}: {source}", path.display())]
    Logs { path: PathBuf, source: io::Error },
    #[error(transparent)]
    UnknownJob(#[from] UnknownJob),
    #[error("cannot start a thread for job `{job}`: {source}")]
    Thread { job: JobId, source: io::Error },
}

/// Receives what a run produces. Job threads write to it (one at a time),
/// so it must be `Send`.
pub trait Sink: Send {
    /// Records one event of the stream. An error ends the run: a run whose
    /// events cannot be recorded is lost anyway.
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// Tells a watching person something the events do not carry.
    fn note(&mut self, note: &Note);
}
