//! Retention (`:ci {:retention {:keep-runs N :keep-days D}}`): which runs
//! of a repository are old enough to delete, and deleting them, rows and
//! files. Applied by the launcher after each run of the repository ends,
//! and by `quire ci prune`. The policy only ever removes finished runs, and
//! never the repository's newest run nor, for each ref, its newest run that
//! passed or failed (what the ref's badge shows). Without a policy nothing
//! is removed.

use std::collections::BTreeSet;

use quire_core::id::RepoName;
use rusqlite::{params, Connection};

use crate::root::DataRoot;
use crate::runs::{self, Run};

/// How much history to keep per repository; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest runs to keep.
    pub keep_runs: Option<u64>,
    /// Runs that finished within this many days are kept.
    pub keep_days: Option<u64>,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        self.keep_runs.is_none() && self.keep_days.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("reading or deleting runs failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Runs deleted at a time: each batch is one short write transaction, so a
/// big prune never holds the database for long.
const BATCH: usize = 100;

/// The runs of `repo` the policy would delete, oldest first.
pub fn candidates(
    conn: &Connection,
    repo: &RepoName,
    policy: &Retention,
    now_ms: i64,
) -> rusqlite::Result<Vec<Run>> {
    if policy.keeps_everything() {
        return Ok(Vec::new());
    }
    let keep_runs = policy.keep_runs.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let cutoff = policy.keep_days.map(|days| {
        now_ms.saturating_sub(i64::try_from(days).unwrap_or(i64::MAX).saturating_mul(86_400_000))
    });
    // `newest` ranks all the repository's runs; `verdict` ranks, per ref,
    // the runs that passed or failed (rank 1 is the badge's run).
    let mut statement = conn.prepare_cached(
        "WITH ranked AS (
             SELECT id, state, finished_at_ms,
                    row_number() OVER (ORDER BY id DESC) AS newest,
                    row_number() OVER (PARTITION BY ref_name, state IN ('complete', 'failed') ORDER BY id DESC)
                        AS verdict
             FROM runs WHERE repo = ?1)
         SELECT id FROM ranked
         WHERE state NOT IN ('pending', 'active')
           AND newest > 1
           AND NOT (state IN ('complete', 'failed') AND verdict = 1)
           AND ((?2 IS NOT NULL AND newest > ?2) OR (?3 IS NOT NULL AND coalesce(finished_at_ms, 0) < ?3))
         ORDER BY id",
    )?;
    let ids: Vec<String> = statement
        .query_map(params![repo.as_str(), keep_runs, cutoff], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(run) = id.parse().ok().map(|id| runs::get(conn, id)).transpose()?.flatten() {
            out.push(run);
        }
    }
    Ok(out)
}

/// Deletes `doomed` (rows first, in short batches, then each run's
/// directory), and returns them. A directory that cannot be removed is
/// logged and left; its row is gone either way.
pub fn delete(conn: &mut Connection, root: &DataRoot, doomed: Vec<Run>) -> Result<Vec<Run>, PruneError> {
    for batch in doomed.chunks(BATCH) {
        let tx = conn.transaction()?;
        for run in batch {
            // jobs and sh_events go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM runs WHERE id = ?1", params![run.id.to_string()])?;
        }
        tx.commit()?;
        for run in batch {
            let dir = root.run_dir(&run.repo, run.id);
            match std::fs::remove_dir_all(dir.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(run = %run.id, error = %e, "cannot remove a pruned run's directory"),
            }
        }
    }
    Ok(doomed)
}

/// Applies the policy to one repository; the runs deleted.
pub fn prune_repo(
    conn: &mut Connection,
    root: &DataRoot,
    repo: &RepoName,
    policy: &Retention,
    now_ms: i64,
) -> Result<Vec<Run>, PruneError> {
    let doomed = candidates(conn, repo, policy, now_ms)?;
    delete(conn, root, doomed)
}

/// Every repository that has runs (including removed repositories).
pub fn repos_with_runs(conn: &Connection) -> rusqlite::Result<Vec<RepoName>> {
    let mut statement = conn.prepare_cached("SELECT DISTINCT repo FROM runs")?;
    let names: BTreeSet<String> = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(names.into_iter().filter_map(|n| n.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::runs::NewRun;

    fn setup() -> (tempfile::TempDir, DataRoot, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::resolve(Some(dir.path().to_path_buf()));
        let conn = db::open_and_migrate(&root.db_path()).unwrap();
        (dir, root, conn)
    }

    /// A finished run of `ref_name`, newer than every run before it.
    fn finished(conn: &mut Connection, ref_name: &str, ok: bool, finished_at: i64) -> Run {
        let n: i64 = conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap();
        let id = format!("01a00000-0000-7000-8000-{:012x}", n + 1);
        let (state, kind) = if ok { ("complete", None) } else { ("failed", Some("pipeline-failure")) };
        conn.execute(
            "INSERT INTO runs (id, repo, ref_name, sha, pushed_at_ms, state, failure_kind, queued_at_ms,
                               started_at_ms, finished_at_ms)
             VALUES (?1, 'app.git', ?2, ?3, 1, ?4, ?5, 1, 1, ?6)",
            params![id, ref_name, "a".repeat(40), state, kind, finished_at],
        )
        .unwrap();
        runs::get(conn, id.parse().unwrap()).unwrap().unwrap()
    }

    fn ids(runs: &[Run]) -> Vec<String> {
        runs.iter().map(|r| r.id.to_string()).collect()
    }

    #[test]
    fn keep_runs_spares_the_newest_and_each_refs_badge() {
        let (_dir, root, mut conn) = setup();
        let repo: RepoName = "app.git".parse().unwrap();
        let old_main = finished(&mut conn, "refs/heads/main", true, 10);
        let badge_of_topic = finished(&mut conn, "refs/heads/topic", false, 20);
        let main_2 = finished(&mut conn, "refs/heads/main", true, 30);
        let main_3 = finished(&mut conn, "refs/heads/main", false, 40);
        let newest = finished(&mut conn, "refs/heads/main", true, 50);
        std::fs::create_dir_all(root.run_dir(&repo, old_main.id).path()).unwrap();

        let policy = Retention { keep_runs: Some(1), keep_days: None };
        let doomed = candidates(&conn, &repo, &policy, 100).unwrap();
        assert_eq!(ids(&doomed), ids(&[old_main.clone(), main_2, main_3]));
        let deleted = prune_repo(&mut conn, &root, &repo, &policy, 100).unwrap();
        assert_eq!(deleted.len(), 3);
        assert!(!root.run_dir(&repo, old_main.id).path().exists());
        let left = runs::list(&conn, Some(&repo), 10, runs::Start::Newest).unwrap();
        assert_eq!(ids(&left), ids(&[newest, badge_of_topic]));
    }

    #[test]
    fn keep_days_counts_from_the_finish_and_no_policy_keeps_all() {
        let (_dir, _root, mut conn) = setup();
        let repo: RepoName = "app.git".parse().unwrap();
        let day = 86_400_000;
        let ancient = finished(&mut conn, "refs/heads/a", true, 1);
        finished(&mut conn, "refs/heads/a", true, 9 * day);
        finished(&mut conn, "refs/heads/a", true, 10 * day);
        let policy = Retention { keep_runs: None, keep_days: Some(2) };
        assert_eq!(ids(&candidates(&conn, &repo, &policy, 11 * day).unwrap()), ids(&[ancient]));
        assert!(candidates(&conn, &repo, &Retention::default(), 11 * day).unwrap().is_empty());
    }

    #[test]
    fn unfinished_runs_are_never_candidates() {
        let (_dir, _root, mut conn) = setup();
        let repo: RepoName = "app.git".parse().unwrap();
        for branch in ["x", "y", "z"] {
            let new = NewRun {
                repo: repo.clone(),
                ref_name: format!("refs/heads/{branch}"),
                sha: "b".repeat(40),
                previous_sha: None,
                pushed_at_ms: 1,
                trigger: crate::runs::Trigger::Push,
                scheduled_at_ms: None,
            };
            runs::enqueue(&mut conn, &new).unwrap();
        }
        let policy = Retention { keep_runs: Some(1), keep_days: Some(0) };
        assert!(candidates(&conn, &repo, &policy, i64::MAX).unwrap().is_empty());
    }
}
