//! Reading what a run did, as ingest stored it: its jobs in pipeline order
//! and each job's commands. Writing these rows is `ingest`'s business.

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::runs::RunId;

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub commands: Vec<CommandRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandRow {
    /// n of `jobs/<job-id>/sh-<n>.log`.
    pub seq: i64,
    pub cmd: String,
    pub exit_code: Option<i64>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl JobRow {
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at_ms? - self.started_at_ms?)
    }
}

impl CommandRow {
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at_ms? - self.started_at_ms)
    }
}

/// The run's jobs in pipeline order, each with its commands in order.
pub fn of_run(conn: &Connection, run: RunId) -> rusqlite::Result<Vec<JobRow>> {
    let id = run.to_string();
    let mut jobs_stmt = conn.prepare_cached(
        "SELECT job_id, state, exit_code, started_at_ms, finished_at_ms
         FROM jobs WHERE run_id = ?1 ORDER BY position",
    )?;
    let mut jobs: Vec<JobRow> = jobs_stmt
        .query_map(params![id], |r| {
            Ok(JobRow {
                job_id: r.get(0)?,
                state: r.get(1)?,
                exit_code: r.get(2)?,
                started_at_ms: r.get(3)?,
                finished_at_ms: r.get(4)?,
                commands: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut commands_stmt = conn.prepare_cached(
        "SELECT job_id, seq, cmd, exit_code, started_at_ms, finished_at_ms
         FROM sh_events WHERE run_id = ?1 ORDER BY job_id, seq",
    )?;
    let rows = commands_stmt.query_map(params![id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            CommandRow {
                seq: r.get(1)?,
                cmd: r.get(2)?,
                exit_code: r.get(3)?,
                started_at_ms: r.get(4)?,
                finished_at_ms: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (job_id, command) = row?;
        if let Some(job) = jobs.iter_mut().find(|j| j.job_id == job_id) {
            job.commands.push(command);
        }
    }
    Ok(jobs)
}
