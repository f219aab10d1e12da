//! One store suite, run against SQLite (a temp file) and MariaDB (a database
//! of its own on the server `WHELM_TEST_MARIADB` names; a notice and nothing
//! when unset, a failure when set and unreachable). Rows are checked with
//! real queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{MysqlProbe, Probe, SqliteProbe, TempMariaDb};
use whelm_control::jobs::{
    MsgFailure, MsgJob, PendingPage, SessionId, StoreJob, StoreResult, StoredMessage, UserRecord,
};
use whelm_control::store::worker::run_batch;
use whelm_control::store::{Stamp, Store, StoreError};
use whelm_shared::dm_channel_id;
use whelm_shared::line::{Status, UserId};

/// The store under test, a probe on its database, and what keeps it alive.
struct Fixture {
    store: Box<dyn Store>,
    probe: Box<dyn Probe>,
    _keep: Box<dyn std::any::Any>,
}

fn sqlite() -> Option<Fixture> {
    let (dir, path) = common::temp_db();
    let mut store = whelm_control::store::sqlite::SqliteStore::open(&path).unwrap();
    store.migrate().unwrap();
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(SqliteProbe::open(&path)),
        _keep: Box::new(dir),
    })
}

fn mariadb() -> Option<Fixture> {
    let db = TempMariaDb::create("store suite")?;
    let mut store = whelm_control::store::mysql::MysqlStore::connect(&db.dsn).unwrap();
    store.migrate().unwrap();
    let probe = MysqlProbe::open(&db.dsn);
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(probe),
        _keep: Box::new(db),
    })
}

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

fn stamp() -> Stamp {
    Stamp::at(time::macros::datetime!(2026-11-21 10:00:00 UTC))
}

fn msg(seq: u64, from: UserId, to: UserId, text: &str, pending: bool) -> StoreJob {
    StoreJob::Msg(MsgJob {
        session: SessionId(1),
        seq,
        sender: from,
        recipient: to,
        content: text.into(),
        pending,
        check_recipient: pending,
    })
}

fn stored(r: &StoreResult) -> StoredMessage {
    match r {
        StoreResult::Msg { result: Ok(m), .. } => m.clone(),
        other => panic!("not a stored message: {other:?}"),
    }
}

fn users(f: &mut Fixture) -> (UserId, UserId) {
    let a = f.store.add_user("alice", "tok-a").unwrap();
    let b = f.store.add_user("bob", "tok-b").unwrap();
    (a, b)
}

fn migrate_creates_and_never_alters(f: &mut Fixture) {
    // Migrating again is a no-op that keeps data.
    let a = f.store.add_user("alice", "tok-a").unwrap();
    f.store.migrate().unwrap();
    assert_eq!(
        f.probe
            .one(&format!("SELECT username FROM users WHERE id = {a}")),
        Some("alice".into())
    );
    for t in ["users", "messages", "whelm_pending"] {
        assert_eq!(
            f.probe
                .one(&format!("SELECT COUNT(*) FROM {t} WHERE 1 = 0")),
            Some("0".into())
        );
    }
    // An existing table of another shape is left alone.
    f.probe.exec("DROP TABLE whelm_pending");
    f.probe
        .exec("CREATE TABLE whelm_pending (recipient_id BIGINT, message_id BIGINT, extra_col INT)");
    f.store.migrate().unwrap();
    f.probe
        .exec("INSERT INTO whelm_pending (recipient_id, message_id, extra_col) VALUES (1, 2, 3)");
    assert_eq!(
        f.probe.one("SELECT extra_col FROM whelm_pending"),
        Some("3".into())
    );
}

fn users_and_tokens(f: &mut Fixture) {
    let (a, b) = users(f);
    assert_ne!(a, b);
    assert_eq!(
        f.store.user_by_token("tok-a").unwrap(),
        Some(UserRecord {
            id: a,
            username: "alice".into()
        })
    );
    assert_eq!(f.store.user_by_token("TOK-A").unwrap(), None);
    assert_eq!(f.store.user_by_token("nope").unwrap(), None);
    assert!(matches!(
        f.store.add_user("alice", "other"),
        Err(StoreError::UserExists(_))
    ));
    let list = f.store.list_users().unwrap();
    assert_eq!(
        list.iter()
            .map(|u| (u.id, u.username.as_str(), u.status.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (a.get() as i64, "alice", "offline"),
            (b.get() as i64, "bob", "offline")
        ]
    );
    let mut ex = f.store.existing_users(&[a, uid(999_999), b]).unwrap();
    ex.sort();
    assert_eq!(ex, vec![a, b]);
}

fn presence_rows(f: &mut Fixture) {
    let (a, b) = users(f);
    let at = stamp();
    run_batch(
        f.store.as_mut(),
        vec![
            StoreJob::Heartbeat {
                user: a,
                status: Some(Status::Away),
            },
            StoreJob::Heartbeat {
                user: b,
                status: None,
            },
        ],
        &at,
    );
    let q = |u: UserId| format!("SELECT status, CAST(last_seen AS CHAR) FROM users WHERE id = {u}");
    assert_eq!(
        f.probe.rows(&q(a)),
        vec![vec![
            Some("away".into()),
            Some("2026-11-21 10:00:00".into())
        ]]
    );
    assert_eq!(
        f.probe.rows(&q(b)),
        vec![vec![
            Some("offline".into()),
            Some("2026-11-21 10:00:00".into())
        ]]
    );
    run_batch(
        f.store.as_mut(),
        vec![StoreJob::Offline { users: vec![a, b] }],
        &at,
    );
    assert_eq!(
        f.probe
            .one(&format!("SELECT status FROM users WHERE id = {a}")),
        Some("offline".into())
    );
}

fn messages_are_byte_exact_with_channel_id(f: &mut Fixture) {
    let (a, b) = users(f);
    let texts = [
        "hi",
        "quote ' double \" backslash \\ percent % underscore _",
        "emoji 🎙️🚀 and ünïcödé, 中文",
        "'; DROP TABLE messages; --",
        "  leading and trailing spaces  ",
    ];
    let jobs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| msg(i as u64 + 1, a, b, t, false))
        .collect();
    let res = run_batch(f.store.as_mut(), jobs, &stamp());
    assert_eq!(res.len(), texts.len());
    let ids: Vec<i64> = res.iter().map(|r| stored(r).id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (r, t) in res.iter().zip(texts) {
        let m = stored(r);
        assert_eq!((m.sender, m.recipient, m.content.as_str()), (a, b, t));
        assert_eq!(m.timestamp, "2026-11-21T10:00:00Z");
        let row = f.probe.rows(&format!(
            "SELECT sender_id, channel_id, content, CAST(timestamp AS CHAR) FROM messages WHERE id = {}",
            m.id
        ));
        assert_eq!(
            row,
            vec![vec![
                Some(a.to_string()),
                Some(dm_channel_id(a.get(), b.get()).to_string()),
                Some(t.to_string()),
                Some("2026-11-21 10:00:00".into()),
            ]]
        );
    }
    // Not pending: nothing recorded for offline delivery.
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM whelm_pending"),
        Some("0".into())
    );
}

fn unknown_recipient_is_refused(f: &mut Fixture) {
    let (a, b) = users(f);
    let res = run_batch(
        f.store.as_mut(),
        vec![
            msg(1, a, uid(424_242), "to nobody", true),
            msg(2, a, b, "to bob", true),
        ],
        &stamp(),
    );
    assert!(matches!(
        &res[0],
        StoreResult::Msg {
            seq: 1,
            result: Err(MsgFailure::UnknownRecipient),
            ..
        }
    ));
    let m = stored(&res[1]);
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM messages"),
        Some("1".into())
    );
    assert_eq!(
        f.probe
            .rows("SELECT recipient_id, message_id FROM whelm_pending"),
        vec![vec![Some(b.to_string()), Some(m.id.to_string())]]
    );
}

fn offline_backlog_in_order_once(f: &mut Fixture) {
    let (a, b) = users(f);
    let at = stamp();
    let res = run_batch(
        f.store.as_mut(),
        (1..=5)
            .map(|i| msg(i, a, b, &format!("m{i}"), true))
            .collect(),
        &at,
    );
    let ids: Vec<i64> = res.iter().map(|r| stored(r).id).collect();
    // A message committed live but not delivered is added later.
    let live = stored(&run_batch(f.store.as_mut(), vec![msg(6, a, b, "m6", false)], &at)[0]);
    run_batch(
        f.store.as_mut(),
        vec![StoreJob::AddPending {
            recipient: b,
            message_id: live.id,
        }],
        &at,
    );
    let res = run_batch(
        f.store.as_mut(),
        vec![StoreJob::Online {
            session: SessionId(9),
            user: b,
        }],
        &at,
    );
    let StoreResult::Backlog {
        session,
        user,
        page: Ok(page),
    } = &res[0]
    else {
        panic!("{res:?}")
    };
    assert!(!page.more);
    assert_eq!(page.upto, Some(live.id));
    let backlog = &page.messages;
    assert_eq!((*session, *user), (SessionId(9), b));
    let got: Vec<(i64, &str)> = backlog.iter().map(|m| (m.id, m.content.as_str())).collect();
    let mut want: Vec<(i64, String)> = ids
        .iter()
        .zip(1..)
        .map(|(id, i)| (*id, format!("m{i}")))
        .collect();
    want.push((live.id, "m6".into()));
    assert_eq!(
        got,
        want.iter()
            .map(|(i, s)| (*i, s.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(backlog.iter().all(|m| m.sender == a && m.recipient == b));
    assert_eq!(backlog[0].timestamp, "2026-11-21T10:00:00Z");
    assert_eq!(
        f.probe
            .one(&format!("SELECT status FROM users WHERE id = {b}")),
        Some("online".into())
    );
    // Delivered up to the last: nothing left for the next AUTH.
    run_batch(
        f.store.as_mut(),
        vec![StoreJob::Delivered {
            recipient: b,
            upto: live.id,
        }],
        &at,
    );
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM whelm_pending"),
        Some("0".into())
    );
    assert_eq!(
        f.store.pending_for(b, i64::MIN, 500).unwrap(),
        PendingPage::default()
    );
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM messages"),
        Some("6".into())
    );
}

fn group_commit_of_many(f: &mut Fixture) {
    let (a, b) = users(f);
    let n = 700u64;
    let jobs = (1..=n)
        .map(|i| {
            msg(
                i,
                if i % 2 == 0 { a } else { b },
                if i % 2 == 0 { b } else { a },
                &format!("n{i}"),
                i % 3 == 0,
            )
        })
        .collect();
    let res = run_batch(f.store.as_mut(), jobs, &stamp());
    assert_eq!(res.len(), n as usize);
    let ids: Vec<i64> = res.iter().map(|r| stored(r).id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // Every id maps to its own row and content.
    let rows = f.probe.rows("SELECT id, content FROM messages ORDER BY id");
    assert_eq!(rows.len(), n as usize);
    for (i, (row, id)) in rows.iter().zip(&ids).enumerate() {
        assert_eq!(row[0], Some(id.to_string()));
        assert_eq!(row[1], Some(format!("n{}", i + 1)));
    }
    assert_eq!(
        f.probe.one("SELECT COUNT(*) FROM whelm_pending"),
        Some((n / 3).to_string())
    );
}

fn failed_batch_commits_nothing(f: &mut Fixture) {
    let (a, b) = users(f);
    f.probe.exec("DROP TABLE messages");
    let res = run_batch(
        f.store.as_mut(),
        vec![
            StoreJob::Heartbeat {
                user: a,
                status: Some(Status::Busy),
            },
            msg(1, a, b, "lost", false),
            StoreJob::Lookup {
                session: SessionId(3),
                token: "tok-b".into(),
            },
        ],
        &stamp(),
    );
    assert!(matches!(
        &res[0],
        StoreResult::Msg {
            result: Err(MsgFailure::Database),
            ..
        }
    ));
    assert!(matches!(&res[1], StoreResult::Lookup { user: Err(()), .. }));
    assert_eq!(
        f.probe
            .one(&format!("SELECT status FROM users WHERE id = {a}")),
        Some("offline".into())
    );
    // The store recovers for the next batch.
    f.store.migrate().unwrap();
    let res = run_batch(
        f.store.as_mut(),
        vec![msg(2, a, b, "kept", false)],
        &stamp(),
    );
    assert_eq!(stored(&res[0]).content, "kept");
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
    migrate_creates_and_never_alters,
    users_and_tokens,
    presence_rows,
    messages_are_byte_exact_with_channel_id,
    unknown_recipient_is_refused,
    offline_backlog_in_order_once,
    group_commit_of_many,
    failed_batch_commits_nothing,
);
