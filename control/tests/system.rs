//! System tests with both real binaries on loopback: `whelm-relay` (its
//! command socket in a tempdir, ports resolved at run time) and
//! `whelm-control` connected to it. Clients come from distinct loopback IPs
//! (127.0.0.2, 127.0.0.3, ...; the TCP socket is bound before connect) so
//! control tells the relay to accept each user's HELLO from that IP only.
//!
//! - `voice_*`: AUTH, CALL, ACCEPT, HELLO; 1,000 datagrams each way arrive
//!   byte-identical and in order; a HELLO for a user in a call from a third
//!   IP gets nothing and changes nothing; after `OK HANGUP` nothing is
//!   forwarded. Both engines (uring skipped with a notice when io_uring is
//!   refused, unless `WHELM_TEST_REQUIRE_URING=1`).
//! - `control_killed_*`: SIGKILL control during 50 calls with voice
//!   flowing: no loss; a restarted control adopts the relay's state; users
//!   who come back in the grace period are in their call, the others' calls
//!   are removed at its end; new calls work at once.
//! - `relay_restarted_*`: SIGKILL the relay and start it again on the same
//!   ports and socket: control re-installs users, calls and voice addresses;
//!   voice resumes without new HELLOs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, READ_TIMEOUT, Server, add_user, temp_db};

// ------------------------------------------------------------ the relay

/// The `whelm-relay` binary next to `whelm-control`, built once if missing.
fn relay_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let control = PathBuf::from(env!("CARGO_BIN_EXE_whelm-control"));
        let bin = control.with_file_name("whelm-relay");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = control
                .parent()
                .is_some_and(|d| d.file_name().is_some_and(|n| n == "release"));
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "whelm-relay", "--bin", "whelm-relay"]);
            if release {
                cmd.arg("--release");
            }
            let st = cmd.status().unwrap();
            assert!(
                st.success() && bin.exists(),
                "building whelm-relay failed: run `cargo build -p whelm-relay` first"
            );
        }
        bin
    })
}

/// A running relay, killed on drop.
struct Relay {
    child: Child,
    voice: SocketAddr,
    ovp_port: u16,
    sock: PathBuf,
    engine: &'static str,
}

impl Relay {
    /// Starts the relay; `None` (with a notice) when the uring engine is
    /// refused here and `WHELM_TEST_REQUIRE_URING` is not 1.
    fn start(engine: &'static str, sock: &Path, ovp_port: u16, voice_port: u16) -> Option<Relay> {
        let mut child = Command::new(relay_bin())
            .args(["--bind", "127.0.0.1", "--workers", "2", "--engine", engine])
            .args(["--port", &ovp_port.to_string()])
            .args(["--voice-port", &voice_port.to_string()])
            .arg("--control-socket")
            .arg(sock)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errs = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if !l.is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let errs = errs.join().unwrap_or_default();
                if engine == "uring"
                    && std::env::var("WHELM_TEST_REQUIRE_URING").as_deref() != Ok("1")
                {
                    eprintln!(
                        "NOTICE: skipping the uring variant: the relay did not start with \
                         --engine uring ({other:?}): {errs}"
                    );
                    return None;
                }
                panic!("relay did not become ready ({other:?}); stderr: {errs}");
            }
        };
        let voice: SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("voice="))
            .unwrap_or_else(|| panic!("no voice= in {line:?}"))
            .parse()
            .unwrap();
        let ovp: SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ovp="))
            .unwrap_or_else(|| panic!("no ovp= in {line:?}"))
            .parse()
            .unwrap();
        Some(Relay {
            child,
            voice,
            ovp_port: ovp.port(),
            sock: sock.to_owned(),
            engine,
        })
    }

    /// SIGKILL and wait.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then start again on the same ports and socket.
    fn restart(&mut self) {
        self.kill();
        let sock = self.sock.clone();
        let again = Relay::start(self.engine, &sock, self.ovp_port, self.voice.port())
            .expect("relay restarts with the engine it started with");
        *self = again;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free right now on 127.0.0.1 (for a relay that must come back
/// on the same port).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------ clients

/// Loopback address number `n` (2 and up), one per simulated host.
fn host(n: u32) -> IpAddr {
    let [_, b, c, d] = n.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, b, c, d))
}

/// A control client whose TCP connection comes from `ip`.
fn client_from(ip: IpAddr, server: SocketAddr) -> Client {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    s.connect_timeout(&server.into(), Duration::from_secs(10))
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    Client {
        r: BufReader::new(s.try_clone().unwrap()),
        w: s,
    }
}

/// One simulated user: its host IP, control session and voice socket.
struct User {
    id: u64,
    name: String,
    token: String,
    ip: IpAddr,
    ctl: Option<Client>,
    udp: UdpSocket,
}

impl User {
    fn new(id: u64, token: String, ip: IpAddr) -> User {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        User {
            id,
            name: format!("u{id}"),
            token,
            ip,
            ctl: None,
            udp,
        }
    }

    fn connect(&mut self, server: SocketAddr) {
        let mut c = client_from(self.ip, server);
        assert_eq!(c.auth(&self.token, &self.name), self.id);
        self.ctl = Some(c);
    }

    fn ctl(&mut self) -> &mut Client {
        self.ctl.as_mut().expect("not connected")
    }

    fn hello(&self, relay: SocketAddr) {
        self.udp
            .send_to(format!("HELLO {}", self.id).as_bytes(), relay)
            .unwrap();
    }
}

/// Users `1..=n` in a fresh SQLite database; user `i` on host `base + i`.
fn make_users(db: &str, n: u64, base: u32) -> Vec<User> {
    (1..=n)
        .map(|i| {
            let token = add_user(db, &format!("u{i}"));
            User::new(i, token, host(base + i as u32))
        })
        .collect()
}

/// `a` calls `b`, `b` accepts; both get START_CALL.
fn call(a: &mut User, b: &mut User) {
    let (aid, bid, an, bn) = (a.id, b.id, a.name.clone(), b.name.clone());
    a.ctl().send(&format!("CALL {bid}"));
    a.ctl().expect(&format!("OK CALLING {bid}"));
    b.ctl().expect(&format!("INCOMING {aid} {an}"));
    b.ctl().send(&format!("ACCEPT {aid}"));
    a.ctl().expect(&format!("START_CALL {bid} {bn}"));
    b.ctl().expect(&format!("START_CALL {aid} {an}"));
}

/// Sends HELLOs and probes until a probe gets through each way (bounded).
fn establish(a: &User, b: &User, relay: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    for (from, to) in [(a, b), (b, a)] {
        to.udp
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        loop {
            assert!(
                Instant::now() < deadline,
                "voice between {} and {} never flowed",
                a.id,
                b.id
            );
            a.hello(relay);
            b.hello(relay);
            thread::sleep(Duration::from_millis(5));
            from.udp.send_to(b"probe", relay).unwrap();
            match to.udp.recv_from(&mut buf) {
                Ok((n, src)) if &buf[..n] == b"probe" => {
                    assert_eq!(src, relay, "voice comes from the relay's port");
                    break;
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    drain(&a.udp);
    drain(&b.udp);
}

/// Reads and discards whatever is queued (probes in flight).
fn drain(s: &UdpSocket) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 2048];
    while s.recv_from(&mut buf).is_ok() {}
}

/// Nothing arrives on `s` within `d`.
fn nothing_arrives(s: &UdpSocket, d: Duration, what: &str) {
    s.set_read_timeout(Some(d)).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok((n, src)) => panic!("{what}: got {n} bytes from {src}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Datagram `seq` from `from`: 120 bytes, a recognisable header and a
/// pattern that changes with the sequence number.
fn packet(from: u64, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(120);
    p.push(b'D');
    p.extend_from_slice(&(from as u32).to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    while p.len() < 120 {
        p.push((p.len() as u32).wrapping_mul(31).wrapping_add(seq) as u8);
    }
    p
}

/// Receives `n` datagrams on `s` (5 s without one is a failure).
fn receive(s: UdpSocket, n: usize) -> thread::JoinHandle<Vec<Vec<u8>>> {
    thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::with_capacity(n);
        let mut buf = [0u8; 2048];
        while got.len() < n {
            match s.recv_from(&mut buf) {
                Ok((len, _)) => got.push(buf[..len].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

/// `n` datagrams each way between `a` and `b`: all arrive, byte-identical,
/// in order.
fn exchange(a: &User, b: &User, relay: SocketAddr, n: u32) {
    let ra = receive(a.udp.try_clone().unwrap(), n as usize);
    let rb = receive(b.udp.try_clone().unwrap(), n as usize);
    for seq in 0..n {
        a.udp.send_to(&packet(a.id, seq), relay).unwrap();
        b.udp.send_to(&packet(b.id, seq), relay).unwrap();
        if seq % 50 == 49 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let at_b = rb.join().unwrap();
    let at_a = ra.join().unwrap();
    for (got, from) in [(at_b, a.id), (at_a, b.id)] {
        assert_eq!(got.len(), n as usize, "datagrams from {from} delivered");
        for (seq, p) in got.iter().enumerate() {
            assert_eq!(p, &packet(from, seq as u32), "datagram {seq} from {from}");
        }
    }
}

struct System {
    _dir: tempfile::TempDir,
    db: String,
    relay: Relay,
    control: Server,
}

fn control_args(sock: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--relay-socket".to_owned(),
        sock.to_str().unwrap().to_owned(),
    ];
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

/// A relay with `engine` on fixed free ports and control connected to it.
fn start_system(engine: &'static str, control_extra: &[&str]) -> Option<(System, Vec<String>)> {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let sock = dir.path().join("relay.sock");
    let relay = Relay::start(engine, &sock, free_udp_port(), free_udp_port())?;
    let args = control_args(&sock, control_extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control = Server::start(&db, &args);
    Some((
        System {
            _dir: dir,
            db,
            relay,
            control,
        },
        args.iter().map(|s| (*s).to_owned()).collect(),
    ))
}

// ------------------------------------------------------------ voice

fn voice_call(engine: &'static str) {
    let Some((sys, _)) = start_system(engine, &[]) else {
        return;
    };
    let relay = sys.relay.voice;
    let mut users = make_users(&sys.db, 2, 1); // 127.0.0.2, 127.0.0.3
    for u in &mut users {
        u.connect(sys.control.addr);
    }
    let [a, b] = &mut users[..] else {
        unreachable!()
    };
    call(a, b);
    establish(a, b, relay);
    exchange(a, b, relay, 1000);

    // A third host claims user 1: nothing comes back to it and user 1's
    // voice still goes to its real address.
    let thief = UdpSocket::bind(SocketAddr::new(host(4), 0)).unwrap();
    for _ in 0..5 {
        thief.send_to(b"HELLO 1", relay).unwrap();
        thief
            .send_to(format!("HELLO 1 {}", "x".repeat(32)).as_bytes(), relay)
            .unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    thief.send_to(&packet(99, 0), relay).unwrap();
    exchange(a, b, relay, 100);
    nothing_arrives(&thief, Duration::from_millis(300), "the third host");

    // HANGUP: once OK HANGUP arrived, nothing is forwarded.
    a.ctl().send("HANGUP");
    a.ctl().expect("OK HANGUP");
    b.ctl().expect("HANGUP 1");
    for seq in 0..20 {
        a.udp.send_to(&packet(1, seq), relay).unwrap();
        b.udp.send_to(&packet(2, seq), relay).unwrap();
    }
    nothing_arrives(&b.udp, Duration::from_millis(300), "user 2 after HANGUP");
    nothing_arrives(&a.udp, Duration::from_millis(50), "user 1 after HANGUP");
    drop(sys);
}

#[test]
fn voice_call_mmsg() {
    voice_call("mmsg");
}

#[test]
fn voice_call_uring() {
    voice_call("uring");
}

// ------------------------------------------------------------ survival

/// Voice at a modest rate from every user of `calls` (one datagram per
/// user every 20 ms), counted per receiving user.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<HashMap<u64, u64>>>,
    recv: Arc<Mutex<HashMap<u64, u64>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Traffic {
    /// Waits (bounded) until every sender has sent at least `n`: the sender
    /// paces itself at 50 rounds/s, but a stalled host can slow it down.
    fn wait_sent(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let sent = self.sent.lock().unwrap();
            if !sent.is_empty() && sent.values().all(|&v| v >= n) {
                return;
            }
            drop(sent);
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pairs`: (user id, its socket, partner id).
    fn start(pairs: Vec<(u64, UdpSocket, u64)>, relay: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let recv = Arc::new(Mutex::new(HashMap::new()));
        let mut threads = Vec::new();
        let senders: Vec<(u64, UdpSocket)> = pairs
            .iter()
            .map(|(id, s, _)| (*id, s.try_clone().unwrap()))
            .collect();
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(thread::spawn(move || {
                let mut seq = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    for (id, s) in &senders {
                        s.send_to(&packet(*id, seq), relay).unwrap();
                        *sent.lock().unwrap().entry(*id).or_insert(0) += 1;
                    }
                    seq += 1;
                    thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        for (id, s, _) in pairs {
            let (stop, recv) = (stop.clone(), recv.clone());
            threads.push(thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 2048];
                // Keep reading briefly after stop to drain what is in flight.
                let mut quiet_since: Option<Instant> = None;
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((n, _)) if n == 120 && buf[0] == b'D' => {
                            *recv.lock().unwrap().entry(id).or_insert(0) += 1;
                            quiet_since = None;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if stop.load(Ordering::Relaxed) {
                                let t = *quiet_since.get_or_insert_with(Instant::now);
                                if t.elapsed() > Duration::from_millis(300) {
                                    return;
                                }
                            }
                        }
                    }
                }
            }));
        }
        Traffic {
            stop,
            sent,
            recv,
            threads,
        }
    }

    /// Stops and returns (sent by user, received by user).
    fn finish(self) -> (HashMap<u64, u64>, HashMap<u64, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let sent = self.sent.lock().unwrap().clone();
        let recv = self.recv.lock().unwrap().clone();
        (sent, recv)
    }
}

/// Sends SIGKILL to a child.
fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn control_killed_during_50_calls_and_restarted() {
    const CALLS: usize = 50;
    const GRACE: &str = "6";
    // The first control keeps the default heartbeat timeout (the clients
    // send no HEARTBEAT while it runs); the restarted one has a short one,
    // which is also its grace period for adopted users.
    let Some((mut sys, _)) = start_system("mmsg", &[]) else {
        return;
    };
    let relay = sys.relay.voice;
    // 100 users in 50 calls (2k-1 calls 2k) plus two for a call after the
    // restart; user i on 127.0.1.i and so on.
    let mut users = make_users(&sys.db, 2 * CALLS as u64 + 2, 256);
    for u in &mut users[..2 * CALLS] {
        u.connect(sys.control.addr);
    }
    for k in 0..CALLS {
        let (l, r) = users.split_at_mut(2 * k + 1);
        call(&mut l[2 * k], &mut r[0]);
        establish(&l[2 * k], &r[0], relay);
    }
    let pairs: Vec<(u64, UdpSocket, u64)> = (0..2 * CALLS)
        .map(|i| {
            let partner = if i % 2 == 0 { i + 1 } else { i - 1 };
            (
                users[i].id,
                users[i].udp.try_clone().unwrap(),
                users[partner].id,
            )
        })
        .collect();
    let partner_of: HashMap<u64, u64> = pairs.iter().map(|(u, _, p)| (*u, *p)).collect();
    let traffic = Traffic::start(pairs, relay);
    thread::sleep(Duration::from_millis(500));

    // SIGKILL control: its clients see EOF; the relay keeps forwarding.
    sigkill(&mut sys.control.child);
    thread::sleep(Duration::from_millis(1000));
    traffic.wait_sent(75, Duration::from_secs(20));
    let (sent, recv) = traffic.finish();
    for (u, p) in &partner_of {
        let s = sent.get(p).copied().unwrap_or(0);
        assert!(s > 50, "user {p} sent {s}");
        assert_eq!(
            recv.get(u).copied().unwrap_or(0),
            s,
            "user {u} received everything user {p} sent across the kill"
        );
    }
    for u in &mut users {
        u.ctl = None;
    }

    // Control comes back with the same database and socket and adopts.
    let args = control_args(
        &sys.relay.sock,
        &["--heartbeat-timeout", GRACE, "--heartbeat-check", "0.25"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sys.control = Server::start(&sys.db, &args);
    let t0 = Instant::now();
    let server = sys.control.addr;
    // Calls 0..5: both come back. Calls 5..10: only the caller.
    for k in 0..10 {
        users[2 * k].connect(server);
        if k < 5 {
            users[2 * k + 1].connect(server);
        }
    }
    // A new call works at once.
    let (l, r) = users.split_at_mut(2 * CALLS + 1);
    l[2 * CALLS].connect(server);
    r[0].connect(server);
    call(&mut l[2 * CALLS], &mut r[0]);
    establish(&l[2 * CALLS], &r[0], relay);
    // Returned users are back in their calls: voice still flows (no new
    // HELLO), and HANGUP works with HANGUP <id> to a returned partner.
    for k in 0..10 {
        let (a, b) = (&users[2 * k], &users[2 * k + 1]);
        exchange(a, b, relay, 20);
    }
    for k in 0..5 {
        let (l, r) = users.split_at_mut(2 * k + 1);
        let (a, b) = (&mut l[2 * k], &mut r[0]);
        a.ctl().send("HANGUP");
        a.ctl().expect("OK HANGUP");
        b.ctl().expect(&format!("HANGUP {}", a.id));
        a.udp.send_to(&packet(a.id, 0), relay).unwrap();
        nothing_arrives(&b.udp, Duration::from_millis(100), "after HANGUP");
    }
    // The grace period ends: callers of calls 5..10 hear their partner hang
    // up; calls 10.. (nobody came back) are removed from the relay.
    // Halfway through it, the sessions that must outlive it heartbeat
    // (their own timeout is as short as the grace period).
    thread::sleep((t0 + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    for k in 5..10 {
        let u = &mut users[2 * k];
        u.ctl().send("HEARTBEAT");
    }
    for u in &mut users[2 * CALLS..] {
        u.ctl().send("HEARTBEAT");
        u.ctl().expect("OK HEARTBEAT");
    }
    for k in 5..10 {
        let partner = users[2 * k + 1].id;
        let u = &mut users[2 * k];
        let mut lines = vec![u.ctl().line(), u.ctl().line()];
        lines.sort();
        assert_eq!(
            lines,
            [format!("HANGUP {partner}"), "OK HEARTBEAT".to_owned()]
        );
    }
    // Every revocation of the grace expiry went out in the same tick as
    // these HANGUPs; give the relay a moment for the ones after them.
    thread::sleep(Duration::from_millis(300));
    for k in 5..CALLS {
        let (a, b) = (&users[2 * k], &users[2 * k + 1]);
        a.udp.send_to(&packet(a.id, 1), relay).unwrap();
        b.udp.send_to(&packet(b.id, 1), relay).unwrap();
    }
    for k in 5..CALLS {
        nothing_arrives(
            &users[2 * k + 1].udp,
            Duration::from_millis(if k == 5 { 300 } else { 1 }),
            "callee after the grace period",
        );
        nothing_arrives(&users[2 * k].udp, Duration::from_millis(1), "caller");
    }
    // The call made after the restart is untouched.
    exchange(&users[2 * CALLS], &users[2 * CALLS + 1], relay, 50);
    drop(sys);
}

#[test]
fn relay_restarted_during_calls() {
    let Some((mut sys, _)) = start_system("mmsg", &[]) else {
        return;
    };
    let relay = sys.relay.voice;
    let mut users = make_users(&sys.db, 4, 1);
    for u in &mut users {
        u.connect(sys.control.addr);
    }
    for k in 0..2 {
        let (l, r) = users.split_at_mut(2 * k + 1);
        call(&mut l[2 * k], &mut r[0]);
        establish(&l[2 * k], &r[0], relay);
        exchange(&l[2 * k], &r[0], relay, 100);
    }
    sys.relay.restart();
    assert_eq!(sys.relay.voice, relay, "same voice port");
    // Control reconnects (backoff up to 2 s) and re-installs; no HELLO is
    // sent: probes only.
    for k in 0..2 {
        let (a, b) = (&users[2 * k], &users[2 * k + 1]);
        let deadline = Instant::now() + Duration::from_secs(15);
        b.udp
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 2048];
        loop {
            assert!(Instant::now() < deadline, "voice never resumed");
            a.udp.send_to(b"probe", relay).unwrap();
            if matches!(b.udp.recv_from(&mut buf), Ok((5, _))) {
                break;
            }
        }
        drain(&a.udp);
        drain(&b.udp);
        exchange(a, b, relay, 200);
    }
    // Call control still works: HANGUP stops forwarding.
    let (l, r) = users.split_at_mut(1);
    let (a, b) = (&mut l[0], &mut r[0]);
    a.ctl().send("HANGUP");
    a.ctl().expect("OK HANGUP");
    b.ctl().expect("HANGUP 1");
    a.udp.send_to(&packet(1, 0), relay).unwrap();
    nothing_arrives(&b.udp, Duration::from_millis(300), "after HANGUP");
    drop(sys);
}
