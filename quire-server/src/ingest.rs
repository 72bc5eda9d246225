//! Ingest: a finished run's `events.jsonl` into the `jobs` and `sh_events`
//! tables (SPEC §6.4 step 4). The stream is read line by line into the
//! shared fold (`quire_core::jobs`), so memory grows with the number of jobs
//! and commands, not of events; then one transaction writes it in two
//! passes: jobs first, then the commands that reference them. A line that
//! cannot be decoded is skipped and counted; the lines around it are kept.
//! Deciding what the run became is the launcher's job, from the report
//! returned here.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use quire_core::event::{Event, RunOutcome};
use quire_core::id::RunId;
use quire_core::jobs::Fold;
use rusqlite::{params, Connection};

/// What an ingest found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Decoded events (including ones of unknown types).
    pub events: usize,
    pub jobs: usize,
    pub commands: usize,
    /// Lines that could not be decoded, or that referred to no command.
    pub skipped_lines: usize,
    /// The outcome, if the stream's last known event is `run_finished`.
    pub run_finished: Option<RunOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing the run's jobs failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Ingests the events file of `run`. A missing file (quire-ci died before
/// writing any) gives an empty report.
pub fn ingest_file(
    conn: &mut Connection,
    run: RunId,
    path: &Path,
    now_ms: i64,
) -> Result<IngestReport, IngestError> {
    match File::open(path) {
        Ok(file) => ingest(conn, run, BufReader::with_capacity(256 * 1024, file), now_ms),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ingest(conn, run, std::io::empty(), now_ms),
        Err(source) => Err(IngestError::Io { path: path.to_path_buf(), source }),
    }
}

pub fn ingest(
    conn: &mut Connection,
    run: RunId,
    events: impl BufRead,
    now_ms: i64,
) -> Result<IngestReport, IngestError> {
    let mut report = IngestReport::default();
    let fold = decode_into_fold(events, &mut report)?;
    report.run_finished = fold.run_finished();
    report.skipped_lines += fold.orphans();
    let jobs = fold.finish(now_ms);

    let run_id = run.to_string();
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM jobs WHERE run_id = ?1", params![run_id])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO jobs (run_id, job_id, position, state, exit_code, started_at_ms, finished_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (position, job) in jobs.iter().enumerate() {
            insert.execute(params![
                run_id,
                job.job_id.as_str(),
                position,
                job.state.as_str(),
                job.exit_code,
                job.started_at_ms,
                job.finished_at_ms
            ])?;
        }
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO sh_events (run_id, job_id, seq, cmd, started_at_ms, finished_at_ms, exit_code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for job in &jobs {
            for command in &job.commands {
                insert.execute(params![
                    run_id,
                    job.job_id.as_str(),
                    command.seq,
                    command.cmd,
                    command.started_at_ms,
                    command.finished_at_ms,
                    command.exit_code
                ])?;
                report.commands += 1;
            }
        }
    }
    tx.commit()?;
    report.jobs = jobs.len();
    Ok(report)
}

/// Folds every line it can decode; the rest are counted as skipped.
pub fn decode_into_fold(events: impl BufRead, report: &mut IngestReport) -> Result<Fold, IngestError> {
    let mut fold = Fold::new();
    fold_lines(events, &mut fold, report, true)?;
    Ok(fold)
}

/// Folds the lines of `events` that end with a newline into `fold` and
/// returns how many bytes they took, so that a reader of a file still
/// being written can come back for the rest. What the run page of an
/// active run uses (`http::run`).
pub fn fold_complete_lines(
    events: impl BufRead,
    fold: &mut Fold,
    report: &mut IngestReport,
) -> Result<u64, IngestError> {
    fold_lines(events, fold, report, false)
}

fn fold_lines(
    mut events: impl BufRead,
    fold: &mut Fold,
    report: &mut IngestReport,
    last_line_too: bool,
) -> Result<u64, IngestError> {
    // Unreadable lines are only counted: the launcher reports how many
    // ingest skipped, and a run still going has a last line half written.
    let mut line = Vec::new();
    let mut consumed = 0;
    let io = |source| IngestError::Io { path: PathBuf::from("events.jsonl"), source };
    while let Some(read) = read_line(&mut events, &mut line).map_err(io)? {
        if !read.newline && !last_line_too {
            break;
        }
        consumed += read.bytes;
        if !read.kept {
            report.skipped_lines += 1;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match std::str::from_utf8(&line).ok().map(Event::from_line) {
            Some(Ok(event)) => {
                fold.apply(&event);
                report.events += 1;
            }
            Some(Err(_)) | None => report.skipped_lines += 1,
        }
    }
    Ok(consumed)
}

/// The longest `events.jsonl` line ingest reads. quire-ci's events are far
/// shorter; a longer line (only a corrupt or forged file has one) is
/// skipped without ever being held whole.
pub const MAX_EVENT_LINE: usize = 1024 * 1024;

/// One line as [`read_line`] found it.
struct ReadLine {
    /// Its bytes are in the buffer (false: it was longer than
    /// [`MAX_EVENT_LINE`] and was not kept).
    kept: bool,
    /// It ended with a newline (false: the input ended first).
    newline: bool,
    /// Bytes it took, newline included.
    bytes: u64,
}

/// Reads the next line into `line`, without its newline; `None` at the end.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<ReadLine>> {
    line.clear();
    let mut read = ReadLine { kept: true, newline: false, bytes: 0 };
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((read.bytes > 0).then_some(read));
        }
        let (piece, found) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], Some(at)),
            None => (available, None),
        };
        if read.kept && line.len() + piece.len() <= MAX_EVENT_LINE {
            line.extend_from_slice(piece);
        } else {
            read.kept = false;
            line.clear();
        }
        let used = found.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        read.bytes += used as u64;
        if found.is_some() {
            read.newline = true;
            return Ok(Some(read));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::runs::{self, NewRun};

    fn setup() -> (tempfile::TempDir, Connection, RunId) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db::open_and_migrate(&dir.path().join("quire.db")).unwrap();
        let new = NewRun {
            repo: "foo.git".parse().unwrap(),
            ref_name: "refs/heads/main".into(),
            sha: "c".repeat(40),
            previous_sha: None,
            pushed_at_ms: 0,
            trigger: crate::runs::Trigger::Push,
            scheduled_at_ms: None,
        };
        let (run, _) = runs::enqueue(&mut conn, &new).unwrap();
        (dir, conn, run)
    }

    fn rows(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let count = stmt.column_count();
        stmt.query_map([], |r| {
            Ok((0..count)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "-".to_string(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(" "))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    const FULL: &str = r#"{"at_ms":100,"type":"job_started","job_id":"build"}
{"at_ms":110,"type":"sh_started","job_id":"build","cmd":"echo hi"}
{"at_ms":190,"type":"sh_finished","job_id":"build","exit_code":0}
{"at_ms":200,"type":"job_finished","job_id":"build","outcome":"complete"}
{"at_ms":210,"type":"job_started","job_id":"test"}
{"at_ms":212,"type":"sh_started","job_id":"test","cmd":"true"}
{"at_ms":213,"type":"sh_finished","job_id":"test","exit_code":0}
{"at_ms":214,"type":"sh_started","job_id":"test","cmd":"false"}
{"at_ms":215,"type":"sh_finished","job_id":"test","exit_code":1}
{"at_ms":220,"type":"job_finished","job_id":"test","outcome":"failed"}
{"at_ms":225,"type":"job_skipped","job_id":"deploy"}
{"at_ms":230,"type":"run_finished","outcome":"pipeline_failure"}
"#;

    #[test]
    fn a_whole_stream_becomes_rows() {
        let (_d, mut conn, run) = setup();
        let report = ingest(&mut conn, run, FULL.as_bytes(), 999).unwrap();
        assert_eq!(
            report,
            IngestReport {
                events: 12,
                jobs: 3,
                commands: 3,
                skipped_lines: 0,
                run_finished: Some(RunOutcome::PipelineFailure)
            }
        );
        assert_eq!(
            rows(&conn, "SELECT job_id, position, state, exit_code, started_at_ms, finished_at_ms FROM jobs ORDER BY position"),
            ["build 0 complete 0 100 200", "test 1 failed 1 210 220", "deploy 2 skipped - - 225"]
        );
        assert_eq!(
            rows(&conn, "SELECT job_id, seq, cmd, started_at_ms, finished_at_ms, exit_code FROM sh_events ORDER BY job_id, seq"),
            ["build 1 echo hi 110 190 0", "test 1 true 212 213 0", "test 2 false 214 215 1"]
        );
    }

    #[test]
    fn reingest_replaces_rows() {
        let (_d, mut conn, run) = setup();
        ingest(&mut conn, run, FULL.as_bytes(), 999).unwrap();
        ingest(&mut conn, run, FULL.as_bytes(), 999).unwrap();
        assert_eq!(rows(&conn, "SELECT count(*) FROM jobs"), ["3"]);
        assert_eq!(rows(&conn, "SELECT count(*) FROM sh_events"), ["3"]);
    }

    #[test]
    fn a_killed_run_leaves_aborted_jobs_and_unfinished_commands() {
        let (_d, mut conn, run) = setup();
        let stream = r#"{"at_ms":100,"type":"job_started","job_id":"build"}
{"at_ms":110,"type":"sh_started","job_id":"build","cmd":"sleep 100"}
"#;
        let report = ingest(&mut conn, run, stream.as_bytes(), 5000).unwrap();
        assert_eq!(report.run_finished, None);
        assert_eq!(
            rows(&conn, "SELECT state, started_at_ms, finished_at_ms, exit_code FROM jobs"),
            ["aborted 100 5000 -"]
        );
        assert_eq!(rows(&conn, "SELECT seq, finished_at_ms, exit_code FROM sh_events"), ["1 - -"]);
    }

    #[test]
    fn corrupt_and_truncated_lines_lose_nothing_else() {
        let (_d, mut conn, run) = setup();
        let stream = r#"{"at_ms":100,"type":"job_started","job_id":"a"}
{"at_ms":101,"type":"sh_sta
not json at all
{"at_ms":102,"type":"job_finished","job_id":"a","outcome":"complete"}
{"at_ms":103,"type":"artifact_uploaded","job_id":"a"}
{"at_ms":104,"type":"run_finished","outcome":"success"}
{"at_ms":105,"type":"job_st"#;
        let report = ingest(&mut conn, run, stream.as_bytes(), 999).unwrap();
        assert_eq!(report.skipped_lines, 3);
        assert_eq!(report.events, 4, "the unknown type decodes and is ignored");
        assert_eq!(report.run_finished, Some(RunOutcome::Success));
        assert_eq!(rows(&conn, "SELECT job_id, state FROM jobs"), ["a complete"]);
    }

    #[test]
    fn run_finished_counts_only_when_last() {
        let (_d, mut conn, run) = setup();
        let stream = r#"{"at_ms":1,"type":"run_finished","outcome":"success"}
{"at_ms":2,"type":"job_started","job_id":"late"}
"#;
        assert_eq!(ingest(&mut conn, run, stream.as_bytes(), 9).unwrap().run_finished, None);
    }

    #[test]
    fn a_missing_file_is_an_empty_report() {
        let (dir, mut conn, run) = setup();
        let report = ingest_file(&mut conn, run, &dir.path().join("nope.jsonl"), 1).unwrap();
        assert_eq!(report, IngestReport::default());
    }

    #[test]
    fn an_overlong_line_is_skipped_without_losing_its_neighbours() {
        let (_dir, mut conn, run) = setup();
        let mut stream = String::new();
        stream.push_str(r#"{"at_ms":1,"type":"job_started","job_id":"a"}"#);
        stream.push('\n');
        stream.push_str(&"x".repeat(3 * MAX_EVENT_LINE));
        stream.push('\n');
        stream.push_str(r#"{"at_ms":2,"type":"job_finished","job_id":"a","outcome":"complete"}"#);
        stream.push('\n');
        let report =
            ingest(&mut conn, run, std::io::BufReader::with_capacity(4096, stream.as_bytes()), 3).unwrap();
        assert_eq!((report.events, report.skipped_lines, report.jobs), (2, 1, 1));
    }

    #[test]
    fn commands_of_unknown_jobs_are_skipped() {
        let (_d, mut conn, run) = setup();
        let stream = r#"{"at_ms":1,"type":"sh_finished","job_id":"ghost","exit_code":0}
"#;
        let report = ingest(&mut conn, run, stream.as_bytes(), 9).unwrap();
        assert_eq!(report.skipped_lines, 1);
        assert_eq!(rows(&conn, "SELECT state, started_at_ms, finished_at_ms FROM jobs"), ["aborted 9 9"]);
    }
}
