//! The store: one [`Store`] trait, two backends ([`sqlite`], [`mysql`]), and
//! the [`worker`] thread that runs queued jobs in group-committed batches.
//!
//! Tables (PROTOCOLS.md section 1, "Persistence"): `users` and `messages`
//! exist in Whelm deployments and are created only when missing, never
//! altered. `whelm_pending(recipient_id, message_id)` is this project's own:
//! one row per message still to be delivered to a recipient who was offline.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use whelm_shared::line::{Status, UserId};

use crate::dsn::DbTarget;
use crate::jobs::{StoredMessage, UserRecord};

pub mod mysql;
pub mod sqlite;
pub mod worker;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// MariaDB said no (or could not be reached).
    #[error("mariadb: {0}")]
    Mysql(#[from] ::mysql::Error),
    /// A username that is taken.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// SQLite said no, and the operating system said why (`errno`).
    #[error("sqlite: {error} (os error: {os})")]
    SqliteOs {
        /// What SQLite reported.
        error: rusqlite::Error,
        /// The system call's error behind it (`sqlite3_system_errno`).
        os: std::io::Error,
    },
    /// MariaDB did not answer within the socket deadline (its host or the
    /// network is gone; the connection was dropped).
    #[error("mariadb: no answer within {0:?} (read/write timeout); the connection was dropped")]
    NoAnswer(std::time::Duration),
    /// Anything else (bad stored data, ...).
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// The database could not be reached or stopped answering (as opposed
    /// to refusing one statement): the worker then fails jobs at once for
    /// a short while instead of waiting on it for every batch.
    pub fn is_unavailable(&self) -> bool {
        use ::mysql::{DriverError, Error};
        match self {
            StoreError::NoAnswer(_) => true,
            StoreError::Mysql(Error::IoError(_) | Error::CodecError(_)) => true,
            StoreError::Mysql(Error::DriverError(e)) => matches!(
                e,
                DriverError::ConnectTimeout
                    | DriverError::CouldNotConnect(_)
                    | DriverError::PacketOutOfSync
                    | DriverError::UnexpectedPacket
                    | DriverError::Timeout
            ),
            // Too many connections, shutdown in progress, network errors
            // (1158..=1161), connection killed, gone away, lost, idle
            // disconnect.
            StoreError::Mysql(Error::MySqlError(e)) => matches!(
                e.code,
                1040 | 1053 | 1158..=1161 | 1927 | 2006 | 2013 | 4031
            ),
            _ => false,
        }
    }
}

/// A row of `users` for `user list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    /// `users.id`
    pub id: i64,
    /// `users.username`
    pub username: String,
    /// `users.status`
    pub status: String,
    /// `users.last_seen` as stored
    pub last_seen: Option<String>,
}

/// A message to insert.
#[derive(Clone, Copy, Debug)]
pub struct NewMessage<'a> {
    /// Sender.
    pub sender: UserId,
    /// Recipient (for the `channel_id`).
    pub recipient: UserId,
    /// Content, byte-exact.
    pub content: &'a str,
}

/// The time a batch runs, in the two forms it is written in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// `YYYY-MM-DD HH:MM:SS` (UTC), for DATETIME/TIMESTAMP columns.
    pub db: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`, for `MSG <json>`.
    pub rfc3339: String,
}

const DB_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
const RFC3339_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

impl Stamp {
    /// Now, UTC, to the second.
    pub fn now() -> Stamp {
        Stamp::at(OffsetDateTime::now_utc())
    }

    /// A given UTC time.
    pub fn at(t: OffsetDateTime) -> Stamp {
        Stamp {
            db: t.format(DB_FORMAT).unwrap_or_default(),
            rfc3339: t.format(RFC3339_FORMAT).unwrap_or_default(),
        }
    }
}

/// The database behind the control plane. The worker calls `begin`, any
/// number of operations, then `commit` (or `rollback` after an error); the
/// CLI calls `migrate`, `add_user` and `list_users` on their own.
pub trait Store: Send {
    /// What this is, for logs (`sqlite:PATH` or the masked DSN).
    fn describe(&self) -> String;
    /// Creates the tables that are missing; never alters existing ones.
    fn migrate(&mut self) -> Result<(), StoreError>;
    /// Creates a user with this token, status offline.
    fn add_user(&mut self, username: &str, token: &str) -> Result<UserId, StoreError>;
    /// Every user, by id.
    fn list_users(&mut self) -> Result<Vec<UserRow>, StoreError>;
    /// Starts a transaction.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits it.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Rolls it back (best effort).
    fn rollback(&mut self);
    /// The user whose `session_token` this is.
    fn user_by_token(&mut self, token: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Which of these ids exist in `users`.
    fn existing_users(&mut self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError>;
    /// `last_seen = at` and, if given, `status` for these users.
    fn set_presence(
        &mut self,
        users: &[UserId],
        status: Option<Status>,
        at: &Stamp,
    ) -> Result<(), StoreError>;
    /// Inserts messages (Whelm `channel_id`), returning their ids in order.
    fn insert_messages(
        &mut self,
        msgs: &[NewMessage<'_>],
        at: &Stamp,
    ) -> Result<Vec<i64>, StoreError>;
    /// Records messages as pending for recipients.
    fn add_pending(&mut self, rows: &[(UserId, i64)]) -> Result<(), StoreError>;
    /// Messages pending for a user, oldest first.
    fn pending_for(&mut self, user: UserId) -> Result<Vec<StoredMessage>, StoreError>;
    /// Forgets the pending rows of a user up to a message id.
    fn mark_delivered(&mut self, user: UserId, upto: i64) -> Result<(), StoreError>;
}

/// Opens the store a target names (connecting, for MariaDB).
pub fn open(target: &DbTarget) -> Result<Box<dyn Store>, StoreError> {
    Ok(match target {
        DbTarget::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path)?),
        DbTarget::Mysql(dsn) => Box::new(mysql::MysqlStore::connect(dsn)?),
    })
}

/// A new session token: 32 hex characters from the OS random source.
pub fn new_token() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| StoreError::Other(format!("getrandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A user id read from the database (rows with ids outside 1..=i64::MAX are
/// skipped by the callers).
pub(crate) fn db_user_id(v: i64) -> Option<UserId> {
    u64::try_from(v).ok().and_then(UserId::new)
}
