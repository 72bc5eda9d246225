//! `quire-ci run`: loads the pipeline, gathers the push facts and secrets
//! (locally or from the server), and runs the jobs, writing events, logs and
//! progress. Owns the exit-0 contract: once the pipeline is evaluated to an
//! outcome, the exit status is 0 and `run_finished` is the last event.
//!
//! In server mode the run happens in a directory of its own (the
//! workspace fetched from the server, the output beside it), whose output
//! `shipper` sends to the server as it is written; `--workspace`,
//! `--events` and `--out-dir` do not apply.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quire_core::clock::now_ms;
use quire_core::event::{Event, EventKind, RunOutcome};
use quire_core::id::JobId;
use quire_core::pipeline::{self, LoadError, LuaLimits, Pipeline, PIPELINE_PATH};
use quire_core::push::{PushFacts, Trigger};
use quire_core::run_dir::RunDir;
use quire_core::runtime::{
    self, Bwrap, Limits, RunAs, RunContext, RunError, Sandbox, SecretSource, Sink, CACHE_VARIABLE,
};

use crate::exit;
use crate::local::{self, EnvSecrets};
use crate::progress::Reporter;
use crate::screen::Screen;
use crate::server::{Server, ServerError};
use crate::shipper::Shipper;

/// Where the event stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsTarget {
    Null,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for EventsTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "null" => EventsTarget::Null,
            "stdout" => EventsTarget::Stdout,
            "" => return Err("give null, stdout or a file path".into()),
            path => EventsTarget::File(PathBuf::from(path)),
        })
    }
}

/// The sandbox asked for on the command line.
pub enum SandboxChoice {
    None,
    Bwrap { network: bool, hide: Vec<PathBuf>, tmp_size: u64 },
}

pub struct RunArgs {
    pub workspace: PathBuf,
    pub events: EventsTarget,
    pub out_dir: Option<PathBuf>,
    /// `$QUIRE_CACHE_DIR`; a temporary directory when not given.
    pub cache_dir: Option<PathBuf>,
    pub sha: Option<String>,
    pub ref_name: Option<String>,
    /// What started a local run.
    pub trigger: Trigger,
    pub jobs: Vec<JobId>,
    /// How many jobs may run at once.
    pub parallel: usize,
    pub job_timeout: Duration,
    pub sandbox: SandboxChoice,
    pub limits: Limits,
    pub lua: LuaLimits,
    /// Bytes of output each command's log keeps.
    pub log_cap: u64,
    /// Commands the run may start.
    pub max_commands: u64,
    /// Free bytes the workspace's file system must keep.
    pub disk_floor: Option<u64>,
}

/// A failure of quire-ci itself, with the exit status it maps to.
struct Fatal {
    status: u8,
    message: String,
}

impl Fatal {
    fn usage(message: impl ToString) -> Fatal {
        Fatal { status: exit::USAGE, message: message.to_string() }
    }
    fn failed(message: impl ToString) -> Fatal {
        Fatal { status: exit::FAILED, message: message.to_string() }
    }
}

pub fn run(args: RunArgs) -> u8 {
    match Server::from_env() {
        Some(server) => run_for_server(args, Arc::new(server)),
        None => exit_status(run_inner(args, None)),
    }
}

fn exit_status(result: Result<(), Fatal>) -> u8 {
    match result {
        Ok(()) => exit::OUTCOME,
        Err(fatal) => {
            eprintln!("quire-ci: error: {}", fatal.message);
            if fatal.status == exit::FAILED {
                // An operational failure, unlike a pipeline's: worth an alert.
                sentry::capture_message(&format!("quire-ci failed: {}", fatal.message), sentry::Level::Error);
            }
            fatal.status
        }
    }
}

/// A run for the server: bootstrap, a directory of its own with the
/// workspace fetched into it, quire-ci's own output redirected into the
/// run's `quire-ci.log`, and everything shipped back as it is written.
fn run_for_server(mut args: RunArgs, server: Arc<Server>) -> u8 {
    // Its environment holds the run token and its memory the secrets:
    // other processes of the same user (other runs' executors and
    // commands) may not read them through /proc or attach to it.
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        eprintln!("quire-ci: warning: cannot make this process undumpable: {e}");
    }
    die_with_parent();
    let own = match ServerDirectory::create() {
        Ok(own) => own,
        Err(fatal) => return exit_status(Err(fatal)),
    };
    // The workspace comes while the bootstrap is on the way, and the
    // pipeline is loaded as soon as it is there (and quire-ci's output
    // goes to the run's log: the pipeline's top level may print), by a
    // compiler made meanwhile.
    let download = {
        let (server, workspace) = (server.clone(), own.workspace.clone());
        std::thread::spawn(move || server.download_workspace(&workspace))
    };
    let (redirected, output_ready) = std::sync::mpsc::channel();
    let (deliver, loaded) = std::sync::mpsc::channel();
    let started = {
        let (workspace, limits) = (own.workspace.clone(), args.lua);
        std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || load_when_ready(&workspace, limits, download, output_ready, deliver))
    };
    if let Err(e) = started {
        return exit_status(Err(Fatal::failed(format!("cannot start a thread: {e}"))));
    }
    let push = match server.bootstrap() {
        Ok(bootstrap) => bootstrap.push_facts(),
        // Nothing can be sent before the bootstrap: this goes to stderr,
        // which the launcher keeps.
        Err(e) => return exit_status(Err(Fatal::failed(e))),
    };
    if let Err(e) = own.redirect_output() {
        eprintln!("quire-ci: warning: cannot write quire-ci.log ({e}); progress is not sent");
        // What the pipeline prints must not reach the server's log instead.
        if let Err(e) = silence_output() {
            return exit_status(Err(Fatal::failed(format!(
                "cannot send quire-ci's output to /dev/null: {e}"
            ))));
        }
    }
    let _ = redirected.send(());
    let shipper = Shipper::start(server.clone(), own.out.clone(), own.workspace.clone());
    let loaded =
        loaded.recv().unwrap_or_else(|_| Err(ServerError::Workspace("the pipeline thread failed".into())));
    let result = loaded.map_err(Fatal::failed).and_then(|pipeline| {
        args.workspace = own.workspace.clone();
        args.out_dir = Some(own.out.clone());
        args.events = EventsTarget::File(own.out.join("events.jsonl"));
        run_inner(args, Some(ServerRun { server, push, pipeline }))
    });
    let status = exit_status(result);
    shipper.finish();
    status
}

/// The pipeline of a workspace being downloaded: Fennel is loaded while
/// the download goes on (on this thread, which the compiler cannot leave),
/// and the pipeline compiled once the workspace is there and quire-ci's
/// output is redirected (`output_ready`). What is `deliver`ed: the
/// download's error, or the pipeline (or why it could not be loaded: an
/// outcome of the run). The compile VM is closed after that, off the way
/// to the first command.
fn load_when_ready(
    workspace: &Path,
    limits: LuaLimits,
    download: std::thread::JoinHandle<Result<(), ServerError>>,
    output_ready: std::sync::mpsc::Receiver<()>,
    deliver: std::sync::mpsc::Sender<Result<Result<Pipeline, LoadError>, ServerError>>,
) {
    let prepared = pipeline::Loader::new(Some(workspace), limits);
    let ready = || {
        download
            .join()
            .unwrap_or_else(|_| Err(ServerError::Workspace("the download thread failed".into())))?;
        // Gone only when quire-ci is ending without a run.
        output_ready.recv().map_err(|_| ServerError::Workspace("the run was given up".into()))
    };
    let load = |loader: &mut pipeline::Loader| {
        loader.load(pipeline::read_source(workspace)?.with_display_name(PIPELINE_PATH))
    };
    let (loaded, loader) = match prepared {
        Ok(mut loader) => (ready().map(|()| load(&mut loader)), Some(loader)),
        Err(error) => (ready().map(|()| Err(error)), None),
    };
    let _ = deliver.send(loaded);
    drop(loader);
}

/// Ends quire-ci (through SIGTERM: it stops its commands and sends what it
/// has) when whatever started it — the launcher's sandbox, a Slurm step —
/// is gone, or the server that launched it on this machine
/// (`QUIRE__SERVER_PID`) is. A parent-death signal cannot be relied on: it
/// is dropped when the dying parent may not signal quire-ci (bubblewrap
/// without capabilities, quire-ci switched to `nobody`), and bubblewrap
/// arms its own only once it runs. So a thread watches the server through
/// a pidfd and, every 250 ms, for quire-ci being handed to another parent.
/// If either has happened already, there is nobody to run for.
fn die_with_parent() {
    use rustix::process::{getpid, getppid, kill_process, Signal};
    let gone = |what: &str| -> ! {
        eprintln!("quire-ci: error: {what} is gone");
        std::process::exit(exit::FAILED.into());
    };
    let parent = getppid();
    if parent.is_none_or(|p| p.is_init()) {
        gone("whatever started this run");
    }
    let server = match server_pidfd() {
        Ok(server) => server,
        Err(rustix::io::Errno::SRCH) => gone("the server that started this run"),
        Err(e) => {
            eprintln!("quire-ci: warning: cannot watch the server's process ({e}); watching the parent only");
            None
        }
    };
    let watching = std::thread::Builder::new().name("parent-watch".into()).spawn(move || loop {
        let quarter_second = rustix::event::Timespec { tv_sec: 0, tv_nsec: 250_000_000 };
        let server_ended = match &server {
            Some(pidfd) => {
                let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
                match rustix::event::poll(&mut fds, Some(&quarter_second)) {
                    Ok(ready) => ready > 0,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(250));
                        false
                    }
                }
            }
            None => {
                std::thread::sleep(Duration::from_millis(250));
                false
            }
        };
        if server_ended || getppid() != parent {
            let _ = kill_process(getpid(), Signal::TERM);
            return;
        }
    });
    if let Err(e) = watching {
        eprintln!("quire-ci: warning: cannot watch for the launcher's end: {e}");
    }
}

/// A pidfd of the server named by `QUIRE__SERVER_PID`, when it is set.
fn server_pidfd() -> Result<Option<std::os::fd::OwnedFd>, rustix::io::Errno> {
    let Some(pid) = std::env::var(quire_core::output::SERVER_PID_VARIABLE)
        .ok()
        .and_then(|raw| raw.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(None);
    };
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map(Some)
}

/// quire-ci's stdout and stderr to `/dev/null`.
fn silence_output() -> io::Result<()> {
    send_output_to(&File::options().write(true).open("/dev/null")?)
}

/// From here on, what quire-ci prints goes to `file`.
fn send_output_to(file: &File) -> io::Result<()> {
    io::stdout().flush()?;
    rustix::stdio::dup2_stdout(file)?;
    rustix::stdio::dup2_stderr(file)?;
    Ok(())
}

/// A server run's directory: `workspace/` and `out/` (the run directory
/// as the server will hold it), removed when the run is done.
struct ServerDirectory {
    _dir: tempfile::TempDir,
    workspace: PathBuf,
    out: PathBuf,
}

impl ServerDirectory {
    fn create() -> Result<ServerDirectory, Fatal> {
        let cannot = |e: io::Error| Fatal::failed(format!("cannot create the run's directory: {e}"));
        let dir = tempfile::Builder::new().prefix("quire-run-").tempdir().map_err(cannot)?;
        let (workspace, out) = (dir.path().join("workspace"), dir.path().join("out"));
        std::fs::create_dir(&workspace).map_err(cannot)?;
        std::fs::create_dir(&out).map_err(cannot)?;
        Ok(ServerDirectory { _dir: dir, workspace, out })
    }

    /// From here on, what quire-ci prints lands in the run's quire-ci.log.
    fn redirect_output(&self) -> io::Result<()> {
        send_output_to(&File::create(self.out.join("quire-ci.log"))?)
    }
}

/// A run for the server, as `run_inner` gets it: the pipeline is loaded
/// already (or could not be: an outcome all the same).
struct ServerRun {
    server: Arc<Server>,
    push: PushFacts,
    pipeline: Result<Pipeline, LoadError>,
}

fn run_inner(args: RunArgs, server: Option<ServerRun>) -> Result<(), Fatal> {
    let workspace = args
        .workspace
        .canonicalize()
        .map_err(|e| Fatal::usage(format!("workspace {}: {e}", args.workspace.display())))?;
    let mut cache = Cache::open(args.cache_dir.as_deref())?;
    let sandbox = match args.sandbox {
        SandboxChoice::None => Sandbox::None,
        SandboxChoice::Bwrap { network, hide, tmp_size } => {
            let program = runtime::find_bwrap().ok_or_else(|| {
                Fatal::failed("--sandbox bwrap was asked for, but bubblewrap (bwrap) is not installed; install it (Debian: apt-get install bubblewrap) or run with --sandbox none")
            })?;
            // The server's workspace is made for the run and may be handed
            // to `nobody`; a local checkout is the user's and is never
            // changed.
            let run_as = if server.is_some() { RunAs::Nobody } else { RunAs::WorkspaceOwner };
            let prepare = |cache: &Path| {
                Bwrap::new(program.clone(), network, hide.clone(), run_as, &workspace, Some(cache), tmp_size)
            };
            let bwrap = match prepare(cache.path()) {
                Ok(bwrap) => bwrap,
                // A cache a pipeline left unusable (too deep to hand over,
                // say) must not stop every later run: start from an empty
                // one; the workspace itself must be usable.
                Err(e) => {
                    eprintln!(
                        "quire-ci: warning: the cache {} cannot be used ({e}); this run gets an empty one",
                        cache.path().display()
                    );
                    cache = Cache::open(None)?;
                    prepare(cache.path()).map_err(|e| {
                        Fatal::failed(format!(
                            "cannot prepare the workspace {} for the sandbox: {e}",
                            workspace.display()
                        ))
                    })?
                }
            };
            Sandbox::Bwrap(bwrap)
        }
    };
    // Processes that leave their command's process group are re-parented
    // here, to be swept when the run ends.
    if let Err(e) = runtime::become_subreaper() {
        eprintln!("quire-ci: warning: cannot become the reaper of detached processes: {e}");
    }
    let (server, push, loaded) = match server {
        Some(ServerRun { server, push, pipeline }) => (Some(server), push, Some(pipeline)),
        None => (
            None,
            local::push_facts(&workspace, args.sha.clone(), args.ref_name.clone(), args.trigger)
                .map_err(Fatal::usage)?,
            None,
        ),
    };
    let (out_dir, announce_out_dir) = prepare_out_dir(args.out_dir.as_deref())?;
    let mut reporter = Reporter::new(open_events(&args.events)?, progress_screen(&args.events));
    reporter.say(&describe_start(&push, &workspace));
    reporter.say(&format!("quire-ci: {}", sandbox.describe()));
    if matches!(&sandbox, Sandbox::Bwrap(b) if b.run_as.is_some_and(|(uid, _)| uid == 0)) {
        reporter.say(
            "quire-ci: warning: the checkout belongs to root, so its commands run as root (without any \
             capability); the process limit does not bind root. Run quire-ci as the checkout's owner instead.",
        );
    }

    // Paths in messages are relative to the workspace: the same in a local
    // run and on the server, whose workspaces are temporary directories.
    let loaded = loaded.unwrap_or_else(|| {
        pipeline::read_source(&workspace).and_then(|source| {
            Pipeline::from_source(source.with_display_name(PIPELINE_PATH), Some(&workspace), args.lua)
        })
    });
    let pipeline = match loaded {
        Ok(pipeline) => pipeline,
        Err(error) => return finish_unloadable(&mut reporter, &error),
    };
    let announce_pipeline = server.is_some();
    let secrets: Arc<dyn SecretSource> = match server {
        Some(server) => server,
        None => Arc::new(EnvSecrets),
    };
    let ctx = RunContext {
        workspace,
        run_dir: RunDir::new(&out_dir),
        only: args.jobs,
        announce_pipeline,
        parallel: args.parallel,
        job_timeout: args.job_timeout,
        base_env: std::env::vars_os()
            .filter(|(name, _)| {
                !runtime::is_private_variable(&name.to_string_lossy()) && name != CACHE_VARIABLE
            })
            .chain([(CACHE_VARIABLE.into(), cache.path().into())])
            .collect(),
        push,
        secrets,
        sandbox,
        limits: args.limits,
        log_cap: args.log_cap,
        max_commands: args.max_commands,
        commands_started: std::sync::atomic::AtomicU64::new(0),
        disk_floor: args.disk_floor,
    };
    let pipeline = Arc::new(pipeline);
    // Job threads write to the reporter too (one at a time).
    let reporter = Arc::new(Mutex::new(reporter));
    let result = runtime::execute(pipeline.clone(), Arc::new(ctx), reporter.clone());
    let say = |line: &str| reporter.lock().unwrap_or_else(|p| p.into_inner()).say(line);
    let swept = runtime::sweep_orphans();
    if swept > 0 {
        say(&format!("quire-ci: stopped {swept} process(es) the run had left running in the background"));
    }
    if announce_out_dir {
        say(&format!("logs are in {}", out_dir.display()));
    }
    match result {
        Ok(_) => Ok(()),
        Err(RunError::UnknownJob(runtime::UnknownJob(id))) => Err(Fatal::usage(format!(
            "unknown job `{id}` given to --job; the pipeline defines: {}",
            pipeline.jobs().iter().map(|j| j.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
        Err(e) => Err(Fatal::failed(e)),
    }
}

/// A pipeline that cannot be loaded is still an outcome: the diagnostics go
/// to stderr and the run finishes as a pipeline failure.
fn finish_unloadable(reporter: &mut Reporter, error: &LoadError) -> Result<(), Fatal> {
    match error {
        LoadError::Invalid { file, diagnostics } => {
            for diagnostic in diagnostics {
                eprintln!("{:?}", diagnostic.report(file));
            }
        }
        other => eprintln!("quire-ci: {other}"),
    }
    let finished = Event::new(now_ms(), EventKind::RunFinished { outcome: RunOutcome::PipelineFailure });
    reporter.event(&finished).map_err(|e| Fatal::failed(format!("cannot write the event stream: {e}")))
}

fn describe_start(push: &PushFacts, workspace: &Path) -> String {
    let short = &push.sha[..push.sha.len().min(12)];
    format!("quire-ci: running {} at {short} ({}) in {}", push.repo, push.ref_name, workspace.display())
}

/// The log directory: `--out-dir`, or a fresh temporary one that is kept
/// (and announced at the end, since nobody chose where it is).
/// The run's cache directory: the one given, or a temporary one removed
/// when the run ends.
struct Cache {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl Cache {
    fn open(given: Option<&Path>) -> Result<Cache, Fatal> {
        match given {
            Some(dir) => {
                let cannot =
                    |e: io::Error| Fatal::failed(format!("cannot use --cache-dir {}: {e}", dir.display()));
                std::fs::create_dir_all(dir).map_err(cannot)?;
                Ok(Cache { path: dir.canonicalize().map_err(cannot)?, _temporary: None })
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("quire-ci-cache-")
                    .tempdir()
                    .map_err(|e| Fatal::failed(format!("cannot create a temporary cache directory: {e}")))?;
                Ok(Cache { path: dir.path().to_path_buf(), _temporary: Some(dir) })
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn prepare_out_dir(out_dir: Option<&Path>) -> Result<(PathBuf, bool), Fatal> {
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Fatal::failed(format!("cannot create --out-dir {}: {e}", dir.display())))?;
            Ok((dir.to_path_buf(), false))
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("quire-ci-")
                .tempdir()
                .map_err(|e| Fatal::failed(format!("cannot create a temporary log directory: {e}")))?;
            Ok((dir.keep(), true))
        }
    }
}

fn open_events(target: &EventsTarget) -> Result<Box<dyn Write + Send>, Fatal> {
    Ok(match target {
        EventsTarget::Null => Box::new(io::sink()),
        EventsTarget::Stdout => Box::new(io::stdout()),
        EventsTarget::File(path) => {
            let file = File::create(path).map_err(|e| {
                Fatal::failed(format!("cannot write the events file {}: {e}", path.display()))
            })?;
            Box::new(BufWriter::new(file))
        }
    })
}

/// Progress goes to stdout, unless stdout carries the events.
fn progress_screen(events: &EventsTarget) -> Screen {
    use std::io::IsTerminal;
    match events {
        EventsTarget::Stdout => Screen::new(Box::new(io::stderr()), io::stderr().is_terminal()),
        _ => Screen::new(Box::new(io::stdout()), io::stdout().is_terminal()),
    }
}
