//! The store: one [`Store`] trait, two backends ([`sqlite`], [`mysql`]), and
//! the [`worker`] thread that runs queued jobs in group-committed batches.
//!
//! Tables (PROTOCOLS.md section 1, "Persistence"): `users` and `messages`
//! exist in Whelm deployments and are created only when missing, never
//! altered. `whelm_pending(recipient_id, message_id)` is this project's own:
//! one row per message still to be delivered to a recipient who was offline.
//!
//! Rows the store did not write. Deployments keep their own `users` and
//! `messages` tables, so a value can be NULL or of a type this schema would
//! not allow (a NULL `username`, `sender_id` or `content`, an id out of the
//! signed 64-bit range, bytes that are not UTF-8). Every column is read as
//! a raw value and checked here, never converted by a driver call that
//! panics (a panic in the store thread aborts control) or by one that fails
//! the statement (that would roll back the whole group-committed batch, so
//! other users' `MSG`s would get `ERROR`). What each case gives:
//!
//! - AUTH ([`Store::user_by_token`]): a row whose id is not a user id
//!   (NULL, not positive, beyond `i64::MAX`) or whose `username` is NULL is
//!   no user: `ERROR Invalid token`, as for an unknown token (the protocol
//!   has no answer for a user without a name: `OK AUTH`, `INCOMING` and
//!   `START_CALL` carry it), with a warning naming the user id. A name
//!   that is not UTF-8 is used with its bad bytes replaced (U+FFFD).
//! - Pending messages ([`Store::pending_for`]): a message whose `sender_id`
//!   is not a user id (NULL, not positive, out of range) or whose `content`
//!   is NULL or not text cannot be delivered: it is skipped with a warning
//!   naming its id, the others are delivered, and its pending row is
//!   consumed with its page (the `messages` row is never touched). Content
//!   that is not UTF-8 is delivered with its bad bytes replaced; a NULL or
//!   unreadable `timestamp` is delivered as `""`.
//! - `user list` ([`Store::list_users`]): every row it can show; a NULL
//!   `username` or `status` is shown empty (with a warning for the name), a
//!   row whose id is not a signed 64-bit integer is left out with a warning.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use whelm_shared::line::{Status, UserId};

use crate::dsn::DbTarget;
use crate::jobs::{PendingPage, StoredMessage, UserRecord};

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
    /// One page of the messages pending for a user, oldest first: those
    /// with an id above `after` (`i64::MIN` for the first page), at most
    /// `limit` rows. Undeliverable rows are skipped (logged) but counted
    /// in the page and its `upto`.
    fn pending_for(
        &mut self,
        user: UserId,
        after: i64,
        limit: usize,
    ) -> Result<PendingPage, StoreError>;
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

/// Rows of pending messages fetched and delivered at a time (the backlog of
/// an AUTH goes out page by page, each fetched once the previous one was
/// queued to the session).
pub const PENDING_PAGE: usize = 500;

/// A column value as a backend read it, before it is checked: `Ok(None)`
/// for NULL, `Err` saying what it holds when it does not convert.
pub(crate) type Cell<T> = Result<Option<T>, String>;

/// A user id from a column (`users.id`, `messages.sender_id`), or why it is
/// not one.
fn user_id_cell(column: &str, v: Cell<i64>) -> Result<UserId, String> {
    match v {
        Ok(Some(id)) => db_user_id(id).ok_or_else(|| format!("{column} {id} is not a user id")),
        Ok(None) => Err(format!("{column} is NULL")),
        Err(e) => Err(e),
    }
}

/// The user of an AUTH lookup's row, or `None` (with a warning) when the
/// row cannot be used: see the module documentation.
pub(crate) fn user_record(
    store: &str,
    id: Cell<i64>,
    username: Cell<String>,
) -> Option<UserRecord> {
    let id = match user_id_cell("users.id", id) {
        Ok(id) => id,
        Err(problem) => {
            tracing::warn!(
                store,
                problem,
                "AUTH: the users row of this session token has no usable id; \
                 answering ERROR Invalid token"
            );
            return None;
        }
    };
    match username {
        Ok(Some(username)) => Some(UserRecord { id, username }),
        other => {
            let problem = other.err().unwrap_or_else(|| "username is NULL".into());
            tracing::warn!(
                store,
                user_id = id.get(),
                problem,
                "AUTH: user has no usable username; answering ERROR Invalid token"
            );
            None
        }
    }
}

/// A pending row as read: `messages.id`, `sender_id`, `content`, and the
/// timestamp already formatted as RFC 3339 (NULL if it did not format).
pub(crate) struct RawPending {
    pub(crate) id: Cell<i64>,
    pub(crate) sender: Cell<i64>,
    pub(crate) content: Cell<String>,
    pub(crate) timestamp: Option<String>,
}

/// A page of pending messages from the rows of one fetch of at most
/// `limit` rows: the deliverable ones, the highest id covered, and whether
/// more may follow. Undeliverable rows are logged and left out.
pub(crate) fn pending_page(
    store: &str,
    user: UserId,
    limit: usize,
    rows: Vec<RawPending>,
) -> PendingPage {
    let mut page = PendingPage {
        messages: Vec::with_capacity(rows.len()),
        upto: None,
        more: rows.len() >= limit.max(1),
    };
    for r in rows {
        let id = match r.id {
            Ok(Some(id)) => id,
            other => {
                // Never from whelm_pending's own NOT NULL BIGINT column.
                let problem = other.err().unwrap_or_else(|| "message id is NULL".into());
                tracing::warn!(
                    store,
                    recipient = user.get(),
                    problem,
                    "pending row without a usable message id skipped"
                );
                continue;
            }
        };
        page.upto = Some(page.upto.map_or(id, |u: i64| u.max(id)));
        let sender = user_id_cell("sender_id", r.sender);
        let content = match r.content {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err("content is NULL".to_owned()),
            Err(e) => Err(e),
        };
        match (sender, content) {
            (Ok(sender), Ok(content)) => page.messages.push(StoredMessage {
                id,
                sender,
                recipient: user,
                content,
                timestamp: r.timestamp.unwrap_or_default(),
            }),
            (sender, content) => {
                let problem = [sender.err(), content.err()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(
                    store,
                    message_id = id,
                    recipient = user.get(),
                    problem,
                    "pending message cannot be delivered; skipped (its messages row is kept)"
                );
            }
        }
    }
    page
}

/// A row of `user list`, or `None` (with a warning) for a row whose id
/// cannot be shown: see the module documentation.
pub(crate) fn user_row(
    store: &str,
    id: Cell<i64>,
    username: Cell<String>,
    status: Cell<String>,
    last_seen: Cell<String>,
) -> Option<UserRow> {
    let (name, name_problem) = match username {
        Ok(Some(n)) => (n, None),
        Ok(None) => (String::new(), Some("username is NULL".to_owned())),
        Err(problem) => (String::new(), Some(problem)),
    };
    let id = match id {
        Ok(Some(id)) => id,
        other => {
            let problem = other.err().unwrap_or_else(|| "id is NULL".into());
            tracing::warn!(
                store,
                username = name,
                problem,
                "users row without a usable id left out of the list"
            );
            return None;
        }
    };
    if let Some(problem) = name_problem {
        tracing::warn!(
            store,
            user_id = id,
            problem,
            "users row: username shown empty"
        );
    }
    Some(UserRow {
        id,
        username: name,
        status: status.ok().flatten().unwrap_or_default(),
        last_seen: last_seen.ok().flatten(),
    })
}
