//! Pipelines: from `.quire/ci.fnl` text to a validated job graph whose
//! run-fns are ready to call. Fennel is compiled in the compile VM and the
//! top level evaluated in the execute VM (both in `crate::lua`); `declare`
//! records the `ci.job` calls and `graph` checks the rules of SPEC §3.1.
//! Running jobs is the `runtime` module's business.

mod declare;
mod graph;
mod job;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua};

use crate::diagnostic::{Diagnostic, Location};
use crate::lua::{compile, execute};
use crate::source::SourceFile;

pub use job::{Input, Job, PUSH_SOURCE};

/// Where a workspace keeps its pipeline.
pub const PIPELINE_PATH: &str = ".quire/ci.fnl";

/// How long evaluating a pipeline's top level (declaring jobs) may take.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `<workspace>/.quire/ci.fnl`.
pub fn read_source(workspace: &Path) -> Result<SourceFile, LoadError> {
    let path = workspace.join(PIPELINE_PATH);
    let display = path.strip_prefix(".").unwrap_or(&path).display().to_string();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(SourceFile::new(display, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LoadError::Missing { path }),
        Err(source) => Err(LoadError::Io { path, source }),
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no pipeline at {}: create it to define jobs (see docs/CI-FENNEL.md)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} has {} error(s)", file.display_name(), diagnostics.len())]
    Invalid { file: SourceFile, diagnostics: Vec<Diagnostic> },
}

/// A compiled, validated pipeline together with the execute VM that holds
/// its run-fns.
pub struct Pipeline {
    lua: Lua,
    source: SourceFile,
    chunk: execute::ChunkInfo,
    jobs: Vec<Job>,
    run_fns: Vec<Function>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("source", &self.source.display_name())
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl Pipeline {
    /// Reads, compiles and validates `<workspace>/.quire/ci.fnl`.
    pub fn load(workspace: &Path) -> Result<Pipeline, LoadError> {
        Pipeline::from_source(read_source(workspace)?)
    }

    /// Compiles and validates a pipeline, evaluating its top level in the
    /// execute VM to collect the `ci.job` declarations.
    pub fn from_source(source: SourceFile) -> Result<Pipeline, LoadError> {
        match Pipeline::build(&source) {
            Ok((lua, chunk, jobs, run_fns)) => Ok(Pipeline { lua, source, chunk, jobs, run_fns }),
            Err(diagnostics) => Err(LoadError::Invalid { file: source, diagnostics }),
        }
    }

    #[allow(clippy::type_complexity)]
    fn build(
        source: &SourceFile,
    ) -> Result<(Lua, execute::ChunkInfo, Vec<Job>, Vec<Function>), Vec<Diagnostic>> {
        let internal = |e: mlua::Error| {
            vec![Diagnostic::error(format!("internal error preparing the pipeline VM: {e}"))]
        };
        let lua = execute::new_execute_vm().map_err(internal)?;
        let compiled =
            compile::compile(source, &execute::global_names(&lua).map_err(internal)?).map_err(|d| vec![d])?;
        let chunk = execute::ChunkInfo {
            name: source.display_name().to_string(),
            positions: Rc::new(compiled.positions),
        };
        let declarations = declare::install_ci_module(&lua, chunk.clone()).map_err(internal)?;

        execute::set_deadline(&lua, Instant::now() + DECLARE_TIMEOUT, format!("evaluating {}", chunk.name));
        let evaluated = chunk.load(&lua, &compiled.lua).exec();
        lua.remove_hook();
        if let Err(e) = evaluated {
            return Err(vec![top_level_error(&chunk, &e)]);
        }

        let declarations = std::mem::take(&mut *declarations.borrow_mut());
        if !declarations.errors.is_empty() {
            return Err(declarations.errors);
        }
        let nodes: Vec<graph::Node> = declarations
            .jobs
            .iter()
            .map(|d| graph::Node { id: d.id.clone(), inputs: d.inputs.clone(), location: d.location.clone() })
            .collect();
        let jobs = graph::validate(&nodes)?;
        let run_fns = declarations.jobs.into_iter().map(|d| d.run_fn).collect();
        Ok((lua, chunk, jobs, run_fns))
    }

    pub fn source(&self) -> &SourceFile {
        &self.source
    }

    /// Jobs in definition order.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Indices into [`Pipeline::jobs`] in the order they run.
    pub fn execution_order(&self) -> Vec<usize> {
        graph::topological_order(&self.jobs)
    }

    /// The execute VM, for the runtime.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// The run-fn of the job at `index`.
    pub fn run_fn(&self, index: usize) -> &Function {
        &self.run_fns[index]
    }

    /// Position maps for reporting run-time errors against the `.fnl` file.
    pub fn chunk(&self) -> &execute::ChunkInfo {
        &self.chunk
    }
}

/// An error raised while evaluating the top level, located at its line.
fn top_level_error(chunk: &execute::ChunkInfo, error: &mlua::Error) -> Diagnostic {
    let failure = chunk.explain(error);
    let line = failure.line.unwrap_or(1);
    Diagnostic::error(failure.message).at(Location::new(
        &chunk.name,
        line,
        chunk.positions.call_column(line, ""),
    ))
}
