//! A run as the API and the run page show it: its row, its jobs and the
//! directory holding its logs. A finished run's jobs come from the rows
//! ingest wrote; an unfinished run's from folding its `events.jsonl` so
//! far (`quire_core::jobs`, the same fold ingest uses). That fold is kept
//! between requests ([`Progress`]), so each request reads only what the
//! executor appended since the last one, not the whole stream again.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use quire_core::event::{DeclaredJob, Event, EventKind, MAX_DECLARED_BYTES};
use quire_core::id::RunId;
use quire_core::jobs::{Fold, JobSummary};
use quire_core::run_dir::RunDir;

use super::error::ApiError;
use crate::ingest::{self, IngestReport};
use crate::job_rows;
use crate::root::DataRoot;
use crate::runs::{self, Run};

/// A run with what it did.
pub struct LoadedRun {
    pub run: Run,
    pub jobs: Vec<JobSummary>,
    /// The jobs the pipeline declared, with their inputs (empty when its
    /// stream has no `pipeline` event: a run from the first release, or one
    /// that never got to evaluate its pipeline).
    pub declared: Vec<DeclaredJob>,
    pub dir: RunDir,
}

pub fn load_run(
    conn: &rusqlite::Connection,
    root: &DataRoot,
    progress: &Progress,
    id: RunId,
) -> Result<Option<LoadedRun>, ApiError> {
    let Some(run) = runs::get(conn, id).map_err(ApiError::internal)? else { return Ok(None) };
    let dir = root.run_dir(&run.repo, id);
    let (jobs, declared) = if run.state.is_finished() {
        progress.forget(id);
        (job_rows::of_run(conn, id).map_err(ApiError::internal)?, declared_jobs(&dir.events()))
    } else {
        progress.so_far(id, &dir.events())
    };
    Ok(Some(LoadedRun { run, jobs, declared, dir }))
}

/// The `pipeline` event's jobs, from the first line of a finished run's
/// events (read no further than a `pipeline` line can be long).
fn declared_jobs(events: &Path) -> Vec<DeclaredJob> {
    let Ok(file) = File::open(events) else { return Vec::new() };
    let mut first = Vec::new();
    let limit = 2 * MAX_DECLARED_BYTES as u64 + 4096;
    if BufReader::new(file).take(limit).read_until(b'\n', &mut first).is_err() {
        return Vec::new();
    }
    match std::str::from_utf8(&first).ok().map(Event::from_line) {
        Some(Ok(Event { kind: EventKind::Pipeline { jobs, .. }, .. })) => jobs,
        _ => Vec::new(),
    }
}

/// How many unfinished runs' folds are kept; past it one is dropped (and
/// folded from the start again if it is asked for).
const KEPT_FOLDS: usize = 256;

/// The folds of unfinished runs, each with how far into `events.jsonl` it
/// has read.
#[derive(Default)]
pub struct Progress {
    folds: Mutex<HashMap<RunId, Arc<Mutex<Partial>>>>,
}

#[derive(Default)]
struct Partial {
    /// Bytes of `events.jsonl` folded: always the end of a complete line.
    read: u64,
    fold: Fold,
}

impl Progress {
    /// The jobs of a run that is still going, from its events so far, and
    /// the jobs its pipeline declared. Lines that do not decode are passed
    /// over; a last line still being written waits for the next request.
    pub fn so_far(&self, id: RunId, events: &Path) -> (Vec<JobSummary>, Vec<DeclaredJob>) {
        let partial = {
            let mut folds = self.folds.lock().unwrap_or_else(PoisonError::into_inner);
            if folds.len() >= KEPT_FOLDS && !folds.contains_key(&id) {
                let evicted = folds.keys().next().copied();
                if let Some(evicted) = evicted {
                    folds.remove(&evicted);
                }
            }
            folds.entry(id).or_default().clone()
        };
        let mut partial = partial.lock().unwrap_or_else(PoisonError::into_inner);
        let Partial { read, fold } = &mut *partial;
        if let Ok(mut file) = File::open(events) {
            if file.seek(SeekFrom::Start(*read)).is_ok() {
                let reader = BufReader::with_capacity(256 * 1024, file);
                if let Ok(consumed) = ingest::fold_complete_lines(reader, fold, &mut IngestReport::default())
                {
                    *read += consumed;
                }
            }
        }
        (fold.jobs().to_vec(), fold.declared().to_vec())
    }

    /// Drops a run's fold once it has finished (its rows say it all).
    pub fn forget(&self, id: RunId) {
        self.folds.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn each_request_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let mut file = File::create(&events).unwrap();
        writeln!(file, r#"{{"at_ms":1,"type":"job_started","job_id":"a"}}"#).unwrap();
        write!(file, r#"{{"at_ms":2,"type":"sh_started","job_id":"a","#).unwrap();
        let progress = Progress::default();
        let id: RunId = "01a00000-0000-7000-8000-000000000001".parse().unwrap();

        let (jobs, _) = progress.so_far(id, &events);
        assert_eq!(jobs.len(), 1);
        assert!(jobs[0].commands.is_empty(), "a half-written line waits");
        let first_read = progress.folds.lock().unwrap()[&id].lock().unwrap().read;

        writeln!(file, r#""cmd":"make"}}"#).unwrap();
        let (jobs, _) = progress.so_far(id, &events);
        assert_eq!(jobs[0].commands.len(), 1);
        assert_eq!(jobs[0].commands[0].cmd, "make");
        let second_read = progress.folds.lock().unwrap()[&id].lock().unwrap().read;
        assert_eq!(second_read, std::fs::metadata(&events).unwrap().len());
        assert!(second_read > first_read);

        progress.forget(id);
        assert!(progress.folds.lock().unwrap().is_empty());
    }
}
