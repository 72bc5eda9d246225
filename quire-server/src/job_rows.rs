//! Reading what a run did, as ingest stored it: its jobs in pipeline order
//! and each job's commands, in the shape of `quire_core::jobs`. Writing
//! these rows is `ingest`'s business.

use quire_core::id::{JobId, RunId};
use quire_core::jobs::{CommandSummary, JobState, JobSummary};
use rusqlite::types::Type;
use rusqlite::{params, Connection};

/// The run's jobs in pipeline order, each with its commands in order.
pub fn of_run(conn: &Connection, run: RunId) -> rusqlite::Result<Vec<JobSummary>> {
    let id = run.to_string();
    let mut jobs_stmt = conn.prepare_cached(
        "SELECT job_id, state, exit_code, started_at_ms, finished_at_ms
         FROM jobs WHERE run_id = ?1 ORDER BY position",
    )?;
    let mut jobs: Vec<JobSummary> = jobs_stmt
        .query_map(params![id], |r| {
            let state: String = r.get(1)?;
            Ok(JobSummary {
                job_id: job_id(r.get(0)?)?,
                state: JobState::parse(&state)
                    .ok_or_else(|| invalid(1, format!("unknown job state {state:?}")))?,
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
            CommandSummary {
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
        if let Some(job) = jobs.iter_mut().find(|j| j.job_id.as_str() == job_id) {
            job.commands.push(command);
        }
    }
    Ok(jobs)
}

fn job_id(raw: String) -> rusqlite::Result<JobId> {
    JobId::new(raw).map_err(|e| invalid(0, e.to_string()))
}

fn invalid(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, what.into())
}
