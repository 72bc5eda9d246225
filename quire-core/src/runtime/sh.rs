//! `rt.sh`: what a pipeline asks for (a command and its options, checked
//! strictly), how the command is run (environment, working directory,
//! deadline), and what comes back (events, a CRI log, the result table).

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};

use super::jail::protocol::Launch;
use super::jail::Jail;
use super::limits::Limits;
use super::process::{self, Captured, Ended, Finished};
use super::program::Program;
use super::redact::Redactor;
use super::sandbox::{self, Bwrap, Sandbox};
use crate::clock::format_duration_ms;
use crate::cri::{self, Stream};

/// A checked `(sh cmd opts)` call.
#[derive(Debug, Clone, PartialEq)]
pub struct ShRequest {
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub check: bool,
    pub timeout: Option<Duration>,
}

const OPTION_KEYS: &str = "env, cwd, check, timeout";

impl ShRequest {
    /// Reads `cmd` and `opts` as Lua passed them, rejecting anything the
    /// spec does not allow with a message that says what was wrong.
    pub fn from_lua(cmd: Value, opts: Option<Table>) -> Result<ShRequest, String> {
        let program = match cmd {
            Value::String(s) => {
                Program::Shell(s.to_str().map_err(|_| "sh: the command is not UTF-8")?.to_string())
            }
            Value::Table(t) => Program::Argv(argv_from(&t)?),
            other => {
                return Err(format!(
                    "sh: the command must be a string or a sequence of strings, got {}",
                    other.type_name()
                ))
            }
        };
        let mut request = ShRequest { program, env: Vec::new(), cwd: None, check: true, timeout: None };
        if let Some(opts) = opts {
            for pair in opts.pairs::<Value, Value>() {
                let (key, value) = pair.map_err(|e| format!("sh: reading options: {e}"))?;
                let key = match key {
                    Value::String(s) => s.to_string_lossy(),
                    other => return Err(format!("sh: option keys must be names, got {}", other.type_name())),
                };
                request.set_option(&key, value)?;
            }
        }
        request.check_strings()?;
        Ok(request)
    }

    /// Refuses what no process can be given: NUL bytes anywhere, and
    /// environment names that are empty or contain `=`.
    fn check_strings(&self) -> Result<(), String> {
        let nul = |s: &str| s.contains('\0');
        match &self.program {
            Program::Shell(script) if nul(script) => return Err("sh: the command contains a NUL byte".into()),
            Program::Argv(argv) => {
                if let Some(i) = argv.iter().position(|a| nul(a)) {
                    return Err(format!("sh: argv element {} contains a NUL byte", i + 1));
                }
            }
            Program::Shell(_) => {}
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || nul(name) {
                return Err(format!(
                    "sh: :env name {name:?} is not a valid variable name (no `=`, no NUL byte)"
                ));
            }
            if nul(value) {
                return Err(format!("sh: the :env value of {name} contains a NUL byte"));
            }
        }
        if self.cwd.as_deref().is_some_and(nul) {
            return Err("sh: :cwd contains a NUL byte".into());
        }
        Ok(())
    }

    fn set_option(&mut self, key: &str, value: Value) -> Result<(), String> {
        match (key, value) {
            ("env", Value::Table(t)) => {
                for pair in t.pairs::<Value, Value>() {
                    match pair.map_err(|e| format!("sh: reading :env: {e}"))? {
                        (Value::String(k), Value::String(v)) => {
                            self.env.push((k.to_string_lossy(), v.to_string_lossy()));
                        }
                        (k, v) => {
                            return Err(format!(
                                "sh: :env maps names to strings, got {} = {}",
                                k.type_name(),
                                v.type_name()
                            ))
                        }
                    }
                }
                self.env.sort();
            }
            ("cwd", Value::String(s)) => self.cwd = Some(s.to_string_lossy()),
            ("check", Value::Boolean(b)) => self.check = b,
            ("timeout", Value::Integer(n)) if n > 0 => self.timeout = Some(Duration::from_secs(n as u64)),
            ("timeout", Value::Number(n)) if n > 0.0 && n.is_finite() => {
                self.timeout = Some(Duration::from_secs_f64(n))
            }
            ("env" | "cwd" | "check" | "timeout", value) => {
                let expected = match key {
                    "env" => "a table of strings",
                    "cwd" => "a workspace-relative path string",
                    "check" => "a boolean",
                    _ => "a positive number of seconds",
                };
                return Err(format!("sh: option :{key} must be {expected}, got {}", describe(&value)));
            }
            (other, _) => return Err(format!("sh: unknown option :{other} (options are {OPTION_KEYS})")),
        }
        Ok(())
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Integer(n) => format!("{n}"),
        Value::Number(n) => format!("{n}"),
        other => other.type_name().to_string(),
    }
}

fn argv_from(table: &Table) -> Result<Vec<String>, String> {
    let mut argv = Vec::new();
    for (i, value) in table.clone().sequence_values::<Value>().enumerate() {
        match value.map_err(|e| format!("sh: reading argv: {e}"))? {
            Value::String(s) => argv.push(s.to_string_lossy()),
            other => {
                return Err(format!("sh: argv element {} must be a string, got {}", i + 1, other.type_name()))
            }
        }
    }
    if argv.is_empty() {
        return Err("sh: the argv is empty; give at least the program to run".into());
    }
    Ok(argv)
}

/// Resolves `:cwd` inside the workspace. Lexical `..` escapes and symlinks
/// pointing outside are both refused.
pub fn resolve_cwd(workspace: &Path, cwd: Option<&str>) -> Result<PathBuf, String> {
    let Some(cwd) = cwd else { return Ok(workspace.to_path_buf()) };
    let relative = Path::new(cwd);
    let escapes = relative.is_absolute()
        || relative
            .components()
            .try_fold(0i32, |depth, c| match c {
                Component::ParentDir if depth == 0 => None,
                Component::ParentDir => Some(depth - 1),
                Component::Normal(_) => Some(depth + 1),
                _ => Some(depth),
            })
            .is_none();
    if escapes {
        return Err(format!("sh: :cwd {cwd:?} must stay inside the workspace"));
    }
    let resolved = workspace
        .join(relative)
        .canonicalize()
        .map_err(|_| format!("sh: :cwd {cwd:?} does not exist in the workspace"))?;
    if !resolved.starts_with(workspace) {
        return Err(format!("sh: :cwd {cwd:?} leads outside the workspace"));
    }
    if !resolved.is_dir() {
        return Err(format!("sh: :cwd {cwd:?} is not a directory"));
    }
    Ok(resolved)
}

/// Everything about one command's execution that is not Lua.
pub struct Execution<'a> {
    pub request: &'a ShRequest,
    pub workspace: &'a Path,
    pub cwd: PathBuf,
    pub sandbox: &'a Sandbox,
    /// The job's sandbox, started by its first command under bubblewrap.
    pub jail: &'a RefCell<Option<Jail>>,
    pub limits: &'a Limits,
    /// The environment commands start from (already scrubbed of quire's
    /// own variables); the request's `:env` is laid over it.
    pub base_env: &'a [(OsString, OsString)],
    pub deadline: Option<Instant>,
    pub log_path: &'a Path,
    /// Bytes of output the log keeps.
    pub log_cap: u64,
    /// A command is killed when the workspace's file system has less
    /// free than this, in bytes.
    pub disk_floor: Option<u64>,
    pub redactor: &'a Redactor,
}

/// How a command ended, as far as the pipeline is concerned.
pub struct Outcome {
    pub exit_code: i32,
    pub timed_out: bool,
    /// Why quire-ci killed it, besides the deadline.
    pub stopped: Option<String>,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl Execution<'_> {
    /// Runs the command, writing its CRI log as output arrives.
    pub fn run(&self) -> io::Result<Outcome> {
        let file = File::create(self.log_path)?;
        let mut log = cri::Writer::with_cap(BufWriter::new(file), self.log_cap);
        let mask = self.redactor;
        let output = |stream, data: &[u8]| log.write(stream, data, mask);
        let result = match self.sandbox {
            Sandbox::None => {
                let command = sandbox::direct_command(
                    &self.request.program,
                    &self.cwd,
                    self.base_env,
                    &self.request.env,
                    self.limits,
                );
                process::run(command, self.deadline, &|| self.disk_guard(), output)?
            }
            Sandbox::Bwrap(bwrap) => self.run_jailed(bwrap, output)?,
        };
        let outcome = match result {
            Ended::Finished(Finished { exit_code, timed_out, stopped, stdout, stderr }) => {
                Outcome { exit_code, timed_out, stopped, spawn_error: None, stdout, stderr }
            }
            Ended::NotStarted(e) => {
                let (exit_code, message) = spawn_failure(&self.request.program, &e);
                let message = self.redactor.redact(&message);
                log.write_line(Stream::Stderr, &format!("quire-ci: {message}"), mask)?;
                let mut stderr = Captured::default();
                stderr.bytes = message.clone().into_bytes();
                stderr.total = stderr.bytes.len();
                Outcome {
                    exit_code,
                    timed_out: false,
                    stopped: None,
                    spawn_error: Some(message),
                    stdout: Captured::default(),
                    stderr,
                }
            }
        };
        log.finish(mask)?;
        if outcome.timed_out {
            let limit = self.deadline_description();
            log.write_line(Stream::Stderr, &format!("quire-ci: command killed after {limit}"), mask)?;
        } else if let Some(reason) = &outcome.stopped {
            log.write_line(Stream::Stderr, &format!("quire-ci: command killed: {reason}"), mask)?;
        } else if let Some(reason) = self.limits.explain_signal(outcome.exit_code - 128) {
            log.write_line(Stream::Stderr, &format!("quire-ci: command killed: {reason}"), mask)?;
        }
        Ok(outcome)
    }

    /// Runs the command in the job's sandbox, starting it first if need
    /// be. A sandbox that fails is dropped (the next command starts a new
    /// one) and the command counts as not started.
    fn run_jailed(
        &self,
        bwrap: &Bwrap,
        output: impl FnMut(Stream, &[u8]) -> io::Result<()>,
    ) -> io::Result<Ended> {
        let mut jail = self.jail.borrow_mut();
        if !jail.as_mut().is_some_and(Jail::is_alive) {
            *jail = None;
            match Jail::start(bwrap, self.workspace) {
                Ok(started) => *jail = Some(started),
                Err(e) => return Ok(Ended::NotStarted(sandbox_failed(e))),
            }
        }
        let helper = jail.as_ref().expect("started above").helper();
        let launch = Launch {
            argv: self.request.program.argv().iter().map(|a| a.to_string_lossy().into_owned()).collect(),
            env: sandbox::sandboxed_env(self.base_env, &self.request.env),
            cwd: self.cwd.clone(),
            limits: self.limits.clone(),
        };
        match process::run_in(helper, launch, self.deadline, &|| self.disk_guard(), output) {
            Err(e) if e.kind() == process::SANDBOX_GONE => {
                *jail = None;
                Ok(Ended::NotStarted(sandbox_failed(e)))
            }
            other => other,
        }
    }

    fn disk_guard(&self) -> Option<String> {
        disk_below_floor(self.workspace, self.disk_floor)
    }

    pub fn deadline_description(&self) -> String {
        match self.request.timeout {
            Some(t) => format!("its :timeout of {}", format_duration_ms(t.as_millis() as i64)),
            None => "the job's timeout".to_string(),
        }
    }
}

/// Why no command may run now: the file system holding `workspace` has
/// less free space than `floor` bytes, or less than 1 % of its inodes free.
pub fn disk_below_floor(workspace: &Path, floor: Option<u64>) -> Option<String> {
    let floor = floor?;
    let stats = rustix::fs::statvfs(workspace).ok()?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < floor {
        return Some(format!(
            "the workspace's file system has less than {} MiB free (the run's floor)",
            floor / (1024 * 1024)
        ));
    }
    if stats.f_files > 0 && stats.f_favail < stats.f_files / 100 {
        return Some("the workspace's file system has less than 1% of its inodes free".to_string());
    }
    None
}

fn sandbox_failed(e: io::Error) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("the job's sandbox failed: {e}"))
}

/// The shell's conventions: 127 for not found, 126 for not executable.
fn spawn_failure(program: &Program, e: &io::Error) -> (i32, String) {
    let name = program.name();
    if e.kind() == io::ErrorKind::NotFound {
        (127, format!("command not found: {name}"))
    } else {
        (126, format!("command cannot be started: {name}: {e}"))
    }
}

/// The table `sh` returns: `{:exit :stdout :stderr :cmd}`.
pub fn result_table(lua: &Lua, outcome: &Outcome, cmd: &str, log_path: &Path) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.set("exit", outcome.exit_code)?;
    table.set("stdout", lua.create_string(captured_text(&outcome.stdout, log_path))?)?;
    table.set("stderr", lua.create_string(captured_text(&outcome.stderr, log_path))?)?;
    table.set("cmd", cmd)?;
    Ok(table)
}

fn captured_text(captured: &Captured, log_path: &Path) -> Vec<u8> {
    let mut bytes = captured.bytes.clone();
    if captured.truncated() {
        bytes.extend_from_slice(
            format!(
                "\n[quire-ci: output truncated to {} of {} bytes; the whole output is in {}]\n",
                captured.bytes.len(),
                captured.total,
                log_path.display()
            )
            .as_bytes(),
        );
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: &str) -> Result<ShRequest, String> {
        let lua = Lua::new();
        let (cmd, opts): (Value, Option<Table>) = lua.load(code).eval().unwrap();
        ShRequest::from_lua(cmd, opts)
    }

    #[test]
    fn strings_run_under_the_shell_and_sequences_directly() {
        assert_eq!(request("return 'echo hi'").unwrap().program, Program::Shell("echo hi".into()));
        assert_eq!(
            request("return {'echo', 'a b'}").unwrap().program,
            Program::Argv(vec!["echo".into(), "a b".into()])
        );
    }

    #[test]
    fn options_are_read_and_defaulted() {
        let r = request("return 'x', {env = {A = '1'}, cwd = 'sub', check = false, timeout = 2}").unwrap();
        assert_eq!(r.env, vec![("A".into(), "1".into())]);
        assert_eq!(r.cwd.as_deref(), Some("sub"));
        assert!(!r.check);
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        let r = request("return 'x'").unwrap();
        assert!(r.check);
        assert_eq!(r.timeout, None);
    }

    #[test]
    fn bad_calls_say_what_is_wrong() {
        let cases = [
            ("return {}", "sh: the argv is empty"),
            ("return {'ls', 3}", "sh: argv element 2 must be a string, got integer"),
            ("return 42", "sh: the command must be a string or a sequence of strings, got integer"),
            ("return 'x', {chek = true}", "sh: unknown option :chek (options are env, cwd, check, timeout)"),
            (
                "return 'x', {timeout = -1}",
                "sh: option :timeout must be a positive number of seconds, got -1",
            ),
            ("return 'x', {check = 'yes'}", "sh: option :check must be a boolean, got string"),
            ("return 'x', {env = {A = 1}}", "sh: :env maps names to strings, got string = integer"),
            ("return {'echo', 'a\\0b'}", "sh: argv element 2 contains a NUL byte"),
            ("return 'echo a\\0b'", "sh: the command contains a NUL byte"),
            ("return 'x', {env = {A = 'x\\0y'}}", "sh: the :env value of A contains a NUL byte"),
            ("return 'x', {env = {['A=B'] = 'x'}}", "sh: :env name \"A=B\" is not a valid variable name"),
        ];
        for (code, expected) in cases {
            let err = request(code).unwrap_err();
            assert!(err.starts_with(expected), "{code}: {err}");
        }
    }

    #[test]
    fn cwd_must_stay_inside_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let ws_path = ws.path().canonicalize().unwrap();
        std::fs::create_dir(ws_path.join("sub")).unwrap();
        std::os::unix::fs::symlink("/", ws_path.join("root-link")).unwrap();
        assert_eq!(resolve_cwd(&ws_path, None).unwrap(), ws_path);
        assert_eq!(resolve_cwd(&ws_path, Some("sub")).unwrap(), ws_path.join("sub"));
        assert_eq!(resolve_cwd(&ws_path, Some("sub/../sub")).unwrap(), ws_path.join("sub"));
        for bad in ["..", "../x", "/etc", "sub/../../x", "root-link", "missing"] {
            assert!(resolve_cwd(&ws_path, Some(bad)).is_err(), "{bad}");
        }
    }
}
