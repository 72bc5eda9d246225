//! Pipelines: from `.quire/ci.fnl` text to a validated job graph whose
//! run-fns are ready to call. Fennel is compiled in the compile VM and the
//! top level evaluated in the execute VM (both in `crate::lua`); `declare`
//! records the `ci.job` calls and `graph` checks the rules of SPEC §3.1.
//! Running jobs is the `runtime` module's business.

mod declare;
mod graph;
mod job;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua};

use crate::diagnostic::{Diagnostic, Location};
use crate::lua::compile::{self, FileAccess};
use crate::lua::{execute, limits};
use crate::source::SourceFile;

pub use job::{Input, Job, Source, PUSH_SOURCE, SCHEDULE_SOURCE, SOURCES};

/// Where a workspace keeps its pipeline.
pub const PIPELINE_PATH: &str = ".quire/ci.fnl";
/// Where a pipeline's own modules live (`include`, `import-macros`).
pub const MODULES_DIR: &str = ".quire";

/// What holds pipeline code in check while it is compiled and evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaLimits {
    /// Memory of each Lua VM, in bytes.
    pub memory: usize,
    /// Compiling (macros included) and then evaluating the top level (which
    /// declares the jobs) may each take this long.
    pub declare_timeout: Duration,
}

impl Default for LuaLimits {
    fn default() -> Self {
        LuaLimits { memory: 512 * 1024 * 1024, declare_timeout: Duration::from_secs(10) }
    }
}

/// Reads `<workspace>/.quire/ci.fnl`, refusing one that resolves outside
/// the workspace (a symlink out of it) without reading it.
pub fn read_source(workspace: &Path) -> Result<SourceFile, LoadError> {
    let path = workspace.join(PIPELINE_PATH);
    let display = path.strip_prefix(".").unwrap_or(&path).display().to_string();
    let resolved = match path.canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing { path }),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    let root =
        workspace.canonicalize().map_err(|source| LoadError::Io { path: workspace.to_path_buf(), source })?;
    if !resolved.starts_with(&root) || !resolved.is_file() {
        return Err(LoadError::OutsideWorkspace { path });
    }
    let too_large = std::fs::metadata(&resolved).is_ok_and(|m| m.len() > compile::MAX_SOURCE_BYTES);
    if too_large {
        return Err(LoadError::TooLarge { path });
    }
    match std::fs::read_to_string(&resolved) {
        Ok(text) => Ok(SourceFile::new(display, text)),
        Err(source) => Err(LoadError::Io { path, source }),
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no pipeline at {}: create it to define jobs (see docs/CI-FENNEL.md)", path.display())]
    Missing { path: PathBuf },
    #[error(
        "{} resolves outside the workspace (a symlink?); a pipeline must be a file of the repository",
        path.display()
    )]
    OutsideWorkspace { path: PathBuf },
    #[error("{} is larger than {} bytes; a pipeline is code, not data", path.display(), compile::MAX_SOURCE_BYTES)]
    TooLarge { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} has {} error(s)", file.display_name(), diagnostics.len())]
    Invalid { file: SourceFile, diagnostics: Vec<Diagnostic> },
}

/// A compiled, validated pipeline: its source, its Lua and its jobs. It
/// holds no Lua VM, so it can be shared between threads; each job runs in
/// an [`Instance`] of its own.
#[derive(Debug)]
pub struct Pipeline {
    source: SourceFile,
    compiled: String,
    positions: Arc<compile::PositionMap>,
    jobs: Vec<Job>,
    limits: LuaLimits,
}

/// A pipeline evaluated in a fresh execute VM: its run-fns, ready to call.
pub struct Instance {
    lua: Lua,
    chunk: execute::ChunkInfo,
    run_fns: Vec<Function>,
}

/// Loads one pipeline, made before its source is at hand: the Fennel
/// compiler in it (most of what loading a small pipeline costs) is ready
/// by then. Like the Lua VM it holds, it stays on the thread that made it;
/// dropping it closes that VM, which a caller in a hurry does once the
/// pipeline is on its way.
pub struct Loader {
    /// `None` once closed early (see [`KEEP_COMPILER_BYTES`]).
    compiler: Option<compile::Compiler>,
    limits: LuaLimits,
}

/// A compile VM holding more than this after compiling (a macro built
/// something big) is closed before the top level is evaluated instead of
/// after: a loader then holds one Lua VM's memory limit at most, plus
/// Fennel's few MiB.
const KEEP_COMPILER_BYTES: usize = 32 * 1024 * 1024;

impl Loader {
    /// A loader for a pipeline of `workspace`, whose compile-time file
    /// access is confined to it (without one, there is none).
    pub fn new(workspace: Option<&Path>, limits: LuaLimits) -> Result<Loader, LoadError> {
        let files = match workspace.map(Path::canonicalize).transpose() {
            Ok(root) => root.map(|root| FileAccess { modules: root.join(MODULES_DIR), root }),
            Err(source_error) => {
                let path = workspace.map(Path::to_path_buf).unwrap_or_default();
                return Err(LoadError::Io { path, source: source_error });
            }
        };
        Ok(Loader { compiler: Some(compile::Compiler::new(files, limits.memory)), limits })
    }

    /// Compiles and validates `source`, evaluating its top level in the
    /// execute VM to collect the `ci.job` declarations.
    pub fn load(&mut self, source: SourceFile) -> Result<Pipeline, LoadError> {
        let limits = self.limits;
        match self.build(&source) {
            Ok((compiled, positions, jobs)) => Ok(Pipeline { source, compiled, positions, jobs, limits }),
            Err(diagnostics) => Err(LoadError::Invalid { file: source, diagnostics }),
        }
    }

    #[allow(clippy::type_complexity)]
    fn build(
        &mut self,
        source: &SourceFile,
    ) -> Result<(String, Arc<compile::PositionMap>, Vec<Job>), Vec<Diagnostic>> {
        let limits = self.limits;
        let internal = |e: mlua::Error| {
            vec![Diagnostic::error(format!("internal error preparing the pipeline VM: {e}"))]
        };
        let compiler = self.compiler.as_ref().ok_or_else(|| {
            vec![Diagnostic::error("internal error: a loader compiles one pipeline".to_string())]
        })?;
        let lua = execute::new_execute_vm(limits.memory).map_err(internal)?;
        let globals = execute::global_names(&lua).map_err(internal)?;
        let deadline = Instant::now() + limits.declare_timeout;
        let compiled = compiler.compile(source, &globals, deadline).map_err(|d| vec![d])?;
        if compiler.memory_in_use() > KEEP_COMPILER_BYTES {
            self.compiler = None;
        }
        let positions = Arc::new(compiled.positions);
        let chunk =
            execute::ChunkInfo { name: source.display_name().to_string(), positions: positions.clone() };
        let declarations = evaluate(&lua, &chunk, &compiled.lua, limits).map_err(|d| vec![d])?;
        if !declarations.errors.is_empty() {
            return Err(declarations.errors);
        }
        let nodes: Vec<graph::Node> = declarations
            .jobs
            .iter()
            .map(|d| graph::Node { id: d.id.clone(), inputs: d.inputs.clone(), location: d.location.clone() })
            .collect();
        let jobs = graph::validate(&nodes)?;
        Ok((compiled.lua, positions, jobs))
    }
}

impl Pipeline {
    /// Reads, compiles and validates `<workspace>/.quire/ci.fnl`; it may
    /// `include` modules from `<workspace>/.quire`.
    pub fn load(workspace: &Path, limits: LuaLimits) -> Result<Pipeline, LoadError> {
        Pipeline::from_source(read_source(workspace)?, Some(workspace), limits)
    }

    /// Compiles and validates a pipeline, evaluating its top level in the
    /// execute VM to collect the `ci.job` declarations. With a workspace,
    /// compile-time file access is confined to it; without, there is none.
    pub fn from_source(
        source: SourceFile,
        workspace: Option<&Path>,
        limits: LuaLimits,
    ) -> Result<Pipeline, LoadError> {
        let mut loader = Loader::new(workspace, limits)?;
        loader.load(source)
    }

    /// Evaluates the pipeline again in a fresh execute VM, on the calling
    /// thread, for running its jobs there.
    pub fn instantiate(&self) -> Result<Instance, String> {
        let lua = execute::new_execute_vm(self.limits.memory)
            .map_err(|e| format!("internal error preparing the pipeline VM: {e}"))?;
        let chunk = execute::ChunkInfo {
            name: self.source.display_name().to_string(),
            positions: self.positions.clone(),
        };
        let declarations = evaluate(&lua, &chunk, &self.compiled, self.limits).map_err(|d| d.to_string())?;
        let same_jobs = declarations.jobs.len() == self.jobs.len()
            && declarations.jobs.iter().zip(&self.jobs).all(|(d, j)| d.id == j.id.as_str());
        if !same_jobs {
            return Err(format!(
                "{} declared other jobs when it was evaluated again; its top level must declare the same jobs every time",
                chunk.name
            ));
        }
        let run_fns = declarations.jobs.into_iter().map(|d| d.run_fn).collect();
        Ok(Instance { lua, chunk, run_fns })
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

    pub fn limits(&self) -> LuaLimits {
        self.limits
    }
}

impl Instance {
    /// The execute VM.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// The run-fn of the job at `index` (of [`Pipeline::jobs`]).
    pub fn run_fn(&self, index: usize) -> &Function {
        &self.run_fns[index]
    }

    /// Position maps for reporting run-time errors against the `.fnl` file.
    pub fn chunk(&self) -> &execute::ChunkInfo {
        &self.chunk
    }
}

/// Runs the compiled top level under the declare deadline and returns what
/// its `ci.job` calls recorded.
fn evaluate(
    lua: &Lua,
    chunk: &execute::ChunkInfo,
    compiled: &str,
    limits: LuaLimits,
) -> Result<declare::Declarations, Diagnostic> {
    let internal =
        |e: mlua::Error| Diagnostic::error(format!("internal error preparing the pipeline VM: {e}"));
    let declarations = declare::install_ci_module(lua, chunk.clone()).map_err(internal)?;
    let deadline = Instant::now() + limits.declare_timeout;
    limits::arm(lua, deadline).map_err(internal)?;
    let mut evaluated = chunk.load(lua, compiled).exec();
    limits::disarm();
    // A top level that swallowed the deadline (in a coroutine) and went on
    // still took too long.
    if evaluated.is_ok() && Instant::now() >= deadline {
        evaluated = Err(mlua::Error::runtime(limits::DEADLINE_MESSAGE));
    }
    if let Err(e) = evaluated {
        return Err(top_level_error(chunk, &e));
    }
    let taken = std::mem::take(&mut *declarations.borrow_mut());
    Ok(taken)
}

/// An error raised while evaluating the top level, located at its line.
fn top_level_error(chunk: &execute::ChunkInfo, error: &mlua::Error) -> Diagnostic {
    let failure = chunk.explain(error);
    let line = failure.line.unwrap_or(1);
    let message = if limits::is_deadline(error) {
        format!("evaluating {} did not finish in time (an endless loop at its top level?)", chunk.name)
    } else {
        failure.message
    };
    Diagnostic::error(message).at(Location::new(&chunk.name, line, chunk.positions.call_column(line, "")))
}
