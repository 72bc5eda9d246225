//! `quire-ci`, the executor: checks pipelines (`validate`) and runs them
//! (`run`). This file owns the command line and exit statuses; the work is
//! in one module per subcommand.

mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { workspace, format } => validate::run(&workspace, format),
    }
}
