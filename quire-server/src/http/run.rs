//! A run as the API and the run page show it: its row, its jobs and the
//! directory holding its logs. A finished run's jobs come from the rows
//! ingest wrote; an unfinished run's from folding its `events.jsonl` so
//! far (`quire_core::jobs`), the same fold ingest uses.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use quire_core::id::RunId;
use quire_core::jobs::JobSummary;
use quire_core::run_dir::RunDir;

use super::ApiError;
use crate::root::DataRoot;
use crate::runs::{self, Run};
use crate::{ingest, job_rows};

/// A run with what it did.
pub struct LoadedRun {
    pub run: Run,
    pub jobs: Vec<JobSummary>,
    pub dir: RunDir,
}

pub fn load_run(
    conn: &rusqlite::Connection,
    root: &DataRoot,
    id: RunId,
) -> Result<Option<LoadedRun>, ApiError> {
    let Some(run) = runs::get(conn, id).map_err(ApiError::internal)? else { return Ok(None) };
    let dir = root.run_dir(&run.repo, id);
    let jobs = if run.state.is_finished() {
        job_rows::of_run(conn, id).map_err(ApiError::internal)?
    } else {
        jobs_so_far(&dir.events())
    };
    Ok(Some(LoadedRun { run, jobs, dir }))
}

/// The jobs of a run that is still going, from its events so far. Lines
/// that do not decode (including a last line still being written) are
/// passed over.
fn jobs_so_far(events: &Path) -> Vec<JobSummary> {
    let Ok(file) = File::open(events) else { return Vec::new() };
    match ingest::decode_into_fold(BufReader::new(file), &mut ingest::IngestReport::default()) {
        Ok(fold) => fold.jobs().to_vec(),
        Err(_) => Vec::new(),
    }
}
