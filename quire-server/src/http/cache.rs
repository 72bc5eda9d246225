//! Rendered pages kept for a moment: the pages that list runs (the home
//! page, a repository's runs) are read far more often than runs change, and
//! under load most requests are answered from here. An entry is served only
//! while the database is unchanged since it was rendered and for at most
//! [`FRESH`]. "Unchanged" is SQLite's `data_version`, read on a connection
//! of the cache's own that never writes: it moves whenever any other
//! connection (the server's, the hook's, `quire ci`) commits. The age limit
//! also bounds how stale the repository list, read from disk, can be.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};

/// How long a page may be served without being rendered again.
pub const FRESH: Duration = Duration::from_secs(1);
/// Pages kept at most; past it the cache starts over.
const MAX_PAGES: usize = 512;

pub struct PageCache {
    db_path: PathBuf,
    /// Opened on first use; dropped (and reopened) after an error.
    observer: Mutex<Option<Connection>>,
    pages: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    version: i64,
    made: Instant,
    body: Bytes,
}

impl PageCache {
    pub fn new(db_path: PathBuf) -> PageCache {
        PageCache { db_path, observer: Mutex::new(None), pages: Mutex::new(HashMap::new()) }
    }

    /// The database's version now; `None` when it cannot be read (then
    /// nothing is cached). Blocking: call it on the blocking pool.
    pub fn version(&self) -> Option<i64> {
        let mut observer = self.observer.lock().unwrap_or_else(PoisonError::into_inner);
        if observer.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            *observer = Connection::open_with_flags(&self.db_path, flags).ok();
        }
        let version = observer.as_ref()?.query_row("PRAGMA data_version", [], |row| row.get(0));
        if version.is_err() {
            *observer = None;
        }
        version.ok()
    }

    /// The page rendered for `key` at `version`, if it is still fresh.
    pub fn get(&self, key: &str, version: i64) -> Option<Bytes> {
        let pages = self.pages.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = pages.get(key)?;
        (entry.version == version && entry.made.elapsed() < FRESH).then(|| entry.body.clone())
    }

    pub fn put(&self, key: String, version: i64, body: Bytes) {
        let mut pages = self.pages.lock().unwrap_or_else(PoisonError::into_inner);
        if pages.len() >= MAX_PAGES && !pages.contains_key(&key) {
            pages.clear();
        }
        pages.insert(key, Entry { version, made: Instant::now(), body });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_by_another_connection_makes_pages_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.db");
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("CREATE TABLE t (x)").unwrap();
        let cache = PageCache::new(path);

        let before = cache.version().unwrap();
        cache.put("/".into(), before, Bytes::from_static(b"old"));
        assert_eq!(cache.get("/", cache.version().unwrap()), Some(Bytes::from_static(b"old")));

        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().unwrap();
        assert_ne!(after, before);
        assert_eq!(cache.get("/", after), None, "a page rendered before the commit is not served");
        assert_eq!(cache.get("/other", after), None);
    }
}
