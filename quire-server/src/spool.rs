//! The push spool (`<root>/spool/`): where a push waits that the database
//! could not take (no database yet, a schema of another version, locked
//! past its busy timeout, a full disk), left by the hook when the server is
//! down or not answering and by the server itself. Each push is one JSON
//! file, written under a temporary name and renamed, so a reader never sees
//! half of one. Replaying is the launcher's (`Launcher::replay_spool`, at
//! start before new pushes are taken, then every 2 s): a file is removed
//! only once its runs are queued, rewritten with only the refs left when
//! the database gives out halfway, and set aside as `*.bad` when it cannot
//! be read.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use quire_core::id::RepoName;
use quire_core::push::Trigger;

use crate::protocol::{Message, RefUpdate};
use crate::runs::NewRun;

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

/// Keeps an unreadable spooled push for the operator, out of the way.
pub fn set_aside(path: &Path, reason: &str) -> io::Result<()> {
    tracing::warn!(file = %path.display(), %reason, "a spooled push cannot be read; set aside");
    fs::rename(path, path.with_extension("bad"))
}

/// A push read back from the spool.
#[derive(Debug, Clone)]
pub struct SpooledPush {
    repo: RepoName,
    pushed_at_ms: i64,
    refs: Vec<RefUpdate>,
    trigger: Trigger,
}

impl SpooledPush {
    /// The runs it asks for, each with the index of its ref.
    pub fn runs(&self) -> Vec<(usize, NewRun)> {
        self.refs
            .iter()
            .enumerate()
            .filter_map(|(at, update)| {
                Some((at, NewRun::from_update(&self.repo, self.pushed_at_ms, update, self.trigger)?))
            })
            .collect()
    }

    /// The same push without the refs before `at` (already queued).
    pub fn from_ref(&self, at: usize) -> Message {
        Message::Push {
            repo: self.repo.to_string(),
            pushed_at_ms: self.pushed_at_ms,
            refs: self.refs[at.min(self.refs.len())..].to_vec(),
            trigger: self.trigger,
        }
    }
}

/// Reads a spooled push.
pub fn read(path: &Path) -> Result<SpooledPush, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    match serde_json::from_str::<Message>(&text).map_err(|e| e.to_string())? {
        Message::Push { repo, pushed_at_ms, refs, trigger } => {
            let repo: RepoName = repo.parse().map_err(|e: quire_core::id::InvalidRepoName| e.to_string())?;
            Ok(SpooledPush { repo, pushed_at_ms, refs, trigger })
        }
        Message::Cancel { .. } => Err("only pushes are spooled".to_string()),
    }
}

/// Replaces a spooled push (what is left of it) in place, atomically.
pub fn rewrite(path: &Path, message: &Message) -> io::Result<()> {
    let partial = path.with_extension("partial");
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    io::Write::write_all(&mut file, serde_json::to_string(message).map_err(io::Error::other)?.as_bytes())?;
    file.sync_all()?;
    fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(repo: &str, at: i64, branches: &[&str]) -> Message {
        Message::Push {
            repo: repo.into(),
            pushed_at_ms: at,
            refs: branches
                .iter()
                .map(|branch| RefUpdate {
                    ref_name: format!("refs/heads/{branch}"),
                    old_sha: crate::protocol::ZERO_SHA.into(),
                    new_sha: "c".repeat(40),
                })
                .collect(),
            trigger: Trigger::Push,
        }
    }

    #[test]
    fn spooled_pushes_list_oldest_first_and_read_back_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        save(&spool, &push("app.git", 20, &["late"]), 20).unwrap();
        save(&spool, &push("app.git", 10, &["early", "other"]), 10).unwrap();
        fs::write(spool.join("00-garbage.json"), "{not json").unwrap();

        let files = spooled(&spool).unwrap();
        assert_eq!(files.len(), 3);
        assert!(read(&files[0]).is_err(), "garbage sorts first and does not read");
        let early = read(&files[1]).unwrap();
        let refs: Vec<String> = early.runs().into_iter().map(|(_, run)| run.ref_name).collect();
        assert_eq!(refs, ["refs/heads/early", "refs/heads/other"]);
        assert_eq!(pending(&spool).unwrap(), 3);

        set_aside(&files[0], "not json").unwrap();
        assert!(spool.join("00-garbage.bad").exists(), "an unreadable push is set aside, not lost");
        assert_eq!(pending(&spool).unwrap(), 2);
    }

    #[test]
    fn a_push_cut_short_keeps_only_the_refs_left() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let path = save(&spool, &push("app.git", 10, &["a", "b", "c"]), 10).unwrap();
        let whole = read(&path).unwrap();
        rewrite(&path, &whole.from_ref(1)).unwrap();
        let rest = read(&path).unwrap();
        let refs: Vec<String> = rest.runs().into_iter().map(|(_, run)| run.ref_name).collect();
        assert_eq!(refs, ["refs/heads/b", "refs/heads/c"]);
        assert_eq!(pending(&spool).unwrap(), 1, "no temporary file is left behind");
    }
}
