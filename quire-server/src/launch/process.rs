//! The `process` launcher (the default): each executor is a child process
//! of the server, in a process group of its own, confined — when the
//! bubblewrap sandbox is on — to a bubblewrap of its own: the host
//! read-only, its private directory (`<root>/executors/<run-id>`) and its
//! cache writable, and nothing else of the data root visible, so that a
//! pipeline that escapes the Lua VM meets the same walls as its commands.
//! The server is the subreaper of whatever a run leaves running; this
//! module sweeps it up when the executor ends.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_core::id::RunId;
use rustix::process::{kill_process_group, Pid, Signal};

use super::{handle_number, ExecutorSpec, Launch, LaunchError, Status};

/// Lines of an executor's stderr kept in the server log: what it says
/// before it reaches the server (after that it sends its own log).
const STDERR_LINES: usize = 200;

/// The last lines of stderr told with how an executor ended (they land in
/// the run's quire-ci.log when it ended without finishing the run).
const LAST_WORDS: usize = 20;

/// A running executor and what it said on stderr.
struct Executor {
    child: Child,
    last_words: Arc<Mutex<VecDeque<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

pub struct ProcessLauncher {
    quire_ci: PathBuf,
    root: PathBuf,
    /// The bubblewrap binary executors are confined with; `None` when the
    /// sandbox is off.
    bwrap: Option<PathBuf>,
    /// Executors not yet seen to end, by pid (= process group). Spawning
    /// and sweeping hold the lock, so a sweep never takes a new executor
    /// for a leftover.
    children: Mutex<HashMap<u32, Executor>>,
}

impl ProcessLauncher {
    pub fn new(quire_ci: PathBuf, root: PathBuf, confine: bool) -> ProcessLauncher {
        let bwrap = if confine { quire_core::runtime::find_bwrap() } else { None };
        // Hidden where it really is: bubblewrap mounts nothing on a symlink.
        let root = root.canonicalize().unwrap_or(root);
        ProcessLauncher { quire_ci, root, bwrap, children: Mutex::new(HashMap::new()) }
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Executor>> {
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn work_dir(&self, run: &str) -> PathBuf {
        self.root.join("executors").join(run)
    }

    /// `bwrap … -- quire-ci run …`, or `quire-ci run …` unconfined.
    fn command(&self, spec: &ExecutorSpec, work: &Path) -> Command {
        let mut command = match &self.bwrap {
            Some(bwrap) => {
                // Bound where they really are, below the hidden root.
                let real = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
                let cache = spec.cache_dir.as_deref().map(real);
                let mut command = Command::new(bwrap);
                command.args(confinement(&self.root, &real(work), cache.as_deref()));
                command.arg("--").arg(&self.quire_ci);
                command
            }
            None => Command::new(&self.quire_ci),
        };
        command.arg("run").args(&spec.args);
        if let Some(cache) = &spec.cache_dir {
            command.arg("--cache-dir").arg(cache);
        }
        command
            .current_dir(work)
            .env("TMPDIR", work)
            .env(quire_core::output::SERVER_URL_VARIABLE, &spec.server_url)
            .env(quire_core::output::RUN_TOKEN_VARIABLE, &spec.token)
            .env_remove("QUIRE_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dsn) = &spec.sentry_dsn {
            command.env("QUIRE__SENTRY_DSN", dsn);
        }
        // SAFETY: only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // If the server dies, its runs stop with it instead of
                // running on unsupervised (restart marks them orphaned).
                // SIGTERM, so that quire-ci stops its commands on the way out.
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                Ok(())
            });
        }
        command
    }
}

/// The executor's own bubblewrap: the host read-only, `/tmp` and the data
/// root empty, its work directory and cache writable. Capabilities stay
/// (as root) because the executor confines its commands in turn and hands
/// the workspace to `nobody`; the network stays, to reach the server.
fn confinement(root: &Path, work: &Path, cache: Option<&Path>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |items: &[&std::ffi::OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
    push(&["--ro-bind".as_ref(), "/".as_ref(), "/".as_ref()]);
    // Device nodes cannot be opened for writing on the read-only host
    // (not even /dev/null): a fresh minimal /dev.
    push(&["--dev".as_ref(), "/dev".as_ref()]);
    push(&["--tmpfs".as_ref(), "/tmp".as_ref()]);
    push(&["--tmpfs".as_ref(), root.as_os_str()]);
    push(&["--bind".as_ref(), work.as_os_str(), work.as_os_str()]);
    if let Some(cache) = cache {
        push(&["--bind".as_ref(), cache.as_os_str(), cache.as_os_str()]);
    }
    push(&["--die-with-parent".as_ref(), "--unshare-ipc".as_ref()]);
    if rustix::process::geteuid().is_root() {
        push(&["--cap-add".as_ref(), "ALL".as_ref()]);
    }
    args
}

impl Launch for ProcessLauncher {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: &ExecutorSpec) -> Result<String, LaunchError> {
        // Inside its bubblewrap a missing executor would only show as a
        // crash; this is the server's own misconfiguration.
        if let Err(e) = is_executable(&self.quire_ci) {
            return Err(LaunchError::Start(format!("cannot start {}: {e}", self.quire_ci.display())));
        }
        let work = self.work_dir(&spec.run.to_string());
        make_private_dir(&work)
            .map_err(|e| LaunchError::Start(format!("cannot create {}: {e}", work.display())))?;
        let mut command = self.command(spec, &work);
        let mut children = self.children();
        let mut child = command.spawn().map_err(|e| {
            let program = self.bwrap.as_ref().unwrap_or(&self.quire_ci);
            LaunchError::Start(format!("cannot start {}: {e}", program.display()))
        })?;
        let pid = child.id();
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        let reader = child.stderr.take().and_then(|stderr| {
            let (run, said) = (spec.run, last_words.clone());
            std::thread::Builder::new()
                .name(format!("stderr-{pid}"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok).take(STDERR_LINES) {
                        tracing::warn!(run = %run, "quire-ci: {line}");
                        let mut said = said.lock().unwrap_or_else(|p| p.into_inner());
                        if said.len() == LAST_WORDS {
                            said.pop_front();
                        }
                        said.push_back(line);
                    }
                })
                .ok()
        });
        children.insert(pid, Executor { child, last_words, reader });
        Ok(format!("process:{pid}"))
    }

    fn status(&self, handle: &str) -> Result<Status, LaunchError> {
        let pid = handle_number(handle, "process").unwrap_or(0) as u32;
        let mut children = self.children();
        let Some(executor) = children.get_mut(&pid) else {
            return Ok(Status::Ended { clean: false, how: "the server no longer has the process".into() });
        };
        let (clean, how) = match executor.child.try_wait() {
            Ok(None) => return Ok(Status::Running),
            Ok(Some(status)) => (status.success(), describe_exit(status)),
            Err(e) => (false, format!("cannot wait for it: {e}")),
        };
        let executor = children.remove(&pid).expect("looked up above");
        drop(children);
        Ok(Status::Ended { clean, how: with_last_words(how, executor) })
    }

    fn terminate(&self, handle: &str) {
        signal_group(handle, Signal::TERM);
    }

    fn kill(&self, handle: &str) {
        signal_group(handle, Signal::KILL);
    }

    fn clean_up(&self, run: RunId, handle: &str) -> usize {
        // Whatever is left of the process group goes now, and so does
        // anything that left the group and outlived quire-ci.
        signal_group(handle, Signal::KILL);
        let swept = {
            let children = self.children();
            let own_group = rustix::process::getpgid(None).ok();
            quire_core::runtime::sweep_children(|pid| {
                children.contains_key(&(pid.as_raw_nonzero().get() as u32))
                    || rustix::process::getpgid(Some(pid)).ok() == own_group
            })
        };
        let work = self.work_dir(&run.to_string());
        if let Err(e) = std::fs::remove_dir_all(&work) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(run = %run, error = %e, "cannot remove the executor's directory");
            }
        }
        swept
    }

    fn local_cache(&self) -> bool {
        true
    }

    fn outlives_server(&self) -> bool {
        false
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(50)
    }

    fn describe(&self) -> String {
        match &self.bwrap {
            Some(_) => format!("process ({}, confined with bubblewrap)", self.quire_ci.display()),
            None => format!("process ({}, not confined: the sandbox is off)", self.quire_ci.display()),
        }
    }
}

/// `how`, followed by the last lines the executor wrote to stderr (given a
/// moment to arrive: a process that left the executor's stdio open keeps
/// the pipe from closing, so the wait is bounded).
fn with_last_words(how: String, mut executor: Executor) -> String {
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    while executor.reader.as_ref().is_some_and(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(reader) = executor.reader.take().filter(|r| r.is_finished()) {
        let _ = reader.join();
    }
    let said = executor.last_words.lock().unwrap_or_else(|p| p.into_inner());
    if said.is_empty() {
        how
    } else {
        format!("{how}; it said on stderr:\n{}", said.iter().cloned().collect::<Vec<_>>().join("\n"))
    }
}

fn signal_group(handle: &str, signal: Signal) {
    if let Some(group) = handle_number(handle, "process").and_then(|pid| Pid::from_raw(pid as i32)) {
        let _ = kill_process_group(group, signal);
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("quire-ci exited with status {code}"),
        (None, Some(signal)) => format!("quire-ci was killed by signal {signal}"),
        (None, None) => "quire-ci ended".to_string(),
    }
}

fn is_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not an executable file"))
    }
}

/// A directory only the server's user can enter (and the executor, which
/// runs as that user).
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}
