//! Running a validated pipeline: jobs in order, each run-fn called with its
//! runtime table (`sh`, `jobs`, `secret`), events reported as they happen,
//! failures turning dependents into skips. Where events go and how progress
//! is shown is the caller's (`Sink`); where push facts and secrets come from
//! is the caller's too (`RunContext`), so local and server runs share this.

mod process;
mod program;
mod redact;
mod sandbox;
mod sh;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};

pub use process::kill_running_command;
pub use sandbox::{find_bwrap, Bwrap, Limits, Sandbox};

use crate::clock::now_ms;
use crate::cri::{self, Stream};
use crate::event::{Event, EventKind, JobOutcome, RunOutcome};
use crate::id::JobId;
use crate::lua::execute::set_deadline;
use crate::pipeline::{Input, Pipeline, PUSH_SOURCE};
use crate::push::PushFacts;
use crate::run_dir::{LogFile, RunDir};
use redact::Redactor;

/// Where a run's secrets come from.
pub trait SecretSource {
    /// The value of secret `name`; [`SecretError::Undeclared`] when the
    /// operator did not declare it.
    fn secret(&self, name: &str) -> Result<String, SecretError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}` is not declared{hint}")]
    Undeclared { name: String, hint: String },
    #[error("secret `{name}` could not be fetched: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Receives what a run produces.
pub trait Sink {
    /// Records one event of the stream. An error ends the run: a run whose
    /// events cannot be recorded is lost anyway.
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// Tells a watching person something the events do not carry.
    fn note(&mut self, note: &Note);
}

/// Human-facing details of a run, beside the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A command exited non-zero (or never started); its log has the output.
    CommandFailed { job: JobId, exit_code: i32, log: PathBuf },
    /// A job failed, with the reason (and its `.fnl` line).
    JobFailed { job: JobId, reason: String },
    /// A job was skipped because an input failed or was skipped.
    JobSkipped { job: JobId, because: JobId },
}

/// Everything a run needs besides the pipeline.
pub struct RunContext<'a> {
    /// The checkout, canonicalized.
    pub workspace: PathBuf,
    /// Where logs go (`jobs/<job-id>/sh-<n>.log`, `job.log`).
    pub run_dir: RunDir,
    /// Run only these jobs and their ancestors; empty means all.
    pub only: Vec<JobId>,
    /// How long one job (its Lua code and its commands) may take.
    pub job_timeout: Duration,
    /// The environment commands start from, without quire's own variables.
    pub base_env: Vec<(OsString, OsString)>,
    pub sandbox: Sandbox,
    pub limits: Limits,
    pub push: PushFacts,
    pub secrets: &'a dyn SecretSource,
}

/// Why a run could not reach an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot write the event stream: {0}")]
    Events(#[source] io::Error),
    #[error("cannot write logs under {}: {source}", path.display())]
    Logs { path: PathBuf, source: io::Error },
    #[error("unknown job `{0}` given to --job")]
    UnknownJob(String),
    #[error("cannot prepare the workspace {} for the sandbox: {source}", path.display())]
    Sandbox { path: PathBuf, source: io::Error },
    #[error("internal Lua error: {0}")]
    Lua(#[from] mlua::Error),
}

/// The variables commands never see: quire's own (`QUIRE__*`, which holds
/// the run token and server URL) and local secrets (`QUIRE_SECRET_*`).
pub fn is_private_variable(name: &str) -> bool {
    name.starts_with("QUIRE__") || name.starts_with("QUIRE_SECRET_")
}

/// Runs the pipeline to its outcome. Always ends with a `run_finished`
/// event unless the sink fails or logs cannot be written.
pub fn execute(pipeline: &Pipeline, ctx: &RunContext, sink: &mut dyn Sink) -> Result<RunOutcome, RunError> {
    let jobs = pipeline.jobs();
    let selected = selection(pipeline, &ctx.only)?;
    if let Sandbox::Bwrap(bwrap) = &ctx.sandbox {
        bwrap
            .prepare_workspace(&ctx.workspace)
            .map_err(|source| RunError::Sandbox { path: ctx.workspace.clone(), source })?;
    }
    let redactor = Redactor::default();
    let mut outputs: HashMap<JobId, serde_json::Value> = HashMap::new();
    let mut not_complete: HashSet<JobId> = HashSet::new();
    let mut outcome = RunOutcome::Success;

    for index in pipeline.execution_order() {
        if !selected[index] {
            continue;
        }
        let job = &jobs[index];
        let failed_input = job.inputs.iter().find_map(|input| match input {
            Input::Job(id) if not_complete.contains(id) => Some(id.clone()),
            _ => None,
        });
        if let Some(because) = failed_input {
            emit(sink, EventKind::JobSkipped { job_id: job.id.clone() })?;
            sink.note(&Note::JobSkipped { job: job.id.clone(), because });
            not_complete.insert(job.id.clone());
            outcome = RunOutcome::PipelineFailure;
            continue;
        }
        emit(sink, EventKind::JobStarted { job_id: job.id.clone() })?;
        let run = JobRun {
            pipeline,
            ctx,
            index,
            ancestors: ancestors(pipeline, index),
            outputs: &outputs,
            redactor: &redactor,
            sink: RefCell::new(&mut *sink),
            commands: RefCell::new(0),
            fatal: RefCell::new(None),
            deadline: Instant::now() + ctx.job_timeout,
        };
        let result = run.call();
        if let Some(fatal) = run.fatal.into_inner() {
            return Err(fatal);
        }
        let job_outcome = match result {
            Ok(value) => {
                outputs.insert(job.id.clone(), value);
                JobOutcome::Complete
            }
            Err(reason) => {
                let reason = redactor.redact(&reason);
                append_job_log(&ctx.run_dir, &job.id, &reason)?;
                sink.note(&Note::JobFailed { job: job.id.clone(), reason });
                not_complete.insert(job.id.clone());
                outcome = RunOutcome::PipelineFailure;
                JobOutcome::Failed
            }
        };
        emit(sink, EventKind::JobFinished { job_id: job.id.clone(), outcome: job_outcome })?;
    }
    emit(sink, EventKind::RunFinished { outcome })?;
    Ok(outcome)
}

fn emit(sink: &mut dyn Sink, kind: EventKind) -> Result<(), RunError> {
    sink.event(&Event::new(now_ms(), kind)).map_err(RunError::Events)
}

/// Which jobs run: all, or those named and their ancestors.
fn selection(pipeline: &Pipeline, only: &[JobId]) -> Result<Vec<bool>, RunError> {
    let jobs = pipeline.jobs();
    if only.is_empty() {
        return Ok(vec![true; jobs.len()]);
    }
    let mut selected = vec![false; jobs.len()];
    for id in only {
        let index =
            jobs.iter().position(|j| &j.id == id).ok_or_else(|| RunError::UnknownJob(id.to_string()))?;
        selected[index] = true;
        for ancestor in ancestors(pipeline, index) {
            let i = jobs.iter().position(|j| j.id == ancestor).expect("ancestors are jobs");
            selected[i] = true;
        }
    }
    Ok(selected)
}

/// The jobs `index` depends on, transitively.
fn ancestors(pipeline: &Pipeline, index: usize) -> HashSet<JobId> {
    let jobs = pipeline.jobs();
    let mut found = HashSet::new();
    let mut stack = vec![index];
    while let Some(at) = stack.pop() {
        for input in &jobs[at].inputs {
            if let Input::Job(id) = input {
                if found.insert(id.clone()) {
                    stack.push(jobs.iter().position(|j| &j.id == id).expect("validated input"));
                }
            }
        }
    }
    found
}

/// A job-level message (why the job failed) goes to `job.log` beside the
/// command logs, in CRI format, so every reader of logs finds it.
fn append_job_log(run_dir: &RunDir, job: &JobId, message: &str) -> Result<(), RunError> {
    let path = run_dir.log(job, LogFile::Job);
    let write = || -> io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("job.log has a parent"))?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut log = cri::Writer::new(file);
        for line in message.lines() {
            log.write_line(Stream::Stderr, line)?;
        }
        Ok(())
    };
    write().map_err(|source| RunError::Logs { path: path.clone(), source })
}

/// One job while it runs: what its runtime table can reach.
struct JobRun<'a, 's> {
    pipeline: &'a Pipeline,
    ctx: &'a RunContext<'a>,
    index: usize,
    ancestors: HashSet<JobId>,
    outputs: &'a HashMap<JobId, serde_json::Value>,
    redactor: &'a Redactor,
    sink: RefCell<&'s mut dyn Sink>,
    /// `sh` calls so far, numbering the logs.
    commands: RefCell<u32>,
    /// Set when writing events or logs failed; the run stops.
    fatal: RefCell<Option<RunError>>,
    deadline: Instant,
}

/// A job's result: its outputs, or why it failed.
type JobResult = Result<serde_json::Value, String>;

impl JobRun<'_, '_> {
    fn job_id(&self) -> &JobId {
        &self.pipeline.jobs()[self.index].id
    }

    /// Calls the run-fn with a runtime table that stops working when the
    /// job ends (the functions belong to a scope).
    fn call(&self) -> JobResult {
        let lua = self.pipeline.lua();
        let run_fn = self.pipeline.run_fn(self.index);
        set_deadline(lua, self.deadline, format!("job `{}`", self.job_id()));
        let result = lua.scope(|scope| {
            let rt = lua.create_table()?;
            rt.set(
                "sh",
                scope.create_function(|lua, (cmd, opts): (Value, Option<Table>)| self.sh(lua, cmd, opts))?,
            )?;
            rt.set("jobs", scope.create_function(|lua, name: Value| self.jobs(lua, name))?)?;
            rt.set("secret", scope.create_function(|lua, name: Value| self.secret(lua, name))?)?;
            run_fn.call::<Value>(rt).and_then(|value| outputs_of(lua, value))
        });
        lua.remove_hook();
        result.map_err(|e| {
            let chunk = self.pipeline.chunk();
            let failure = chunk.explain(&e);
            match failure.line {
                Some(line) => format!("{}:{line}: {}", chunk.name, failure.message),
                None => failure.message,
            }
        })
    }

    fn sh(&self, lua: &Lua, cmd: Value, opts: Option<Table>) -> mlua::Result<Table> {
        let request = sh::ShRequest::from_lua(cmd, opts).map_err(mlua::Error::runtime)?;
        let cwd =
            sh::resolve_cwd(&self.ctx.workspace, request.cwd.as_deref()).map_err(mlua::Error::runtime)?;
        let display = self.redactor.redact(&request.program.display());
        let number = {
            let mut n = self.commands.borrow_mut();
            *n += 1;
            *n
        };
        let dir = self.ctx.run_dir.job_dir(self.job_id());
        let log_path = self.ctx.run_dir.log(self.job_id(), LogFile::Command(number));
        let deadline = match request.timeout {
            Some(t) => (Instant::now() + t).min(self.deadline),
            None => self.deadline,
        };
        self.event(EventKind::ShStarted { job_id: self.job_id().clone(), cmd: display.clone() })?;
        let execution = sh::Execution {
            request: &request,
            workspace: &self.ctx.workspace,
            cwd,
            sandbox: &self.ctx.sandbox,
            limits: &self.ctx.limits,
            base_env: &self.ctx.base_env,
            deadline: Some(deadline),
            log_path: &log_path,
            redactor: self.redactor,
        };
        let outcome = std::fs::create_dir_all(&dir)
            .and_then(|_| execution.run())
            .map_err(|source| self.fail(RunError::Logs { path: log_path.clone(), source }))?;
        self.event(EventKind::ShFinished { job_id: self.job_id().clone(), exit_code: outcome.exit_code })?;

        let fails_job = outcome.timed_out || (request.check && outcome.exit_code != 0);
        if fails_job {
            self.sink.borrow_mut().note(&Note::CommandFailed {
                job: self.job_id().clone(),
                exit_code: outcome.exit_code,
                log: log_path.clone(),
            });
        }
        if outcome.timed_out {
            return Err(mlua::Error::runtime(format!(
                "command timed out (killed after {}): {display}",
                execution.deadline_description()
            )));
        }
        if request.check {
            if let Some(message) = &outcome.spawn_error {
                return Err(mlua::Error::runtime(message.clone()));
            }
            if outcome.exit_code != 0 {
                return Err(mlua::Error::runtime(format!(
                    "command failed with exit code {}: {display}",
                    outcome.exit_code
                )));
            }
        }
        sh::result_table(lua, &outcome, &display, &log_path)
    }

    fn jobs(&self, lua: &Lua, name: Value) -> mlua::Result<Value> {
        let name = name_argument("jobs", "a job name", name)?;
        let value = if name == PUSH_SOURCE {
            self.ctx.push.outputs()
        } else {
            let known = self.ancestors.iter().find(|id| id.as_str() == name).ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "jobs: `{name}` is not an input of job `{}` (directly or through other jobs); \
                     add it to the job's inputs to read its outputs",
                    self.job_id()
                ))
            })?;
            self.outputs.get(known).cloned().unwrap_or(serde_json::Value::Null)
        };
        to_lua(lua, &value)
    }

    fn secret(&self, lua: &Lua, name: Value) -> mlua::Result<Value> {
        let name = name_argument("secret", "a secret name", name)?;
        let value = self.ctx.secrets.secret(&name).map_err(|e| mlua::Error::runtime(e.to_string()))?;
        self.redactor.add(&value);
        Ok(Value::String(lua.create_string(&value)?))
    }

    fn event(&self, kind: EventKind) -> mlua::Result<()> {
        let result = self.sink.borrow_mut().event(&Event::new(now_ms(), kind));
        result.map_err(|e| self.fail(RunError::Events(e)))
    }

    /// Records a fatal error and returns a Lua error that unwinds the job.
    fn fail(&self, error: RunError) -> mlua::Error {
        let message = error.to_string();
        self.fatal.borrow_mut().get_or_insert(error);
        mlua::Error::runtime(message)
    }
}

/// The one string argument of a runtime function, or an error saying what
/// `function` expected.
fn name_argument(function: &str, expected: &str, value: Value) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(mlua::Error::runtime(format!("{function}: expected {expected}, got {}", other.type_name()))),
    }
}

/// A run-fn's return value as job outputs: a table of JSON-shaped values,
/// or nil for none.
fn outputs_of(lua: &Lua, value: Value) -> Result<serde_json::Value, mlua::Error> {
    use mlua::LuaSerdeExt;
    match value {
        Value::Nil => Ok(serde_json::Value::Object(Default::default())),
        Value::Table(_) => lua.from_value::<serde_json::Value>(value).map_err(|e| {
            mlua::Error::runtime(format!(
                "the job's outputs must be JSON-shaped (tables, strings, numbers, booleans): {e}"
            ))
        }),
        other => Err(mlua::Error::runtime(format!(
            "a run-fn must return a table of outputs or nil, got {}",
            other.type_name()
        ))),
    }
}

fn to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    use mlua::{LuaSerdeExt, SerializeOptions};
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
        .set_array_metatable(false);
    match value {
        serde_json::Value::Null => Ok(Value::Table(lua.create_table()?)),
        other => lua.to_value_with(other, options),
    }
}
