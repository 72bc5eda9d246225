//! The push spool (`<root>/spool/`): where the hook leaves a push it could
//! neither hand to a running server nor write to the database (no database
//! yet, a schema of another version, or a database busy past its timeout).
//! Each push is one JSON file, written under a temporary name and renamed,
//! so a reader never sees half of one. `quire serve` replays the spool into
//! the queue at start, after migrating, oldest push first, and the launcher
//! replays it every few seconds while the server runs (the server itself
//! spools a push its database cannot take). A file is removed only once its
//! runs are queued, and a file that cannot be read is set aside as `*.bad`
//! rather than deleted.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use quire_core::id::RepoName;
use rusqlite::Connection;

use crate::protocol::Message;
use crate::runs::{self, NewRun};

/// Saves a push message for the next server start; `pushed_at_ms` names
/// the file, so that a sorted listing is push order.
pub fn save(dir: &Path, message: &Message, pushed_at_ms: i64) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let name = format!("{pushed_at_ms:020}-{:016x}", u64::from_le_bytes(nonce));
    let partial = dir.join(format!(".{name}.partial"));
    let path = dir.join(format!("{name}.json"));
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
    io::Write::write_all(&mut file, serde_json::to_string(message).map_err(io::Error::other)?.as_bytes())?;
    file.sync_all()?;
    fs::rename(&partial, &path)?;
    Ok(path)
}

/// How many pushes wait in the spool.
pub fn pending(dir: &Path) -> io::Result<usize> {
    Ok(spooled(dir)?.len())
}

/// The spooled pushes, oldest first.
pub fn spooled(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub pushes: usize,
    pub runs: usize,
    /// Files that could not be read, renamed to `*.bad`.
    pub set_aside: usize,
}

/// Queues every spooled push, oldest first.
pub fn replay(dir: &Path, conn: &mut Connection) -> io::Result<Replayed> {
    let mut replayed = Replayed::default();
    for path in spooled(dir)? {
        match read(&path) {
            Ok(runs_of_push) => {
                for new in &runs_of_push {
                    runs::enqueue(conn, new).map_err(io::Error::other)?;
                }
                fs::remove_file(&path)?;
                replayed.pushes += 1;
                replayed.runs += runs_of_push.len();
            }
            Err(reason) => {
                set_aside(&path, &reason)?;
                replayed.set_aside += 1;
            }
        }
    }
    Ok(replayed)
}

/// Keeps an unreadable spooled push for the operator, out of the way.
pub fn set_aside(path: &Path, reason: &str) -> io::Result<()> {
    tracing::warn!(file = %path.display(), %reason, "a spooled push cannot be read; set aside");
    fs::rename(path, path.with_extension("bad"))
}

/// The runs a spooled push asks for.
pub fn read(path: &Path) -> Result<Vec<NewRun>, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    match serde_json::from_str::<Message>(&text).map_err(|e| e.to_string())? {
        Message::Push { repo, pushed_at_ms, refs } => {
            let repo: RepoName = repo.parse().map_err(|e: quire_core::id::InvalidRepoName| e.to_string())?;
            Ok(NewRun::from_push(&repo, pushed_at_ms, &refs))
        }
        Message::Cancel { .. } => Err("only pushes are spooled".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RefUpdate;

    fn push(repo: &str, at: i64, branch: &str) -> Message {
        Message::Push {
            repo: repo.into(),
            pushed_at_ms: at,
            refs: vec![RefUpdate {
                ref_name: format!("refs/heads/{branch}"),
                old_sha: crate::protocol::ZERO_SHA.into(),
                new_sha: "c".repeat(40),
            }],
        }
    }

    #[test]
    fn spooled_pushes_replay_once_in_push_order_and_bad_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        save(&spool, &push("app.git", 20, "late"), 20).unwrap();
        save(&spool, &push("app.git", 10, "early"), 10).unwrap();
        fs::write(spool.join("00-garbage.json"), "{not json").unwrap();
        let mut conn = crate::db::open_and_migrate(&dir.path().join("quire.db")).unwrap();

        let replayed = replay(&spool, &mut conn).unwrap();
        assert_eq!(replayed, Replayed { pushes: 2, runs: 2, set_aside: 1 });
        let refs: Vec<String> = runs::list(&conn, None, 10, runs::Start::Newest)
            .unwrap()
            .into_iter()
            .map(|r| r.ref_name)
            .collect();
        assert_eq!(refs, ["refs/heads/late", "refs/heads/early"], "newest first: early was queued first");
        assert!(spool.join("00-garbage.bad").exists(), "an unreadable push is set aside, not lost");

        assert_eq!(replay(&spool, &mut conn).unwrap(), Replayed::default(), "replayed once");
    }
}
