//! Writes what an executor sends (`quire_core::output`) into its run's
//! directory: the server is the single writer of `events.jsonl`, the
//! command logs and `quire-ci.log`, whatever machine the executor runs on.
//! Each chunk is appended at the offset it names, so a batch sent twice is
//! written once and bytes never land out of order; every file is held to a
//! size, and the run to a number of files, that the operator's
//! configuration sets. Who may send (the run token) and how the answer
//! travels are `executor_api`'s.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use quire_core::output::{Batch, Chunk, OutputFile};
use quire_core::run_dir::RunDir;

/// The most each kind of file may grow to, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub events: u64,
    /// A command's or a job's log: quire-ci keeps `:max-log-mb` of output
    /// and adds a few lines of its own past it.
    pub log: u64,
    pub executor_log: u64,
    /// How many files a run may hold: an executor cannot make the server
    /// fill the disk's inodes with empty logs.
    pub files: u64,
}

/// Room for the lines quire-ci writes into a log past its cap (why the log
/// was cut, how the command ended).
pub const LOG_NOTE_ROOM: u64 = 64 * 1024;

/// What the executor's own log may take.
pub const EXECUTOR_LOG_BYTES: u64 = 16 * 1024 * 1024;

impl OutputLimits {
    fn of(&self, file: &OutputFile) -> u64 {
        match file {
            OutputFile::Events => self.events,
            OutputFile::ExecutorLog => self.executor_log,
            OutputFile::Log(..) => self.log,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The chunk starts past the bytes the server holds: an earlier chunk
    /// is missing. `have` tells the executor where to resume.
    #[error("{file}: the chunk starts at byte {offset}, but the server holds only {have} bytes of it")]
    OutOfOrder { file: OutputFile, offset: u64, have: u64 },
    #[error("{file} would grow to {size} bytes, past its limit of {limit} bytes")]
    TooLarge { file: OutputFile, size: u64, limit: u64 },
    #[error("{file} would be file number {count} of the run, past its limit of {limit} files")]
    TooManyFiles { file: OutputFile, count: u64, limit: u64 },
    #[error("cannot write {file} of the run: {source}")]
    Io { file: OutputFile, source: std::io::Error },
}

/// How many files a run's directory holds, counted on disk the first time
/// it is needed (once per server, for a run followed again after a
/// restart) and kept up to date by [`write_batch`]. Batches of one run are
/// written one at a time, under the lock that holds this.
#[derive(Debug, Default)]
pub struct FileTally(Option<u64>);

impl FileTally {
    fn count(&mut self, dir: &RunDir) -> u64 {
        *self.0.get_or_insert_with(|| count_files(dir))
    }
}

/// The run's output files on disk: the events, quire-ci's log and every
/// job's logs.
fn count_files(dir: &RunDir) -> u64 {
    let top = [dir.events(), dir.executor_log()].iter().filter(|p| p.symlink_metadata().is_ok()).count();
    let in_jobs: usize = std::fs::read_dir(dir.jobs_dir())
        .into_iter()
        .flatten()
        .filter_map(|job| std::fs::read_dir(job.ok()?.path()).ok())
        .map(Iterator::count)
        .sum();
    (top + in_jobs) as u64
}

/// Writes a batch's chunks in order. Chunks (or their parts) the file
/// already holds are skipped; the first chunk that cannot be written stops
/// the batch, the ones before it stay written.
pub fn write_batch(
    dir: &RunDir,
    batch: &Batch,
    limits: &OutputLimits,
    files: &mut FileTally,
) -> Result<(), OutputError> {
    for chunk in &batch.chunks {
        write_chunk(dir, chunk, limits, files)?;
    }
    Ok(())
}

fn write_chunk(
    dir: &RunDir,
    chunk: &Chunk,
    limits: &OutputLimits,
    files: &mut FileTally,
) -> Result<(), OutputError> {
    let io = |source| OutputError::Io { file: chunk.file.clone(), source };
    let limit = limits.of(&chunk.file);
    if chunk.end() > limit {
        return Err(OutputError::TooLarge { file: chunk.file.clone(), size: chunk.end(), limit });
    }
    // A chunk for a file the server does not have yet must start it: no
    // empty file (or job directory) is left behind by one that does not.
    let exists = chunk.file.path_in(dir).symlink_metadata().is_ok();
    if !exists && chunk.offset > 0 {
        return Err(OutputError::OutOfOrder { file: chunk.file.clone(), offset: chunk.offset, have: 0 });
    }
    if !exists {
        let count = files.count(dir) + 1;
        if count > limits.files {
            return Err(OutputError::TooManyFiles { file: chunk.file.clone(), count, limit: limits.files });
        }
    }
    let mut file = open_for_append(dir, &chunk.file).map_err(io)?;
    if !exists {
        files.0 = files.0.map(|n| n + 1);
    }
    let have = file.metadata().map_err(io)?.len();
    if chunk.offset > have {
        return Err(OutputError::OutOfOrder { file: chunk.file.clone(), offset: chunk.offset, have });
    }
    let already = usize::try_from(have - chunk.offset).unwrap_or(usize::MAX);
    if let Some(new) = chunk.data.get(already..).filter(|new| !new.is_empty()) {
        file.write_all(new).map_err(io)?;
    }
    Ok(())
}

/// Opens (creating) one of the run's files for appending. The server made
/// every directory here itself, and no executor can write into the run
/// directory, so there is no link to follow; O_NOFOLLOW keeps it that way.
fn open_for_append(dir: &RunDir, file: &OutputFile) -> std::io::Result<File> {
    let path = file.path_in(dir);
    if let OutputFile::Log(job, _) = file {
        std::fs::create_dir_all(dir.job_dir(job))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutputLimits = OutputLimits { events: 100, log: 10, executor_log: 10, files: 100 };

    fn write_batch(dir: &RunDir, batch: &Batch, limits: &OutputLimits) -> Result<(), OutputError> {
        super::write_batch(dir, batch, limits, &mut FileTally::default())
    }

    fn chunk(file: &str, offset: u64, data: &str) -> Chunk {
        Chunk { file: OutputFile::parse(file).unwrap(), offset, data: data.as_bytes().to_vec() }
    }

    fn batch(chunks: Vec<Chunk>) -> Batch {
        Batch { chunks }
    }

    #[test]
    fn a_batch_sent_again_is_written_once() {
        let temp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(temp.path());
        let first =
            batch(vec![chunk("events.jsonl", 0, "{\"a\":1}\n"), chunk("jobs/b/sh-1.log", 0, "one\n")]);
        write_batch(&dir, &first, &LIMITS).unwrap();
        write_batch(&dir, &first, &LIMITS).unwrap();
        // Overlapping the end: only the new part is added.
        write_batch(&dir, &batch(vec![chunk("jobs/b/sh-1.log", 2, "e\ntwo")]), &LIMITS).unwrap();
        assert_eq!(std::fs::read_to_string(dir.events()).unwrap(), "{\"a\":1}\n");
        assert_eq!(std::fs::read_to_string(temp.path().join("jobs/b/sh-1.log")).unwrap(), "one\ntwo");
    }

    #[test]
    fn a_gap_is_refused_with_where_to_resume() {
        let temp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(temp.path());
        write_batch(&dir, &batch(vec![chunk("quire-ci.log", 0, "abc")]), &LIMITS).unwrap();
        let error = write_batch(&dir, &batch(vec![chunk("quire-ci.log", 5, "x")]), &LIMITS).unwrap_err();
        assert!(matches!(error, OutputError::OutOfOrder { have: 3, offset: 5, .. }), "{error}");
        assert_eq!(std::fs::read_to_string(dir.executor_log()).unwrap(), "abc");
    }

    #[test]
    fn no_file_grows_past_its_limit() {
        let temp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(temp.path());
        write_batch(&dir, &batch(vec![chunk("jobs/b/sh-1.log", 0, "0123456789")]), &LIMITS).unwrap();
        let error = write_batch(&dir, &batch(vec![chunk("jobs/b/sh-1.log", 10, "x")]), &LIMITS).unwrap_err();
        assert!(matches!(error, OutputError::TooLarge { size: 11, limit: 10, .. }), "{error}");
        // A chunk claiming an offset far past the limit is refused before
        // anything is opened.
        let error = write_batch(&dir, &batch(vec![chunk("events.jsonl", u64::MAX - 1, "x")]), &LIMITS);
        assert!(error.is_err());
    }

    #[test]
    fn a_run_holds_no_more_files_than_its_limit() {
        let temp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(temp.path());
        let limits = OutputLimits { files: 3, ..LIMITS };
        // Two files there already, from before a restart: counted on disk.
        super::write_batch(
            &dir,
            &batch(vec![chunk("events.jsonl", 0, "e"), chunk("jobs/a/sh-1.log", 0, "x")]),
            &limits,
            &mut FileTally::default(),
        )
        .unwrap();
        let mut tally = FileTally::default();
        super::write_batch(&dir, &batch(vec![chunk("jobs/a/sh-2.log", 0, "y")]), &limits, &mut tally)
            .unwrap();
        // Growing a file it has is fine; a fourth file is not.
        super::write_batch(&dir, &batch(vec![chunk("jobs/a/sh-2.log", 1, "z")]), &limits, &mut tally)
            .unwrap();
        let error =
            super::write_batch(&dir, &batch(vec![chunk("jobs/b/sh-1.log", 0, "w")]), &limits, &mut tally)
                .unwrap_err();
        assert!(matches!(error, OutputError::TooManyFiles { count: 4, limit: 3, .. }), "{error}");
        assert!(!dir.jobs_dir().join("b").exists(), "nothing is left of the refused file");
        assert_eq!(count_files(&dir), 3);
    }

    #[test]
    fn a_symlink_planted_in_the_run_directory_is_not_followed() {
        let temp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(temp.path());
        let outside = temp.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, dir.events()).unwrap();
        assert!(write_batch(&dir, &batch(vec![chunk("events.jsonl", 0, "x")]), &LIMITS).is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "");
    }
}
