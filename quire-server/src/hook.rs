//! `quire hook post-receive`, run by git in a hosted repository after a
//! push: reads git's `<old> <new> <ref>` lines and tells the server. A push
//! is never refused and never lost: when the server is down, the run is
//! queued straight in the database, or, when the database cannot take it
//! (none yet, another schema version, busy), saved in the spool; either way
//! it starts when the server does, and a warning is printed.

use std::io::BufRead;
use std::path::Path;

use quire_core::clock::now_ms;
use quire_core::id::{InvalidRepoName, RepoName};
use quire_core::push::Trigger;

use crate::db;
use crate::protocol::{self, Message, RefUpdate, SendError};
use crate::root::DataRoot;
use crate::runs::{self, NewRun};

/// What the hook did, for its message to the pusher.
#[derive(Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// The server queued these runs, and saved `spooled` more in the spool
    /// because its database could not take them yet.
    Sent {
        runs: Vec<String>,
        spooled: usize,
    },
    QueuedOffline(usize),
    /// Saved in the spool because neither the server nor the database
    /// could take the push; the server queues it (at start, or within
    /// seconds if it runs).
    Spooled {
        runs: usize,
        because: String,
    },
    NothingToRun,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the hook runs in {0}, which is not a repository under {1}")]
    NotARepository(String, String),
    #[error(transparent)]
    Name(#[from] InvalidRepoName),
    #[error("reading the pushed refs: {0}")]
    Input(#[from] std::io::Error),
    #[error("the server refused the push: {0}")]
    Refused(String),
    #[error("the server is down and the push could not be saved: {0}")]
    Offline(String),
}

/// The repository the hook runs for: git runs hooks in the bare
/// repository's directory.
pub fn current_repo(root: &DataRoot, git_dir: &Path) -> Result<RepoName, HookError> {
    let repos = root.repos_dir().canonicalize().unwrap_or_else(|_| root.repos_dir());
    let dir = git_dir.canonicalize().unwrap_or_else(|_| git_dir.to_path_buf());
    let relative = dir
        .strip_prefix(&repos)
        .map_err(|_| HookError::NotARepository(dir.display().to_string(), repos.display().to_string()))?;
    Ok(relative.to_string_lossy().parse()?)
}

/// Parses git's post-receive input. Malformed lines are skipped.
pub fn read_updates(input: impl BufRead) -> Result<Vec<RefUpdate>, std::io::Error> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(ref_name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            updates.push(RefUpdate { ref_name: ref_name.into(), old_sha: old.into(), new_sha: new.into() });
        }
    }
    Ok(updates)
}

/// Hands a push (`trigger`: a git push, or `quire ci retrigger`) to the
/// server, or queues or spools it when the server cannot take it.
pub fn post_receive(
    root: &DataRoot,
    repo: RepoName,
    updates: Vec<RefUpdate>,
    trigger: Trigger,
) -> Result<HookOutcome, HookError> {
    if updates.iter().all(RefUpdate::is_deletion) {
        return Ok(HookOutcome::NothingToRun);
    }
    let pushed_at_ms = now_ms();
    let message = Message::Push { repo: repo.to_string(), pushed_at_ms, refs: updates.clone(), trigger };
    let runs = NewRun::from_push(&repo, pushed_at_ms, &updates, trigger).len();
    match protocol::send(&root.socket_path(), &message) {
        Ok(accepted) => Ok(HookOutcome::Sent { runs: accepted.runs, spooled: accepted.spooled }),
        Err(SendError::NotRunning { .. }) => queue_offline(root, &repo, &updates, pushed_at_ms, trigger),
        Err(SendError::Refused(reason)) => Err(HookError::Refused(reason)),
        // A server that does not answer sensibly may or may not have
        // queued the push: a run twice is better than none.
        Err(other @ (SendError::Io(_) | SendError::BadReply(_))) => {
            spool_push(root, &message, pushed_at_ms, runs, other.to_string())
        }
    }
}

/// Queues the push's runs straight in the database; the refs it could not
/// queue (the database gave out halfway, or was never there) go to the
/// spool, so none is queued twice and none is lost.
fn queue_offline(
    root: &DataRoot,
    repo: &RepoName,
    updates: &[RefUpdate],
    pushed_at_ms: i64,
    trigger: Trigger,
) -> Result<HookOutcome, HookError> {
    let mut conn = match db::open_current(&root.db_path()) {
        Ok(conn) => conn,
        Err(e) => return spool_rest(root, repo, updates, pushed_at_ms, trigger, 0, e.to_string()),
    };
    let mut queued = 0;
    for (at, update) in updates.iter().enumerate() {
        let Some(new) = NewRun::from_update(repo, pushed_at_ms, update, trigger) else { continue };
        if let Err(e) = runs::enqueue(&mut conn, &new) {
            return spool_rest(root, repo, updates, pushed_at_ms, trigger, at, e.to_string());
        }
        queued += 1;
    }
    Ok(HookOutcome::QueuedOffline(queued))
}

/// Spools the refs from `at` on.
fn spool_rest(
    root: &DataRoot,
    repo: &RepoName,
    updates: &[RefUpdate],
    pushed_at_ms: i64,
    trigger: Trigger,
    at: usize,
    because: String,
) -> Result<HookOutcome, HookError> {
    let rest = &updates[at..];
    let message = Message::Push { repo: repo.to_string(), pushed_at_ms, refs: rest.to_vec(), trigger };
    let runs = NewRun::from_push(repo, pushed_at_ms, rest, trigger).len();
    spool_push(root, &message, pushed_at_ms, runs, because)
}

fn spool_push(
    root: &DataRoot,
    message: &Message,
    pushed_at_ms: i64,
    runs: usize,
    because: String,
) -> Result<HookOutcome, HookError> {
    crate::spool::save(&root.spool_dir(), message, pushed_at_ms)
        .map_err(|e| HookError::Offline(format!("{because}; and the spool failed too: {e}")))?;
    Ok(HookOutcome::Spooled { runs, because })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gits_lines() {
        let input = format!(
            "{a} {b} refs/heads/main\ngarbage\n{b} {z} refs/heads/gone\n",
            a = "1".repeat(40),
            b = "2".repeat(40),
            z = protocol::ZERO_SHA
        );
        let updates = read_updates(input.as_bytes()).unwrap();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].ref_name, "refs/heads/main");
        assert!(updates[1].is_deletion());
    }
}
