//! The data root (SPEC §6.1): where everything the server keeps lives, and
//! the one place paths inside it are built (paths inside a run's directory
//! are `quire_core::run_dir`'s). Paths are only ever derived from validated
//! names (`RepoName`, `RunId`), never from raw input.

use std::path::{Path, PathBuf};

use quire_core::id::{RepoName, RunId};
use quire_core::run_dir::RunDir;

#[derive(Debug, Clone)]
pub struct DataRoot {
    path: PathBuf,
}

impl DataRoot {
    /// `--root`, else `$QUIRE_ROOT`, else `~/.local/share/quire`.
    pub fn resolve(flag: Option<PathBuf>) -> DataRoot {
        let path = flag
            .or_else(|| std::env::var_os("QUIRE_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
                home.join(".local/share/quire")
            });
        let path = std::path::absolute(&path).unwrap_or(path);
        DataRoot { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db_path(&self) -> PathBuf {
        self.path.join("quire.db")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.fnl")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path.join("server.sock")
    }

    /// Pushes the hook could not queue, replayed by `quire serve`.
    pub fn spool_dir(&self) -> PathBuf {
        self.path.join("spool")
    }

    /// The private directories of local executors (`executors/<run-id>`):
    /// the only part of the data root an executor sees, on the same file
    /// system as the runs, so that the operator sizes one disk.
    pub fn executor_dir(&self, run: RunId) -> PathBuf {
        self.executors_dir().join(run.to_string())
    }

    pub fn executors_dir(&self) -> PathBuf {
        self.path.join("executors")
    }

    pub fn repos_dir(&self) -> PathBuf {
        self.path.join("repos")
    }

    pub fn repo_path(&self, repo: &RepoName) -> PathBuf {
        self.repos_dir().join(repo.as_str())
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.path.join("runs")
    }

    /// `runs/<repo>/<run-id>/`: events, logs and (while running) the
    /// workspace of one run.
    pub fn run_dir(&self, repo: &RepoName, run: RunId) -> RunDir {
        RunDir::new(self.runs_dir().join(repo.as_str()).join(run.to_string()))
    }
}
