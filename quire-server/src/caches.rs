//! Run caches (`QUIRE_CACHE_DIR`): one directory per repository and ref
//! under `<root>/cache/<repo>/<ref, percent-encoded>/`, kept between the
//! ref's runs. A ref's first run starts from a copy of the default branch's
//! cache (copy-on-write where the file system allows), so a branch never
//! changes what the default branch sees; a run of a ref whose cache another
//! run holds gets an empty private one, dropped when it ends. A cache that
//! a run holds is never copied: the run could be changing it under the
//! copy (swapping a directory for a symlink to the host, say).
//! `:ci {:cache-mb N}` caps each repository's caches, least recently used
//! refs evicted first; a cache that cannot be measured (too many entries,
//! an unreadable directory) counts as over the cap. Which runs hold which
//! cache is the launcher's; this module only lays the directories out,
//! copies, measures and removes them, never following a symlink a pipeline
//! left in a cache.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use quire_core::id::RepoName;

use crate::repos;
use crate::root::DataRoot;

/// One ref's cache as `quire ci cache list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub repo: RepoName,
    pub ref_name: String,
    pub bytes: u64,
    /// When a run last used it (Unix ms), if known.
    pub last_used_ms: Option<i64>,
}

/// `<root>/cache/<repo>/`.
pub fn repo_dir(root: &DataRoot, repo: &RepoName) -> PathBuf {
    root.path().join("cache").join(repo.as_str())
}

/// `<root>/cache/<repo>/<encoded ref>/`.
pub fn ref_dir(root: &DataRoot, repo: &RepoName, ref_name: &str) -> PathBuf {
    repo_dir(root, repo).join(encode_ref(ref_name))
}

/// Every byte outside `[A-Za-z0-9_-]` as `%XX`: a ref name becomes one
/// path component that decodes back to it, and `refs/heads/a-b` and
/// `refs/heads/a/b` stay apart. A `.` is encoded too, so no encoded name
/// ends like a stamp (`<name>.used`): a branch named `x.used` cannot take
/// the place of branch `x`'s stamp.
pub fn encode_ref(ref_name: &str) -> String {
    let mut out = String::with_capacity(ref_name.len() + 8);
    for byte in ref_name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode_ref(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = name.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The repository's default branch: what its bare repository's `HEAD`
/// names (normally `refs/heads/main`).
pub fn default_ref(root: &DataRoot, repo: &RepoName) -> String {
    fs::read_to_string(root.repo_path(repo).join("HEAD"))
        .ok()
        .and_then(|head| head.trim().strip_prefix("ref: ").map(str::to_string))
        .unwrap_or_else(|| "refs/heads/main".to_string())
}

/// Makes the ref's cache ready: there already, else a copy of the default
/// branch's when `may_copy_default` (no run holds it) and it fits under
/// `cap_bytes`, else empty. Marks it used now.
pub fn prepare(
    root: &DataRoot,
    repo: &RepoName,
    ref_name: &str,
    may_copy_default: bool,
    cap_bytes: u64,
) -> io::Result<PathBuf> {
    let dir = ref_dir(root, repo, ref_name);
    if !dir.is_dir() {
        fs::create_dir_all(repo_dir(root, repo))?;
        let default = ref_dir(root, repo, &default_ref(root, repo));
        let copy = may_copy_default && default != dir && default.is_dir() && size_of(&default) <= cap_bytes;
        if !copy || copy_tree(&default, &dir).is_err() {
            // A failed copy leaves nothing half made: start empty.
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir)?;
        }
    }
    mark_used(&dir)?;
    Ok(dir)
}

/// An empty private cache at `into`, for a run whose ref cache another run
/// holds (or whose cache could not be made).
pub fn private_empty(into: &Path) -> io::Result<PathBuf> {
    let _ = fs::remove_dir_all(into);
    fs::create_dir_all(into)?;
    Ok(into.to_path_buf())
}

/// `cp -a --reflink=auto`: copy-on-write where the file system can, and
/// symlinks copied as symlinks.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        let _ = fs::remove_dir_all(to);
        Err(io::Error::other(format!("copying the cache {} failed ({status})", from.display())))
    }
}

/// The stamp beside a cache that says when it was last used (beside it,
/// not in it, where the pipeline cannot change it).
fn stamp(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".used");
    dir.with_file_name(name)
}

fn mark_used(dir: &Path) -> io::Result<()> {
    fs::write(stamp(dir), quire_core::clock::now_ms().to_string())
}

fn last_used(dir: &Path) -> Option<i64> {
    fs::read_to_string(stamp(dir)).ok()?.trim().parse().ok()
}

/// Entries a cache is measured through at most; one with more counts as
/// over any cap.
const MAX_ENTRIES: usize = 200_000;

/// What `dir` takes on disk (allocated blocks, so directories and sparse
/// files count for what they really use), symlinks not followed. A tree
/// that cannot be walked whole (more than [`MAX_ENTRIES`] entries, an
/// entry that cannot be read) is `u64::MAX`: over every cap.
fn size_of(dir: &Path) -> u64 {
    size_within(dir, MAX_ENTRIES)
}

/// [`size_of`], walking at most `max_entries`.
fn size_within(dir: &Path, max_entries: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total: u64 = 0;
    let mut entries = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(listing) = fs::read_dir(&at) else { return u64::MAX };
        for entry in listing {
            entries += 1;
            let Ok(entry) = entry else { return u64::MAX };
            let Ok(meta) = entry.path().symlink_metadata() else { return u64::MAX };
            if entries > max_entries {
                return u64::MAX;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// The caches of one repository, or of all.
pub fn list(root: &DataRoot, repo: Option<&RepoName>) -> io::Result<Vec<CacheInfo>> {
    let base = root.path().join("cache");
    let repos: Vec<RepoName> = match repo {
        Some(repo) => vec![repo.clone()],
        None => repos::names_under(&base)?,
    };
    let mut out = Vec::new();
    for repo in repos {
        let dir = repo_dir(root, &repo);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let Some(ref_name) = entry.file_name().to_str().and_then(decode_ref) else { continue };
            out.push(CacheInfo {
                repo: repo.clone(),
                ref_name,
                bytes: size_of(&path),
                last_used_ms: last_used(&path),
            });
        }
    }
    out.sort_by(|a, b| (&a.repo, &a.ref_name).cmp(&(&b.repo, &b.ref_name)));
    Ok(out)
}

/// Removes one ref's cache, or all of a repository's; what was removed.
pub fn clear(root: &DataRoot, repo: &RepoName, ref_name: Option<&str>) -> io::Result<Vec<CacheInfo>> {
    let doomed: Vec<CacheInfo> =
        list(root, Some(repo))?.into_iter().filter(|c| ref_name.is_none_or(|r| r == c.ref_name)).collect();
    for cache in &doomed {
        remove(&ref_dir(root, repo, &cache.ref_name))?;
    }
    Ok(doomed)
}

fn remove(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match fs::remove_file(stamp(dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Evicts the repository's least recently used caches until they fit in
/// `cap_bytes`, sparing those in `held` (runs are using them). What went.
pub fn evict(
    root: &DataRoot,
    repo: &RepoName,
    cap_bytes: u64,
    held: &[String],
) -> io::Result<Vec<CacheInfo>> {
    let mut caches = list(root, Some(repo))?;
    let mut total: u64 = caches.iter().map(|c| c.bytes).sum();
    caches.sort_by_key(|c| c.last_used_ms.unwrap_or(0));
    let mut evicted = Vec::new();
    for cache in caches {
        if total <= cap_bytes {
            break;
        }
        if held.contains(&cache.ref_name) {
            continue;
        }
        remove(&ref_dir(root, repo, &cache.ref_name))?;
        total -= cache.bytes;
        evicted.push(cache);
    }
    Ok(evicted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, DataRoot, RepoName) {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::resolve(Some(dir.path().to_path_buf()));
        let repo: RepoName = "app.git".parse().unwrap();
        fs::create_dir_all(root.repo_path(&repo)).unwrap();
        fs::write(root.repo_path(&repo).join("HEAD"), "ref: refs/heads/main\n").unwrap();
        (dir, root, repo)
    }

    #[test]
    fn a_symlink_in_mains_cache_is_copied_as_a_symlink_never_followed() {
        let (_dir, root, repo) = root();
        let main = prepare(&root, &repo, "refs/heads/main", true, u64::MAX).unwrap();
        std::os::unix::fs::symlink("/etc", main.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", main.join("passwd")).unwrap();
        let topic = prepare(&root, &repo, "refs/heads/topic", true, u64::MAX).unwrap();
        for name in ["etc", "passwd"] {
            let meta = topic.join(name).symlink_metadata().unwrap();
            assert!(meta.file_type().is_symlink(), "{name} stays a link");
        }
        assert!(size_of(&topic) < 64 * 1024, "the links' targets are not counted");
        clear(&root, &repo, None).unwrap();
        assert!(Path::new("/etc/passwd").exists(), "removing a cache never follows its links");
    }

    #[test]
    fn a_cache_too_big_to_measure_counts_as_over_every_cap() {
        let (_dir, root, repo) = root();
        let dir = prepare(&root, &repo, "refs/heads/many", true, u64::MAX).unwrap();
        fs::create_dir(dir.join("d")).unwrap();
        for i in 0..50 {
            fs::write(dir.join("d").join(format!("f{i}")), "").unwrap();
        }
        assert!(size_within(&dir, 100) < u64::MAX);
        assert_eq!(size_within(&dir, 40), u64::MAX, "past the entry budget");
        // An unreadable directory cannot be measured either (as root it
        // can still be read, so only the mode is tried here).
        let locked = dir.join("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        let readable = fs::read_dir(&locked).is_ok();
        assert_eq!(size_within(&dir, 100) == u64::MAX, !readable);
        fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    #[test]
    fn refs_encode_to_one_component_and_back() {
        for name in ["refs/heads/main", "refs/heads/a-b", "refs/heads/a/b", "refs/tags/v1.0", "refs/heads/é%"]
        {
            let encoded = encode_ref(name);
            assert!(!encoded.contains('/'), "{encoded}");
            assert_eq!(decode_ref(&encoded).as_deref(), Some(name));
        }
        assert_ne!(encode_ref("refs/heads/a-b"), encode_ref("refs/heads/a/b"));
    }

    #[test]
    fn a_branch_named_like_a_stamp_does_not_break_its_namesake() {
        let (_dir, root, repo) = root();
        prepare(&root, &repo, "refs/heads/x.used", true, u64::MAX).unwrap();
        let x = prepare(&root, &repo, "refs/heads/x", true, u64::MAX).unwrap();
        assert!(last_used(&x).is_some());
        let refs: Vec<String> = list(&root, Some(&repo)).unwrap().into_iter().map(|c| c.ref_name).collect();
        assert_eq!(refs, ["refs/heads/x", "refs/heads/x.used"]);
    }

    #[test]
    fn a_branch_starts_from_a_copy_of_main_and_never_writes_back() {
        let (_dir, root, repo) = root();
        let main = prepare(&root, &repo, "refs/heads/main", true, u64::MAX).unwrap();
        fs::write(main.join("from-main"), "m").unwrap();
        let topic = prepare(&root, &repo, "refs/heads/topic", true, u64::MAX).unwrap();
        assert_eq!(fs::read_to_string(topic.join("from-main")).unwrap(), "m");
        fs::write(topic.join("from-topic"), "t").unwrap();
        assert!(!main.join("from-topic").exists());
        // While main's cache is held, a new branch starts empty: a held
        // cache is never copied.
        let held = prepare(&root, &repo, "refs/heads/other", false, u64::MAX).unwrap();
        assert!(!held.join("from-main").exists());
        // Nor is one over the cap.
        let big = prepare(&root, &repo, "refs/heads/big", true, 1).unwrap();
        assert!(!big.join("from-main").exists());
        let private = private_empty(&root.path().join("private")).unwrap();
        assert_eq!(fs::read_dir(&private).unwrap().count(), 0);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_first_and_spares_held_ones() {
        let (_dir, root, repo) = root();
        for (name, used) in [("refs/heads/old", 1), ("refs/heads/mid", 2), ("refs/heads/new", 3)] {
            let dir = prepare(&root, &repo, name, false, u64::MAX).unwrap();
            fs::write(dir.join("blob"), vec![1u8; 10_000]).unwrap();
            fs::write(stamp(&dir), used.to_string()).unwrap();
        }
        // A symlink out of the cache counts for nothing and is not followed.
        std::os::unix::fs::symlink("/etc", ref_dir(&root, &repo, "refs/heads/new").join("etc")).unwrap();
        let one = list(&root, Some(&repo)).unwrap()[0].bytes;
        let evicted = evict(&root, &repo, one + one / 2, &["refs/heads/old".to_string()]).unwrap();
        let gone: Vec<&str> = evicted.iter().map(|c| c.ref_name.as_str()).collect();
        assert_eq!(gone, ["refs/heads/mid", "refs/heads/new"], "old is held; mid then new go");
        assert!(Path::new("/etc/passwd").exists());
        let left: Vec<String> = list(&root, Some(&repo)).unwrap().into_iter().map(|c| c.ref_name).collect();
        assert_eq!(left, ["refs/heads/old"]);
        assert_eq!(clear(&root, &repo, None).unwrap().len(), 1);
        assert!(list(&root, None).unwrap().is_empty());
    }
}
