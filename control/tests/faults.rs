//! Fault injection against the real `whelm-control` binary
//! (ARCHITECTURE.md, "What survives what": "Database unreachable: control
//! keeps serving presence and calls; `MSG` gets an `ERROR` instead of
//! `OK MSG`; a message is acknowledged only after it is committed, and no
//! acknowledged message is ever lost").
//!
//! - `mariadb_cut_and_blackhole_mid_traffic`: control reaches MariaDB
//!   through a TCP proxy in this file ([`DbProxy`]: pass, cut, black hole).
//!   While clients send MSG to an online and to an offline user and others
//!   heartbeat, leave and call, the proxy cuts for 3 s, passes, holds every
//!   connection without answering for 7 s, passes. Every `OK MSG` is a row
//!   (exactly once) and reached its recipient; MSG in an outage gets
//!   `ERROR Failed to send message` within 8 s, never a hang; HEARTBEAT,
//!   presence and CALL/ACCEPT/HANGUP answer within 2 s throughout; within
//!   10 s of each return MSG is acknowledged again; presence is written
//!   again after it.
//! - `sigkill_during_msg_load_{sqlite,mariadb}`: SIGKILL during pipelined
//!   MSG load from four clients; after a restart on the same database
//!   every acknowledged message is stored exactly once and the restarted
//!   control acknowledges a MSG at once.
//! - `sqlite_file_size_limit` (RLIMIT_FSIZE set on the running control,
//!   then lifted; no privileges needed), `sqlite_disk_full` (tmpfs in a
//!   private mount namespace, filled, then emptied) and `sqlite_read_only`
//!   (ext4 on a loop device in a private mount namespace, forced read-only
//!   by an ext4 error with `errors=remount-ro`): MSG gets `ERROR`, nothing
//!   unstored is acknowledged, HEARTBEAT keeps working, the process stays
//!   up and logs the file and the cause; afterwards `PRAGMA
//!   integrity_check` is `ok` and every acknowledged message is there once.
//!   The two mount-namespace variants need CAP_SYS_ADMIN (and the second
//!   a loop device): without, they print why and skip.
//!
//! Every wait is bounded; all addresses are loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    Client, MysqlProbe, Probe, READ_TIMEOUT, Server, SqliteProbe, TempMariaDb, add_user, bin,
};
use whelm_testkit::Unshared;

/// A MSG's answer may take this long at most, outage or not (the default
/// MariaDB read timeout is 5 s).
const MSG_BOUND: Duration = Duration::from_secs(8);
/// HEARTBEAT, presence and call replies never wait for the database.
const OP_BOUND: Duration = Duration::from_secs(2);
/// Control acknowledges MSG again within this long of the database's return.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// No thread of a test runs longer than this.
const THREAD_LIMIT: Duration = Duration::from_secs(80);

const OK_MSG: &str = "OK MSG";
const MSG_FAILED: &str = "ERROR Failed to send message";

// ------------------------------------------------------------ the proxy

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A TCP proxy between control and MariaDB on a loopback port chosen at
/// run time. `PASS` forwards; `CUT` closes every proxied connection and
/// closes new ones at once; `BLACKHOLE` accepts and holds connections and
/// forwards nothing either way (bytes already read are held, not sent)
/// until the mode changes: a black-holed connection sees neither data nor
/// an error.
struct DbProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl DbProxy {
    fn start(upstream: SocketAddr) -> DbProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (mode, stop) = (mode.clone(), stop.clone());
            thread::spawn(move || accept_loop(&listener, upstream, &mode, &stop))
        };
        DbProxy {
            addr,
            mode,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: SocketAddr,
    mode: &Arc<AtomicU8>,
    stop: &Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < THREAD_LIMIT {
        let m = mode.load(Ordering::SeqCst);
        if m != BLACKHOLE {
            // The black hole ends: connections it swallowed are closed.
            held.clear();
        }
        match listener.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                match m {
                    PASS => match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
                        Ok(server) => {
                            let _ = server.set_nodelay(true);
                            let _ = client.set_nodelay(true);
                            let (c2, s2) =
                                (client.try_clone().unwrap(), server.try_clone().unwrap());
                            pumps.push(pump(client, server, mode.clone(), stop.clone()));
                            pumps.push(pump(s2, c2, mode.clone(), stop.clone()));
                        }
                        Err(_) => drop(client),
                    },
                    CUT => drop(client),
                    _ => held.push(client),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
        pumps.retain(|h| !h.is_finished());
    }
    drop(held);
    for h in pumps {
        let _ = h.join();
    }
}

/// Copies `from` to `to` while the mode is `PASS`; on `CUT` (or EOF, an
/// error, the proxy stopping) shuts both down, which ends the other
/// direction's pump too.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let started = Instant::now();
        let live = || !stop.load(Ordering::SeqCst) && started.elapsed() < THREAD_LIMIT;
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        to.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        'copy: while live() {
            match mode.load(Ordering::SeqCst) {
                CUT => break,
                BLACKHOLE => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                _ => {}
            }
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => break,
            };
            // Read just as a black hole began: held while it lasts.
            loop {
                match mode.load(Ordering::SeqCst) {
                    PASS => break,
                    CUT => break 'copy,
                    _ if !live() => break 'copy,
                    _ => thread::sleep(Duration::from_millis(10)),
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    })
}

// ------------------------------------------------------------ traffic

/// One MSG and what came of it.
#[derive(Clone, Debug)]
struct Sent {
    content: String,
    at: Instant,
    reply: String,
    took: Duration,
}

type SentLog = Arc<Mutex<Vec<Sent>>>;

/// Sends `MSG to <tag>-<n>` one at a time, every `pause`, until `stop`,
/// logging each reply; a reply later than [`MSG_BOUND`] fails the test.
fn msg_sender(
    mut c: Client,
    tag: &'static str,
    to: u64,
    pause: Duration,
    stop: Arc<AtomicBool>,
    log: SentLog,
) -> JoinHandle<Client> {
    thread::spawn(move || {
        c.w.set_read_timeout(Some(MSG_BOUND)).unwrap();
        let started = Instant::now();
        let mut seq = 0u64;
        while !stop.load(Ordering::SeqCst) && started.elapsed() < THREAD_LIMIT {
            let content = format!("{tag}-{seq}");
            let at = Instant::now();
            c.send(&format!("MSG {to} {content}"));
            let mut l = String::new();
            match c.r.read_line(&mut l) {
                Ok(n) if n > 0 => {}
                other => panic!("{content}: no reply within {MSG_BOUND:?}: {other:?}"),
            }
            log.lock().unwrap().push(Sent {
                content,
                at,
                reply: l.trim_end().to_owned(),
                took: at.elapsed(),
            });
            seq += 1;
            thread::sleep(pause);
        }
        c.w.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        c
    })
}

/// Collects every line a client receives until `stop` and 500 ms of quiet.
fn collector(mut c: Client, stop: Arc<AtomicBool>) -> JoinHandle<(Client, Vec<String>)> {
    thread::spawn(move || {
        c.w.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let mut lines = Vec::new();
        let mut l = String::new();
        let mut quiet = Instant::now();
        while started.elapsed() < THREAD_LIMIT {
            match c.r.read_line(&mut l) {
                Ok(0) => panic!("collector: connection closed"),
                Ok(_) => {
                    lines.push(l.trim_end().to_owned());
                    l.clear();
                    quiet = Instant::now();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) && quiet.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
                Err(e) => panic!("collector: {e}"),
            }
        }
        c.w.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        (c, lines)
    })
}

/// HEARTBEAT with a changing status every 100 ms; each `OK HEARTBEAT` must
/// come within [`OP_BOUND`]. Returns the client, the slowest answer and
/// the count.
fn heartbeats(mut c: Client, stop: Arc<AtomicBool>) -> JoinHandle<(Client, Duration, usize)> {
    thread::spawn(move || {
        c.w.set_read_timeout(Some(OP_BOUND)).unwrap();
        let started = Instant::now();
        let (mut slowest, mut n) = (Duration::ZERO, 0);
        while !stop.load(Ordering::SeqCst) && started.elapsed() < THREAD_LIMIT {
            let status = ["away", "busy", "online"][n % 3];
            let t = Instant::now();
            c.send(&format!("HEARTBEAT {status}"));
            c.expect("OK HEARTBEAT");
            slowest = slowest.max(t.elapsed());
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        c.w.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        (c, slowest, n)
    })
}

/// Two users call, accept and hang up in a loop, and the caller calls an
/// offline user; each reply must come within [`OP_BOUND`]. Returns the
/// slowest cycle and the count.
fn calls(
    (mut a, a_id, a_name): (Client, u64, &'static str),
    (mut b, b_id, b_name): (Client, u64, &'static str),
    offline: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(Duration, usize)> {
    thread::spawn(move || {
        a.w.set_read_timeout(Some(OP_BOUND)).unwrap();
        b.w.set_read_timeout(Some(OP_BOUND)).unwrap();
        let started = Instant::now();
        let (mut slowest, mut n) = (Duration::ZERO, 0);
        while !stop.load(Ordering::SeqCst) && started.elapsed() < THREAD_LIMIT {
            let t = Instant::now();
            a.send(&format!("CALL {b_id}"));
            a.expect(&format!("OK CALLING {b_id}"));
            b.expect(&format!("INCOMING {a_id} {a_name}"));
            b.send(&format!("ACCEPT {a_id}"));
            a.expect(&format!("START_CALL {b_id} {b_name}"));
            b.expect(&format!("START_CALL {a_id} {a_name}"));
            a.send("HANGUP");
            a.expect("OK HANGUP");
            b.expect(&format!("HANGUP {a_id}"));
            a.send(&format!("CALL {offline}"));
            a.expect("ERROR User offline");
            slowest = slowest.max(t.elapsed());
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        (slowest, n)
    })
}

/// Waits (bounded by `limit`) for an `OK MSG` to a MSG sent at or after
/// `since`; returns how long after `since` its answer came.
fn first_ok_after(log: &SentLog, since: Instant, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit + MSG_BOUND;
    while Instant::now() < deadline {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.at >= since && s.reply == OK_MSG)
            .map(|s| (s.at + s.took).saturating_duration_since(since));
        if found.is_some() {
            return found;
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Every MSG of `log` answered `OK MSG` or `ERROR Failed to send message`
/// within [`MSG_BOUND`]; returns the acknowledged contents.
fn check_replies(what: &str, log: &[Sent]) -> Vec<String> {
    for s in log {
        assert!(
            s.reply == OK_MSG || s.reply == MSG_FAILED,
            "{what}: {} answered {:?}",
            s.content,
            s.reply
        );
        assert!(
            s.took <= MSG_BOUND,
            "{what}: {} took {:?}",
            s.content,
            s.took
        );
    }
    log.iter()
        .filter(|s| s.reply == OK_MSG)
        .map(|s| s.content.clone())
        .collect()
}

/// MSGs sent in `[from, to)` that got the database error.
fn failed_between(log: &[Sent], from: Instant, to: Instant) -> usize {
    log.iter()
        .filter(|s| s.at >= from && s.at < to && s.reply == MSG_FAILED)
        .count()
}

/// How many rows hold each content.
fn stored_counts(p: &mut dyn Probe) -> HashMap<String, usize> {
    p.rows("SELECT content, COUNT(*) FROM messages GROUP BY content")
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default().parse().unwrap(),
            )
        })
        .collect()
}

/// Every acknowledged message is stored exactly once; nothing is stored
/// twice.
fn assert_stored_once(what: &str, counts: &HashMap<String, usize>, acked: &[String]) {
    for c in acked {
        assert_eq!(
            counts.get(c).copied().unwrap_or(0),
            1,
            "{what}: acknowledged message {c:?} stored once"
        );
    }
    for (c, n) in counts {
        assert!(*n <= 1, "{what}: {c:?} stored {n} times");
    }
}

/// Contents of `MSG <json>` lines.
fn delivered(lines: &[String]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("MSG "))
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            v["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn connect(addr: SocketAddr, token: &str, name: &str) -> (Client, u64) {
    let mut c = Client::connect(addr);
    let id = c.auth(token, name);
    (c, id)
}

// ------------------------------------------------------------ MariaDB outage

/// `mysql://` URL of the temporary database through `via` (host:port).
fn url_via(db: &TempMariaDb, via: SocketAddr) -> String {
    let d = &db.dsn;
    let direct = format!("{}:{}", d.host.as_deref().unwrap_or("127.0.0.1"), d.port);
    let url = db.url();
    assert!(url.contains(&direct), "{url} names {direct}");
    url.replacen(&direct, &via.to_string(), 1)
}

#[test]
fn mariadb_cut_and_blackhole_mid_traffic() {
    let Some(db) = TempMariaDb::create("mariadb_cut_and_blackhole_mid_traffic") else {
        return;
    };
    let d = &db.dsn;
    let upstream = (d.host.as_deref().unwrap_or("127.0.0.1"), d.port)
        .to_socket_addrs()
        .unwrap()
        .find(|a| a.ip().is_loopback())
        .expect("WHELM_TEST_MARIADB names a loopback address");
    let direct = db.url();
    let names = ["s1", "s2", "rcp", "off", "hb", "ca", "cb", "pr", "gone"];
    let tokens: HashMap<&str, String> = names.iter().map(|n| (*n, add_user(&direct, n))).collect();
    let proxy = DbProxy::start(upstream);
    // Default MariaDB timeouts (connect 3 s, read and write 5 s).
    let server = Server::start(&url_via(&db, proxy.addr), &["--heartbeat-timeout", "300"]);
    let at = server.addr;
    let (rcp, rcp_id) = connect(at, &tokens["rcp"], "rcp");
    let (s1, _) = connect(at, &tokens["s1"], "s1");
    let (s2, _) = connect(at, &tokens["s2"], "s2");
    let (hb, hb_id) = connect(at, &tokens["hb"], "hb");
    let (ca, ca_id) = connect(at, &tokens["ca"], "ca");
    let (cb, cb_id) = connect(at, &tokens["cb"], "cb");
    let (mut pr, _) = connect(at, &tokens["pr"], "pr");
    let (gone, gone_id) = connect(at, &tokens["gone"], "gone");
    let off_id = {
        let mut p = MysqlProbe::open(&db.dsn);
        p.one("SELECT id FROM users WHERE username = 'off'")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let log1: SentLog = Arc::default();
    let log2: SentLog = Arc::default();
    let pause = Duration::from_millis(40);
    let t_s1 = msg_sender(s1, "on", rcp_id, pause, stop.clone(), log1.clone());
    let t_s2 = msg_sender(s2, "off", off_id, pause, stop.clone(), log2.clone());
    let t_rcp = collector(rcp, stop.clone());
    let t_hb = heartbeats(hb, stop.clone());
    let t_calls = calls((ca, ca_id, "ca"), (cb, cb_id, "cb"), off_id, stop.clone());
    thread::sleep(Duration::from_millis(1500));

    // Cut: every connection closed, new ones closed at once.
    let cut = Instant::now();
    proxy.set(CUT);
    thread::sleep(Duration::from_secs(1));
    // Presence while the database is away: a user leaves, and is offline.
    drop(gone);
    thread::sleep(Duration::from_millis(300));
    pr.w.set_read_timeout(Some(OP_BOUND)).unwrap();
    pr.send(&format!("CALL {gone_id}"));
    pr.expect("ERROR User offline");
    thread::sleep((cut + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    let cut_end = Instant::now();
    proxy.set(PASS);
    let back1 = first_ok_after(&log1, cut_end, RECOVERY_BOUND);
    thread::sleep(Duration::from_secs(1));

    // Black hole: connections accepted and held, nothing answered.
    let hole = Instant::now();
    proxy.set(BLACKHOLE);
    thread::sleep(Duration::from_secs(7));
    let hole_end = Instant::now();
    proxy.set(PASS);
    let back2 = first_ok_after(&log1, hole_end, RECOVERY_BOUND);
    thread::sleep(Duration::from_millis(500));

    stop.store(true, Ordering::SeqCst);
    let mut s1 = t_s1.join().unwrap();
    let s2 = t_s2.join().unwrap();
    let (_rcp, rcp_lines) = t_rcp.join().unwrap();
    let (mut hb, hb_slowest, hb_n) = t_hb.join().unwrap();
    let (call_slowest, call_n) = t_calls.join().unwrap();
    drop(s2);

    // (d) Back by itself within 10 s, each time.
    let back1 = back1.expect("no OK MSG within 10 s of the end of the cut");
    let back2 = back2.expect("no OK MSG within 10 s of the end of the black hole");
    eprintln!("recovered {back1:?} after the cut, {back2:?} after the black hole");
    assert!(
        back1 <= RECOVERY_BOUND,
        "recovery after the cut took {back1:?}"
    );
    assert!(
        back2 <= RECOVERY_BOUND,
        "recovery after the black hole took {back2:?}"
    );
    s1.send(&format!("MSG {rcp_id} final-probe"));
    s1.expect(OK_MSG);

    // (b) MSG in an outage: the error line, in bounded time.
    let log1 = log1.lock().unwrap().clone();
    let log2 = log2.lock().unwrap().clone();
    let acked1 = check_replies("to the online user", &log1);
    let acked2 = check_replies("to the offline user", &log2);
    for (what, from, to) in [("cut", cut, cut_end), ("black hole", hole, hole_end)] {
        let n = failed_between(&log1, from, to) + failed_between(&log2, from, to);
        assert!(n > 0, "no MSG sent during the {what} got {MSG_FAILED:?}");
    }
    let slowest = log1.iter().chain(&log2).map(|s| s.took).max().unwrap();
    eprintln!(
        "MSG: {} and {} sent, {} and {} acknowledged, slowest answer {slowest:?}",
        log1.len(),
        log2.len(),
        acked1.len(),
        acked2.len()
    );

    // (c) Presence, HEARTBEAT and calls never waited for the database.
    eprintln!(
        "{hb_n} heartbeats (slowest {hb_slowest:?}), {call_n} call cycles (slowest {call_slowest:?})"
    );
    assert!(
        hb_n > 50 && call_n > 20,
        "{hb_n} heartbeats, {call_n} call cycles"
    );
    assert!(hb_slowest < OP_BOUND, "HEARTBEAT took {hb_slowest:?}");
    assert!(
        call_slowest < 4 * OP_BOUND,
        "a call cycle took {call_slowest:?}"
    );

    // (a) Every OK MSG is a row, once; the online user got each live.
    let mut probe = MysqlProbe::open(&db.dsn);
    let counts = stored_counts(&mut probe);
    let mut acked: Vec<String> = acked1.iter().chain(&acked2).cloned().collect();
    acked.push("final-probe".into());
    assert_stored_once("after the outages", &counts, &acked);
    let got = delivered(&rcp_lines);
    for c in &acked1 {
        assert!(
            got.contains(c),
            "acknowledged {c:?} never reached the online user"
        );
    }

    // The offline user's acknowledged messages wait for it.
    let (mut off, _) = connect(at, &tokens["off"], "off");
    off.w
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut lines = Vec::new();
    let want: HashSet<&String> = acked2.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut l = String::new();
        match off.r.read_line(&mut l) {
            Ok(n) if n > 0 => lines.push(l.trim_end().to_owned()),
            _ => break,
        }
        let got = delivered(&lines);
        if want.iter().all(|c| got.contains(*c)) {
            break;
        }
    }
    let got = delivered(&lines);
    for c in &acked2 {
        assert!(
            got.contains(c),
            "acknowledged {c:?} was not delivered at the offline user's AUTH"
        );
    }

    // Presence is written again: the last HEARTBEAT's status reaches the row.
    hb.send("HEARTBEAT busy");
    hb.expect("OK HEARTBEAT");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = probe.one(&format!("SELECT status FROM users WHERE id = {hb_id}"));
        if st.as_deref() == Some("busy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "users.status of hb is {st:?}, not busy"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    drop(proxy);
}

// ------------------------------------------------------------ SIGKILL

/// `n` MSGs per write, then their `n` replies, until the server goes away;
/// returns the acknowledged contents (replies come in order).
fn pipelined_sender(mut c: Client, tag: String, to: u64) -> JoinHandle<Vec<String>> {
    thread::spawn(move || {
        const BURST: usize = 16;
        let started = Instant::now();
        let mut acked = Vec::new();
        let mut seq = 0usize;
        'run: while started.elapsed() < THREAD_LIMIT {
            let contents: Vec<String> = (0..BURST).map(|k| format!("{tag}-{}", seq + k)).collect();
            seq += BURST;
            let mut out = String::new();
            for m in &contents {
                out.push_str(&format!("MSG {to} {m}\n"));
            }
            if c.w.write_all(out.as_bytes()).is_err() {
                break;
            }
            for m in contents {
                let mut l = String::new();
                match c.r.read_line(&mut l) {
                    Ok(0) => break 'run,
                    Ok(_) if l.trim_end() == OK_MSG => acked.push(m),
                    Ok(_) => panic!("{m}: {l:?}"),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break 'run,
                    Err(e) => panic!("{m}: {e}"),
                }
            }
        }
        acked
    })
}

fn sigkill_during_msg_load(db: &str, probe: &mut dyn FnMut() -> Box<dyn Probe>) {
    let names = ["rcp", "off", "k0", "k1", "k2", "k3"];
    let tokens: HashMap<&str, String> = names.iter().map(|n| (*n, add_user(db, n))).collect();
    let args = ["--heartbeat-timeout", "300", "--rate-limit", "0"];
    let mut server = Server::start(db, &args);
    let (rcp, rcp_id) = connect(server.addr, &tokens["rcp"], "rcp");
    let t_rcp = thread::spawn(move || {
        // Reads deliveries until the server is gone.
        let mut rcp = rcp;
        let mut sink = Vec::new();
        let _ = rcp.r.read_to_end(&mut sink);
    });
    let off_id = probe()
        .one("SELECT id FROM users WHERE username = 'off'")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let senders: Vec<_> = (0..4)
        .map(|k| {
            let name = names[2 + k];
            let (c, _) = connect(server.addr, &tokens[name], name);
            let to = if k % 2 == 0 { rcp_id } else { off_id };
            pipelined_sender(c, name.to_owned(), to)
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    t_rcp.join().unwrap();
    assert!(
        acked.len() >= 50,
        "only {} messages acknowledged before the kill",
        acked.len()
    );

    let t = Instant::now();
    let server = Server::start(db, &args);
    let ready = t.elapsed();
    let t = Instant::now();
    let (mut c, _) = connect(server.addr, &tokens["k0"], "k0");
    c.send(&format!("MSG {rcp_id} after-restart"));
    c.expect(OK_MSG);
    let first = t.elapsed();
    eprintln!(
        "{} acknowledged before SIGKILL; restarted in {ready:?}, first MSG acknowledged {first:?} after ready",
        acked.len()
    );
    assert!(ready < Duration::from_secs(10), "restart took {ready:?}");
    assert!(
        first < OP_BOUND,
        "the restarted control took {first:?} to acknowledge"
    );
    let counts = stored_counts(probe().as_mut());
    let mut all = acked.clone();
    all.push("after-restart".into());
    assert_stored_once("after SIGKILL", &counts, &all);
    drop(server);
}

#[test]
fn sigkill_during_msg_load_sqlite() {
    let (_dir, path) = common::temp_db();
    let db = path.to_str().unwrap().to_owned();
    sigkill_during_msg_load(&db, &mut || Box::new(SqliteProbe::open(&path)));
}

#[test]
fn sigkill_during_msg_load_mariadb() {
    let Some(tmp) = TempMariaDb::create("sigkill_during_msg_load_mariadb") else {
        return;
    };
    let dsn = tmp.dsn.clone();
    sigkill_during_msg_load(&tmp.url(), &mut || Box::new(MysqlProbe::open(&dsn)));
}

// ------------------------------------------------------------ SQLite faults

/// A private mount namespace with a file system mounted on `dir` (the
/// same path inside; empty outside). Control runs in it via `nsenter`; the
/// test reaches its files through `/proc/PID/root`.
struct Jail {
    /// Its `info` is the mount's source (the loop device for ext4).
    ns: Unshared,
    dir: PathBuf,
}

impl Jail {
    /// Runs `mount_cmd` (a shell command mounting on `dir`) in a new mount
    /// namespace; `Err(why)` when that is not allowed here.
    fn new(dir: &Path, mount_cmd: &str) -> Result<Jail, String> {
        let ns = Unshared::start(
            &["-m", "--propagation", "private"],
            mount_cmd,
            &format!("$(findmnt -n -o SOURCE {})", dir.display()),
        )?;
        Ok(Jail {
            ns,
            dir: dir.to_owned(),
        })
    }

    /// A path inside, as the test reaches it from outside.
    fn outside(&self, inside: &Path) -> PathBuf {
        let rel = inside.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{}/root", self.ns.pid())).join(rel)
    }

    /// The control binary with `args`, in the namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.ns.pid().to_string(), "-m", "--", bin()])
            .args(args);
        c
    }
}

/// Where control runs and how its store is reached.
enum Place<'a> {
    /// A plain directory.
    Here,
    /// Inside a [`Jail`].
    Jailed(&'a Jail),
}

impl Place<'_> {
    fn command(&self, args: &[&str]) -> Command {
        match self {
            Place::Here => {
                let mut c = Command::new(bin());
                c.args(args);
                c
            }
            Place::Jailed(j) => j.command(args),
        }
    }

    fn outside(&self, p: &Path) -> PathBuf {
        match self {
            Place::Here => p.to_owned(),
            Place::Jailed(j) => j.outside(p),
        }
    }

    /// `user add NAME`: its token and id.
    fn add_user(&self, db: &str, name: &str) -> (String, u64) {
        let out = self
            .command(&["--db", db, "user", "add", name])
            .env_remove("WHELM_DB_DSN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "user add failed: {err}");
        let id = err
            .split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no id in {err:?}"));
        (String::from_utf8(out.stdout).unwrap().trim().to_owned(), id)
    }
}

/// What a SQLite fault scenario checks in control's log: the file and one
/// of these causes.
struct Expect<'a> {
    causes: &'a [&'a str],
}

/// MSG traffic to an online and an offline user and heartbeats; after 1 s
/// `inject(pid)`, 2 s later `heal(pid)` if given (MSG must be acknowledged
/// again within 10 s). Then SIGTERM, the log, and the file's integrity.
fn sqlite_fault(
    place: &Place<'_>,
    db_path: &Path,
    inject: &mut dyn FnMut(u32),
    heal: Option<&mut dyn FnMut(u32)>,
    expect: Expect<'_>,
) {
    let db = db_path.to_str().unwrap();
    let names = ["snd", "snd2", "rcp", "off", "hb"];
    let users: HashMap<&str, (String, u64)> =
        names.iter().map(|n| (*n, place.add_user(db, n))).collect();
    let token = |n: &str| users[n].0.clone();
    let mut cmd = place.command(&[
        "--listen",
        "127.0.0.1:0",
        "--db",
        db,
        "--heartbeat-timeout",
        "300",
    ]);
    cmd.env("RUST_LOG", "warn");
    let mut server = Server::start_command(cmd);
    let pid = server.child.id();
    let at = server.addr;
    let (rcp, rcp_id) = connect(at, &token("rcp"), "rcp");
    let (snd, _) = connect(at, &token("snd"), "snd");
    let (snd2, _) = connect(at, &token("snd2"), "snd2");
    let (hb, _) = connect(at, &token("hb"), "hb");
    let off_id = users["off"].1;
    let stop = Arc::new(AtomicBool::new(false));
    let log: SentLog = Arc::default();
    let log2: SentLog = Arc::default();
    let pause = Duration::from_millis(20);
    let t_snd = msg_sender(snd, "on", rcp_id, pause, stop.clone(), log.clone());
    let t_snd2 = msg_sender(snd2, "off", off_id, pause, stop.clone(), log2.clone());
    let t_rcp = collector(rcp, stop.clone());
    let t_hb = heartbeats(hb, stop.clone());
    thread::sleep(Duration::from_secs(1));

    let fault = Instant::now();
    inject(pid);
    thread::sleep(Duration::from_secs(2));
    let fault_end = Instant::now();
    let mut back = None;
    if let Some(heal) = heal {
        heal(pid);
        back = Some(
            first_ok_after(&log, fault_end, RECOVERY_BOUND)
                .expect("no OK MSG within 10 s of the fault's end"),
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "control exited during the fault"
    );
    stop.store(true, Ordering::SeqCst);
    drop(t_snd.join().unwrap());
    drop(t_snd2.join().unwrap());
    let (_rcp, rcp_lines) = t_rcp.join().unwrap();
    let (_hb, hb_slowest, hb_n) = t_hb.join().unwrap();

    let log = log.lock().unwrap().clone();
    let log2 = log2.lock().unwrap().clone();
    let acked_on = check_replies("MSG to the online user", &log);
    let acked_off = check_replies("MSG to the offline user", &log2);
    let failed = failed_between(&log, fault, fault_end) + failed_between(&log2, fault, fault_end);
    eprintln!(
        "{} MSG, {} acknowledged, {failed} failed during the fault; recovered after {back:?}; \
         {hb_n} heartbeats, slowest {hb_slowest:?}",
        log.len() + log2.len(),
        acked_on.len() + acked_off.len()
    );
    assert!(failed > 0, "no MSG got {MSG_FAILED:?} during the fault");
    assert!(hb_slowest < OP_BOUND, "HEARTBEAT took {hb_slowest:?}");
    let got = delivered(&rcp_lines);
    for c in &acked_on {
        assert!(
            got.contains(c),
            "acknowledged {c:?} never reached the online user"
        );
    }
    let acked: Vec<String> = acked_on.into_iter().chain(acked_off).collect();

    let status = server.terminate();
    let stderr = server.stderr();
    assert!(status.success(), "control exited with {status}: {stderr}");
    let named = stderr
        .lines()
        .find(|l| l.contains(db) && expect.causes.iter().any(|c| l.contains(c)));
    assert!(
        named.is_some(),
        "no log line names {db} and one of {:?}:\n{stderr}",
        expect.causes
    );
    eprintln!("logged: {}", named.unwrap());

    // A copy of what is on disk now (database and WAL) opens clean.
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = place.outside(Path::new(&format!("{db}{suffix}")));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("whelm.db{suffix}"))).unwrap();
        }
    }
    let mut p = SqliteProbe::open(&copy.path().join("whelm.db"));
    assert_eq!(p.one("PRAGMA integrity_check").as_deref(), Some("ok"));
    assert_stored_once("after the fault", &stored_counts(&mut p), &acked);
}

fn set_fsize(pid: u32, limit: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads `lim` and writes nothing (old limit: null).
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn sqlite_file_size_limit() {
    // No privileges needed: the file size limit of the running control
    // drops to 0 (every write to a file fails with EFBIG; SIGXFSZ must not
    // kill it), then is lifted.
    let (_dir, path) = common::temp_db();
    sqlite_fault(
        &Place::Here,
        &path,
        &mut |pid| set_fsize(pid, 0),
        Some(&mut |pid| set_fsize(pid, libc::RLIM_INFINITY)),
        Expect {
            causes: &["File too large"],
        },
    );
}

#[test]
fn sqlite_disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let jail = match Jail::new(
        dir.path(),
        &format!(
            "mount -t tmpfs -o size=8m whelm-full {}",
            dir.path().display()
        ),
    ) {
        Ok(j) => j,
        Err(why) => {
            eprintln!(
                "sqlite_disk_full: SKIPPED, needs a tmpfs in a private mount namespace (CAP_SYS_ADMIN): {why}"
            );
            return;
        }
    };
    let db = jail.dir.join("whelm.db");
    let filler = jail.outside(&jail.dir.join("filler"));
    let place = Place::Jailed(&jail);
    sqlite_fault(
        &place,
        &db,
        &mut |_| {
            // Fill the file system to the last block.
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 64 * 1024];
            for _ in 0..1024 {
                if f.write_all(&block).is_err() {
                    break;
                }
            }
            let small = [0u8; 512];
            for _ in 0..1024 {
                if f.write_all(&small).is_err() {
                    break;
                }
            }
        },
        Some(&mut |_| std::fs::remove_file(&filler).unwrap()),
        Expect {
            causes: &["database or disk is full", "No space left on device"],
        },
    );
}

#[test]
fn sqlite_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
        ])
        .arg(&img)
        .output();
    match mkfs {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("sqlite_read_only: SKIPPED, mkfs.ext4 is not usable here: {other:?}");
            return;
        }
    }
    let mount = format!(
        "mount -o loop,errors=remount-ro {} {}",
        img.display(),
        mnt.display()
    );
    let jail = match Jail::new(&mnt, &mount) {
        Ok(j) => j,
        Err(why) => {
            eprintln!(
                "sqlite_read_only: SKIPPED, needs an ext4 loop mount in a private mount namespace (CAP_SYS_ADMIN, /dev/loop-control): {why}"
            );
            return;
        }
    };
    let dev = Path::new(&jail.ns.info)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let trigger = PathBuf::from(format!("/sys/fs/ext4/{dev}/trigger_fs_error"));
    if !trigger.exists() {
        eprintln!(
            "sqlite_read_only: SKIPPED, {} does not exist (kernel without ext4 trigger_fs_error)",
            trigger.display()
        );
        return;
    }
    let db = jail.dir.join("whelm.db");
    let place = Place::Jailed(&jail);
    sqlite_fault(
        &place,
        &db,
        &mut |_| {
            // An ext4 error with errors=remount-ro: the file system turns
            // read-only under control's open files.
            std::fs::write(&trigger, "whelm fault test").unwrap();
        },
        None,
        Expect {
            causes: &["Read-only file system", "Input/output error", "readonly"],
        },
    );
}
