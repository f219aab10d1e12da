//! The embedded store: SQLite (bundled), WAL mode, `synchronous = FULL` so
//! an acknowledged message survives a power cut.
//!
//! Columns of rows the store did not write are read as raw values and
//! checked by hand ([`int_cell`], [`text_cell`]): SQLite stores any value
//! in any column, and a typed `get` that fails would fail the statement,
//! so the whole batch (see the store module documentation for what each
//! bad value gives; the same as on MariaDB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use whelm_shared::dm_channel_id;
use whelm_shared::line::{Status, UserId};

use super::{
    Cell, NewMessage, RawPending, Stamp, Store, StoreError, UserRow, db_user_id, pending_page,
    user_record, user_row,
};
use crate::jobs::{PendingPage, UserRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    session_token TEXT UNIQUE,
    status TEXT NOT NULL DEFAULT 'offline',
    last_seen TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS whelm_pending (
    recipient_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (recipient_id, message_id)
) WITHOUT ROWID;
";

/// A value for a message, cut short.
fn show(v: ValueRef<'_>) -> String {
    let mut s = match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    };
    if s.len() > 64 {
        let mut end = 61;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Column `i` as a signed 64-bit integer: `Ok(None)` for NULL, an error
/// for a value that is not one (a real, text that is not a number, a
/// blob). The outer error is SQLite's (no such column).
fn int_cell(r: &rusqlite::Row<'_>, i: usize, column: &str) -> rusqlite::Result<Cell<i64>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(v) => Ok(Some(v)),
        v @ ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{column} {} is not a signed 64-bit integer", show(v))),
        v => Err(format!(
            "{column} {} is not a signed 64-bit integer",
            show(v)
        )),
    })
}

/// Column `i` as text (text or blob, bytes that are not UTF-8 replaced):
/// `Ok(None)` for NULL, an error for a number.
fn text_cell(r: &rusqlite::Row<'_>, i: usize, column: &str) -> rusqlite::Result<Cell<String>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) | ValueRef::Blob(t) => Ok(Some(String::from_utf8_lossy(t).into_owned())),
        v => Err(format!("{column} {} is not text", show(v))),
    })
}

/// A SQLite database file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating) the file, in WAL mode.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL mode");
        }
        // The page cache is SQLite's own copy of pages the kernel caches
        // anyway; at the default 2 MiB it is a quarter of control's memory
        // and grows with the database until full (the soak saw +6% RSS in
        // 15 minutes). 256 KiB holds the hot pages of an append-mostly
        // message table and its indexes.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA cache_size = -256;")?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
        })
    }
}

impl SqliteStore {
    /// `e` as a [`StoreError`], with the system call's error behind it when
    /// SQLite kept one (`ENOSPC`, `EROFS`, `EIO`, `EFBIG`, ...), so the log
    /// says why a write failed, not only "disk I/O error".
    fn fail(&self, e: rusqlite::Error) -> StoreError {
        if matches!(e, rusqlite::Error::SqliteFailure(..)) {
            // SAFETY: the handle is this open connection's, used only on
            // this thread (the store worker owns the store), and
            // `sqlite3_system_errno` only reads the errno saved with its
            // last error.
            let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
            if errno != 0 {
                return StoreError::SqliteOs {
                    error: e,
                    os: std::io::Error::from_raw_os_error(errno),
                };
            }
        }
        StoreError::Sqlite(e)
    }

    /// Runs `f` on the connection, errors through [`SqliteStore::fail`].
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|e| self.fail(e))
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.with(|c| c.execute_batch(SCHEMA))
    }

    fn add_user(&mut self, username: &str, token: &str) -> Result<UserId, StoreError> {
        let r = self.conn.execute(
            "INSERT INTO users (username, session_token, status) VALUES (?1, ?2, 'offline')",
            params![username, token],
        );
        match r {
            Ok(_) => db_user_id(self.conn.last_insert_rowid())
                .ok_or_else(|| StoreError::Other("invalid new user id".into())),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::UserExists(username.to_owned()))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn list_users(&mut self) -> Result<Vec<UserRow>, StoreError> {
        let store = self.describe();
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, username, status, CAST(last_seen AS TEXT) FROM users ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(user_row(
                    &store,
                    int_cell(r, 0, "id")?,
                    text_cell(r, 1, "username")?,
                    text_cell(r, 2, "status")?,
                    text_cell(r, 3, "last_seen")?,
                ))
            })?;
            rows.filter_map(Result::transpose).collect()
        })
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        // A transaction still open here is one whose ROLLBACK failed (an
        // I/O error): end it first, or every batch from now on would fail
        // with "cannot start a transaction within a transaction".
        if !self.conn.is_autocommit() {
            self.with(|c| c.execute_batch("ROLLBACK"))?;
        }
        self.with(|c| c.execute_batch("BEGIN IMMEDIATE"))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.with(|c| c.execute_batch("COMMIT"))
    }

    fn rollback(&mut self) {
        if self.conn.is_autocommit() {
            // SQLite already rolled the transaction back (an I/O error or
            // SQLITE_FULL during COMMIT can end it).
            return;
        }
        if let Err(e) = self.with(|c| c.execute_batch("ROLLBACK")) {
            tracing::warn!(error = %e, store = self.describe(), "rollback failed");
        }
    }

    fn user_by_token(&mut self, token: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = self.with(|c| {
            c.prepare_cached("SELECT id, username FROM users WHERE session_token = ?1")?
                .query_row([token], |r| {
                    Ok((int_cell(r, 0, "users.id")?, text_cell(r, 1, "username")?))
                })
                .optional()
        })?;
        Ok(row.and_then(|(id, username)| user_record(&self.describe(), id, username)))
    }

    fn existing_users(&mut self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
            let mut found = Vec::new();
            for &id in ids {
                if st.exists([id.get() as i64])? {
                    found.push(id);
                }
            }
            Ok(found)
        })
    }

    fn set_presence(
        &mut self,
        users: &[UserId],
        status: Option<Status>,
        at: &Stamp,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            match status {
                Some(s) => {
                    let mut st = c.prepare_cached(
                        "UPDATE users SET status = ?1, last_seen = ?2 WHERE id = ?3",
                    )?;
                    for u in users {
                        st.execute(params![s.as_str(), at.db, u.get() as i64])?;
                    }
                }
                None => {
                    let mut st =
                        c.prepare_cached("UPDATE users SET last_seen = ?1 WHERE id = ?2")?;
                    for u in users {
                        st.execute(params![at.db, u.get() as i64])?;
                    }
                }
            }
            Ok(())
        })
    }

    fn insert_messages(
        &mut self,
        msgs: &[NewMessage<'_>],
        at: &Stamp,
    ) -> Result<Vec<i64>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "INSERT INTO messages (sender_id, channel_id, content, timestamp) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut ids = Vec::with_capacity(msgs.len());
            for m in msgs {
                let ch = dm_channel_id(m.sender.get(), m.recipient.get());
                st.execute(params![m.sender.get() as i64, ch, m.content, at.db])?;
                ids.push(c.last_insert_rowid());
            }
            Ok(ids)
        })
    }

    fn add_pending(&mut self, rows: &[(UserId, i64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "INSERT OR IGNORE INTO whelm_pending (recipient_id, message_id) VALUES (?1, ?2)",
            )?;
            for (u, id) in rows {
                st.execute(params![u.get() as i64, id])?;
            }
            Ok(())
        })
    }

    fn pending_for(
        &mut self,
        user: UserId,
        after: i64,
        limit: usize,
    ) -> Result<PendingPage, StoreError> {
        // The primary key (recipient_id, message_id) gives the page in
        // order without sorting the user's whole backlog.
        let rows = self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT p.message_id, m.sender_id, m.content,
                        strftime('%Y-%m-%dT%H:%M:%SZ', m.timestamp)
                 FROM whelm_pending p JOIN messages m ON m.id = p.message_id
                 WHERE p.recipient_id = ?1 AND p.message_id > ?2
                 ORDER BY p.message_id LIMIT ?3",
            )?;
            let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            let rows = st.query_map(params![user.get() as i64, after, limit], |r| {
                Ok(RawPending {
                    id: int_cell(r, 0, "message_id")?,
                    sender: int_cell(r, 1, "sender_id")?,
                    content: text_cell(r, 2, "content")?,
                    timestamp: text_cell(r, 3, "timestamp")?.ok().flatten(),
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(pending_page(&self.describe(), user, limit, rows))
    }

    fn mark_delivered(&mut self, user: UserId, upto: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM whelm_pending WHERE recipient_id = ?1 AND message_id <= ?2",
            )?
            .execute(params![user.get() as i64, upto])?;
            Ok(())
        })
    }
}
