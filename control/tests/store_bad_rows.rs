//! Rows the store did not write: an existing deployment's own `users` and
//! `messages` tables may hold a NULL `username`, `sender_id` or `content`,
//! an id beyond the signed 64-bit range, bytes that are not UTF-8. Against
//! SQLite (a temp file) and MariaDB (a database of its own on the server
//! `WHELM_TEST_MARIADB` names; a notice and nothing when unset), such rows
//! are inserted with SQL and the store answers as the store module
//! documents, never panicking and never failing the batch: AUTH with such a
//! user's token is an unknown token, an undeliverable pending message is
//! skipped and the others are delivered. Then the same end to end, with
//! the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{MysqlProbe, Probe, Server, SqliteProbe, TempMariaDb, temp_db};
use whelm_control::jobs::{
    MsgJob, PendingPage, SessionId, StoreJob, StoreResult, StoredMessage, UserRecord,
};
use whelm_control::store::worker::run_batch;
use whelm_control::store::{Stamp, Store, UserRow};
use whelm_shared::line::{Reply, UserId};

/// A database with bad rows, its store, and a probe on it.
struct Fixture {
    store: Box<dyn Store>,
    probe: Box<dyn Probe>,
    /// `--db` for the binary.
    db: String,
    _keep: Box<dyn std::any::Any>,
}

/// An id no signed 64-bit column holds: MariaDB's `BIGINT UNSIGNED`
/// maximum; in SQLite the integer column stores it as a REAL.
const HUGE_MARIADB: &str = "18446744073709551615";
const HUGE_SQLITE: &str = "99999999999999999999";

/// A deployment's own tables, looser than the ones the store creates.
const SQLITE_TABLES: &str = "
CREATE TABLE users (id INTEGER, username TEXT, session_token TEXT, status TEXT,
                    last_seen TEXT);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, sender_id INTEGER,
                       channel_id INTEGER, content TEXT, timestamp TEXT);
";

const MARIADB_TABLES: [&str; 2] = [
    "CREATE TABLE users (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, username VARCHAR(255) NULL,
        session_token VARCHAR(255) NULL, status VARCHAR(16) NULL, last_seen TIMESTAMP NULL)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE messages (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        sender_id BIGINT UNSIGNED NULL, channel_id BIGINT NULL, content BLOB NULL,
        timestamp TIMESTAMP NULL DEFAULT NULL) ENGINE=InnoDB",
];

/// Users: alice (1) and bob (3) are fine; 2 has no username (and no
/// status), 0 is not a user id, and one id is out of range. Messages 1-8
/// from bob (or not) are all pending for alice.
fn insert_rows(p: &mut dyn Probe, huge: &str) {
    p.exec(&format!(
        "INSERT INTO users (id, username, session_token, status) VALUES
            (1, 'alice', 'tok-alice', 'offline'),
            (2, NULL, 'tok-ghost', NULL),
            ({huge}, 'huge', 'tok-huge', 'offline'),
            (3, 'bob', 'tok-bob', 'offline'),
            (0, 'zero', 'tok-zero', 'offline')"
    ));
    p.exec(&format!(
        "INSERT INTO messages (id, sender_id, channel_id, content, timestamp) VALUES
            (1, 3, 7, 'first', '2026-11-21 10:00:00'),
            (2, 3, 7, NULL, '2026-11-21 10:00:00'),
            (3, NULL, 7, 'no sender', '2026-11-21 10:00:00'),
            (4, {huge}, 7, 'huge sender', '2026-11-21 10:00:00'),
            (5, 0, 7, 'zero sender', '2026-11-21 10:00:00'),
            (6, 3, 7, X'FF41', '2026-11-21 10:00:00'),
            (7, 3, 7, 'no time', NULL),
            (8, 3, 7, 'last', '2026-11-21 10:00:01')"
    ));
    p.exec(
        "INSERT INTO whelm_pending (recipient_id, message_id) VALUES
            (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8)",
    );
}

fn sqlite() -> Option<Fixture> {
    let (dir, path) = temp_db();
    let mut probe = SqliteProbe::open(&path);
    probe.exec(SQLITE_TABLES);
    let mut store = whelm_control::store::sqlite::SqliteStore::open(&path).unwrap();
    store.migrate().unwrap();
    insert_rows(&mut probe, HUGE_SQLITE);
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(probe),
        db: path.to_str().unwrap().to_owned(),
        _keep: Box::new(dir),
    })
}

fn mariadb() -> Option<Fixture> {
    let db = TempMariaDb::create("store bad rows")?;
    let mut probe = MysqlProbe::open(&db.dsn);
    for t in MARIADB_TABLES {
        probe.exec(t);
    }
    let mut store = whelm_control::store::mysql::MysqlStore::connect(&db.dsn).unwrap();
    store.migrate().unwrap();
    insert_rows(&mut probe, HUGE_MARIADB);
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(probe),
        db: db.url(),
        _keep: Box::new(db),
    })
}

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

fn message(id: i64, content: &str, timestamp: &str) -> StoredMessage {
    StoredMessage {
        id,
        sender: uid(3),
        recipient: uid(1),
        content: content.into(),
        timestamp: timestamp.into(),
    }
}

/// What alice gets of messages 1-8: 2-5 cannot be delivered (no content,
/// no sender, a sender out of range, sender 0); 6 has its bad byte
/// replaced, 7 has no timestamp.
fn deliverable() -> Vec<StoredMessage> {
    vec![
        message(1, "first", "2026-11-21T10:00:00Z"),
        message(6, "\u{FFFD}A", "2026-11-21T10:00:00Z"),
        message(7, "no time", ""),
        message(8, "last", "2026-11-21T10:00:01Z"),
    ]
}

fn lookups_of_bad_users_are_unknown_tokens(f: &mut Fixture) {
    for token in ["tok-ghost", "tok-huge", "tok-zero"] {
        assert_eq!(f.store.user_by_token(token).unwrap(), None, "{token}");
    }
    assert_eq!(
        f.store.user_by_token("tok-alice").unwrap(),
        Some(UserRecord {
            id: uid(1),
            username: "alice".into()
        })
    );
    assert_eq!(f.store.existing_users(&[uid(1), uid(2)]).unwrap().len(), 2);
}

fn user_list_shows_what_it_can(f: &mut Fixture) {
    let row = |id: i64, name: &str, status: &str| UserRow {
        id,
        username: name.into(),
        status: status.into(),
        last_seen: None,
    };
    assert_eq!(
        f.store.list_users().unwrap(),
        vec![
            row(0, "zero", "offline"),
            row(1, "alice", "offline"),
            row(2, "", ""),
            row(3, "bob", "offline"),
        ]
    );
}

fn undeliverable_pending_rows_are_skipped(f: &mut Fixture) {
    let all = f.store.pending_for(uid(1), i64::MIN, 500).unwrap();
    assert_eq!(
        all,
        PendingPage {
            messages: deliverable(),
            upto: Some(8),
            more: false,
        }
    );
    // In pages of three rows: skipped rows count in their page.
    let d = deliverable();
    let p1 = f.store.pending_for(uid(1), i64::MIN, 3).unwrap();
    assert_eq!(
        (&p1.messages[..], p1.upto, p1.more),
        (&d[..1], Some(3), true)
    );
    let p2 = f.store.pending_for(uid(1), 3, 3).unwrap();
    assert_eq!(
        (&p2.messages[..], p2.upto, p2.more),
        (&d[1..2], Some(6), true)
    );
    let p3 = f.store.pending_for(uid(1), 6, 3).unwrap();
    assert_eq!(
        (&p3.messages[..], p3.upto, p3.more),
        (&d[2..], Some(8), false)
    );
}

fn bad_rows_do_not_fail_the_batch(f: &mut Fixture) {
    let at = Stamp::at(time::macros::datetime!(2026-11-21 10:00:02 UTC));
    let lookup = |s: u64, token: &str| StoreJob::Lookup {
        session: SessionId(s),
        token: token.into(),
    };
    let res = run_batch(
        f.store.as_mut(),
        vec![
            lookup(1, "tok-ghost"),
            StoreJob::Msg(MsgJob {
                session: SessionId(3),
                seq: 1,
                sender: uid(3),
                recipient: uid(1),
                content: "committed".into(),
                pending: false,
                check_recipient: true,
            }),
            lookup(2, "tok-huge"),
            lookup(4, "tok-alice"),
            StoreJob::Online {
                session: SessionId(4),
                user: uid(1),
            },
        ],
        &at,
    );
    assert_eq!(res.len(), 5, "{res:?}");
    assert!(
        matches!(&res[0], StoreResult::Lookup { user: Ok(None), .. }),
        "{res:?}"
    );
    let StoreResult::Msg { result: Ok(m), .. } = &res[1] else {
        panic!("{res:?}")
    };
    assert_eq!(m.content, "committed");
    assert!(
        matches!(&res[2], StoreResult::Lookup { user: Ok(None), .. }),
        "{res:?}"
    );
    assert!(
        matches!(&res[3], StoreResult::Lookup { user: Ok(Some(u)), .. } if u.id == uid(1)),
        "{res:?}"
    );
    let StoreResult::Backlog { page: Ok(page), .. } = &res[4] else {
        panic!("{res:?}")
    };
    assert_eq!(page.messages, deliverable());
    // Delivered up to the page's end: the skipped rows' pending rows go
    // too; every messages row stays.
    run_batch(
        f.store.as_mut(),
        vec![StoreJob::Delivered {
            recipient: uid(1),
            upto: page.upto.unwrap(),
        }],
        &at,
    );
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM whelm_pending"),
        Some("0".into())
    );
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM messages"),
        Some("9".into())
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[test] fn $name() { let mut f = super::sqlite().unwrap(); super::$name(&mut f); })*
        }
        mod mariadb_store {
            $(#[test] fn $name() { if let Some(mut f) = super::mariadb() { super::$name(&mut f); } })*
        }
    };
}

suite!(
    lookups_of_bad_users_are_unknown_tokens,
    user_list_shows_what_it_can,
    undeliverable_pending_rows_are_skipped,
    bad_rows_do_not_fail_the_batch,
);

// ------------------------------------------------------------ end to end

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn msg_of(r: Reply) -> whelm_shared::line::MessageJson {
    match r {
        Reply::Msg(m) => m,
        other => panic!("not a MSG: {other:?}"),
    }
}

/// The binary on the bad rows: AUTH of the broken users answers `ERROR
/// Invalid token` (three times on one connection, which stays usable);
/// alice gets the deliverable part of her backlog in order; bob, another
/// client, is served and reaches alice live.
fn end_to_end(f: Fixture) {
    let Fixture {
        store,
        mut probe,
        db,
        _keep,
    } = f;
    drop(store);
    let server = Server::start(&db, &[]);
    let mut g = server.client();
    for token in ["tok-ghost", "tok-huge", "tok-zero"] {
        g.send(&format!("AUTH {token}"));
        g.expect("ERROR Invalid token");
    }
    let mut a = server.client();
    assert_eq!(a.auth("tok-alice", "alice"), 1);
    let got: Vec<(u64, u64, String, String)> = (0..4)
        .map(|_| {
            let m = msg_of(a.reply());
            (m.sender_id, m.recipient_id, m.content, m.timestamp)
        })
        .collect();
    let want: Vec<(u64, u64, String, String)> = deliverable()
        .into_iter()
        .map(|m| (3, 1, m.content, m.timestamp))
        .collect();
    assert_eq!(got, want);
    wait_for("the backlog marked delivered", || {
        probe.one("SELECT COUNT(*) FROM whelm_pending") == Some("0".into())
    });
    let mut b = server.client();
    assert_eq!(b.auth("tok-bob", "bob"), 3);
    b.send("MSG 1 still here");
    b.expect("OK MSG");
    let m = msg_of(a.reply());
    assert_eq!((m.sender_id, m.content.as_str()), (3, "still here"));
    // The first connection was never dropped.
    g.send("AUTH tok-bob");
    g.expect("OK AUTH 3 bob");
    b.expect("KICKED Another session connected");
}

#[test]
fn end_to_end_sqlite() {
    end_to_end(sqlite().unwrap());
}

#[test]
fn end_to_end_mariadb() {
    if let Some(f) = mariadb() {
        end_to_end(f);
    }
}
