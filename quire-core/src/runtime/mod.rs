//! Running a validated pipeline: each job on a thread of its own (`job`),
//! as many at once as the run allows, in the order `schedule` decides;
//! events reported as they happen, failures turning dependents into skips.
//! Where events go and how progress is shown is the caller's (`Sink`);
//! where push facts and secrets come from is the caller's too
//! (`RunContext`), so local and server runs share this.
//!
//! Events and notes go through one `Recorder`: job threads write their own
//! (each job's stay in order), the runner writes the jobs' starts, ends
//! and skips and, last, `run_finished`; job threads tell the runner only
//! how they ended, over a channel. A job whose Lua code is stuck in one
//! long library call (where no deadline can reach it) is given up on at its
//! deadline plus a grace period; its thread ends with the process.

mod context;
mod jail;
mod job;
mod limits;
mod privileges;
mod process;
mod program;
mod reaper;
mod recorder;
mod redact;
mod sandbox;
mod schedule;
mod sh;

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use context::{Note, RunContext, RunError, SecretError, SecretSource, Sink};
pub use limits::Limits;
pub use privileges::{become_unprivileged, PrivilegeError};
pub use reaper::{become_subreaper, stop_everything, sweep_children, sweep_orphans};
pub use sandbox::{
    chown_tree, closed_ancestor, dirs_between, find_bwrap, find_system_program, Bwrap, RunAs, Sandbox,
    CACHE_VARIABLE, HELPER_COMMAND, UNPRIVILEGED_ID,
};
pub use schedule::UnknownJob;

use crate::clock::format_duration_ms;
use crate::cri::{self, Stream};
use crate::event::{DeclaredJob, EventKind, JobOutcome, RunOutcome};
use crate::id::JobId;
use crate::pipeline::{Input, Pipeline};
use crate::run_dir::{LogFile, RunDir};
use job::{JobStart, Report};
use recorder::Recorder;
use redact::Redactor;
use schedule::{Action, Schedule};

/// How long past its deadline a job's Lua may stay unresponsive (inside a
/// single C call) before the runner gives up on it.
const STUCK_GRACE: Duration = Duration::from_secs(5);

/// `quire-ci sandbox-helper`: serves the commands of one job's sandbox
/// from inside it. See `jail`.
pub fn serve_sandbox_helper() -> io::Result<()> {
    jail::helper::serve()
}

/// The variables commands never see: quire's own (`QUIRE__*`, which holds
/// the run token and server URL) and local secrets (`QUIRE_SECRET_*`).
pub fn is_private_variable(name: &str) -> bool {
    name.starts_with("QUIRE__") || name.starts_with("QUIRE_SECRET_")
}

/// A job the runner is waiting for.
struct Running {
    /// When to give up on it if it has not reported its end.
    give_up_at: Instant,
}

/// An input as the pipeline wrote it.
fn input_name(input: &Input) -> String {
    match input {
        Input::Job(id) => id.to_string(),
        source => source.source().map_or_else(String::new, |s| s.name().to_string()),
    }
}

/// Runs the pipeline to its outcome. Always ends with a `run_finished`
/// event unless the sink fails or logs cannot be written.
pub fn execute(
    pipeline: Arc<Pipeline>,
    ctx: Arc<RunContext>,
    sink: Arc<Mutex<dyn Sink>>,
) -> Result<RunOutcome, RunError> {
    let sink = Arc::new(Recorder::new(sink, pipeline.jobs().len()));
    let mut schedule = Schedule::new(&pipeline, &ctx.only, ctx.push.source)?;
    if ctx.announce_pipeline {
        sink.emit(EventKind::pipeline(pipeline.jobs().iter().map(|job| DeclaredJob {
            job_id: job.id.clone(),
            inputs: job.inputs.iter().map(input_name).collect(),
        })))?;
    }
    let redactor = Arc::new(Redactor::default());
    let (reports, received) = mpsc::channel::<(usize, Report)>();
    let mut outputs: HashMap<usize, serde_json::Value> = HashMap::new();
    let mut running: HashMap<usize, Running> = HashMap::new();
    let mut outcome = RunOutcome::Success;
    let jobs = pipeline.jobs();

    loop {
        for action in schedule.next(ctx.parallel.max(1).saturating_sub(running.len())) {
            match action {
                Action::Skip(index, because) => {
                    let job = jobs[index].id.clone();
                    sink.emit(EventKind::JobSkipped { job_id: job.clone() })?;
                    sink.note(&Note::JobSkipped { job, because });
                    outcome = RunOutcome::PipelineFailure;
                }
                Action::Start(index) => {
                    let id = jobs[index].id.clone();
                    sink.emit(EventKind::JobStarted { job_id: id.clone() })?;
                    let deadline = Instant::now() + ctx.job_timeout;
                    let ancestors = schedule
                        .ancestors(index)
                        .into_iter()
                        .map(|i| (jobs[i].id.clone(), outputs.get(&i).cloned().unwrap_or_default()))
                        .collect();
                    let start = JobStart { index, id: id.clone(), deadline, ancestors };
                    job::spawn(
                        pipeline.clone(),
                        ctx.clone(),
                        redactor.clone(),
                        sink.clone(),
                        start,
                        reports.clone(),
                    )
                    .map_err(|source| RunError::Thread { job: id, source })?;
                    running.insert(index, Running { give_up_at: deadline + STUCK_GRACE });
                }
            }
        }
        let Some(give_up_at) = running.values().map(|r| r.give_up_at).min() else { break };
        let (index, report) = match received
            .recv_timeout(give_up_at.saturating_duration_since(Instant::now()))
        {
            Ok(received) => received,
            Err(RecvTimeoutError::Timeout) => {
                let stuck: Vec<usize> =
                    running.iter().filter(|(_, r)| r.give_up_at <= Instant::now()).map(|(&i, _)| i).collect();
                for index in stuck {
                    running.remove(&index);
                    let reason = format!(
                        "job `{}` did not finish in time (its timeout is {}) and its Lua code could not be \
                         stopped: it is stuck inside a single library call (such as a pathological pattern \
                         match); it was abandoned",
                        jobs[index].id,
                        format_duration_ms(ctx.job_timeout.as_millis() as i64)
                    );
                    fail_job(&sink, &ctx, index, &jobs[index].id, &reason)?;
                    schedule.finished(index, false);
                    outcome = RunOutcome::PipelineFailure;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => unreachable!("the runner holds a sender"),
        };
        if !running.contains_key(&index) {
            // A job given up on reports after all: too late.
            continue;
        }
        let id = &jobs[index].id;
        match report {
            Report::Fatal(error) => return Err(error),
            Report::Done(Ok(value)) => {
                running.remove(&index);
                outputs.insert(index, value);
                schedule.finished(index, true);
                sink.close_job(
                    index,
                    EventKind::JobFinished { job_id: id.clone(), outcome: JobOutcome::Complete },
                )?;
            }
            Report::Done(Err(reason)) => {
                running.remove(&index);
                fail_job(&sink, &ctx, index, id, &redactor.redact(&reason))?;
                schedule.finished(index, false);
                outcome = RunOutcome::PipelineFailure;
            }
        }
    }
    sink.emit(EventKind::RunFinished { outcome })?;
    Ok(outcome)
}

/// Records a failed job: its reason in `job.log`, for the person watching,
/// and its `job_finished`.
fn fail_job(
    sink: &Recorder,
    ctx: &RunContext,
    index: usize,
    job: &JobId,
    reason: &str,
) -> Result<(), RunError> {
    append_job_log(&ctx.run_dir, job, reason)?;
    sink.job_note(index, &Note::JobFailed { job: job.clone(), reason: reason.to_string() });
    sink.close_job(index, EventKind::JobFinished { job_id: job.clone(), outcome: JobOutcome::Failed })
}

/// A job-level message (why the job failed) goes to `job.log` beside the
/// command logs, in CRI format, so every reader of logs finds it.
fn append_job_log(run_dir: &RunDir, job: &JobId, message: &str) -> Result<(), RunError> {
    let path = run_dir.log(job, LogFile::Job);
    let write = || -> io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("job.log has a parent"))?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut log = cri::Writer::new(file);
        log.write_line(Stream::Stderr, message, &cri::NoMask)
    };
    write().map_err(|source| RunError::Logs { path: path.clone(), source })
}
