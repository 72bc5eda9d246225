//! A run's directory and every path inside it (SPEC §5):
//!
//! ```text
//! <run dir>/
//!   events.jsonl            the event stream
//!   quire-ci.log            the executor's own progress and diagnostics
//!   jobs/<job-id>/sh-<n>.log  one CRI log per `sh` call, n from 1
//!   jobs/<job-id>/job.log     why the job failed, if it did
//! ```
//!
//! This is the only place those names are joined; the runtime writes
//! through it, the server reads through it ([`RunDir::open`], which never
//! follows a symlink inside the directory). Where the directory itself
//! lives (the server's data root, `--out-dir`) is the caller's business.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::id::JobId;

/// One of a job's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogFile {
    /// The log of the job's n-th `sh` call (n counts from 1).
    Command(u32),
    /// `job.log`: job-level messages such as why the job failed.
    Job,
}

impl LogFile {
    /// The file's name inside the job's directory.
    pub fn file_name(self) -> String {
        match self {
            LogFile::Command(n) => format!("sh-{n}.log"),
            LogFile::Job => "job.log".to_string(),
        }
    }
}

impl fmt::Display for LogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The directory of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    /// Opens a file of this directory for reading, refusing any symlink
    /// below the directory itself: the server reads (and serves) what the
    /// executor wrote there, and an executor that has been taken over must
    /// not make it read a host file through `jobs/b -> /etc` or
    /// `sh-1.log -> /etc/shadow`.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let inside = path
            .strip_prefix(&self.path)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a path of this run directory"))?;
        let dir = File::open(&self.path)?;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
        let opened = rustix::fs::openat2(
            &dir,
            inside,
            flags,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
        );
        let fd = match opened {
            // Kernels before 5.6: at least the file itself is no symlink.
            Err(rustix::io::Errno::NOSYS) => {
                rustix::fs::openat(&dir, inside, flags | OFlags::NOFOLLOW, Mode::empty())?
            }
            other => other?,
        };
        Ok(File::from(fd))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn events(&self) -> PathBuf {
        self.path.join("events.jsonl")
    }

    /// quire-ci's own progress and diagnostics.
    pub fn executor_log(&self) -> PathBuf {
        self.path.join("quire-ci.log")
    }

    /// Where every job's directory is.
    pub fn jobs_dir(&self) -> PathBuf {
        self.path.join("jobs")
    }

    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.jobs_dir().join(job.as_str())
    }

    pub fn log(&self, job: &JobId, file: LogFile) -> PathBuf {
        self.job_dir(job).join(file.file_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_never_follows_a_symlink_inside_the_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let job = JobId::new("b").unwrap();
        std::fs::create_dir_all(run.job_dir(&job)).unwrap();
        std::fs::write(run.log(&job, LogFile::Command(1)), "fine\n").unwrap();
        assert!(run.open(&run.log(&job, LogFile::Command(1))).is_ok());

        let secret = dir.path().join("outside-secret");
        std::fs::write(&secret, "host file").unwrap();
        std::os::unix::fs::symlink(&secret, run.log(&job, LogFile::Command(2))).unwrap();
        assert!(run.open(&run.log(&job, LogFile::Command(2))).is_err(), "a symlinked log");
        let evil = JobId::new("evil").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), run.job_dir(&evil)).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::fs::write(dir.path().join("elsewhere/sh-1.log"), "host file").unwrap();
        assert!(run.open(&run.log(&evil, LogFile::Command(1))).is_err(), "a symlinked job directory");
        assert!(run.open(Path::new("/etc/passwd")).is_err(), "only paths of the directory");
    }

    #[test]
    fn paths_follow_the_spec_layout() {
        let dir = RunDir::new("/r");
        let job = JobId::new("build").unwrap();
        assert_eq!(dir.events(), Path::new("/r/events.jsonl"));
        assert_eq!(dir.executor_log(), Path::new("/r/quire-ci.log"));
        assert_eq!(dir.log(&job, LogFile::Command(3)), Path::new("/r/jobs/build/sh-3.log"));
        assert_eq!(dir.log(&job, LogFile::Job), Path::new("/r/jobs/build/job.log"));
    }
}
