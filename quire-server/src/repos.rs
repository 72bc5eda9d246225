//! Hosted repositories: creating, listing and removing bare repositories
//! with their post-receive hook. Names are `quire_core::id::RepoName`, the
//! only way a name from a user, a URL or a hook becomes a path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use quire_core::id::{InvalidRepoName, RepoName};

use crate::root::DataRoot;
use crate::runs::CommitSummary;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Name(#[from] InvalidRepoName),
    #[error("repository {0} already exists")]
    Exists(RepoName),
    #[error("no repository {0}")]
    Missing(RepoName),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("git init failed for {0}: {1}")]
    Git(RepoName, String),
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> RepoError + 'p {
    move |source| RepoError::Io { what, path: path.to_path_buf(), source }
}

/// Creates a bare repository with a post-receive hook calling this binary.
pub fn create(root: &DataRoot, name: &RepoName) -> Result<PathBuf, RepoError> {
    let path = root.repo_path(name);
    if path.exists() {
        return Err(RepoError::Exists(name.clone()));
    }
    let parent = path.parent().expect("repo paths have a parent");
    fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
    let out = Command::new("git")
        .args(["init", "--bare", "--quiet", "--initial-branch=main"])
        .arg(&path)
        .output()
        .map_err(io("cannot run git for", &path))?;
    if !out.status.success() {
        return Err(RepoError::Git(name.clone(), String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    install_hook(root, &path)?;
    Ok(path)
}

/// The hook is a two-line script so that moving the binary only needs
/// `repo new` again, not editing git internals by hand.
fn install_hook(root: &DataRoot, repo: &Path) -> Result<(), RepoError> {
    let exe = std::env::current_exe().map_err(io("cannot locate the quire binary for", repo))?;
    let hook = repo.join("hooks/post-receive");
    let script = format!(
        "#!/bin/sh\n# Installed by quire: queues a CI run for each updated ref.\nexec {} --root {} hook post-receive\n",
        shell_quote(&exe.display().to_string()),
        shell_quote(&root.path().display().to_string()),
    );
    fs::write(&hook, script).map_err(io("cannot write the hook", &hook))?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
        .map_err(io("cannot make executable", &hook))?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Every hosted repository, sorted.
pub fn list(root: &DataRoot) -> Result<Vec<RepoName>, RepoError> {
    let base = root.repos_dir();
    names_under(&base).map_err(io("cannot read", &base))
}

/// The repository names laid out below `base` (`name.git` and
/// `group/name.git` directories), sorted; none when `base` does not exist.
/// The data root keeps repositories and their caches this way.
pub fn names_under(base: &Path) -> std::io::Result<Vec<RepoName>> {
    let mut names = Vec::new();
    let Ok(entries) = fs::read_dir(base) else { return Ok(names) };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        // The entry's own type (no extra stat per repository on every page
        // that lists them); only a symlink is followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => entry.path().is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => false,
        };
        if !is_dir {
            continue;
        }
        if let Ok(name) = file_name.parse::<RepoName>() {
            names.push(name);
        } else if let Ok(group) = fs::read_dir(entry.path()) {
            for inner in group.flatten() {
                let candidate = format!("{file_name}/{}", inner.file_name().to_string_lossy());
                if let Ok(name) = candidate.parse::<RepoName>() {
                    names.push(name);
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// `git archive` of `sha` in the bare repository at `bare`: the commit as
/// a tar stream on the child's stdout, which holds at most a pipe's worth
/// until it is read. Dropping the child kills it.
pub fn start_archive(bare: &Path, sha: &str) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["archive", "--format=tar", sha])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// The subject line and author of `sha` in the bare repository at `bare`,
/// cut to 200 characters and stripped of control characters (they are
/// whatever the pusher wrote); empty when git cannot tell.
pub fn commit_summary(bare: &Path, sha: &str) -> CommitSummary {
    if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return CommitSummary::default();
    }
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        // git cuts both to 200 columns itself, so a huge subject is never
        // read whole here (it pads them to 200; the padding is trimmed).
        .args(["log", "-1", "--no-show-signature", "--format=%<(200,trunc)%s%x00%<(200,trunc)%an", sha, "--"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else { return CommitSummary::default() };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim_end_matches('\n').splitn(2, '\0');
    // Control characters and the invisible ones that reorder or hide text
    // (bidi overrides, zero-width marks) go: a pusher must not be able to
    // make a subject look like another.
    let shown = |c: &char| {
        !c.is_control()
            && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    let clean = |s: Option<&str>| {
        let s: String = s?.chars().filter(shown).take(200).collect();
        let s = s.trim_end().to_string();
        (!s.trim().is_empty()).then_some(s)
    };
    CommitSummary { subject: clean(parts.next()), author: clean(parts.next()) }
}

/// Removes a repository (its runs stay in the database and on disk).
pub fn remove(root: &DataRoot, name: &RepoName) -> Result<(), RepoError> {
    let path = root.repo_path(name);
    if !path.is_dir() {
        return Err(RepoError::Missing(name.clone()));
    }
    fs::remove_dir_all(&path).map_err(io("cannot remove", &path))?;
    if let Some(group) = path.parent().filter(|p| *p != root.repos_dir()) {
        let _ = fs::remove_dir(group);
    }
    Ok(())
}
