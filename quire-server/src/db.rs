//! The SQLite database: opening connections the one way Quire uses them
//! (WAL, foreign keys, a busy timeout), applying the embedded migrations,
//! and a small pool so request handlers do not reopen the file. Only
//! `quire serve` migrates ([`open_and_migrate`]); the hook and the `ci`
//! commands use [`open_current`], which refuses a database whose schema is
//! not exactly this binary's. What is stored and how it changes is `runs`
//! and `ingest`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

/// Append-only: a released migration is never edited, only followed.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_triggers.sql"),
    include_str!("../../migrations/0003_executors.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {}: {source}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot migrate the database {}: {source}", path.display())]
    Migrate { path: PathBuf, source: rusqlite_migration::Error },
    #[error("there is no database at {}: start `quire serve` once to create it", path.display())]
    Missing { path: PathBuf },
    #[error(
        "the database {} has schema version {found}, older than this quire's {expected}: \
         start `quire serve` once to migrate it",
        path.display()
    )]
    Outdated { path: PathBuf, found: usize, expected: usize },
    #[error(
        "the database {} has schema version {found}, written by a newer quire than this one \
         (which knows up to {expected}): run the newer quire, or upgrade this one",
        path.display()
    )]
    TooNew { path: PathBuf, found: usize, expected: usize },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Whether a statement failed because of the database's condition (busy
/// past the timeout, locked, a full disk, I/O) rather than because of what
/// it tried to write: the same write may succeed later.
pub fn is_transient(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        error.sqlite_error_code(),
        Some(
            DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | OutOfMemory | ReadOnly
        )
    )
}

/// Opens a connection with Quire's settings, without migrating.
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    };
    open().map_err(|source| DbError::Open { path: path.to_path_buf(), source })
}

/// Opens the database and brings its schema up to date. Only `quire serve`
/// calls this, once at start, so that one process owns schema changes.
pub fn open_and_migrate(path: &Path) -> Result<Connection, DbError> {
    let mut conn = connect(path)?;
    migrations()
        .to_latest(&mut conn)
        .map_err(|source| DbError::Migrate { path: path.to_path_buf(), source })?;
    Ok(conn)
}

/// Opens an existing database whose schema is exactly this binary's, for
/// the hook and the operator commands.
pub fn open_current(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing { path: path.to_path_buf() });
    }
    let conn = connect(path)?;
    let found: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| DbError::Open { path: path.to_path_buf(), source })?
        .try_into()
        .unwrap_or(0);
    let expected = MIGRATIONS.len();
    match found.cmp(&expected) {
        std::cmp::Ordering::Equal => Ok(conn),
        std::cmp::Ordering::Less => Err(DbError::Outdated { path: path.to_path_buf(), found, expected }),
        std::cmp::Ordering::Greater => Err(DbError::TooNew { path: path.to_path_buf(), found, expected }),
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

/// Connections to one database file, reused across requests.
#[derive(Clone)]
pub struct Pool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// A connection borrowed from the pool; returned when dropped.
pub struct Pooled {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Pool {
    pub fn new(path: &Path) -> Pool {
        Pool { path: Arc::new(path.to_path_buf()), idle: Arc::default() }
    }

    pub fn get(&self) -> Result<Pooled, DbError> {
        let reused = self.idle.lock().expect("pool lock").pop();
        let conn = match reused {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        Ok(Pooled { conn: Some(conn), idle: self.idle.clone() })
    }
}

impl std::ops::Deref for Pooled {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn opening_twice_is_idempotent_and_sets_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.db");
        drop(open_and_migrate(&path).unwrap());
        let conn = open_and_migrate(&path).unwrap();
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert!(fk);
    }

    #[test]
    fn open_current_takes_only_a_database_of_this_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quire.db");
        let missing = open_current(&path).unwrap_err();
        assert!(matches!(missing, DbError::Missing { .. }), "{missing}");
        assert!(missing.to_string().contains("start `quire serve` once"), "{missing}");
        assert!(!path.exists(), "opening does not create the file");

        drop(connect(&path).unwrap());
        let outdated = open_current(&path).unwrap_err();
        assert!(matches!(outdated, DbError::Outdated { found: 0, .. }), "{outdated}");
        assert!(connect(&path).unwrap().prepare("SELECT 1 FROM runs").is_err(), "nothing was migrated");

        drop(open_and_migrate(&path).unwrap());
        open_current(&path).unwrap();

        connect(&path).unwrap().pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1).unwrap();
        let too_new = open_current(&path).unwrap_err();
        assert!(matches!(too_new, DbError::TooNew { .. }), "{too_new}");
        assert!(too_new.to_string().contains("newer quire"), "{too_new}");
    }
}
