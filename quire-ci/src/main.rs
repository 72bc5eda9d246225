//! `quire-ci`, the executor: checks pipelines (`validate`) and runs them
//! (`run`). This file owns the command line and exit statuses; the work is
//! in one module per subcommand.

mod exit;
mod local;
mod progress;
mod run;
mod screen;
mod server;
mod shipper;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use quire_core::id::JobId;
use quire_core::push::Trigger;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "quire-ci", version, about = "Validate and run Quire CI pipelines (.quire/ci.fnl)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile and validate the pipeline without running anything.
    ///
    /// Exit status: 0 valid, 1 the pipeline has errors, 2 usage or I/O error.
    Validate {
        /// The checkout holding .quire/ci.fnl.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// human: a report with the source snippet; short: one
        /// `path:line:col: error: message` line per problem; json: a document.
        #[arg(long, value_enum, default_value_t = validate::Format::Human)]
        format: validate::Format,
        #[command(flatten)]
        lua: LuaArgs,
    },
    /// Run the pipeline's jobs, writing events, logs and progress.
    ///
    /// Exit status: 0 whenever the pipeline was evaluated to an outcome
    /// (failing jobs and invalid pipelines included; the last event is then
    /// run_finished), 1 when quire-ci itself failed, 2 for bad arguments.
    Run(Box<RunCommand>),
    /// Inside a job's bubblewrap sandbox: start the job's commands as told
    /// over stdin. Not for people.
    #[command(name = quire_core::runtime::HELPER_COMMAND, hide = true)]
    SandboxHelper,
}

#[derive(Debug, clap::Args)]
struct RunCommand {
    /// The checkout holding .quire/ci.fnl; commands run here.
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// Where the JSONL event stream goes: null, stdout or a file path.
    /// With stdout, progress goes to stderr.
    #[arg(long, default_value = "null", value_name = "null|stdout|PATH")]
    events: run::EventsTarget,
    /// Directory for the logs (jobs/<job-id>/sh-<n>.log); a temporary
    /// directory is used and printed when not given.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// The cache directory commands see as $QUIRE_CACHE_DIR (writable in
    /// the sandbox); default: a new empty temporary directory.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The commit the run is for (local mode; default: HEAD).
    #[arg(long)]
    sha: Option<String>,
    /// The ref the run is for, e.g. refs/heads/main (local mode;
    /// default: the checked-out branch, or the tag HEAD is at).
    #[arg(long = "ref", value_name = "REF")]
    ref_name: Option<String>,
    /// What started the run (local mode): push runs the jobs of
    /// :quire/push, schedule those of :quire/schedule.
    #[arg(long, value_enum, default_value_t = TriggerKind::Push)]
    trigger: TriggerKind,
    /// Run only this job and its ancestors (repeatable).
    #[arg(long = "job", value_name = "ID", value_parser = parse_job_id)]
    jobs: Vec<JobId>,
    /// How many jobs may run at once (default: the number of CPUs);
    /// --jobs 1 runs them one at a time, in order.
    #[arg(long = "jobs", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: Option<u16>,
    /// How long one job may take, in seconds, before its commands are
    /// killed and it fails.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    job_timeout: u64,
    /// Where commands run: directly (none) or inside bubblewrap.
    #[arg(long, value_enum, default_value_t = SandboxKind::None)]
    sandbox: SandboxKind,
    /// With --sandbox bwrap: let commands use the network.
    #[arg(long)]
    network: bool,
    /// With --sandbox bwrap: a path commands must not see (repeatable).
    #[arg(long, value_name = "PATH")]
    hide: Vec<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    lua: LuaArgs,
    /// Most output one command's log keeps, in MiB; the rest is discarded
    /// after a line saying so.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    max_log_mb: u64,
    /// Most commands the whole run may start; past it `sh` fails.
    #[arg(long, value_name = "N", default_value_t = quire_core::jobs::MAX_COMMANDS as u64)]
    max_commands: u64,
    /// With --sandbox bwrap: the size of the private /tmp, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    max_tmp_mb: u64,
    /// Kill a command when the workspace's file system has less than this
    /// free, in MiB (default: no floor).
    #[arg(long, value_name = "MIB")]
    min_free_disk_mb: Option<u64>,
    /// Switch to `nobody` for good before anything else (the server's
    /// process launcher, as root, asks for it). Not for people.
    #[arg(long, hide = true)]
    drop_to_nobody: bool,
}

/// What holds pipeline Lua in check.
#[derive(Debug, clap::Args)]
struct LuaArgs {
    /// Memory of each Lua VM (compiling, and each job's), in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    lua_memory_mb: u64,
    /// How long compiling the pipeline (macros included) and evaluating its
    /// top level may each take, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    declare_timeout_secs: u64,
}

impl LuaArgs {
    fn limits(&self) -> quire_core::pipeline::LuaLimits {
        quire_core::pipeline::LuaLimits {
            memory: (self.lua_memory_mb.max(1) * 1024 * 1024) as usize,
            declare_timeout: Duration::from_secs(self.declare_timeout_secs.max(1)),
        }
    }
}

impl RunCommand {
    fn into_args(self) -> run::RunArgs {
        run::RunArgs {
            workspace: self.workspace,
            events: self.events,
            out_dir: self.out_dir,
            cache_dir: self.cache_dir,
            sha: self.sha,
            ref_name: self.ref_name,
            trigger: match self.trigger {
                TriggerKind::Push => Trigger::Push,
                TriggerKind::Schedule => Trigger::Schedule,
            },
            jobs: self.jobs,
            parallel: self
                .parallel
                .map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from),
            job_timeout: Duration::from_secs(self.job_timeout),
            sandbox: match self.sandbox {
                SandboxKind::None => run::SandboxChoice::None,
                SandboxKind::Bwrap => run::SandboxChoice::Bwrap {
                    network: self.network,
                    hide: self.hide,
                    tmp_size: self.max_tmp_mb.max(1) * 1024 * 1024,
                },
            },
            limits: self.limits.limits(),
            lua: self.lua.limits(),
            log_cap: self.max_log_mb.max(1) * 1024 * 1024,
            max_commands: self.max_commands,
            disk_floor: self.min_free_disk_mb.map(|mb| mb * 1024 * 1024),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TriggerKind {
    Push,
    Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SandboxKind {
    None,
    Bwrap,
}

/// Resource limits for every command (default: unlimited).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Most processes the command's user may have.
    #[arg(long, value_name = "N")]
    max_processes: Option<u64>,
    /// Largest file a command may write, in MiB.
    #[arg(long, value_name = "MIB")]
    max_file_size_mb: Option<u64>,
    /// CPU time per command, in seconds.
    #[arg(long, value_name = "SECS")]
    max_cpu_secs: Option<u64>,
    /// Address space per process, in MiB.
    #[arg(long, value_name = "MIB")]
    max_memory_mb: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> quire_core::runtime::Limits {
        const MIB: u64 = 1024 * 1024;
        quire_core::runtime::Limits {
            processes: self.max_processes,
            file_size: self.max_file_size_mb.map(|m| m * MIB),
            cpu_secs: self.max_cpu_secs,
            memory: self.max_memory_mb.map(|m| m * MIB),
        }
    }
}

/// Sentry, when the server passes a DSN (`QUIRE__SENTRY_DSN`): quire-ci's
/// own failures (and panics) are reported; a failing pipeline is not.
fn sentry_from_env() -> Option<sentry::ClientInitGuard> {
    let raw = std::env::var("QUIRE__SENTRY_DSN").ok().filter(|d| !d.is_empty())?;
    let dsn = match raw.parse::<sentry::types::Dsn>() {
        Ok(dsn) => dsn,
        Err(e) => {
            eprintln!("quire-ci: warning: ignoring QUIRE__SENTRY_DSN, it is not a Sentry DSN: {e}");
            return None;
        }
    };
    let options =
        sentry::ClientOptions { dsn: Some(dsn), release: sentry::release_name!(), ..Default::default() };
    Some(sentry::init(options))
}

/// Commands run in process groups of their own, so a signal to quire-ci
/// (Ctrl-C, or the server stopping a run) would not reach them: a thread
/// waiting for the signal kills every running command, then every process
/// left over (quire-ci is their subreaper), then ends quire-ci as the
/// signal would have — in server mode once the shipper has sent what is
/// left.
fn stop_commands_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("quire-ci: warning: cannot handle signals: {e}");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            quire_core::runtime::stop_everything();
            if shipper::take_over_signal(signal) {
                // The shipper sends what is left and exits.
                loop {
                    std::thread::park();
                }
            }
            std::process::exit(128 + signal);
        }
    });
    if let Err(e) = spawned {
        eprintln!("quire-ci: warning: cannot handle signals: {e}");
    }
}

fn parse_job_id(s: &str) -> Result<JobId, String> {
    JobId::new(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SandboxHelper = cli.command {
        // Inside the sandbox: no telemetry, no signal handling of its own
        // (it dies with the sandbox).
        return match quire_core::runtime::serve_sandbox_helper() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quire-ci sandbox-helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(&cli.command, Command::Run(run) if run.drop_to_nobody) {
        // Before any thread starts: credentials belong to threads.
        if let Err(e) = quire_core::runtime::become_unprivileged(quire_core::runtime::UNPRIVILEGED_ID) {
            eprintln!("quire-ci: error: cannot give up root: {e}");
            return ExitCode::from(exit::FAILED);
        }
    }
    let _sentry = sentry_from_env();
    stop_commands_on_signals();
    match cli.command {
        Command::Validate { workspace, format, lua } => validate::run(&workspace, format, lua.limits()),
        Command::Run(command) => ExitCode::from(run::run(command.into_args())),
        Command::SandboxHelper => unreachable!("served above"),
    }
}
