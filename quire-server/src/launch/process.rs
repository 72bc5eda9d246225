//! The `process` launcher (the default): each executor is a child process
//! of the server, in a process group of its own, confined — when the
//! bubblewrap sandbox is on — to a bubblewrap of its own, so that a
//! pipeline that escapes the Lua VM meets the same walls as its commands:
//! it runs without privileges (as root, the server has it switch to
//! `nobody` before anything else), sees the host read-only and nothing of the data root
//! but its own directory (`<root>/executors/<run-id>`) and its cache; the
//! server's processes (root's) are closed to it, so there is no
//! `/proc/<pid>/root` way round the cover. The server is the
//! subreaper of whatever a run leaves running; this module sweeps it up
//! when the executor ends.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_core::id::RunId;
use quire_core::runtime::{chown_tree, closed_ancestor, dirs_between, UNPRIVILEGED_ID};
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
    /// The thread executors are spawned from (see [`spawner`]).
    spawner: Mutex<mpsc::Sender<Spawn>>,
}

/// A command to spawn, and where the result goes.
struct Spawn {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// Where the executor's binary is bound inside its bubblewrap: reachable
/// by `nobody` whatever the directories above the real one allow.
const EXECUTOR_PATH: &str = "/tmp/.quire-ci-executor";

/// A parent-death signal (bubblewrap's `--die-with-parent`) fires when
/// the *thread* that started the child ends, and the blocking pool ends
/// idle threads: executors are spawned from one thread that lives as long
/// as the server.
fn spawner() -> mpsc::Sender<Spawn> {
    let (send, receive) = mpsc::channel::<Spawn>();
    std::thread::Builder::new()
        .name("executor-spawner".into())
        .spawn(move || {
            for Spawn { mut command, reply } in receive {
                let _ = reply.send(command.spawn());
            }
        })
        .expect("a thread can be started");
    send
}

impl ProcessLauncher {
    pub fn new(quire_ci: PathBuf, root: PathBuf, confine: bool) -> ProcessLauncher {
        let bwrap = if confine { quire_core::runtime::find_bwrap() } else { None };
        // Hidden where it really is: bubblewrap mounts nothing on a symlink.
        let root = root.canonicalize().unwrap_or(root);
        ProcessLauncher {
            quire_ci,
            root,
            bwrap,
            children: Mutex::new(HashMap::new()),
            spawner: Mutex::new(spawner()),
        }
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Executor>> {
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn work_dir(&self, run: &str) -> PathBuf {
        self.root.join("executors").join(run)
    }

    /// `bwrap … -- quire-ci run … [--drop-to-nobody]`, or `quire-ci run …`
    /// unconfined.
    fn command(&self, spec: &ExecutorSpec, work: &Path) -> Command {
        // If the server dies, its runs stop with it instead of running on
        // unsupervised (a restart marks them orphaned).
        let Some(bwrap) = &self.bwrap else {
            let mut command = Command::new(&self.quire_ci);
            command.current_dir(work);
            // SAFETY: only calls prctl, which is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    // SIGTERM, so that quire-ci stops its commands on the
                    // way out.
                    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                    Ok(())
                });
            }
            return run_command(command, spec, work);
        };
        // Confined, bubblewrap's `--die-with-parent` ends the sandbox with
        // the server, and quire-ci stops its commands and ends once the
        // server (`QUIRE__SERVER_PID`) or its parent is gone. Nothing runs
        // in the child before exec, so the spawn needs no copy of the
        // server's memory (a fork): a few milliseconds off every run's
        // start.
        //
        // Bound where they really are, below the hidden root (which is
        // hidden where it really is).
        let real = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let cache = spec.cache_dir.as_deref().map(real);
        let mut command = Command::new(bwrap);
        command.args(confinement(&self.root, &real(work), cache.as_deref(), &self.quire_ci)).arg("--");
        command.arg(EXECUTOR_PATH);
        let mut command = run_command(command, spec, work);
        if rustix::process::geteuid().is_root() {
            // bubblewrap sets up as root; quire-ci gives it up before
            // anything else.
            command.arg("--drop-to-nobody");
        }
        command
    }

    /// Spawns on the spawner thread.
    fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let (reply, result) = mpsc::channel();
        let sent = self.spawner.lock().unwrap_or_else(|p| p.into_inner()).send(Spawn { command, reply });
        sent.map_err(|_| std::io::Error::other("the executor spawner is gone"))?;
        result.recv().map_err(|_| std::io::Error::other("the executor spawner is gone"))?
    }
}

/// `command` (which runs quire-ci) with `run`, the run's arguments, its
/// environment and stdio, and its own process group.
fn run_command(mut command: Command, spec: &ExecutorSpec, work: &Path) -> Command {
    command.arg("run").args(&spec.args);
    if let Some(cache) = &spec.cache_dir {
        command.arg("--cache-dir").arg(cache);
    }
    command
        .env("TMPDIR", work)
        .env(quire_core::output::SERVER_URL_VARIABLE, &spec.server_url)
        .env(quire_core::output::RUN_TOKEN_VARIABLE, &spec.token)
        .env(quire_core::output::SERVER_PID_VARIABLE, std::process::id().to_string())
        .env_remove("QUIRE_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dsn) = &spec.sentry_dsn {
        command.env("QUIRE__SENTRY_DSN", dsn);
    }
    command
}

/// The executor's own bubblewrap: the host read-only, a fresh `/dev`,
/// `/tmp` and the data root empty, its binary
/// at [`EXECUTOR_PATH`], its work directory and cache writable at their
/// real paths. As root only what quire-ci needs to switch to `nobody` is
/// kept. The network stays, to reach the server; user namespaces stay,
/// for the commands' sandboxes.
fn confinement(root: &Path, work: &Path, cache: Option<&Path>, quire_ci: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |items: &[&std::ffi::OsStr]| args.extend(items.iter().map(|s| s.to_os_string()));
    push(&["--ro-bind".as_ref(), "/".as_ref(), "/".as_ref()]);
    // Device nodes cannot be opened for writing on the read-only host
    // (not even /dev/null): a fresh minimal /dev.
    push(&["--dev".as_ref(), "/dev".as_ref()]);
    // The host's /proc, writable: the commands' own sandboxes mount a
    // fresh one and map their users through it, which the kernel refuses
    // under a /proc that bubblewrap has partly covered (its `--proc`). What
    // the executor sees of other processes is what `nobody` may: not the
    // server's (root's), nor other executors' (they are not dumpable).
    push(&["--bind".as_ref(), "/proc".as_ref(), "/proc".as_ref()]);
    push(&["--perms".as_ref(), "1777".as_ref(), "--tmpfs".as_ref(), "/tmp".as_ref()]);
    push(&["--ro-bind".as_ref(), quire_ci.as_os_str(), EXECUTOR_PATH.as_ref()]);
    // bubblewrap makes the directories leading to a mount point inside an
    // empty cover private to root; the unprivileged executor must be able
    // to walk down to its directory.
    // A directory above the root that `nobody` may not walk through (say
    // /root, for a root in root's home) is covered too, with the way down
    // made again; under /tmp, the cover is /tmp's.
    let cover = match closed_ancestor(root) {
        Some(closed) if !closed.starts_with("/tmp") => {
            push(&["--perms".as_ref(), "0755".as_ref(), "--tmpfs".as_ref(), closed.as_os_str()]);
            closed
        }
        _ => PathBuf::from("/tmp"),
    };
    for dir in dirs_between(&cover, root) {
        push(&["--perms".as_ref(), "0755".as_ref(), "--dir".as_ref(), dir.as_os_str()]);
    }
    push(&["--perms".as_ref(), "0755".as_ref(), "--tmpfs".as_ref(), root.as_os_str()]);
    for writable in std::iter::once(work).chain(cache) {
        for dir in dirs_between(root, writable) {
            push(&["--perms".as_ref(), "0755".as_ref(), "--dir".as_ref(), dir.as_os_str()]);
        }
        push(&["--bind".as_ref(), writable.as_os_str(), writable.as_os_str()]);
    }
    // Not its own directory: bubblewrap, root without capabilities by
    // then, could not enter what it hands to nobody (quire-ci works in
    // $TMPDIR). Not the server's: it may be hidden, or closed to nobody.
    push(&["--chdir".as_ref(), "/".as_ref()]);
    push(&["--die-with-parent".as_ref(), "--unshare-ipc".as_ref(), "--unshare-uts".as_ref()]);
    if rustix::process::geteuid().is_root() {
        push(&["--cap-drop".as_ref(), "ALL".as_ref()]);
        for cap in ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"] {
            push(&["--cap-add".as_ref(), cap.as_ref()]);
        }
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
        let cannot = |what: &Path, e: std::io::Error| {
            LaunchError::Start(format!("cannot prepare {}: {e}", what.display()))
        };
        make_private_dir(&work).map_err(|e| cannot(&work, e))?;
        if self.bwrap.is_some() && rustix::process::geteuid().is_root() {
            // The executor runs as nobody: its directory and cache are
            // handed to it.
            chown_tree(&work, UNPRIVILEGED_ID, UNPRIVILEGED_ID).map_err(|e| cannot(&work, e))?;
            if let Some(cache) = &spec.cache_dir {
                chown_tree(cache, UNPRIVILEGED_ID, UNPRIVILEGED_ID).map_err(|e| cannot(cache, e))?;
            }
        }
        let command = self.command(spec, &work);
        let mut children = self.children();
        let mut child = self.spawn(command).map_err(|e| {
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

    fn starts_promptly(&self) -> bool {
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_keeps_no_privilege_and_sees_no_host_process() {
        let args: Vec<String> = confinement(
            Path::new("/srv/q"),
            Path::new("/srv/q/executors/r"),
            None,
            Path::new("/bin/quire-ci"),
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--tmpfs /srv/q"), "{joined}");
        assert!(joined.contains("--bind /srv/q/executors/r /srv/q/executors/r"), "{joined}");
        assert!(!joined.contains("ALL --cap-add ALL") && !joined.contains("--cap-add ALL"), "{joined}");
    }
}
