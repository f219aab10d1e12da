//! Hardening: the real `whelm-control` binary on loopback ports chosen at
//! run time, abused over real sockets (ARCHITECTURE.md, security model,
//! "TCP"): the authentication deadline at 2,000 silent connections, the
//! per-IP connection limit, the bounded outgoing queue of a client that
//! does not read, a 10 MB line, a MSG flood against the per-session rate
//! limit, and message content that SQL, JSON or UTF-8 handling could
//! mangle, checked on the wire and in the database (SQLite, and MariaDB
//! when `WHELM_TEST_MARIADB` is set).
//!
//! Every wait is bounded; the bounds are generous (a loaded CI machine),
//! and no assertion depends on how fast the server is, only on what it
//! does. Lower bounds on time are asserted only where the server cannot
//! legitimately be early (a connection closed before its deadline).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    Client, MysqlProbe, Probe, READ_TIMEOUT, Server, SqliteProbe, TempMariaDb, add_user, temp_db,
};
use whelm_shared::line::{MAX_LINE_LEN, MessageJson, Reply};
use whelm_testkit::NetNs;

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

fn msg_of(r: Reply) -> MessageJson {
    match r {
        Reply::Msg(m) => m,
        other => panic!("expected MSG, got {other:?}"),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    probe: SqliteProbe,
}

/// A fresh SQLite database with `names` as users 1, 2, ..., and the server
/// on it; returns the users' tokens.
fn setup(names: &[&str], args: &[&str]) -> (Setup, Vec<String>) {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let tokens = names.iter().map(|n| add_user(&db, n)).collect();
    let server = Server::start(&db, args);
    let probe = SqliteProbe::open(&path);
    (
        Setup {
            _dir: dir,
            server,
            probe,
        },
        tokens,
    )
}

/// A TCP connection to `to` from the loopback address `from` (port 0).
fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    s.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .unwrap_or_else(|e| panic!("binding {from}: {e}"));
    s.connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap();
    s.into()
}

/// A line client over an already connected stream.
fn client_of(s: TcpStream) -> Client {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    Client {
        r: std::io::BufReader::new(s.try_clone().unwrap()),
        w: s,
    }
}

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{field}: {line:?}: {e}"));
    kb * 1024
}

/// The soft "Max open files" limit of a process, from `/proc/PID/limits`.
fn nofile_soft_of(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .unwrap();
    if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse().unwrap()
    }
}

// ------------------------------------------------ 1. the auth deadline

/// Silent connections in [`auth_deadline_closes_two_thousand_silent_connections`].
const SILENT: usize = 2000;

#[test]
fn auth_deadline_closes_two_thousand_silent_connections() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // This process holds the 2,000 sockets (and the server's pipes): raise
    // its soft limit to the hard one. The server is started with a soft
    // limit of 1,024 so that coping with 2,000 proves it raises its own.
    let need: u64 = SILENT as u64 + 300;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= need,
        "RLIMIT_NOFILE hard limit {hard} is below the {need} this test needs"
    );
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        65_536
    } else {
        hard
    };
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let auth_timeout = Duration::from_secs(3);
    let started = std::panic::catch_unwind(|| {
        setup(
            &["alice", "bob", "carol"],
            &[
                "--auth-timeout",
                "3",
                // All 2,000 come from 127.0.0.1; the per-IP limit has its
                // own test.
                "--max-conns-per-ip",
                "0",
                "--log",
                "warn,whelm_control::runtime=info",
            ],
        )
    });
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).unwrap();
    let (mut s, t) = started.unwrap_or_else(|p| std::panic::resume_unwind(p));
    let pid = s.server.child.id();
    let server_limit = nofile_soft_of(pid);
    assert!(
        server_limit >= need,
        "the server runs with an open-file limit of {server_limit}: it did not raise its own"
    );

    let mut alice = s.server.client();
    let mut bob = s.server.client();
    let alice_id = alice.auth(&t[0], "alice");
    let bob_id = bob.auth(&t[1], "bob");

    let mut poll = mio::Poll::new().unwrap();
    let mut socks = Vec::with_capacity(SILENT);
    let mut opened = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        opened.push(Instant::now());
        let st = TcpStream::connect_timeout(&s.server.addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("silent connection {i}: {e}"));
        st.set_nonblocking(true).unwrap();
        let mut m = mio::net::TcpStream::from_std(st);
        poll.registry()
            .register(&mut m, mio::Token(i), mio::Interest::READABLE)
            .unwrap();
        socks.push(m);
    }
    let connected = opened[0].elapsed();

    // Wait for every close, serving alice meanwhile.
    let mut closed: Vec<Option<Instant>> = vec![None; SILENT];
    let mut n_closed = 0;
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = [0u8; 512];
    let give_up = Instant::now() + auth_timeout + Duration::from_secs(40);
    let mut next_ping = Instant::now();
    let (mut pings, mut pings_while_open) = (0u32, 0u32);
    while n_closed < SILENT {
        assert!(
            Instant::now() < give_up,
            "only {n_closed} of {SILENT} unauthenticated connections were closed"
        );
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            if closed[i].is_some() {
                continue;
            }
            for _ in 0..8 {
                match socks[i].read(&mut buf) {
                    Ok(0) => {
                        closed[i] = Some(Instant::now());
                        n_closed += 1;
                        break;
                    }
                    Ok(n) => panic!(
                        "silent connection {i} was sent {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        closed[i] = Some(Instant::now());
                        n_closed += 1;
                        break;
                    }
                    Err(e) => panic!("silent connection {i}: {e}"),
                }
            }
        }
        if Instant::now() >= next_ping {
            // The authenticated client is served while the server is busy
            // with thousands of sessions and their deadlines.
            let open_before = n_closed < SILENT;
            alice.send("HEARTBEAT");
            alice.expect("OK HEARTBEAT");
            alice.send(&format!("MSG {bob_id} ping {pings}"));
            alice.expect("OK MSG");
            assert_eq!(msg_of(bob.reply()).content, format!("ping {pings}"));
            pings += 1;
            if open_before {
                pings_while_open += 1;
            }
            next_ping = Instant::now() + Duration::from_millis(200);
        }
    }
    // None closed before its deadline: the server's clock for a
    // connection starts after our connect() began.
    for (i, (c, o)) in closed.iter().zip(&opened).enumerate() {
        let lived = c.unwrap().duration_since(*o);
        assert!(
            lived >= auth_timeout,
            "silent connection {i} closed after {lived:?}, before the {auth_timeout:?} deadline"
        );
    }
    assert!(
        pings_while_open >= 3,
        "alice served {pings_while_open} times"
    );
    // After: alice is still served, and new clients connect and AUTH.
    alice.send("HEARTBEAT");
    alice.expect("OK HEARTBEAT");
    let mut carol = s.server.client();
    let carol_id = carol.auth(&t[2], "carol");
    carol.send(&format!("MSG {alice_id} after"));
    carol.expect("OK MSG");
    let m = msg_of(alice.reply());
    assert_eq!((m.sender_id, m.content.as_str()), (carol_id, "after"));
    wait_for("three users online", || {
        s.probe
            .one("SELECT COUNT(*) FROM users WHERE status = 'online'")
            .as_deref()
            == Some("3")
    });
    eprintln!(
        "{SILENT} connections opened in {connected:?}; all closed at the deadline; \
         alice served {pings} times meanwhile; server open-file limit {server_limit}"
    );
    drop(socks);
    // The server says what limit it runs with.
    let st = s.server.terminate();
    assert!(st.success(), "{st:?}");
    let err = s.server.stderr();
    assert!(
        err.contains("open-file limit"),
        "no open-file limit in the log: {err}"
    );
}

/// Connects from `from`: `Some` when the server took the connection (it
/// answers a command), `None` when it refused it at a connection limit.
fn try_slot(from: Ipv4Addr, to: SocketAddr) -> Option<Client> {
    let mut c = client_of(connect_from(from, to, None));
    // A refused connection may be closed before this arrives.
    let _ = c.w.write_all(b"HEARTBEAT\n");
    let mut l = String::new();
    match c.r.read_line(&mut l) {
        Ok(0) => None,
        Ok(_) => match l.trim_end() {
            "ERROR Not authenticated" => Some(c),
            "ERROR Server at capacity, try again later" => None,
            other => panic!("unexpected {other:?}"),
        },
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("probe connection: {e}"),
    }
}

#[test]
fn closed_session_that_never_reads_is_reset_after_a_grace() {
    // A queue limit far above the kernel's socket buffers, so that the
    // replies this client provokes are still queued when its deadline
    // closes it: the close then waits for a flush that never comes.
    let auth_timeout = Duration::from_secs(2);
    let (s, t) = setup(
        &["alice"],
        &[
            "--auth-timeout",
            "2",
            "--max-conns-per-ip",
            "1",
            "--max-outbuf",
            "67108864",
        ],
    );
    let addr = s.server.addr;
    let four = Ipv4Addr::new(127, 0, 0, 4);
    let mut alice = s.server.client();
    alice.auth(&t[0], "alice");
    let opened = Instant::now();
    let mut stuck = connect_from(four, addr, Some(4096));
    // 400,000 one-byte commands, each answered with a 26-byte error
    // (unknown command, then rate limit): ~10 MB it never reads.
    let mut w = stuck.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&b"X\n".repeat(400_000));
    });
    // While it is open its per-IP slot is taken.
    let mut refused = client_of(connect_from(four, addr, None));
    assert_eq!(
        refused.until_closed(),
        vec!["ERROR Server at capacity, try again later"]
    );
    // After its deadline and the grace, the server lets it go: the slot is
    // free again.
    let give_up = opened + auth_timeout + whelm_control::net::CLOSE_GRACE + Duration::from_secs(20);
    let mut probe = loop {
        if let Some(c) = try_slot(four, addr) {
            break c;
        }
        assert!(
            Instant::now() < give_up,
            "a closed client that does not read kept its connection"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let freed = opened.elapsed();
    assert!(freed >= auth_timeout, "freed after {freed:?}");
    // Its socket ends (reset or EOF) without it having to read 10 MB.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stuck client: {e} after {got} bytes"),
        }
    }
    assert!(got < 8 * 1024 * 1024, "the stuck client read {got} bytes");
    writer.join().unwrap();
    probe.auth(&t[0], "alice");
    assert_eq!(
        alice.until_closed(),
        vec!["KICKED Another session connected"]
    );
    eprintln!("closed non-reader freed after {freed:?}; it read {got} bytes after that");
}

// ------------------------------------------------ 2. per-IP limit

#[test]
fn per_ip_limit_refuses_the_excess_and_spares_other_ips() {
    let (s, t) = setup(&["alice", "bob", "carol"], &["--max-conns-per-ip", "3"]);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let three = Ipv4Addr::new(127, 0, 0, 3);
    let addr = s.server.addr;
    // Three from 127.0.0.2, each known to be accepted (it answers).
    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = client_of(connect_from(two, addr, None));
            c.send("HEARTBEAT");
            c.expect("ERROR Not authenticated");
            c
        })
        .collect();
    held[0].auth(&t[0], "alice");
    // The fourth and fifth are refused: the capacity error (PROTOCOLS.md
    // wording), then the close, and nothing else.
    for _ in 0..2 {
        let mut c = client_of(connect_from(two, addr, None));
        assert_eq!(
            c.until_closed(),
            vec!["ERROR Server at capacity, try again later"]
        );
    }
    // A client that sends AUTH at once (before the refusal reaches it)
    // still reads the error line first; the close may then be a reset,
    // since its AUTH was never read.
    for _ in 0..3 {
        let mut c = client_of(connect_from(two, addr, None));
        let _ = c.w.write_all(format!("AUTH {}\n", t[1]).as_bytes());
        let mut got = Vec::new();
        match c.r.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("refused connection: {e}"),
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "ERROR Server at capacity, try again later\n"
        );
    }
    // Another IP is unaffected, up to its own limit.
    let mut others: Vec<Client> = (0..3)
        .map(|_| client_of(connect_from(three, addr, None)))
        .collect();
    let bob = others[0].auth(&t[1], "bob");
    for c in &mut others[1..] {
        c.send("HEARTBEAT");
        c.expect("ERROR Not authenticated");
    }
    // The authenticated session on the full IP keeps working.
    held[0].send(&format!("MSG {bob} from a full address"));
    held[0].expect("OK MSG");
    assert_eq!(msg_of(others[0].reply()).content, "from a full address");
    // A slot freed on 127.0.0.2 is usable again (the server notices the
    // close asynchronously: retry, bounded).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut again = loop {
        let mut c = client_of(connect_from(two, addr, None));
        c.send("HEARTBEAT");
        match c.line().as_str() {
            "ERROR Not authenticated" => break c,
            "ERROR Server at capacity, try again later" => {
                assert!(Instant::now() < deadline, "the freed slot never came back");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("unexpected {other}"),
        }
    };
    again.auth(&t[2], "carol");
    again.send("HEARTBEAT");
    again.expect("OK HEARTBEAT");
}

// ------------------------------------------------ 3. a client that does not read

#[test]
fn client_that_never_reads_is_dropped_without_slowing_others() {
    // The default queue limit (1 MiB).
    let (mut s, t) = setup(&["slow", "alice", "bob", "carol"], &[]);
    let addr = s.server.addr;
    // The slow client: a small receive buffer, AUTH, then it never reads.
    let mut slow = connect_from(Ipv4Addr::LOCALHOST, addr, Some(4096));
    slow.write_all(format!("AUTH {}\n", t[0]).as_bytes())
        .unwrap();
    let slow_id = 1;
    wait_for("slow online", || {
        status_of(&mut s.probe, slow_id).as_deref() == Some("online")
    });
    let mut alice = s.server.client();
    let mut bob = s.server.client();
    let mut carol = s.server.client();
    alice.auth(&t[1], "alice");
    let bob_id = bob.auth(&t[2], "bob");
    let carol_id = carol.auth(&t[3], "carol");

    let big = "z".repeat(8000);
    let per_round = 20;
    let start = Instant::now();
    let mut sent_to_slow = 0usize;
    let mut round = 0;
    // Alice floods the slow client; bob and carol talk meanwhile. Bounded
    // by rounds (64 MB to the slow client at most) and time.
    loop {
        assert!(
            round < 400 && start.elapsed() < Duration::from_secs(40),
            "the slow client was never dropped ({sent_to_slow} messages sent to it)"
        );
        let mut batch = String::new();
        for _ in 0..per_round {
            batch.push_str(&format!("MSG {slow_id} {big}\n"));
        }
        alice.send_raw(batch.as_bytes());
        for _ in 0..per_round {
            alice.expect("OK MSG");
        }
        sent_to_slow += per_round;
        bob.send(&format!("MSG {carol_id} round {round}"));
        bob.expect("OK MSG");
        let m = msg_of(carol.reply());
        assert_eq!((m.sender_id, m.content), (bob_id, format!("round {round}")));
        carol.send("HEARTBEAT");
        carol.expect("OK HEARTBEAT");
        round += 1;
        if status_of(&mut s.probe, slow_id).as_deref() == Some("offline") {
            break;
        }
    }
    let dropped_after = start.elapsed();
    // The server forgot it: a call to it finds the user offline.
    carol.send(&format!("CALL {slow_id}"));
    carol.expect("ERROR User offline");
    // The slow client's socket ends (EOF or reset) once it drains what the
    // kernel holds, and it got less than was sent to it.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the slow client never saw EOF");
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("slow client read: {e} after {got} bytes"),
        }
    }
    let lines = got / (big.len() + 80);
    assert!(
        lines < sent_to_slow,
        "the slow client got ~{lines} of {sent_to_slow} messages"
    );
    // Others are still served after.
    for i in 0..3 {
        carol.send(&format!("MSG {bob_id} after {i}"));
        carol.expect("OK MSG");
        assert_eq!(msg_of(bob.reply()).content, format!("after {i}"));
    }
    eprintln!(
        "slow client dropped after {sent_to_slow} messages ({dropped_after:?}); \
         it had received {got} bytes"
    );
}

// ------------------------------------------------ 4. a 10 MB line

const TEN_MB: usize = 10 * 1024 * 1024;

#[test]
fn ten_megabyte_line_is_refused_in_bounded_memory() {
    // The unauthenticated sender must not meet its deadline mid-line.
    let (mut s, t) = setup(&["alice", "bob", "carol"], &["--auth-timeout", "60"]);
    let pid = s.server.child.id();
    let mut alice = s.server.client();
    let mut bob = s.server.client();
    let mut carol = s.server.client();
    alice.auth(&t[0], "alice");
    let bob_id = bob.auth(&t[1], "bob");
    carol.auth(&t[2], "carol");
    let mut stranger = s.server.client();
    stranger.send("HEARTBEAT");
    stranger.expect("ERROR Not authenticated");
    // Warm up every path the test uses, then take the baseline and reset
    // the peak (clear_refs 5: VmHWM := VmRSS).
    carol.send(&format!("MSG {bob_id} warm"));
    carol.expect("OK MSG");
    assert_eq!(msg_of(bob.reply()).content, "warm");
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = proc_status_bytes(pid, "VmRSS");
    let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();

    // Alice: a 10 MB MSG line with its newline at the end, then a command.
    let with_newline = std::thread::spawn(move || {
        let mut line = format!("MSG {bob_id} ").into_bytes();
        line.resize(TEN_MB, b'x');
        line.push(b'\n');
        alice.send_raw(&line);
        alice.send("HEARTBEAT");
        let replies = [alice.line(), alice.line()];
        (alice, replies)
    });
    // An unauthenticated connection: 10 MB with no newline at all, then it
    // hangs up.
    let without_newline = std::thread::spawn(move || {
        let junk = vec![b'y'; TEN_MB];
        stranger.send_raw(&junk);
        let first = stranger.line();
        stranger.send_raw(&junk[..1024 * 1024]);
        stranger.w.shutdown(Shutdown::Write).unwrap();
        let rest = stranger.until_closed();
        (first, rest)
    });
    // Carol is served meanwhile.
    let give_up = Instant::now() + Duration::from_secs(40);
    let mut served = 0;
    while !(with_newline.is_finished() && without_newline.is_finished()) {
        assert!(Instant::now() < give_up, "10 MB senders never finished");
        carol.send("HEARTBEAT");
        carol.expect("OK HEARTBEAT");
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut alice, replies) = with_newline.join().unwrap();
    assert_eq!(replies, ["ERROR Line too long", "OK HEARTBEAT"]);
    let (first, rest) = without_newline.join().unwrap();
    assert_eq!(first, "ERROR Line too long");
    assert!(rest.is_empty(), "after the error: {rest:?}");

    // Nothing of the long line was delivered or stored; alice and bob go on.
    alice.send(&format!("MSG {bob_id} short"));
    alice.expect("OK MSG");
    assert_eq!(msg_of(bob.reply()).content, "short");
    assert_eq!(
        s.probe.one("SELECT MAX(LENGTH(content)) FROM messages"),
        Some("5".into())
    );
    let rss_after = proc_status_bytes(pid, "VmRSS");
    let peak = proc_status_bytes(pid, "VmHWM");
    let grew = rss_after.saturating_sub(rss_before);
    eprintln!(
        "served carol {served} times; server VmRSS {rss_before} -> {rss_after} bytes, \
         peak {peak} (peak reset: {peak_reset})"
    );
    let bound = 4 * 1024 * 1024;
    assert!(
        grew < bound,
        "VmRSS grew by {grew} bytes over two 10 MB lines"
    );
    if peak_reset {
        let peak_grew = peak.saturating_sub(rss_before);
        assert!(
            peak_grew < bound,
            "VmHWM rose {peak_grew} bytes above the baseline during two 10 MB lines"
        );
    }
}

// ------------------------------------------------ 5. MSG flood

#[test]
fn msg_flood_is_rate_limited_and_others_are_unaffected() {
    let (rate, burst) = (50.0, 20.0);
    let (mut s, t) = setup(
        &["alice", "bob", "carol"],
        &["--rate-limit", "50", "--rate-burst", "20"],
    );
    let mut alice = s.server.client();
    let mut bob = s.server.client();
    let mut carol = s.server.client();
    let alice_id = alice.auth(&t[0], "alice");
    let bob_id = bob.auth(&t[1], "bob");
    let carol_id = carol.auth(&t[2], "carol");
    let n = 3000;
    let mut flood = String::new();
    for i in 0..n {
        flood.push_str(&format!("MSG {bob_id} flood {i}\n"));
    }
    let start = Instant::now();
    let mut w = alice.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(flood.as_bytes()).unwrap());
    let (mut ok, mut limited) = (0usize, 0usize);
    let mut carol_sent = 0;
    for i in 0..n {
        match alice.line().as_str() {
            "OK MSG" => ok += 1,
            "ERROR Rate limit exceeded" => limited += 1,
            other => panic!("flood reply {i}: {other}"),
        }
        // Carol, meanwhile, within her own budget: every command answered.
        if i % 500 == 0 {
            carol.send("HEARTBEAT");
            carol.expect("OK HEARTBEAT");
            carol.send(&format!("MSG {bob_id} carol {carol_sent}"));
            carol.expect("OK MSG");
            carol_sent += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    writer.join().unwrap();
    assert_eq!(ok + limited, n);
    assert!(limited > 0, "no flood line was rate-limited");
    let allowed = (burst + rate * elapsed).ceil() as usize + 1;
    assert!(
        ok <= allowed,
        "{ok} accepted in {elapsed:.2} s; the bucket allows {allowed}"
    );
    // Bob got exactly the accepted ones (in order) and all of carol's.
    let (mut from_alice, mut from_carol) = (Vec::new(), Vec::new());
    for _ in 0..ok + carol_sent {
        let m = msg_of(bob.reply());
        if m.sender_id == alice_id {
            from_alice.push(m.content);
        } else {
            assert_eq!(m.sender_id, carol_id);
            from_carol.push(m.content);
        }
    }
    assert_eq!(from_alice.len(), ok);
    let idx: Vec<usize> = from_alice
        .iter()
        .map(|c| c.strip_prefix("flood ").unwrap().parse().unwrap())
        .collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
    let want: Vec<String> = (0..carol_sent).map(|i| format!("carol {i}")).collect();
    assert_eq!(from_carol, want);
    // Rate-limited messages were not stored.
    assert_eq!(
        s.probe.one(&format!(
            "SELECT COUNT(*) FROM messages WHERE sender_id = {alice_id}"
        )),
        Some(ok.to_string())
    );
    // The limit is not a disconnect: once the bucket refills, alice is
    // served again.
    std::thread::sleep(Duration::from_millis(500));
    alice.send("HEARTBEAT");
    alice.expect("OK HEARTBEAT");
    eprintln!("flood of {n}: {ok} accepted, {limited} rate-limited in {elapsed:.2} s");
}

// ------------------------------------------------ 6. content byte-exact

/// Contents that SQL quoting, LIKE patterns, JSON escaping or a 3-byte
/// UTF-8 column would change. A line can carry any UTF-8 but `\n` (and a
/// trailing `\r`): NUL and other control characters travel raw in the
/// command and come back JSON-escaped (PROTOCOLS.md: MSG <json>).
const NASTY: [&str; 14] = [
    "it's \"quoted\" ''double'' \"\"",
    r"back\slash \\ \n \' \0 \x00 C:\dir\",
    "100% _under_ %_% LIKE 'a%' ESCAPE '\\'",
    "'; DROP TABLE messages; --",
    "\"); DROP TABLE users; --",
    "Robert'); DELETE FROM users WHERE ('1'='1",
    "emoji 🎙️😀 music 𝄞 cjk 𠜎 family 👩‍👩‍👧‍👦 flag 🇳🇱",
    "nul\0inside",
    "\0",
    "tab\tbell\x07esc\x1b[31m del\x7f cr\rinside",
    "  padded both sides  ",
    "e\u{301} \u{feff}bom \u{2028}ls \u{2029}ps </script> \u{fffd}",
    "\u{10ffff} top of unicode, \u{e000} private use",
    "$1 ${var} %s %n {} \\u0000 ?",
];

/// The next line as raw bytes (without `\n`).
fn raw_line(c: &mut Client) -> Vec<u8> {
    let mut l = Vec::new();
    let n = c.r.read_until(b'\n', &mut l).expect("read timed out");
    assert!(n > 0 && l.ends_with(b"\n"), "connection closed");
    l.pop();
    l
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Checks one delivered line byte for byte: the JSON the server writes
/// for `content`, with the raw UTF-8 and the escapes JSON requires.
fn check_wire(line: &[u8], sender: u64, recipient: u64, content: &str) {
    let text = std::str::from_utf8(line).unwrap();
    let m = msg_of(Reply::parse(text).unwrap());
    assert_eq!(m.content.as_bytes(), content.as_bytes(), "content changed");
    let want = MessageJson {
        sender_id: sender,
        recipient_id: recipient,
        content: content.to_owned(),
        timestamp: m.timestamp.clone(),
    };
    let mut expected = b"MSG ".to_vec();
    expected.extend_from_slice(serde_json::to_string(&want).unwrap().as_bytes());
    assert_eq!(line, &expected[..], "{}", String::from_utf8_lossy(line));
    assert!(!line.contains(&0), "a raw NUL on the wire");
    if content.contains('\0') {
        assert!(text.contains(r"\u0000"), "{text}");
    }
}

fn nasty_content_flow(server: &Server, probe: &mut dyn Probe, t: &[String]) {
    let mut a = server.client();
    let mut b = server.client();
    let alice = a.auth(&t[0], "alice");
    let bob = b.auth(&t[1], "bob");
    let mut long = String::new();
    while long.len() + 8 < MAX_LINE_LEN - 20 {
        long.push_str("𠜎'\"\\%_");
    }
    let mut contents: Vec<String> = NASTY.iter().map(|s| (*s).to_owned()).collect();
    contents.push(long);
    // Online: straight from the commit to the recipient.
    for c in &contents {
        a.send_raw(format!("MSG {bob} {c}\n").as_bytes());
        a.expect("OK MSG");
        check_wire(&raw_line(&mut b), alice, bob, c);
    }
    // Offline: stored, then read back from the database at the next AUTH.
    drop(b);
    wait_for("bob offline", || {
        status_of(probe, bob).as_deref() == Some("offline")
    });
    for c in &contents {
        a.send_raw(format!("MSG {bob} {c}\n").as_bytes());
        a.expect("OK MSG");
    }
    let mut b = server.client();
    b.auth(&t[1], "bob");
    for c in &contents {
        check_wire(&raw_line(&mut b), alice, bob, c);
    }
    // The rows, byte for byte (HEX reads the stored bytes in both
    // databases), and both tables still there.
    let rows = probe.rows("SELECT sender_id, HEX(content) FROM messages ORDER BY id");
    let want: Vec<Vec<Option<String>>> = contents
        .iter()
        .chain(&contents)
        .map(|c| vec![Some(alice.to_string()), Some(hex(c.as_bytes()))])
        .collect();
    assert_eq!(rows.len(), want.len());
    for (i, (got, want)) in rows.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "row {i}: {:?}", contents[i % contents.len()]);
    }
    let texts = probe.rows("SELECT content FROM messages ORDER BY id");
    for (got, want) in texts.iter().zip(contents.iter().chain(&contents)) {
        assert_eq!(got[0].as_deref(), Some(want.as_str()));
    }
    assert_eq!(probe.one("SELECT COUNT(*) FROM users"), Some("2".into()));
    b.send("HEARTBEAT");
    b.expect("OK HEARTBEAT");
}

#[test]
fn nasty_message_content_is_byte_exact_sqlite() {
    let (mut s, t) = setup(&["alice", "bob"], &[]);
    nasty_content_flow(&s.server, &mut s.probe, &t);
}

#[test]
fn nasty_message_content_is_byte_exact_mariadb() {
    let Some(db) = TempMariaDb::create("hardening nasty content") else {
        return;
    };
    let url = db.url();
    let t: Vec<String> = ["alice", "bob"].iter().map(|n| add_user(&url, n)).collect();
    let server = Server::start(&url, &[]);
    let mut probe = MysqlProbe::open(&db.dsn);
    nasty_content_flow(&server, &mut probe, &t);
}

// ------------------------------------------------ IPv6 peers per /64

/// The per-IP connection limit counts an IPv6 peer per /64: with a limit
/// of 2, two connections from 2001:db8:5::2 fill 2001:db8:5::/64, so
/// 2001:db8:5::3 is refused, while 2001:db8:6::1 (another /64) gets in.
#[test]
fn per_ip_limit_counts_an_ipv6_64_as_one_peer() {
    let ns = match NetNs::new(&[
        "2001:db8:5::1",
        "2001:db8:5::2",
        "2001:db8:5::3",
        "2001:db8:6::1",
    ]) {
        Ok(ns) => ns,
        Err(why) => {
            whelm_testkit::skip(
                "per_ip_limit_counts_an_ipv6_64_as_one_peer",
                &format!("needs a network namespace (CAP_SYS_ADMIN) and ip(8): {why}"),
            );
            return;
        }
    };
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let mut cmd = ns.command(common::bin());
    cmd.args(["--listen", "[2001:db8:5::1]:0", "--db", &db])
        .args(["--max-conns-per-ip", "2"]);
    let server = common::Server::start_command(cmd);
    let addr = server.addr;
    let from = move |a: &str| -> TcpStream {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        let ip: IpAddr = a.parse().unwrap();
        s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
        s.connect_timeout(&addr.into(), Duration::from_secs(10))
            .unwrap();
        s.into()
    };
    let replies = ns.run(move || {
        let mut held = Vec::new();
        let mut replies = Vec::new();
        for a in [
            "2001:db8:5::2",
            "2001:db8:5::2",
            "2001:db8:5::3",
            "2001:db8:6::1",
        ] {
            let mut c = client_of(from(a));
            let _ = c.w.write_all(b"HEARTBEAT\n");
            let mut l = String::new();
            match c.r.read_line(&mut l) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("{a}: {e}"),
            }
            replies.push(format!("{a} {}", l.trim_end()));
            held.push(c);
        }
        replies
    });
    assert_eq!(
        replies,
        [
            "2001:db8:5::2 ERROR Not authenticated",
            "2001:db8:5::2 ERROR Not authenticated",
            "2001:db8:5::3 ERROR Server at capacity, try again later",
            "2001:db8:6::1 ERROR Not authenticated",
        ]
    );
    drop(server);
    drop(dir);
}
