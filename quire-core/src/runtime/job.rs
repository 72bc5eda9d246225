//! One job, on a thread of its own: a fresh execute VM with the pipeline
//! evaluated in it, the run-fn called with its runtime table (`sh`,
//! `jobs`, `secret`), and everything it does reported to the runner over a
//! channel. A job's busy loop, Lua error, memory bomb or stuck library
//! call stays in its own VM and thread; the runner goes on with the
//! others.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use mlua::{Lua, Table, Value};

use super::context::{Note, RunContext, RunError};
use super::jail::Jail;
use super::recorder::Recorder;
use super::redact::Redactor;
use super::sh;
use crate::clock::format_duration_ms;
use crate::event::shown_command;
use crate::event::EventKind;
use crate::id::JobId;
use crate::lua::limits;
use crate::pipeline::{Instance, Pipeline, PUSH_SOURCE, SCHEDULE_SOURCE};
use crate::run_dir::LogFile;

/// How a job thread ended, for the runner. Its events and notes went to
/// the recorder as they happened.
#[derive(Debug)]
pub enum Report {
    /// The job's outputs, or why it failed.
    Done(Result<serde_json::Value, String>),
    /// Events or logs could not be written: the run cannot go on.
    Fatal(RunError),
}

/// Everything one job needs to start.
pub struct JobStart {
    pub index: usize,
    pub id: JobId,
    pub deadline: Instant,
    /// The outputs of every job this one depends on, transitively.
    pub ancestors: HashMap<JobId, serde_json::Value>,
}

/// Starts the job on its own thread.
pub fn spawn(
    pipeline: Arc<Pipeline>,
    ctx: Arc<RunContext>,
    redactor: Arc<Redactor>,
    recorder: Arc<Recorder>,
    start: JobStart,
    reports: Sender<(usize, Report)>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(format!("job {}", start.id)).stack_size(16 * 1024 * 1024).spawn(
        move || {
            let index = start.index;
            let run = JobRun {
                pipeline: &pipeline,
                ctx: &ctx,
                redactor: &redactor,
                recorder: &recorder,
                start,
                commands: Cell::new(0),
                fatal: RefCell::new(None),
                jail: RefCell::new(None),
                printed: Cell::new(0),
            };
            let result = run.run();
            let last = match run.fatal.into_inner() {
                Some(fatal) => Report::Fatal(fatal),
                None => Report::Done(result),
            };
            // The runner may have given up on this job; then nobody listens.
            let _ = reports.send((index, last));
        },
    )?;
    Ok(())
}

/// One job while it runs: what its runtime table can reach.
struct JobRun<'a> {
    pipeline: &'a Pipeline,
    ctx: &'a RunContext,
    redactor: &'a Redactor,
    recorder: &'a Recorder,
    start: JobStart,
    /// `sh` calls so far, numbering the logs.
    commands: Cell<u32>,
    /// Set when writing events or logs failed; the run stops.
    fatal: RefCell<Option<RunError>>,
    /// The job's sandbox, once its first command under bubblewrap ran.
    jail: RefCell<Option<Jail>>,
    /// Bytes the job's `print`s have shown so far.
    printed: Cell<usize>,
}

impl JobRun<'_> {
    fn job_id(&self) -> &JobId {
        &self.start.id
    }

    fn run(&self) -> Result<serde_json::Value, String> {
        let instance = self.pipeline.instantiate()?;
        self.call(&instance)
    }

    /// Calls the run-fn with a runtime table that stops working when the
    /// job ends (the functions belong to a scope), under the job's
    /// deadline.
    fn call(&self, instance: &Instance) -> Result<serde_json::Value, String> {
        let lua = instance.lua();
        let run_fn = instance.run_fn(self.start.index);
        let result = lua.scope(|scope| {
            lua.globals()
                .set("print", scope.create_function(|_, args: mlua::Variadic<Value>| self.print(&args))?)?;
            let rt = lua.create_table()?;
            rt.set(
                "sh",
                scope.create_function(|lua, (cmd, opts): (Value, Option<Table>)| self.sh(lua, cmd, opts))?,
            )?;
            rt.set("jobs", scope.create_function(|lua, name: Value| self.jobs(lua, name))?)?;
            rt.set("secret", scope.create_function(|lua, name: Value| self.secret(lua, name))?)?;
            limits::arm(lua, self.start.deadline)?;
            let returned = run_fn.call::<Value>(rt).and_then(|value| outputs_of(lua, value));
            limits::disarm();
            // A run-fn that swallowed the deadline (resuming a coroutine
            // that hit it, say) and returned late still took too long.
            if returned.is_ok() && Instant::now() >= self.start.deadline {
                return Err(mlua::Error::runtime(limits::DEADLINE_MESSAGE));
            }
            returned
        });
        result.map_err(|e| self.explain(instance, &e))
    }

    /// Why the job failed, for `job.log` and the person watching.
    fn explain(&self, instance: &Instance, error: &mlua::Error) -> String {
        let chunk = instance.chunk();
        let failure = chunk.explain(error);
        let at = failure.line.map(|line| format!("{}:{line}", chunk.name));
        let timed_out = limits::is_deadline(error) || Instant::now() >= self.start.deadline;
        let message = if timed_out {
            format!(
                "job `{}` did not finish in time (its timeout is {})",
                self.job_id(),
                format_duration_ms(self.ctx.job_timeout.as_millis() as i64)
            )
        } else if limits::is_out_of_memory(error) {
            format!(
                "job `{}` ran out of Lua memory (the limit is {} MiB)",
                self.job_id(),
                self.pipeline.limits().memory / (1024 * 1024)
            )
        } else {
            failure.message
        };
        match at {
            Some(at) => format!("{at}: {message}"),
            None => message,
        }
    }

    /// `print`: redacted, each call cut like a command line, and at most
    /// [`PRINT_BUDGET`] bytes a job, so a printing loop cannot fill the
    /// disk through quire-ci's own log.
    fn print(&self, args: &[Value]) -> mlua::Result<()> {
        let printed = self.printed.get();
        if printed > PRINT_BUDGET {
            return Ok(());
        }
        let line: Vec<String> = args.iter().map(|v| v.to_string().unwrap_or_else(|_| "?".into())).collect();
        let text = shown_command(&self.redactor.redact(&line.join("\t")));
        self.printed.set(printed + text.len());
        let text = if printed + text.len() > PRINT_BUDGET {
            format!(
                "quire-ci: this job printed more than {} KiB; the rest of its print output is discarded",
                PRINT_BUDGET / 1024
            )
        } else {
            text
        };
        self.recorder.job_note(self.start.index, &Note::Printed { job: self.job_id().clone(), text });
        Ok(())
    }

    fn sh(&self, lua: &Lua, cmd: Value, opts: Option<Table>) -> mlua::Result<Table> {
        let request = sh::ShRequest::from_lua(cmd, opts).map_err(mlua::Error::runtime)?;
        let cwd =
            sh::resolve_cwd(&self.ctx.workspace, request.cwd.as_deref()).map_err(mlua::Error::runtime)?;
        // What events, logs and messages show of the command: bounded, so a
        // huge command line cannot flood the event stream.
        let display = shown_command(&self.redactor.redact(&request.program.display()));
        if let Some(reason) = sh::disk_below_floor(&self.ctx.workspace, self.ctx.disk_floor) {
            return Err(mlua::Error::runtime(format!("sh: not started: {reason}")));
        }
        // Every command is events, a log and a row: a run that loops on
        // `sh` is stopped here, not when something downstream runs out.
        let started = self.ctx.commands_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if started >= self.ctx.max_commands {
            return Err(mlua::Error::runtime(format!(
                "sh: not started: this run has started {} commands, its limit (--max-commands, :ci {{:max-commands}})",
                self.ctx.max_commands
            )));
        }
        let number = self.commands.get() + 1;
        self.commands.set(number);
        let dir = self.ctx.run_dir.job_dir(self.job_id());
        let log_path = self.ctx.run_dir.log(self.job_id(), LogFile::Command(number));
        let deadline = match request.timeout {
            Some(t) => (Instant::now() + t).min(self.start.deadline),
            None => self.start.deadline,
        };
        self.event(EventKind::ShStarted { job_id: self.job_id().clone(), cmd: display.clone() })?;
        let execution = sh::Execution {
            request: &request,
            workspace: &self.ctx.workspace,
            cwd,
            sandbox: &self.ctx.sandbox,
            jail: &self.jail,
            limits: &self.ctx.limits,
            base_env: &self.ctx.base_env,
            deadline: Some(deadline),
            log_path: &log_path,
            log_cap: self.ctx.log_cap,
            disk_floor: self.ctx.disk_floor,
            redactor: self.redactor,
        };
        let outcome = std::fs::create_dir_all(&dir)
            .and_then(|_| execution.run())
            .map_err(|source| self.fail(RunError::Logs { path: log_path.clone(), source }))?;
        self.event(EventKind::ShFinished { job_id: self.job_id().clone(), exit_code: outcome.exit_code })?;

        let fails_job =
            outcome.timed_out || outcome.stopped.is_some() || (request.check && outcome.exit_code != 0);
        if fails_job {
            self.recorder.job_note(
                self.start.index,
                &Note::CommandFailed {
                    job: self.job_id().clone(),
                    exit_code: outcome.exit_code,
                    log: log_path.clone(),
                },
            );
        }
        if outcome.timed_out {
            return Err(mlua::Error::runtime(format!(
                "command timed out (killed after {}): {display}",
                execution.deadline_description()
            )));
        }
        if let Some(reason) = &outcome.stopped {
            return Err(mlua::Error::runtime(format!("command killed ({reason}): {display}")));
        }
        if request.check {
            if let Some(message) = &outcome.spawn_error {
                return Err(mlua::Error::runtime(self.redactor.redact(message)));
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
        } else if name == SCHEDULE_SOURCE {
            match self.ctx.push.schedule_outputs() {
                Some(outputs) => outputs,
                // A plain nil (JSON null would become a truthy sentinel):
                // no schedule started this run.
                None => return Ok(Value::Nil),
            }
        } else {
            self.start.ancestors.get(name.as_str()).cloned().ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "jobs: `{name}` is not an input of job `{}` (directly or through other jobs); \
                     add it to the job's inputs to read its outputs",
                    self.job_id()
                ))
            })?
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
        self.recorder.job_event(self.start.index, kind).map_err(|e| self.fail(e))
    }

    /// Records a fatal error and returns a Lua error that unwinds the job.
    fn fail(&self, error: RunError) -> mlua::Error {
        let message = error.to_string();
        self.fatal.borrow_mut().get_or_insert(error);
        mlua::Error::runtime(message)
    }
}

/// What a job's `print`s may show in all.
const PRINT_BUDGET: usize = 1024 * 1024;

/// The one string argument of a runtime function, or an error saying what
/// `function` expected.
fn name_argument(function: &str, expected: &str, value: Value) -> mlua::Result<String> {
    match value {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => {
            Err(mlua::Error::runtime(format!("{function}: expected {expected}, got {}", other.type_name())))
        }
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
