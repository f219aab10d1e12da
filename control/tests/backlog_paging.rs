//! The backlog of an AUTH goes out in pages of `PENDING_PAGE` rows, never
//! loaded whole: at the store (SQLite and, with `WHELM_TEST_MARIADB`,
//! MariaDB) through the jobs the state machine sends (`Online` for the
//! first page, `Delivered` then `Backlog` for each next one), and end to
//! end with the real binary: 1,200 messages to an offline user arrive in
//! order, exactly once, and nothing stays pending.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{Client, MysqlProbe, Probe, Server, SqliteProbe, TempMariaDb, add_user, temp_db};
use whelm_control::jobs::{MsgJob, PendingPage, SessionId, StoreJob, StoreResult};
use whelm_control::store::worker::run_batch;
use whelm_control::store::{PENDING_PAGE, Stamp, Store};
use whelm_shared::line::{Reply, UserId};

struct Fixture {
    store: Box<dyn Store>,
    probe: Box<dyn Probe>,
    _keep: Box<dyn std::any::Any>,
}

fn sqlite() -> Option<Fixture> {
    let (dir, path) = temp_db();
    let mut store = whelm_control::store::sqlite::SqliteStore::open(&path).unwrap();
    store.migrate().unwrap();
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(SqliteProbe::open(&path)),
        _keep: Box::new(dir),
    })
}

fn mariadb() -> Option<Fixture> {
    let db = TempMariaDb::create("backlog paging")?;
    let mut store = whelm_control::store::mysql::MysqlStore::connect(&db.dsn).unwrap();
    store.migrate().unwrap();
    let probe = MysqlProbe::open(&db.dsn);
    Some(Fixture {
        store: Box::new(store),
        probe: Box::new(probe),
        _keep: Box::new(db),
    })
}

fn stamp() -> Stamp {
    Stamp::at(time::macros::datetime!(2026-11-21 10:00:00 UTC))
}

/// `n` messages from `a` to the offline `b`, stored as pending; their ids.
fn send_pending(f: &mut Fixture, a: UserId, b: UserId, n: usize, tag: &str) -> Vec<i64> {
    let jobs = (0..n)
        .map(|i| {
            StoreJob::Msg(MsgJob {
                session: SessionId(1),
                seq: i as u64,
                sender: a,
                recipient: b,
                content: format!("{tag}{i:04}"),
                pending: true,
                check_recipient: true,
            })
        })
        .collect();
    run_batch(f.store.as_mut(), jobs, &stamp())
        .iter()
        .map(|r| match r {
            StoreResult::Msg { result: Ok(m), .. } => m.id,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn page_of(res: &[StoreResult]) -> PendingPage {
    match res.last() {
        Some(StoreResult::Backlog { page: Ok(p), .. }) => p.clone(),
        other => panic!("not a backlog page: {other:?}"),
    }
}

fn pending(f: &mut Fixture) -> usize {
    f.probe
        .one("SELECT COUNT(*) FROM whelm_pending")
        .unwrap()
        .parse()
        .unwrap()
}

fn pages_of_1200(f: &mut Fixture) {
    assert_eq!(PENDING_PAGE, 500);
    let a = f.store.add_user("alice", "tok-a").unwrap();
    let b = f.store.add_user("bob", "tok-b").unwrap();
    let ids = send_pending(f, a, b, 1200, "m");
    assert_eq!(pending(f), 1200);
    let at = stamp();
    let session = SessionId(7);
    // The first page comes with going online.
    let mut page = page_of(&run_batch(
        f.store.as_mut(),
        vec![StoreJob::Online { session, user: b }],
        &at,
    ));
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    loop {
        sizes.push(page.messages.len());
        assert_eq!(
            page.upto,
            page.messages.last().map(|m| m.id),
            "upto is the page's last id"
        );
        got.extend(page.messages.iter().map(|m| (m.id, m.content.clone())));
        assert!(
            page.messages
                .iter()
                .all(|m| m.sender == a && m.recipient == b)
        );
        // Nothing is forgotten before the machine says it was delivered.
        assert_eq!(pending(f), 1200 - got.len() + page.messages.len());
        let Some(upto) = page.upto else { break };
        let mut jobs = vec![StoreJob::Delivered { recipient: b, upto }];
        if page.more {
            jobs.push(StoreJob::Backlog {
                session,
                user: b,
                after: upto,
            });
        }
        let res = run_batch(f.store.as_mut(), jobs, &at);
        if !page.more {
            assert!(res.is_empty());
            break;
        }
        page = page_of(&res);
    }
    assert_eq!(sizes, vec![500, 500, 200]);
    let want: Vec<(i64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("m{i:04}")))
        .collect();
    assert_eq!(got, want, "all 1,200 in order, once each");
    assert_eq!(pending(f), 0);
    // The next AUTH gets nothing.
    let again = page_of(&run_batch(
        f.store.as_mut(),
        vec![StoreJob::Online { session, user: b }],
        &at,
    ));
    assert_eq!(again, PendingPage::default());
}

fn a_full_last_page_ends_with_an_empty_one(f: &mut Fixture) {
    let a = f.store.add_user("alice", "tok-a").unwrap();
    let b = f.store.add_user("bob", "tok-b").unwrap();
    let ids = send_pending(f, a, b, PENDING_PAGE, "x");
    let first = f.store.pending_for(b, i64::MIN, PENDING_PAGE).unwrap();
    assert_eq!(first.messages.len(), PENDING_PAGE);
    assert_eq!((first.upto, first.more), (ids.last().copied(), true));
    let next = f
        .store
        .pending_for(b, first.upto.unwrap(), PENDING_PAGE)
        .unwrap();
    assert_eq!(next, PendingPage::default());
    // Another user's backlog is not in the page, nor are ids at or below
    // `after`.
    let c = f.store.add_user("carol", "tok-c").unwrap();
    let theirs = send_pending(f, a, c, 3, "c");
    let p = f.store.pending_for(c, theirs[0], 2).unwrap();
    assert_eq!(
        p.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        theirs[1..].to_vec()
    );
    assert!(p.more);
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

suite!(pages_of_1200, a_full_last_page_ends_with_an_empty_one);

// ------------------------------------------------------------ end to end

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends a MSG and waits for its `OK MSG`, then checks that nothing else
/// arrives for a while: every backlog page was answered before that MSG's
/// commit (the store runs jobs in order), so any extra message would be
/// queued right behind it.
fn nothing_more(c: &mut Client, to: u64) {
    c.send(&format!("MSG {to} probe"));
    c.expect("OK MSG");
    c.w.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut l = String::new();
    match c.r.read_line(&mut l) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("unexpected {other:?}: {l:?}"),
    }
    c.w.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
}

#[test]
fn twelve_hundred_offline_messages_end_to_end() {
    let (_dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let ta = add_user(&db, "alice");
    let tb = add_user(&db, "bob");
    let server = Server::start(&db, &[]);
    let mut probe = SqliteProbe::open(&path);
    let mut b = server.client();
    assert_eq!(b.auth(&tb, "bob"), 2);
    const N: usize = 1200;
    for i in 0..N {
        b.send(&format!("MSG 1 m{i:04}"));
    }
    for _ in 0..N {
        b.expect("OK MSG");
    }
    assert_eq!(
        probe.one("SELECT COUNT(*) FROM whelm_pending WHERE recipient_id = 1"),
        Some(N.to_string())
    );
    let mut a = server.client();
    assert_eq!(a.auth(&ta, "alice"), 1);
    for i in 0..N {
        match a.reply() {
            Reply::Msg(m) => assert_eq!(
                (m.sender_id, m.recipient_id, m.content),
                (2, 1, format!("m{i:04}")),
                "message {i}"
            ),
            other => panic!("message {i}: {other:?}"),
        }
    }
    nothing_more(&mut a, 2);
    wait_for("nothing pending", || {
        probe.one("SELECT COUNT(*) FROM whelm_pending") == Some("0".into())
    });
    // A second AUTH gets none of them again.
    drop(a);
    let mut a = server.client();
    assert_eq!(a.auth(&ta, "alice"), 1);
    nothing_more(&mut a, 2);
    assert_eq!(
        probe.one("SELECT COUNT(*) FROM whelm_pending"),
        Some("0".into())
    );
    assert_eq!(
        probe.one("SELECT COUNT(*) FROM messages WHERE sender_id = 2"),
        Some(N.to_string())
    );
}
