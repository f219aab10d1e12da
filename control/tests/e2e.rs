//! End-to-end: the real binary on 127.0.0.1 port 0 with a fresh SQLite
//! database (and the core flow on MariaDB when `WHELM_TEST_MARIADB` is set),
//! driven by TCP clients. Database rows are checked with real queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{MysqlProbe, Probe, Server, SqliteProbe, TempMariaDb, add_user, temp_db};
use whelm_shared::dm_channel_id;
use whelm_shared::line::{MAX_LINE_LEN, Reply};

/// Polls `f` until it is true (bounded).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn status_of(p: &mut dyn Probe, id: u64) -> Option<String> {
    p.one(&format!("SELECT status FROM users WHERE id = {id}"))
}

struct Setup {
    _dir: tempfile::TempDir,
    db: String,
    server: Server,
    probe: SqliteProbe,
}

fn setup(names: &[&str], args: &[&str]) -> (Setup, Vec<String>) {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let tokens = names.iter().map(|n| add_user(&db, n)).collect();
    let server = Server::start(&db, args);
    let probe = SqliteProbe::open(&path);
    (
        Setup {
            _dir: dir,
            db,
            server,
            probe,
        },
        tokens,
    )
}

#[test]
fn ready_line_names_port_and_store() {
    let (s, _) = setup(&[], &[]);
    assert!(
        s.server
            .ready_line
            .starts_with("whelm-control ready: listen=127.0.0.1:")
    );
    assert_ne!(s.server.addr.port(), 0);
    assert!(
        s.server
            .ready_line
            .contains(&format!("store=sqlite:{}", s.db)),
        "{}",
        s.server.ready_line
    );
}

#[test]
fn auth_heartbeat_presence_and_sigterm() {
    let (mut s, t) = setup(&["alice", "bob"], &[]);
    let mut c = s.server.client();
    c.send("HEARTBEAT");
    c.expect("ERROR Not authenticated");
    c.send("MSG 2 hi");
    c.expect("ERROR Not authenticated");
    c.send("AUTH not-a-token");
    c.expect("ERROR Invalid token");
    let alice = c.auth(&t[0], "alice");
    assert_eq!(alice, 1);
    wait_for("alice online", || {
        status_of(&mut s.probe, alice).as_deref() == Some("online")
    });
    c.send("HEARTBEAT away");
    c.expect("OK HEARTBEAT");
    wait_for("alice away", || {
        status_of(&mut s.probe, alice).as_deref() == Some("away")
    });
    assert!(
        s.probe
            .one("SELECT last_seen FROM users WHERE id = 1")
            .is_some()
    );
    c.send("HEARTBEAT");
    c.expect("OK HEARTBEAT");
    // Leaving sets offline.
    drop(c);
    wait_for("alice offline", || {
        status_of(&mut s.probe, alice).as_deref() == Some("offline")
    });
    // SIGTERM: online users become offline, exit 0.
    let mut b = s.server.client();
    let bob = b.auth(&t[1], "bob");
    wait_for("bob online", || {
        status_of(&mut s.probe, bob).as_deref() == Some("online")
    });
    let st = s.server.terminate();
    assert!(st.success(), "exit status {st:?}: {}", s.server.stderr());
    assert_eq!(status_of(&mut s.probe, bob).as_deref(), Some("offline"));
    assert!(b.until_closed().is_empty());
}

#[test]
fn call_offer_accept_hangup_reject_busy_offline() {
    let (s, t) = setup(&["alice", "bob", "carol", "dave"], &[]);
    let mut a = s.server.client();
    let mut b = s.server.client();
    let mut c = s.server.client();
    a.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    c.auth(&t[2], "carol");
    // Offered, accepted, hung up.
    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 alice");
    c.send("CALL 2");
    c.expect("ERROR User busy");
    c.send("ACCEPT 1");
    c.expect("ERROR No incoming call from that user");
    b.send("ACCEPT 1");
    a.expect("START_CALL 2 bob");
    b.expect("START_CALL 1 alice");
    c.send("CALL 1");
    c.expect("ERROR User busy");
    a.send("CALL 3");
    a.expect("ERROR Already in a call");
    b.send("HANGUP");
    a.expect("HANGUP 2");
    b.expect("OK HANGUP");
    a.send("HANGUP");
    a.expect("ERROR Not in a call");
    // Rejected.
    c.send("CALL 1");
    c.expect("OK CALLING 1");
    a.expect("INCOMING 3 carol");
    a.send("REJECT 3");
    c.expect("REJECTED 1");
    a.expect("OK REJECTED");
    // Offline (dave exists but is not connected), unknown, self.
    a.send("CALL 4");
    a.expect("ERROR User offline");
    a.send("CALL 999");
    a.expect("ERROR User offline");
    a.send("CALL 1");
    a.expect("ERROR Cannot call yourself");
    // Callee leaves while ringing: the caller gets HANGUP.
    a.send("CALL 3");
    a.expect("OK CALLING 3");
    c.expect("INCOMING 1 alice");
    drop(c);
    a.expect("HANGUP 3");
    // Caller cancels a ringing call.
    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 alice");
    a.send("HANGUP");
    b.expect("HANGUP 1");
    a.expect("OK HANGUP");
    b.send("ACCEPT 1");
    b.expect("ERROR No incoming call from that user");
}

#[test]
fn ringing_call_expires() {
    let (s, t) = setup(&["alice", "bob"], &["--ring-timeout", "1"]);
    let mut a = s.server.client();
    let mut b = s.server.client();
    a.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 alice");
    a.expect("HANGUP 2");
    b.expect("HANGUP 1");
    b.send("ACCEPT 1");
    b.expect("ERROR No incoming call from that user");
}

fn msg_of(r: Reply) -> whelm_shared::line::MessageJson {
    match r {
        Reply::Msg(m) => m,
        other => panic!("expected MSG, got {other:?}"),
    }
}

/// Online and offline delivery; rows and channel ids checked.
fn message_flow(server: &Server, probe: &mut dyn Probe, t: &[String]) {
    let mut a = server.client();
    let mut b = server.client();
    let alice = a.auth(&t[0], "alice");
    let bob = b.auth(&t[1], "bob");
    let text = r#"hi "bob" \ 'quoted' 🎙️ ünï"#;
    a.send(&format!("MSG {bob} {text}"));
    a.expect("OK MSG");
    let m = msg_of(b.reply());
    assert_eq!(
        (m.sender_id, m.recipient_id, m.content.as_str()),
        (alice, bob, text)
    );
    assert!(
        m.timestamp.ends_with('Z') && m.timestamp.len() == 20,
        "{}",
        m.timestamp
    );
    // Unknown recipient.
    a.send("MSG 999999 anyone?");
    a.expect("ERROR Invalid user ID");
    // Bob leaves; three messages wait for him.
    drop(b);
    wait_for("bob offline", || {
        status_of(probe, bob).as_deref() == Some("offline")
    });
    for i in 1..=3 {
        a.send(&format!("MSG {bob} offline {i}"));
        a.expect("OK MSG");
    }
    // Bob to alice while she is online, to check the other direction.
    let mut b = server.client();
    b.send(&format!("AUTH {}", t[1]));
    b.expect(&format!("OK AUTH {bob} bob"));
    for i in 1..=3 {
        let m = msg_of(b.reply());
        assert_eq!((m.sender_id, m.content), (alice, format!("offline {i}")));
    }
    b.send("HEARTBEAT");
    b.expect("OK HEARTBEAT");
    b.send(&format!("MSG {alice} back"));
    b.expect("OK MSG");
    assert_eq!(msg_of(a.reply()).content, "back");
    // Delivered once: the next session gets nothing more.
    drop(b);
    wait_for("bob offline", || {
        status_of(probe, bob).as_deref() == Some("offline")
    });
    let mut b = server.client();
    b.auth(&t[1], "bob");
    b.send("HEARTBEAT");
    b.expect("OK HEARTBEAT");
    wait_for("pending cleared", || {
        probe.one("SELECT COUNT(*) FROM whelm_pending").as_deref() == Some("0")
    });
    let rows = probe.rows("SELECT sender_id, channel_id, content FROM messages ORDER BY id");
    let ch = dm_channel_id(alice, bob).to_string();
    let want: Vec<Vec<Option<String>>> = [
        (alice, text.to_owned()),
        (alice, "offline 1".into()),
        (alice, "offline 2".into()),
        (alice, "offline 3".into()),
        (bob, "back".into()),
    ]
    .into_iter()
    .map(|(s, c)| vec![Some(s.to_string()), Some(ch.clone()), Some(c)])
    .collect();
    assert_eq!(rows, want);
}

#[test]
fn messages_online_and_offline_sqlite() {
    let (mut s, t) = setup(&["alice", "bob"], &[]);
    message_flow(&s.server, &mut s.probe, &t);
}

#[test]
fn messages_online_and_offline_mariadb() {
    let Some(db) = TempMariaDb::create("e2e messages") else {
        return;
    };
    let url = db.url();
    let t: Vec<String> = ["alice", "bob"].iter().map(|n| add_user(&url, n)).collect();
    let server = Server::start(&url, &[]);
    assert!(
        server.ready_line.contains("store=mysql://root@"),
        "{}",
        server.ready_line
    );
    let mut probe = MysqlProbe::open(&db.dsn);
    message_flow(&server, &mut probe, &t);
}

#[test]
fn second_auth_kicks_the_first() {
    let (mut s, t) = setup(&["alice", "bob"], &[]);
    let mut a1 = s.server.client();
    let mut b = s.server.client();
    let alice = a1.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    b.send("CALL 1");
    b.expect("OK CALLING 1");
    a1.expect("INCOMING 2 bob");
    let mut a2 = s.server.client();
    a2.auth(&t[0], "alice");
    assert_eq!(a1.until_closed(), vec!["KICKED Another session connected"]);
    b.expect("HANGUP 1");
    // The new session is intact and alice stays online.
    a2.send("HEARTBEAT");
    a2.expect("OK HEARTBEAT");
    b.send("MSG 1 still there?");
    b.expect("OK MSG");
    assert_eq!(msg_of(a2.reply()).content, "still there?");
    b.send("CALL 1");
    b.expect("OK CALLING 1");
    a2.expect("INCOMING 2 bob");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_of(&mut s.probe, alice).as_deref(), Some("online"));
}

#[test]
fn heartbeat_timeout_and_auth_deadline() {
    let (mut s, t) = setup(
        &["alice", "bob"],
        &[
            "--heartbeat-timeout",
            "1.5",
            "--heartbeat-check",
            "0.2",
            "--auth-timeout",
            "1",
        ],
    );
    let mut idle = s.server.client();
    let mut a = s.server.client();
    let mut b = s.server.client();
    let alice = a.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 alice");
    b.send("ACCEPT 1");
    a.expect("START_CALL 2 bob");
    b.expect("START_CALL 1 alice");
    // Bob keeps heartbeating; alice goes silent.
    let start = Instant::now();
    let mut hung_up = false;
    while !hung_up {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "alice never timed out"
        );
        b.send("HEARTBEAT");
        loop {
            match b.line().as_str() {
                "OK HEARTBEAT" => break,
                "HANGUP 1" => hung_up = true,
                other => panic!("bob got {other}"),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "timed out too early"
    );
    assert_eq!(a.until_closed(), Vec::<String>::new());
    wait_for("alice offline", || {
        status_of(&mut s.probe, alice).as_deref() == Some("offline")
    });
    // The connection that never authenticated was closed too.
    assert!(idle.until_closed().is_empty());
}

#[test]
fn bad_input_gets_errors_and_others_are_served() {
    let (s, t) = setup(
        &["alice", "bob"],
        &["--rate-limit", "1000", "--rate-burst", "2000"],
    );
    let mut a = s.server.client();
    let mut b = s.server.client();
    a.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    // Over-long line: one error, then the session keeps working.
    let mut long = vec![b'A'; MAX_LINE_LEN + 100];
    long.push(b'\n');
    a.send_raw(&long);
    a.expect("ERROR Line too long");
    a.send("HEARTBEAT");
    a.expect("OK HEARTBEAT");
    // Invalid UTF-8.
    a.send_raw(b"MSG 2 \xff\xfe\n");
    a.expect("ERROR Invalid UTF-8");
    // Non-numeric and out-of-range ids.
    for l in [
        "CALL abc",
        "CALL -1",
        "ACCEPT 0",
        "REJECT 99999999999999999999",
    ] {
        a.send(l);
        a.expect("ERROR Invalid user ID");
    }
    a.send("MSG abc hi");
    a.expect("ERROR Invalid MSG format");
    a.send("MSG 2    ");
    a.expect("ERROR Empty message");
    a.send("call 2");
    a.expect("ERROR Unknown command: call");
    a.send("HEARTBEAT sleeping");
    a.expect("ERROR Invalid status");
    // CRLF accepted; blank lines ignored.
    a.send_raw(b"\r\n\nHEARTBEAT\r\n");
    a.expect("OK HEARTBEAT");
    // Binary garbage from another connection: errors or a disconnect, and
    // everyone else is still served.
    let mut g = s.server.client();
    let mut junk = Vec::new();
    for i in 0..20_000u32 {
        junk.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
    }
    junk.push(b'\n');
    g.send_raw(&junk);
    g.send("HEARTBEAT");
    let lines = g.until_closed_or("ERROR Not authenticated");
    assert!(lines.iter().all(|l| l.starts_with("ERROR ")), "{lines:?}");
    b.send("MSG 1 still here");
    b.expect("OK MSG");
    assert_eq!(msg_of(a.reply()).content, "still here");
}

#[test]
fn burst_of_ten_thousand_messages() {
    let (mut s, t) = setup(&["alice", "bob", "carol"], &[]);
    let mut a = s.server.client();
    let mut b = s.server.client();
    let mut c = s.server.client();
    a.auth(&t[0], "alice");
    b.auth(&t[1], "bob");
    c.auth(&t[2], "carol");
    let n = 10_000;
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!("MSG 2 burst {i}\n"));
    }
    // Write from a thread while reading here, so neither side blocks.
    let mut w = a.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(burst.as_bytes()).unwrap();
    });
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..n {
        match a.line().as_str() {
            "OK MSG" => ok += 1,
            "ERROR Rate limit exceeded" => limited += 1,
            other => panic!("unexpected reply {other}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(ok + limited, n);
    assert!(ok >= 2000, "ok {ok}");
    // Bob gets the accepted ones, in order; carol is served meanwhile.
    c.send("HEARTBEAT");
    c.expect("OK HEARTBEAT");
    let mut last = -1i64;
    for _ in 0..ok {
        let m = msg_of(b.reply());
        let i: i64 = m.content.strip_prefix("burst ").unwrap().parse().unwrap();
        assert!(i > last, "out of order: {i} after {last}");
        last = i;
    }
    assert_eq!(
        s.probe.one("SELECT COUNT(*) FROM messages"),
        Some(ok.to_string())
    );
}

#[test]
fn failed_bind_and_unreachable_store_exit_nonzero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, path) = temp_db();
    let out = std::process::Command::new(common::bin())
        .args(["--listen", &addr, "--db", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "{err}");
    // Nothing listens on port 1: the DSN is named, its password masked.
    let out = std::process::Command::new(common::bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--db",
            "mysql://u:secret@127.0.0.1:1/whelm",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mysql://u:***@127.0.0.1:1/whelm"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}
