//! `quire`, the server and operator CLI. This file owns the command line,
//! telemetry set-up and exit statuses; everything else is in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use miette::IntoDiagnostic;
use quire_core::id::RepoName;
use quire_server::repos;
use quire_server::root::DataRoot;
use quire_server::{config, hook, ops, serve, telemetry};

#[derive(Parser)]
#[command(name = "quire", version, about = "Push-triggered CI for self-hosted git")]
struct Cli {
    /// The data root (default: $QUIRE_ROOT, else ~/.local/share/quire).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: HTTP API and web UI, push socket and runner.
    Serve {
        /// Address to listen on (default: config.fnl's :listen, else 127.0.0.1:3000).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Manage hosted repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Git hooks (installed into each repository by `repo new`).
    #[command(subcommand)]
    Hook(HookCommand),
    /// Inspect and control CI runs.
    #[command(subcommand)]
    Ci(CiCommand),
}

#[derive(Subcommand)]
enum RepoCommand {
    /// Create a bare repository, e.g. foo.git or group/foo.git.
    New { name: RepoName },
    /// List repositories.
    List,
    /// Remove a repository (its runs are kept).
    Rm { name: RepoName },
}

#[derive(Subcommand)]
enum HookCommand {
    /// Called by git after a push: queues a run for each updated ref.
    PostReceive,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List the caches (one repository's, or all), with sizes and last use.
    List { repo: Option<RepoName> },
    /// Remove a repository's caches, or one ref's (a branch name or a full ref).
    Clear { repo: RepoName, r#ref: Option<String> },
}

#[derive(Subcommand)]
enum CiCommand {
    /// List runs, newest first.
    Runs { repo: Option<RepoName> },
    /// Show a run: its jobs, commands, exit codes and durations.
    Show { run: String },
    /// Print a run's logs as plain text (all jobs, or one).
    Logs { run: String, job: Option<String> },
    /// Cancel a pending or active run.
    Cancel { run: String },
    /// Queue a new run of a ref's current commit.
    Retrigger { repo: RepoName, r#ref: String },
    /// Run caches (QUIRE_CACHE_DIR) kept per repository and ref.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Delete the runs `:ci {:retention …}` no longer keeps (one repository, or all).
    Prune {
        repo: Option<RepoName>,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = DataRoot::resolve(cli.root);
    match run(root, cli.command) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}

fn run(root: DataRoot, command: Command) -> miette::Result<ExitCode> {
    match command {
        Command::Serve { listen } => {
            let config = config::load(&root.config_path()).map_err(|e| e.report())?;
            let _telemetry = telemetry::init(config.sentry_dsn.as_deref());
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().into_diagnostic()?;
            runtime.block_on(async {
                tokio::select! {
                    result = serve::serve(root, config, listen) => result.map_err(|e| {
                        tracing::error!(error = %e, "quire serve failed");
                        miette::miette!("{e}")
                    }),
                    _ = shutdown_signal() => {
                        tracing::info!("shutting down");
                        Ok(())
                    }
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Repo(RepoCommand::New { name }) => {
            let path = repos::create(&root, &name).into_diagnostic()?;
            println!("created {name} at {}", path.display());
            println!("push to it with: git push {} HEAD:main", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Repo(RepoCommand::List) => {
            for name in repos::list(&root).into_diagnostic()? {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Repo(RepoCommand::Rm { name }) => {
            repos::remove(&root, &name).into_diagnostic()?;
            println!("removed {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Hook(HookCommand::PostReceive) => Ok(post_receive(&root)),
        Command::Ci(command) => {
            let out = match command {
                CiCommand::Runs { repo } => ops::list_runs(&root, repo.as_ref()),
                CiCommand::Show { run } => ops::show_run(&root, &run),
                CiCommand::Logs { run, job } => ops::logs(&root, &run, job.as_deref()),
                CiCommand::Cancel { run } => ops::cancel(&root, &run),
                CiCommand::Retrigger { repo, r#ref } => ops::retrigger(&root, &repo, &r#ref),
                CiCommand::Prune { repo, dry_run } => ops::prune(&root, repo.as_ref(), dry_run),
                CiCommand::Cache(CacheCommand::List { repo }) => ops::cache_list(&root, repo.as_ref()),
                CiCommand::Cache(CacheCommand::Clear { repo, r#ref }) => {
                    ops::cache_clear(&root, &repo, r#ref.as_deref())
                }
            }
            .into_diagnostic()?;
            let _ = std::io::stdout().write_all(out.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Never refuses a push: every problem is a warning and the exit is 0.
fn post_receive(root: &DataRoot) -> ExitCode {
    let git_dir = std::env::var_os("GIT_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let result = hook::current_repo(root, &git_dir).and_then(|repo| {
        let updates = hook::read_updates(std::io::stdin().lock())?;
        hook::post_receive(root, repo, updates, quire_core::push::Trigger::Push)
    });
    match result {
        Ok(hook::HookOutcome::Sent { runs, spooled }) => {
            if !runs.is_empty() {
                eprintln!("quire: queued CI run(s): {}", runs.join(", "));
            }
            if spooled > 0 {
                eprintln!("quire: warning: the server's database is busy; {spooled} run(s) saved in the spool, the server queues them within seconds");
            }
        }
        Ok(hook::HookOutcome::QueuedOffline(n)) if n > 0 => {
            eprintln!("quire: warning: the quire server is not running; {n} run(s) queued, they start with `quire serve`");
        }
        Ok(hook::HookOutcome::Spooled { runs, because }) if runs > 0 => {
            eprintln!("quire: warning: the push could not be handed to the server or the database ({because}); {runs} run(s) saved in the spool, the server queues them (at start if it is not running)");
        }
        Ok(_) => {}
        Err(e) => eprintln!("quire: warning: no CI run was queued: {e}"),
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
