//! Runs and their state machine (docs/CI-STATE.md): the types, and every
//! statement that creates a run or moves it between states. Each transition
//! is one conditional `UPDATE`, so a run can never be moved twice or from
//! the wrong state, and the schema's CHECKs and triggers back this up. Jobs
//! and commands are written by `ingest`; processes are `launcher`'s.

use std::fmt;

use quire_core::clock::now_ms;
use quire_core::id::{InvalidRunId, RepoName, RunId};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::protocol::RefUpdate;
pub use quire_core::push::Trigger;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Pending,
    Active,
    Complete,
    Failed,
    Superseded,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Active => "active",
            RunState::Complete => "complete",
            RunState::Failed => "failed",
            RunState::Superseded => "superseded",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunState::Complete | RunState::Failed | RunState::Superseded)
    }

    pub fn parse(s: &str) -> Option<RunState> {
        Some(match s {
            "pending" => RunState::Pending,
            "active" => RunState::Active,
            "complete" => RunState::Complete,
            "failed" => RunState::Failed,
            "superseded" => RunState::Superseded,
            _ => return None,
        })
    }
}

/// Why a run failed. The set is open: a newer database may hold kinds this
/// build does not know, which read as [`FailureKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureKind {
    PipelineFailure,
    ProcessCrashed,
    Orphaned,
    Timeout,
    Canceled,
    Other(String),
}

impl FailureKind {
    pub fn as_str(&self) -> &str {
        match self {
            FailureKind::PipelineFailure => "pipeline-failure",
            FailureKind::ProcessCrashed => "process-crashed",
            FailureKind::Orphaned => "orphaned",
            FailureKind::Timeout => "timeout",
            FailureKind::Canceled => "canceled",
            FailureKind::Other(s) => s,
        }
    }

    fn parse(s: &str) -> FailureKind {
        match s {
            "pipeline-failure" => FailureKind::PipelineFailure,
            "process-crashed" => FailureKind::ProcessCrashed,
            "orphaned" => FailureKind::Orphaned,
            "timeout" => FailureKind::Timeout,
            "canceled" => FailureKind::Canceled,
            other => FailureKind::Other(other.to_string()),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A row of `runs`.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: RunId,
    pub repo: RepoName,
    pub ref_name: String,
    pub sha: String,
    pub previous_sha: Option<String>,
    pub pushed_at_ms: i64,
    pub state: RunState,
    pub failure_kind: Option<FailureKind>,
    pub queued_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub trigger: Trigger,
    pub scheduled_at_ms: Option<i64>,
    /// The commit's subject line, when git could tell.
    pub subject: Option<String>,
    pub author: Option<String>,
}

const RUN_COLUMNS: &str = "id, repo, ref_name, sha, previous_sha, pushed_at_ms, state, failure_kind, \
                           queued_at_ms, started_at_ms, finished_at_ms, trigger, scheduled_at_ms, subject, author";

impl Run {
    fn from_row(row: &Row) -> rusqlite::Result<Run> {
        let id: String = row.get(0)?;
        let state: String = row.get(6)?;
        let bad = |what: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
        };
        Ok(Run {
            id: id.parse().map_err(|e: InvalidRunId| bad(e.to_string()))?,
            repo: row
                .get::<_, String>(1)?
                .parse()
                .map_err(|e: quire_core::id::InvalidRepoName| bad(e.to_string()))?,
            ref_name: row.get(2)?,
            sha: row.get(3)?,
            previous_sha: row.get(4)?,
            pushed_at_ms: row.get(5)?,
            state: RunState::parse(&state).ok_or_else(|| bad(format!("unknown run state {state:?}")))?,
            failure_kind: row.get::<_, Option<String>>(7)?.map(|k| FailureKind::parse(&k)),
            queued_at_ms: row.get(8)?,
            started_at_ms: row.get(9)?,
            finished_at_ms: row.get(10)?,
            trigger: {
                let trigger: String = row.get(11)?;
                Trigger::parse(&trigger).ok_or_else(|| bad(format!("unknown trigger {trigger:?}")))?
            },
            scheduled_at_ms: row.get(12)?,
            subject: row.get(13)?,
            author: row.get(14)?,
        })
    }

    pub fn short_sha(&self) -> &str {
        &self.sha[..self.sha.len().min(10)]
    }

    /// Milliseconds from start (or queueing) to finish, or to `now` while
    /// the run is unfinished.
    pub fn duration_ms(&self, now: i64) -> i64 {
        let from = self.started_at_ms.unwrap_or(self.queued_at_ms);
        self.finished_at_ms.unwrap_or(now) - from
    }
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    Failed(FailureKind),
    Superseded,
}

/// What a push (or a schedule, or a retrigger) asks for: a run of `sha`
/// for `ref_name`.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo: RepoName,
    pub ref_name: String,
    pub sha: String,
    pub previous_sha: Option<String>,
    /// When it was asked for: the push, the retrigger or the schedule's tick.
    pub pushed_at_ms: i64,
    pub trigger: Trigger,
    pub scheduled_at_ms: Option<i64>,
}

/// Adds the subject and author of a run's commit, which is queued before
/// git is asked for them.
pub fn record_commit(conn: &Connection, id: RunId, commit: &CommitSummary) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET subject = ?2, author = ?3 WHERE id = ?1",
        params![id.to_string(), commit.subject, commit.author],
    )?;
    Ok(())
}

/// A commit as people read it, for the pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitSummary {
    pub subject: Option<String>,
    pub author: Option<String>,
}

impl NewRun {
    /// The runs a push asks for, one per updated (not deleted) ref.
    pub fn from_push(
        repo: &RepoName,
        pushed_at_ms: i64,
        updates: &[RefUpdate],
        trigger: Trigger,
    ) -> Vec<NewRun> {
        updates.iter().filter_map(|update| NewRun::from_update(repo, pushed_at_ms, update, trigger)).collect()
    }

    /// The run a pushed ref update asks for; `None` for a deleted ref,
    /// which has nothing to run.
    pub fn from_update(
        repo: &RepoName,
        pushed_at_ms: i64,
        update: &RefUpdate,
        trigger: Trigger,
    ) -> Option<NewRun> {
        if update.is_deletion() {
            return None;
        }
        Some(NewRun {
            repo: repo.clone(),
            ref_name: update.ref_name.clone(),
            sha: update.new_sha.clone(),
            previous_sha: Some(update.old_sha.clone()).filter(|s| !crate::protocol::is_zero_sha(s)),
            pushed_at_ms,
            trigger,
            scheduled_at_ms: None,
        })
    }
}

/// Queues a run, first superseding the ref's pending runs asked for no
/// later than it (their ids are returned with the new one). A run asked
/// for before the ref's newest one (a push replayed from the spool after a
/// later push) is recorded, but as superseded at once. Scheduled runs and
/// push runs supersede only their own kind: a nightly run does not stop
/// the run of a push, nor a push the nightly run. Active runs of the ref
/// are the caller's to stop: they have processes.
pub fn enqueue(conn: &mut Connection, new: &NewRun) -> rusqlite::Result<(RunId, Vec<RunId>)> {
    let tx = conn.transaction()?;
    let now = now_ms();
    let superseded = {
        let mut stmt = tx.prepare(
            "UPDATE runs SET state = 'superseded', finished_at_ms = max(?3, queued_at_ms)
             WHERE repo = ?1 AND ref_name = ?2 AND state = 'pending' AND pushed_at_ms <= ?4
               AND (trigger = 'schedule') = ?5 RETURNING id",
        )?;
        let ids = stmt.query_map(
            params![new.repo.as_str(), new.ref_name, now, new.pushed_at_ms, new.trigger.is_scheduled()],
            |r| r.get::<_, String>(0),
        )?;
        ids.filter_map(|id| id.ok()?.parse().ok()).collect()
    };
    let id = RunId::generate();
    tx.execute(
        "INSERT INTO runs (id, repo, ref_name, sha, previous_sha, pushed_at_ms, state, queued_at_ms,
                           trigger, scheduled_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9)",
        params![
            id.to_string(),
            new.repo.as_str(),
            new.ref_name,
            new.sha,
            new.previous_sha,
            new.pushed_at_ms,
            now,
            new.trigger.as_str(),
            new.scheduled_at_ms,
        ],
    )?;
    let stale: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE repo = ?1 AND ref_name = ?2 AND pushed_at_ms > ?3
                        AND (trigger = 'schedule') = ?4)",
        params![new.repo.as_str(), new.ref_name, new.pushed_at_ms, new.trigger.is_scheduled()],
        |r| r.get(0),
    )?;
    if stale {
        tx.execute(
            "UPDATE runs SET state = 'superseded', finished_at_ms = ?2 WHERE id = ?1",
            params![id.to_string(), now],
        )?;
    }
    tx.commit()?;
    Ok((id, superseded))
}

/// Unfinished runs of a ref, oldest first.
pub fn unfinished_of_ref(conn: &Connection, repo: &RepoName, ref_name: &str) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs
         WHERE repo = ?1 AND ref_name = ?2 AND state IN ('pending', 'active') ORDER BY id"
    ))?;
    let runs = stmt.query_map(params![repo.as_str(), ref_name], Run::from_row)?;
    runs.collect()
}

/// The oldest pending run nobody has claimed yet.
pub fn next_pending(conn: &Connection) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'pending' AND token_hash IS NULL
             ORDER BY queued_at_ms, id LIMIT 1"
        ),
        [],
        Run::from_row,
    )
    .optional()
}

/// Claims a pending run for execution: records the token's hash and the
/// workspace. False when the run is no longer pending and unclaimed.
pub fn claim(conn: &Connection, id: RunId, token_hash: &str) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE runs SET token_hash = ?2 WHERE id = ?1 AND state = 'pending' AND token_hash IS NULL",
        params![id.to_string(), token_hash],
    )?;
    Ok(changed == 1)
}

/// Records the launcher's handle on a claimed run's executor (the schema
/// accepts `process:<pid>` and `slurm:<job id>`), which a restarted server
/// needs to find a remote executor again.
pub fn record_executor(conn: &Connection, id: RunId, handle: &str) -> rusqlite::Result<()> {
    conn.execute("UPDATE runs SET executor = ?2 WHERE id = ?1", params![id.to_string(), handle])?;
    Ok(())
}

/// `pending → active` on bootstrap, in one conditional UPDATE. A repeated
/// bootstrap of an active run returns it unchanged. `None` for an unknown
/// or dead token.
pub fn start_by_token(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Run>> {
    let started = conn
        .query_row(
            &format!(
                "UPDATE runs SET state = 'active', started_at_ms = max(?2, queued_at_ms)
                 WHERE token_hash = ?1 AND state = 'pending' RETURNING {RUN_COLUMNS}"
            ),
            params![token_hash, now_ms()],
            Run::from_row,
        )
        .optional()?;
    match started {
        Some(run) => Ok(Some(run)),
        None => live_run_by_token(conn, token_hash),
    }
}

/// The claimed or active run a token belongs to: what may fetch its
/// workspace while its bootstrap is still on the way.
pub fn claimed_run_by_token(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE token_hash = ?1 AND state IN ('pending', 'active')"),
        params![token_hash],
        Run::from_row,
    )
    .optional()
}

/// The active run a token belongs to. Tokens of runs in any other state are
/// dead.
pub fn live_run_by_token(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE token_hash = ?1 AND state = 'active'"),
        params![token_hash],
        Run::from_row,
    )
    .optional()
}

/// Moves an unfinished run to its end, stamping `finished_at_ms`. False
/// when the run had already ended (e.g. superseded meanwhile) or the
/// ending is impossible from its state (complete needs active).
pub fn finish(conn: &Connection, id: RunId, ending: &Ending) -> rusqlite::Result<bool> {
    let (state, kind, from): (&str, Option<&str>, &str) = match ending {
        Ending::Complete => ("complete", None, "('active')"),
        Ending::Failed(kind) => ("failed", Some(kind.as_str()), "('pending', 'active')"),
        Ending::Superseded => ("superseded", None, "('pending', 'active')"),
    };
    let changed = conn.execute(
        &format!(
            "UPDATE runs SET state = ?2, failure_kind = ?3,
                    finished_at_ms = max(?4, coalesce(started_at_ms, queued_at_ms))
             WHERE id = ?1 AND state IN {from}"
        ),
        params![id.to_string(), state, kind, now_ms()],
    )?;
    Ok(changed == 1)
}

/// What [`reconcile`] found.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Runs a previous instance left active, now `failed`/`orphaned`.
    pub orphaned: Vec<Run>,
    /// Pending runs it had claimed, now unclaimed so they run again.
    pub released: Vec<Run>,
    /// Claimed runs whose executor outlives the server (a Slurm job), with
    /// the launcher's handle: the launcher asks after them again.
    pub adoptable: Vec<(Run, String)>,
}

/// Whether a launcher handle names an executor that does not die with the
/// server (a local process does: it gets SIGTERM when its parent goes).
const OUTLIVES_SERVER: &str = "executor IS NOT NULL AND executor NOT GLOB 'process:*'";

/// At server start: runs a previous instance left active are orphaned, and
/// pending runs it had claimed are released so they run again — except
/// those whose executor outlives a server, which are left to be adopted.
pub fn reconcile(conn: &Connection) -> rusqlite::Result<Reconciled> {
    let orphaned = conn
        .prepare(&format!(
            "UPDATE runs SET state = 'failed', failure_kind = 'orphaned',
                    finished_at_ms = max(?1, coalesce(started_at_ms, queued_at_ms))
             WHERE state = 'active' AND NOT ({OUTLIVES_SERVER}) RETURNING {RUN_COLUMNS}"
        ))?
        .query_map(params![now_ms()], Run::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let released = conn
        .prepare(&format!(
            "UPDATE runs SET token_hash = NULL, executor = NULL
             WHERE state = 'pending' AND token_hash IS NOT NULL AND NOT ({OUTLIVES_SERVER})
             RETURNING {RUN_COLUMNS}"
        ))?
        .query_map([], Run::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let adoptable = conn
        .prepare(&format!(
            "SELECT {RUN_COLUMNS}, executor FROM runs
             WHERE state IN ('pending', 'active') AND token_hash IS NOT NULL AND {OUTLIVES_SERVER}
             ORDER BY queued_at_ms"
        ))?
        .query_map([], |row| Ok((Run::from_row(row)?, row.get::<_, String>(15)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Reconciled { orphaned, released, adoptable })
}

pub fn get(conn: &Connection, id: RunId) -> rusqlite::Result<Option<Run>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        params![id.to_string()],
        Run::from_row,
    )
    .optional()
}

/// Where a page of runs starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Newest,
    /// The runs older than this one: a keyset page, as cheap as the first.
    Before(RunId),
    /// After skipping this many (`?page=N`): costs what it skips.
    Skip(u32),
}

/// Runs newest first, of one repository or all, a page at a time. Each
/// statement has its own text so that SQLite plans it on its index
/// (`runs_by_repo` for a repository, the primary key for all).
pub fn list(
    conn: &Connection,
    repo: Option<&RepoName>,
    limit: u32,
    start: Start,
) -> rusqlite::Result<Vec<Run>> {
    let (filter, order) = match (repo, start) {
        (Some(_), Start::Before(_)) => ("WHERE repo = ?1 AND id < ?2", "LIMIT ?3"),
        (Some(_), _) => ("WHERE repo = ?1", "LIMIT ?2 OFFSET ?3"),
        (None, Start::Before(_)) => ("WHERE id < ?1", "LIMIT ?2"),
        (None, _) => ("", "LIMIT ?1 OFFSET ?2"),
    };
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY id DESC {order}");
    let mut statement = conn.prepare_cached(&sql)?;
    let skip = match start {
        Start::Skip(n) => n,
        Start::Newest | Start::Before(_) => 0,
    };
    let rows = match (repo, start) {
        (Some(repo), Start::Before(id)) => {
            statement.query_map(params![repo.as_str(), id.to_string(), limit], Run::from_row)?
        }
        (Some(repo), _) => statement.query_map(params![repo.as_str(), limit, skip], Run::from_row)?,
        (None, Start::Before(id)) => statement.query_map(params![id.to_string(), limit], Run::from_row)?,
        (None, _) => statement.query_map(params![limit, skip], Run::from_row)?,
    };
    rows.collect()
}

/// How many runs wait and how many execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub active: u64,
}

/// The queue's size, from the `runs_queue` index.
pub fn queue_counts(conn: &Connection) -> rusqlite::Result<QueueCounts> {
    let mut counts = QueueCounts { pending: 0, active: 0 };
    let mut statement = conn.prepare_cached(
        "SELECT state, count(*) FROM runs WHERE state IN ('pending', 'active') GROUP BY state",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let n: u64 = row.get(1)?;
        match row.get_ref(0)?.as_str()? {
            "pending" => counts.pending = n,
            _ => counts.active = n,
        }
    }
    Ok(counts)
}

/// Each repository with its newest run, if it has one: one statement, an
/// index seek per repository.
pub fn latest_of_repos(
    conn: &Connection,
    repos: Vec<RepoName>,
) -> rusqlite::Result<Vec<(RepoName, Option<Run>)>> {
    let names = serde_json::to_string(&repos.iter().map(RepoName::as_str).collect::<Vec<_>>())
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (
             SELECT (SELECT id FROM runs WHERE repo = name.value ORDER BY id DESC LIMIT 1)
             FROM json_each(?1) AS name)"
    ))?;
    let mut latest: std::collections::HashMap<RepoName, Run> = statement
        .query_map(params![names], Run::from_row)?
        .map(|run| run.map(|run| (run.repo.clone(), run)))
        .collect::<rusqlite::Result<_>>()?;
    Ok(repos
        .into_iter()
        .map(|repo| {
            let run = latest.remove(&repo);
            (repo, run)
        })
        .collect())
}

/// The state of the newest run of a ref that passed or failed, for badges.
pub fn latest_verdict(
    conn: &Connection,
    repo: &RepoName,
    ref_name: &str,
) -> rusqlite::Result<Option<RunState>> {
    conn.query_row(
        "SELECT state FROM runs WHERE repo = ?1 AND ref_name = ?2
         AND state IN ('complete', 'failed') ORDER BY id DESC LIMIT 1",
        params![repo.as_str(), ref_name],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .map(|state| state.as_deref().and_then(RunState::parse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::token::hash as token_hash;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open_and_migrate(&dir.path().join("quire.db")).unwrap();
        (dir, conn)
    }

    fn push(ref_name: &str) -> NewRun {
        NewRun {
            repo: "foo.git".parse().unwrap(),
            ref_name: ref_name.into(),
            sha: "a".repeat(40),
            previous_sha: None,
            pushed_at_ms: 1,
            trigger: crate::runs::Trigger::Push,
            scheduled_at_ms: None,
        }
    }

    #[test]
    fn the_lifecycle_of_a_good_run() {
        let (_d, mut conn) = conn();
        let (id, superseded) = enqueue(&mut conn, &push("refs/heads/main")).unwrap();
        assert!(superseded.is_empty());
        assert_eq!(next_pending(&conn).unwrap().unwrap().id, id);
        let hash = token_hash("tok");
        assert!(claim(&conn, id, &hash).unwrap());
        assert!(!claim(&conn, id, &hash).unwrap(), "claimed once");
        assert!(next_pending(&conn).unwrap().is_none());
        let run = start_by_token(&conn, &hash).unwrap().unwrap();
        assert_eq!(run.state, RunState::Active);
        assert!(run.started_at_ms.unwrap() >= run.queued_at_ms);
        assert_eq!(start_by_token(&conn, &hash).unwrap().unwrap().started_at_ms, run.started_at_ms);
        assert!(finish(&conn, id, &Ending::Complete).unwrap());
        assert!(!finish(&conn, id, &Ending::Failed(FailureKind::Timeout)).unwrap(), "finished once");
        assert!(start_by_token(&conn, &hash).unwrap().is_none(), "token died with the run");
        let run = get(&conn, id).unwrap().unwrap();
        assert_eq!((run.state, run.failure_kind), (RunState::Complete, None));
    }

    #[test]
    fn a_new_push_supersedes_pending_runs_of_the_same_ref_only() {
        let (_d, mut conn) = conn();
        let (first, _) = enqueue(&mut conn, &push("refs/heads/main")).unwrap();
        let (other, _) = enqueue(&mut conn, &push("refs/heads/dev")).unwrap();
        let (_second, superseded) = enqueue(&mut conn, &push("refs/heads/main")).unwrap();
        assert_eq!(superseded, vec![first]);
        assert_eq!(get(&conn, first).unwrap().unwrap().state, RunState::Superseded);
        assert_eq!(get(&conn, other).unwrap().unwrap().state, RunState::Pending);
    }

    #[test]
    fn a_push_older_than_the_refs_newest_run_is_recorded_superseded_and_supersedes_nothing() {
        let (_d, mut conn) = conn();
        let newer = NewRun { pushed_at_ms: 20, ..push("refs/heads/main") };
        let (newer, _) = enqueue(&mut conn, &newer).unwrap();
        // Replayed from the spool after the newer push was queued.
        let older = NewRun { pushed_at_ms: 10, ..push("refs/heads/main") };
        let (older, superseded) = enqueue(&mut conn, &older).unwrap();
        assert!(superseded.is_empty(), "the newer run is left alone");
        assert_eq!(get(&conn, newer).unwrap().unwrap().state, RunState::Pending);
        assert_eq!(get(&conn, older).unwrap().unwrap().state, RunState::Superseded);
    }

    #[test]
    fn complete_needs_an_active_run() {
        let (_d, mut conn) = conn();
        let (id, _) = enqueue(&mut conn, &push("refs/heads/main")).unwrap();
        assert!(!finish(&conn, id, &Ending::Complete).unwrap());
        assert!(finish(&conn, id, &Ending::Failed(FailureKind::ProcessCrashed)).unwrap());
        let run = get(&conn, id).unwrap().unwrap();
        assert_eq!(run.failure_kind, Some(FailureKind::ProcessCrashed));
        assert_eq!(run.started_at_ms, None);
    }

    #[test]
    fn reconcile_orphans_active_runs_and_releases_claims() {
        let (_d, mut conn) = conn();
        let (active, _) = enqueue(&mut conn, &push("refs/heads/a")).unwrap();
        let (claimed, _) = enqueue(&mut conn, &push("refs/heads/b")).unwrap();
        claim(&conn, active, &token_hash("1")).unwrap();
        start_by_token(&conn, &token_hash("1")).unwrap().unwrap();
        claim(&conn, claimed, &token_hash("2")).unwrap();
        let reconciled = reconcile(&conn).unwrap();
        let ids = |runs: &[Run]| runs.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!((ids(&reconciled.orphaned), ids(&reconciled.released)), (vec![active], vec![claimed]));
        let run = get(&conn, active).unwrap().unwrap();
        assert_eq!((run.state, run.failure_kind), (RunState::Failed, Some(FailureKind::Orphaned)));
        assert_eq!(next_pending(&conn).unwrap().unwrap().id, claimed);
    }

    #[test]
    fn reconcile_leaves_runs_whose_executor_outlives_the_server_to_be_adopted() {
        let (_d, mut conn) = conn();
        let (remote, _) = enqueue(&mut conn, &push("refs/heads/a")).unwrap();
        let (queued, _) = enqueue(&mut conn, &push("refs/heads/b")).unwrap();
        let (local, _) = enqueue(&mut conn, &push("refs/heads/c")).unwrap();
        for (id, token, handle) in
            [(remote, "1", "slurm:41"), (queued, "2", "slurm:42"), (local, "3", "process:7")]
        {
            claim(&conn, id, &token_hash(token)).unwrap();
            record_executor(&conn, id, handle).unwrap();
        }
        start_by_token(&conn, &token_hash("1")).unwrap().unwrap();
        start_by_token(&conn, &token_hash("3")).unwrap().unwrap();
        let reconciled = reconcile(&conn).unwrap();
        let adopted: Vec<_> = reconciled.adoptable.iter().map(|(r, h)| (r.id, h.as_str())).collect();
        assert_eq!(adopted, [(remote, "slurm:41"), (queued, "slurm:42")]);
        assert_eq!(reconciled.orphaned.iter().map(|r| r.id).collect::<Vec<_>>(), [local]);
        assert!(reconciled.released.is_empty());
        assert_eq!(get(&conn, remote).unwrap().unwrap().state, RunState::Active, "still followed");
        assert!(next_pending(&conn).unwrap().is_none(), "the queued Slurm job is not launched twice");
    }

    #[test]
    fn the_schema_takes_only_launcher_handles_as_executors() {
        let (_d, mut conn) = conn();
        let (id, _) = enqueue(&mut conn, &push("refs/heads/a")).unwrap();
        for good in ["process:1", "slurm:123"] {
            record_executor(&conn, id, good).unwrap();
        }
        for bad in ["slurm:", "slurm:12;rm", "process:0", "ssh:3", "/tmp/ws"] {
            assert!(record_executor(&conn, id, bad).is_err(), "{bad:?} accepted");
        }
    }

    /// `complete → failed` satisfies every CHECK (a finished run with a
    /// failure kind), so only the transition trigger stands in its way:
    /// with the trigger the update is refused, without it the update lands.
    #[test]
    fn the_transition_trigger_alone_refuses_an_illegal_transition() {
        let (_d, mut conn) = conn();
        let (id, _) = enqueue(&mut conn, &push("refs/heads/main")).unwrap();
        claim(&conn, id, &token_hash("t")).unwrap();
        start_by_token(&conn, &token_hash("t")).unwrap().unwrap();
        assert!(finish(&conn, id, &Ending::Complete).unwrap());
        let illegal = "UPDATE runs SET state = 'failed', failure_kind = 'canceled' WHERE id = ?1";

        let err = conn.execute(illegal, params![id.to_string()]).unwrap_err();
        assert!(err.to_string().contains("illegal run state transition"), "{err}");
        assert_eq!(get(&conn, id).unwrap().unwrap().state, RunState::Complete);

        conn.execute_batch("DROP TRIGGER runs_transitions").unwrap();
        assert_eq!(conn.execute(illegal, params![id.to_string()]).unwrap(), 1, "no CHECK refuses it");
    }

    /// The database itself refuses rows in shapes the state machine forbids.
    #[test]
    fn the_schema_rejects_illegal_rows() {
        let (_d, conn) = conn();
        let sha = "b".repeat(40);
        let insert = |state: &str, kind: Option<&str>, started: Option<i64>, finished: Option<i64>| {
            conn.execute(
                "INSERT INTO runs (id, repo, ref_name, sha, pushed_at_ms, state, failure_kind,
                                   queued_at_ms, started_at_ms, finished_at_ms)
                 VALUES (?1, 'foo.git', 'refs/heads/main', ?2, 0, ?3, ?4, 10, ?5, ?6)",
                params![RunId::generate().to_string(), sha, state, kind, started, finished],
            )
        };
        assert!(insert("complete", None, Some(11), None).is_err(), "complete without finish");
        assert!(insert("complete", None, None, Some(12)).is_err(), "complete without start");
        assert!(insert("pending", None, Some(11), None).is_err(), "pending with start");
        assert!(insert("active", None, None, None).is_err(), "active without start");
        assert!(insert("failed", None, Some(11), Some(12)).is_err(), "failed without kind");
        assert!(insert("failed", Some("bogus"), Some(11), Some(12)).is_err(), "unknown kind");
        assert!(insert("complete", Some("timeout"), Some(11), Some(12)).is_err(), "kind on success");
        assert!(insert("superseded", None, None, None).is_err(), "superseded without finish");
        assert!(insert("active", None, Some(9), None).is_err(), "started before queued");
        assert!(insert("complete", None, Some(11), Some(10)).is_err(), "finished before started");
        assert!(insert("exploded", None, None, None).is_err(), "unknown state");
        insert("complete", None, Some(11), Some(12)).unwrap();
        insert("failed", Some("timeout"), None, Some(12)).unwrap();

        let id: String =
            conn.query_row("SELECT id FROM runs WHERE state = 'complete'", [], |r| r.get(0)).unwrap();
        let update = |sql: &str| conn.execute(sql, params![id]);
        assert!(update("UPDATE runs SET finished_at_ms = 13 WHERE id = ?1").is_err(), "stamped twice");
        assert!(update("UPDATE runs SET state = 'active', finished_at_ms = NULL WHERE id = ?1").is_err());

        let jobs_made = std::cell::Cell::new(0);
        let job = |state: &str, started: Option<i64>, finished: Option<i64>| {
            jobs_made.set(jobs_made.get() + 1);
            conn.execute(
                "INSERT INTO jobs (run_id, job_id, position, state, started_at_ms, finished_at_ms)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5)",
                params![id, format!("job-{}", jobs_made.get()), state, started, finished],
            )
        };
        assert!(job("skipped", Some(11), Some(12)).is_err(), "skipped with a start");
        assert!(job("complete", Some(11), None).is_err(), "complete without finish");
        assert!(job("started", Some(11), None).is_err(), "unknown job state");
        job("skipped", None, Some(12)).unwrap();
        assert!(conn
            .execute(
                "INSERT INTO jobs (run_id, job_id, position, state) VALUES (?1, 'a/b', 1, 'pending')",
                params![id]
            )
            .is_err());
        assert!(conn
            .execute(
                "INSERT INTO sh_events (run_id, job_id, seq, cmd, started_at_ms) VALUES (?1, 'nope', 1, 'x', 1)",
                params![id]
            )
            .is_err(),
            "command of an unknown job");
    }
}
