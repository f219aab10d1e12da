//! MariaDB through the `mysql` crate: one connection (the store worker is
//! the only user), session time zone UTC, `utf8mb4`, every value a bound
//! parameter. Message and pending-row inserts are multi-row statements in
//! power-of-two chunk sizes, so a handful of prepared statements stay
//! cached; their ids are `LAST_INSERT_ID() + k * @@auto_increment_increment`,
//! which InnoDB guarantees for one multi-row INSERT unless
//! `innodb_autoinc_lock_mode = 2`, where we insert row by row.
//!
//! Failure model (ARCHITECTURE.md, "What survives what"): every socket
//! operation has a deadline ([`Timeouts`], set with the Go driver's DSN
//! parameters `timeout`, `readTimeout` and `writeTimeout`), so a database
//! that stops answering (a network black hole) costs a bounded wait, never
//! a hang. After any error the connection is dropped, unreturned: nothing
//! more is sent on it that could wait for an answer, and the next batch
//! connects afresh.
//!
//! Rows are fetched as [`Row`]s and each column is checked by hand
//! ([`int_cell`], [`text_cell`]): the driver's typed fetches (`exec::<(i64,
//! String)>` and the like) panic on a value that does not convert, and
//! deployments keep their own tables (see the store module documentation
//! for what each bad value gives).

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, PoolConstraints, PoolOpts, Row, Value, from_value_opt};
use whelm_shared::dm_channel_id;
use whelm_shared::line::{Status, UserId};

use super::{
    Cell, NewMessage, RawPending, Stamp, Store, StoreError, UserRow, pending_page, user_record,
    user_row,
};
use crate::dsn::MysqlDsn;
use crate::jobs::{PendingPage, UserRecord};

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS users (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        username VARCHAR(255) NOT NULL,
        session_token VARCHAR(255) NULL,
        status VARCHAR(16) NOT NULL DEFAULT 'offline',
        last_seen TIMESTAMP NULL DEFAULT NULL,
        UNIQUE KEY users_username (username),
        UNIQUE KEY users_session_token (session_token)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS messages (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        sender_id BIGINT NOT NULL,
        channel_id BIGINT NOT NULL,
        content TEXT NOT NULL,
        timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        KEY messages_channel (channel_id, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS whelm_pending (
        recipient_id BIGINT NOT NULL,
        message_id BIGINT NOT NULL,
        PRIMARY KEY (recipient_id, message_id)
    ) ENGINE=InnoDB",
];

/// Largest multi-row INSERT (rows).
const MAX_CHUNK: usize = 256;

/// Deadlines of one connection's socket operations. Defaults: 3 s to
/// connect, 5 s for any read or write (a handshake, a statement's answer, a
/// COMMIT): far above what a healthy server needs for this store's small
/// statements, short enough that a MSG waiting behind a dead database gets
/// its `ERROR` within seconds. A DSN overrides them with the Go driver's
/// parameters: `timeout` (connect), `readTimeout`, `writeTimeout`, each a
/// Go duration such as `2s`, `500ms` or `1m30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each read (handshake, result, COMMIT's OK).
    pub read: Duration,
    /// Each write.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(5),
            write: Duration::from_secs(5),
        }
    }
}

/// Longest deadline a DSN may set (a deadline is there to be reached).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl Timeouts {
    /// The defaults with the DSN's `timeout`, `readTimeout` and
    /// `writeTimeout` parameters applied.
    pub fn from_dsn(dsn: &MysqlDsn) -> Result<Timeouts, StoreError> {
        let mut t = Timeouts::default();
        for (k, v) in &dsn.params {
            let slot = match k.as_str() {
                "timeout" => &mut t.connect,
                "readTimeout" => &mut t.read,
                "writeTimeout" => &mut t.write,
                _ => continue,
            };
            *slot = match parse_go_duration(v) {
                Some(d) if !d.is_zero() && d <= MAX_TIMEOUT => d,
                _ => {
                    return Err(StoreError::Other(format!(
                        "invalid {k}={v:?} in the MariaDB DSN: want a duration from 1ms \
                         to 1h such as 5s, 500ms or 1m30s"
                    )));
                }
            };
        }
        Ok(t)
    }
}

/// A Go `time.Duration` string (`1h2m3.5s`, `250ms`): numbers with
/// fractions, each followed by `h`, `m`, `s`, `ms`, `us` or `ns`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "\u{b5}s" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

/// Builds connection options from a DSN (its timeout parameters, or the
/// defaults when one does not parse: [`MysqlStore::connect`] refuses those).
pub fn opts(dsn: &MysqlDsn, max_conns: usize) -> Opts {
    let t = Timeouts::from_dsn(dsn).unwrap_or_default();
    let constraints = PoolConstraints::new(1, max_conns.max(1)).unwrap_or_default();
    let mut b = OptsBuilder::new()
        .user(Some(dsn.user.clone()).filter(|u| !u.is_empty()))
        .pass(dsn.password.clone())
        .db_name(Some(dsn.database.clone()))
        .tcp_port(dsn.port)
        .tcp_connect_timeout(Some(t.connect))
        .read_timeout(Some(t.read))
        .write_timeout(Some(t.write))
        .tcp_nodelay(true)
        .prefer_socket(false)
        .stmt_cache_size(64)
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"])
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    b = match (&dsn.socket, &dsn.host) {
        (Some(sock), _) => b.socket(Some(sock.clone())),
        (None, host) => b.ip_or_hostname(Some(host.clone().unwrap_or_else(|| "127.0.0.1".into()))),
    };
    b.into()
}

/// A value for a message: its SQL literal, cut short.
fn show(v: &Value) -> String {
    let mut s = v.as_sql(true);
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

/// Column `i` of a row as it came (taking it out of the row).
fn raw(row: &mut Row, i: usize, column: &str) -> Result<Value, String> {
    match row.take_opt::<Value, _>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("{column}: unreadable value {}", show(&e.0))),
        None => Err(format!("{column}: no such column in the result")),
    }
}

/// Column `i` as a signed 64-bit integer: `Ok(None)` for NULL, an error
/// for anything else that is not one (out of range, not a number).
fn int_cell(row: &mut Row, i: usize, column: &str) -> Cell<i64> {
    match raw(row, i, column)? {
        Value::NULL => Ok(None),
        v => from_value_opt::<i64>(v)
            .map(Some)
            .map_err(|e| format!("{column} {} is not a signed 64-bit integer", show(&e.0))),
    }
}

/// Column `i` as text (bytes that are not UTF-8 replaced): `Ok(None)` for
/// NULL, an error for a value that is not a string (a number, a date).
fn text_cell(row: &mut Row, i: usize, column: &str) -> Cell<String> {
    match raw(row, i, column)? {
        Value::NULL => Ok(None),
        Value::Bytes(b) => Ok(Some(match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })),
        v => Err(format!("{column} {} is not text", show(&v))),
    }
}

/// MariaDB.
pub struct MysqlStore {
    opts: Opts,
    /// The deadlines in `opts`, for error messages.
    timeouts: Timeouts,
    /// The connection; `None` after an error, so the next batch starts on
    /// a fresh one (a connection that failed once, e.g. timed out halfway
    /// through an answer, is never trusted again).
    conn: Option<Conn>,
    describe: String,
    /// Multi-row inserts give consecutive ids (lock mode 0 or 1).
    multi_row: bool,
    /// `@@auto_increment_increment`.
    increment: i64,
}

impl MysqlStore {
    /// Connects (failing at once when MariaDB cannot be reached or the
    /// DSN's timeouts do not parse).
    pub fn connect(dsn: &MysqlDsn) -> Result<MysqlStore, StoreError> {
        let timeouts = Timeouts::from_dsn(dsn)?;
        let opts = opts(dsn, 1);
        let mut conn = Conn::new(opts.clone())?;
        let row: Option<Row> =
            conn.query_first("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")?;
        let (mode, inc) = match row {
            Some(mut r) => (
                int_cell(&mut r, 0, "@@innodb_autoinc_lock_mode"),
                int_cell(&mut r, 1, "@@auto_increment_increment"),
            ),
            None => (Ok(None), Ok(None)),
        };
        // Multi-row inserts compute ids from both; without either, insert
        // row by row (each id from LAST_INSERT_ID()).
        let (multi_row, increment) = match (mode, inc) {
            (Ok(Some(m)), Ok(Some(i))) if i >= 1 => (m != 2, i),
            _ => (false, 1),
        };
        Ok(MysqlStore {
            opts,
            timeouts,
            conn: Some(conn),
            describe: dsn.to_string(),
            multi_row,
            increment,
        })
    }

    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.is_none() {
            let c = Conn::new(self.opts.clone()).map_err(|e| self.error(e))?;
            tracing::debug!(store = self.describe, "connected");
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Other("no connection".into()))
    }

    /// Runs `f` on the connection, dropping it after an error.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, mysql::Error>,
    ) -> Result<T, StoreError> {
        let r = f(self.conn()?);
        r.map_err(|e| {
            self.conn = None;
            self.error(e)
        })
    }

    /// A socket deadline that passed becomes [`StoreError::NoAnswer`] (the
    /// driver reports it as a bare `EAGAIN`).
    fn error(&self, e: mysql::Error) -> StoreError {
        match e {
            mysql::Error::IoError(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                StoreError::NoAnswer(self.timeouts.read.max(self.timeouts.write))
            }
            e => e.into(),
        }
    }

    fn chunk_sizes(&self, mut n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        if !self.multi_row {
            out.resize(n, 1);
            return out;
        }
        while n > 0 {
            let mut c = MAX_CHUNK;
            while c > n {
                c /= 2;
            }
            out.push(c);
            n -= c;
        }
        out
    }
}

fn values_sql(head: &str, row: &str, n: usize) -> String {
    let mut s = String::with_capacity(head.len() + n * (row.len() + 1));
    s.push_str(head);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(row);
    }
    s
}

impl Store for MysqlStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.with(|c| {
            for sql in SCHEMA {
                c.query_drop(sql)?;
            }
            Ok(())
        })
    }

    fn add_user(&mut self, username: &str, token: &str) -> Result<UserId, StoreError> {
        let r = self.with(|c| {
            c.exec_drop(
                "INSERT INTO users (username, session_token, status) VALUES (?, ?, 'offline')",
                (username, token),
            )?;
            Ok(c.last_insert_id())
        });
        match r {
            Ok(id) => {
                UserId::new(id).ok_or_else(|| StoreError::Other("invalid new user id".into()))
            }
            Err(StoreError::Mysql(mysql::Error::MySqlError(e))) if e.code == 1062 => {
                Err(StoreError::UserExists(username.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    fn list_users(&mut self) -> Result<Vec<UserRow>, StoreError> {
        let rows: Vec<Row> = self.with(|c| {
            c.query("SELECT id, username, status, CAST(last_seen AS CHAR) FROM users ORDER BY id")
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| {
                user_row(
                    &self.describe,
                    int_cell(&mut r, 0, "id"),
                    text_cell(&mut r, 1, "username"),
                    text_cell(&mut r, 2, "status"),
                    text_cell(&mut r, 3, "last_seen"),
                )
            })
            .collect())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.with(|c| c.query_drop("START TRANSACTION"))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.with(|c| c.query_drop("COMMIT"))
    }

    fn rollback(&mut self) {
        let failed = match self.conn.as_mut() {
            Some(c) => c.query_drop("ROLLBACK").err(),
            None => None,
        };
        if let Some(e) = failed {
            tracing::debug!(error = %e, "rollback");
            self.conn = None;
        }
    }

    fn user_by_token(&mut self, token: &str) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<Row> = self.with(|c| {
            c.exec_first(
                "SELECT id, username FROM users WHERE session_token = ?",
                (token,),
            )
        })?;
        Ok(row.and_then(|mut r| {
            user_record(
                &self.describe,
                int_cell(&mut r, 0, "users.id"),
                text_cell(&mut r, 1, "username"),
            )
        }))
    }

    fn existing_users(&mut self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        self.with(|c| {
            let mut found = Vec::new();
            for &id in ids {
                // Whether a row exists; its values are not read.
                let r: Option<Row> =
                    c.exec_first("SELECT 1 FROM users WHERE id = ?", (id.get() as i64,))?;
                if r.is_some() {
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
            for u in users {
                match status {
                    Some(s) => c.exec_drop(
                        "UPDATE users SET status = ?, last_seen = ? WHERE id = ?",
                        (s.as_str(), at.db.as_str(), u.get() as i64),
                    )?,
                    None => c.exec_drop(
                        "UPDATE users SET last_seen = ? WHERE id = ?",
                        (at.db.as_str(), u.get() as i64),
                    )?,
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
        let sizes = self.chunk_sizes(msgs.len());
        let inc = self.increment;
        self.with(|c| {
            let mut ids = Vec::with_capacity(msgs.len());
            let mut rest = msgs;
            for n in sizes {
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let sql = values_sql(
                    "INSERT INTO messages (sender_id, channel_id, content, timestamp) VALUES ",
                    "(?,?,?,?)",
                    n,
                );
                let mut params = Vec::with_capacity(n * 4);
                for m in chunk {
                    params.push(Value::from(m.sender.get() as i64));
                    params.push(Value::from(dm_channel_id(
                        m.sender.get(),
                        m.recipient.get(),
                    )));
                    params.push(Value::from(m.content));
                    params.push(Value::from(at.db.as_str()));
                }
                c.exec_drop(sql, params)?;
                let first = c.last_insert_id() as i64;
                ids.extend((0..n as i64).map(|k| first + k * inc));
            }
            Ok(ids)
        })
    }

    fn add_pending(&mut self, rows: &[(UserId, i64)]) -> Result<(), StoreError> {
        let sizes = self.chunk_sizes(rows.len());
        self.with(|c| {
            let mut rest = rows;
            for n in sizes {
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let sql = values_sql(
                    "INSERT IGNORE INTO whelm_pending (recipient_id, message_id) VALUES ",
                    "(?,?)",
                    n,
                );
                let mut params = Vec::with_capacity(n * 2);
                for (u, id) in chunk {
                    params.push(Value::from(u.get() as i64));
                    params.push(Value::from(*id));
                }
                c.exec_drop(sql, params)?;
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
        let rows: Vec<Row> = self.with(|c| {
            c.exec(
                "SELECT p.message_id, m.sender_id, m.content,
                        DATE_FORMAT(m.timestamp, '%Y-%m-%dT%H:%i:%sZ')
                 FROM whelm_pending p JOIN messages m ON m.id = p.message_id
                 WHERE p.recipient_id = ? AND p.message_id > ?
                 ORDER BY p.message_id LIMIT ?",
                (user.get() as i64, after, limit.max(1) as u64),
            )
        })?;
        let rows = rows
            .into_iter()
            .map(|mut r| RawPending {
                id: int_cell(&mut r, 0, "message_id"),
                sender: int_cell(&mut r, 1, "sender_id"),
                content: text_cell(&mut r, 2, "content"),
                timestamp: text_cell(&mut r, 3, "timestamp").ok().flatten(),
            })
            .collect();
        Ok(pending_page(&self.describe, user, limit, rows))
    }

    fn mark_delivered(&mut self, user: UserId, upto: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.exec_drop(
                "DELETE FROM whelm_pending WHERE recipient_id = ? AND message_id <= ?",
                (user.get() as i64, upto),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::{Timeouts, parse_go_duration, values_sql};
    use crate::dsn::MysqlDsn;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("5s"), Some(ms(5000)));
        assert_eq!(parse_go_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_go_duration("1.5h"), Some(ms(5_400_000)));
        assert_eq!(parse_go_duration("2.5s"), Some(ms(2500)));
        for bad in ["", "5", "s", "5x", "-1s", "1s-", "5 s", "1e3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_from_dsn_parameters() {
        let t = |s: &str| Timeouts::from_dsn(&MysqlDsn::parse(s).unwrap());
        assert_eq!(t("u@tcp(h)/w?parseTime=true").unwrap(), Timeouts::default());
        let got = t("u@tcp(h)/w?timeout=1s&readTimeout=2500ms&writeTimeout=1m").unwrap();
        assert_eq!(
            got,
            Timeouts {
                connect: Duration::from_secs(1),
                read: Duration::from_millis(2500),
                write: Duration::from_secs(60),
            }
        );
        for bad in [
            "readTimeout=0s",
            "timeout=abc",
            "writeTimeout=2h",
            "readTimeout=",
        ] {
            let e = t(&format!("mysql://u@h/w?{bad}")).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
    }

    #[test]
    fn multi_row_sql() {
        assert_eq!(
            values_sql("INSERT INTO t (a) VALUES ", "(?)", 3),
            "INSERT INTO t (a) VALUES (?),(?),(?)"
        );
    }
}
