//! Loopback tests of the real `whelm-relay` binary: the command channel
//! (the test is a fake control on the Unix socket) and the Whelm voice path
//! (PROTOCOLS.md section 2), on both engines where traffic flows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Control, ENGINES, drops, start};
use whelm_shared::channel::{
    CallEntry, Command, ErrorCode, Event, Limits, Outcome, RelayMsg, Role, State, UserEntry,
};
use whelm_shared::line::UserId;

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

fn user(u: u64, ip: &str, token: Option<&str>, voice: Option<SocketAddr>) -> UserEntry {
    UserEntry {
        user: uid(u),
        ip: ip.parse().unwrap(),
        token: token.map(String::from),
        voice,
    }
}

fn call(a: u64, b: u64) -> CallEntry {
    CallEntry {
        a: uid(a),
        b: uid(b),
    }
}

/// A voice client socket on `ip`.
fn udp(ip: &str) -> UdpSocket {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Packet `seq` of direction `dir`: 160 bytes, contents depend on both.
fn packet(dir: u8, seq: u32) -> Vec<u8> {
    let mut p = vec![dir; 160];
    p[1..5].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(5) {
        *b = (seq as usize * 7 + i) as u8;
    }
    p
}

/// Receives until `count` datagrams arrived or `quiet` passed without one.
fn recv_all(s: &UdpSocket, count: usize, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    while got.len() < count && last.elapsed() < quiet {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            got.push(buf[..n].to_vec());
            last = Instant::now();
        }
    }
    got
}

/// Sends `n` packets a -> b and b -> a at once and checks that each side
/// receives exactly the other's, byte-identical and in order.
fn exchange(a: &UdpSocket, b: &UdpSocket, relay: SocketAddr, n: u32, tag: &str) {
    let (ra, rb) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let ta = std::thread::spawn(move || recv_all(&ra, n as usize, Duration::from_secs(10)));
    let tb = std::thread::spawn(move || recv_all(&rb, n as usize, Duration::from_secs(10)));
    for seq in 0..n {
        a.send_to(&packet(b'A', seq), relay).unwrap();
        b.send_to(&packet(b'B', seq), relay).unwrap();
        if seq % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let at_a = ta.join().unwrap();
    let at_b = tb.join().unwrap();
    let want_b: Vec<Vec<u8>> = (0..n).map(|s| packet(b'A', s)).collect();
    let want_a: Vec<Vec<u8>> = (0..n).map(|s| packet(b'B', s)).collect();
    assert_eq!(at_b.len(), n as usize, "{tag}: b received {}", at_b.len());
    assert_eq!(at_a.len(), n as usize, "{tag}: a received {}", at_a.len());
    assert!(at_b == want_b, "{tag}: a -> b not identical and in order");
    assert!(at_a == want_a, "{tag}: b -> a not identical and in order");
}

/// Nothing arrives on `s` within 300 ms.
fn silent(s: &UdpSocket, tag: &str) {
    let got = recv_all(s, 1, Duration::from_millis(300));
    assert!(got.is_empty(), "{tag}: received {:?}", got.first());
}

/// Polls counters until `key` reaches `want` (bounded), returns them.
fn wait_drops(c: &mut Control, key: &str, want: u64) -> whelm_shared::channel::Counters {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let k = c.counters();
        if drops(&k, key) >= want || Instant::now() > deadline {
            assert_eq!(drops(&k, key), want, "{key}");
            return k;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn registered(c: &mut Control, u: u64) -> SocketAddr {
    match c.wait_event(|e| matches!(e, Event::VoiceRegistered { user, .. } if *user == uid(u))) {
        Event::VoiceRegistered { addr, .. } => addr,
        _ => unreachable!(),
    }
}

#[test]
fn handshake_errors_and_roles() {
    let relay = start("mmsg", &["--workers", "1"]).unwrap();
    // Wrong version: a clear refusal, then the relay closes.
    let mut c = Control::connect_raw(&relay.socket);
    c.raw(b"{\"type\":\"hello\",\"version\":2,\"role\":\"control\",\"agent\":\"future\"}\n");
    assert_eq!(
        c.read_msg(),
        Some(RelayMsg::Refused {
            reason: "relay speaks command channel version 1, client sent 2".into()
        })
    );
    assert_eq!(c.read_msg(), None);
    // A request before the hello is refused too.
    let mut c = Control::connect_raw(&relay.socket);
    c.raw(b"{\"type\":\"request\",\"id\":1,\"command\":{\"op\":\"snapshot\"}}\n");
    assert!(matches!(c.read_msg(), Some(RelayMsg::Refused { .. })));

    let mut c = Control::connect(&relay.socket, Role::Control);
    // Malformed lines get an error reply and the channel stays usable.
    c.raw(b"this is not json\n");
    assert!(matches!(
        c.reply(0),
        Outcome::Error {
            code: ErrorCode::Malformed,
            ..
        }
    ));
    c.raw(b"{\"type\":\"request\",\"id\":77,\"command\":{\"op\":\"format_disk\"}}\n");
    assert!(matches!(
        c.reply(77),
        Outcome::Error {
            code: ErrorCode::Malformed,
            ..
        }
    ));
    // An over-long line (above MAX_LINE_LEN) likewise.
    let mut long = vec![b'x'; whelm_shared::channel::MAX_LINE_LEN + 10];
    long.push(b'\n');
    c.raw(&long);
    assert!(matches!(
        c.reply(0),
        Outcome::Error {
            code: ErrorCode::Malformed,
            ..
        }
    ));
    c.ok(Command::AllowUser(user(1, "127.0.0.2", None, None)));
    // Validation: nothing applied on error.
    assert!(matches!(
        c.request(Command::InstallCall(call(1, 1))),
        Outcome::Error {
            code: ErrorCode::Invalid,
            ..
        }
    ));
    assert!(matches!(
        c.request(Command::InstallCall(call(1, 2))),
        Outcome::Error {
            code: ErrorCode::UnknownUser,
            ..
        }
    ));
    assert!(matches!(
        c.request(Command::RevokeUser { user: uid(5) }),
        Outcome::Error {
            code: ErrorCode::UnknownUser,
            ..
        }
    ));
    // An operator reads but may not change anything.
    let mut op = Control::connect(&relay.socket, Role::Operator);
    assert!(matches!(
        op.request(Command::AllowUser(user(2, "127.0.0.3", None, None))),
        Outcome::Error {
            code: ErrorCode::NotAllowed,
            ..
        }
    ));
    assert!(matches!(
        op.request(Command::ReplaceAll(State::default())),
        Outcome::Error {
            code: ErrorCode::NotAllowed,
            ..
        }
    ));
    assert_eq!(op.snapshot().users.len(), 1);
    // A second hello is a protocol error.
    op.send(&whelm_shared::channel::ClientMsg::Hello {
        version: 1,
        role: Role::Control,
        agent: "again".into(),
    });
    assert!(matches!(
        op.reply(0),
        Outcome::Error {
            code: ErrorCode::Protocol,
            ..
        }
    ));
    let err = relay.stop();
    assert!(err.contains("handshake refused"), "{err}");
}

/// The main scenario, per engine.
fn call_scenario(engine: &str) {
    let Some(relay) = start(engine, &["--workers", "2"]) else {
        return;
    };
    let v = relay.voice;
    let mut c = Control::connect(&relay.socket, Role::Control);
    c.ok(Command::AllowUser(user(
        1,
        "127.0.0.2",
        Some("tok-one"),
        None,
    )));
    c.ok(Command::AllowUser(user(2, "127.0.0.3", None, None)));
    c.ok(Command::InstallCall(call(1, 2)));
    let a = udp("127.0.0.2");
    let b = udp("127.0.0.3");
    // Before any HELLO: unknown sources.
    a.send_to(b"early", v).unwrap();
    a.send_to(b"HELLO 1", v).unwrap();
    assert_eq!(registered(&mut c, 1), a.local_addr().unwrap());
    // Partner not registered yet.
    a.send_to(b"lonely", v).unwrap();
    b.send_to(b"HELLO 2\r\n", v).unwrap();
    assert_eq!(registered(&mut c, 2), b.local_addr().unwrap());
    let k = c.counters();
    assert_eq!(drops(&k, "unknown_source"), 1, "{engine}");
    // The routes are installed when the event is sent; give the HELLO's
    // commit a moment to reach the workers (bounded by the next request's
    // ack: a request waits for every earlier commit).
    exchange(&a, &b, v, 1000, engine);
    silent(&a, engine);
    silent(&b, engine);
    let k = c.counters();
    assert_eq!(drops(&k, "partner_not_registered"), 1, "{engine}");

    // A third host claiming user 1 gets nothing and changes nothing.
    let thief = udp("127.0.0.4");
    thief.send_to(b"HELLO 1", v).unwrap();
    wait_drops(&mut c, "hello_denied", 1);
    thief.send_to(b"steal", v).unwrap();
    exchange(&a, &b, v, 50, "after the thief's HELLO");
    silent(&thief, engine);
    // Wrong token from elsewhere: denied.
    let other = udp("127.0.0.5");
    other.send_to(b"HELLO 1 wrong", v).unwrap();
    wait_drops(&mut c, "hello_denied", 2);
    // Right token from elsewhere: user 1 moves there.
    other.send_to(b"HELLO 1 tok-one", v).unwrap();
    assert_eq!(registered(&mut c, 1), other.local_addr().unwrap());
    exchange(&other, &b, v, 100, "after the token HELLO");
    silent(&a, "old address");

    // RemoveCall acknowledged: nothing is forwarded afterwards.
    let t = Instant::now();
    c.ok(Command::RemoveCall(call(2, 1)));
    let ack = t.elapsed();
    for seq in 0..20 {
        other.send_to(&packet(b'A', seq), v).unwrap();
        b.send_to(&packet(b'B', seq), v).unwrap();
    }
    silent(&b, "after RemoveCall");
    silent(&other, "after RemoveCall");
    wait_drops(&mut c, "not_in_call", 40);
    let k = c.counters();
    assert_eq!(k.calls, 0);
    assert_eq!(drops(&k, "hello_denied"), 2);
    // The thief's datagram and the old address's: unknown sources.
    assert_eq!(drops(&k, "unknown_source"), 2, "{engine}");
    eprintln!("{engine}: RemoveCall acknowledged in {ack:?}");
    assert!(ack < Duration::from_secs(2), "{engine}: ack took {ack:?}");
    relay.stop();
}

#[test]
fn call_forwarding_hello_and_teardown() {
    for engine in ENGINES {
        call_scenario(engine);
    }
}

fn replace_all_scenario(engine: &str) {
    let Some(relay) = start(engine, &["--workers", "2"]) else {
        return;
    };
    let v = relay.voice;
    let a = udp("127.0.0.2");
    let b = udp("127.0.0.3");
    let state = State {
        users: vec![
            user(1, "127.0.0.2", None, Some(a.local_addr().unwrap())),
            user(2, "127.0.0.3", Some("t2"), Some(b.local_addr().unwrap())),
            user(3, "127.0.0.9", None, None),
        ],
        calls: vec![call(1, 2)],
    };
    {
        let mut c = Control::connect(&relay.socket, Role::Control);
        c.ok(Command::ReplaceAll(state.clone()));
        assert_eq!(c.snapshot(), state);
        // No HELLO: forwarding works at once.
        exchange(&a, &b, v, 200, engine);
        // Control goes away (as if SIGKILLed: the socket just closes).
    }
    std::thread::sleep(Duration::from_millis(200));
    exchange(&a, &b, v, 200, "after control disconnected");
    // A new control sees the same state and can change it at once.
    let mut c = Control::connect(&relay.socket, Role::Control);
    assert_eq!(c.snapshot(), state);
    c.ok(Command::RevokeUser { user: uid(2) });
    a.send_to(b"x", v).unwrap();
    silent(&b, "after revoke");
    let s = c.snapshot();
    assert_eq!(s.users.len(), 2);
    assert!(s.calls.is_empty());
    // ReplaceAll validates everything first.
    let mut bad = state.clone();
    bad.calls.push(call(3, 1));
    assert!(matches!(
        c.request(Command::ReplaceAll(bad)),
        Outcome::Error {
            code: ErrorCode::Busy,
            ..
        }
    ));
    assert_eq!(c.snapshot(), s, "nothing applied");
    relay.stop();
}

#[test]
fn replace_all_snapshot_and_control_disconnect() {
    for engine in ENGINES {
        replace_all_scenario(engine);
    }
}

#[test]
fn bandwidth_limit_drops_and_counts() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--workers", "1", "--bandwidth-mbps", "1"]) else {
            continue;
        };
        let v = relay.voice;
        let a = udp("127.0.0.2");
        let b = udp("127.0.0.3");
        let mut c = Control::connect(&relay.socket, Role::Control);
        c.ok(Command::ReplaceAll(State {
            users: vec![
                user(1, "127.0.0.2", None, Some(a.local_addr().unwrap())),
                user(2, "127.0.0.3", None, Some(b.local_addr().unwrap())),
            ],
            calls: vec![call(1, 2)],
        }));
        // 300 kB at once against 125 kB/s with a 12.5 kB burst.
        let sent = 300u64;
        let t = Instant::now();
        for seq in 0..sent {
            let mut p = vec![0u8; 1000];
            p[..8].copy_from_slice(&seq.to_be_bytes());
            a.send_to(&p, v).unwrap();
        }
        let took = t.elapsed();
        let got = recv_all(&b, sent as usize, Duration::from_millis(500)).len() as u64;
        let k = wait_drops_total(&mut c, sent);
        let dropped = drops(&k, "bandwidth");
        assert_eq!(
            got + dropped,
            sent,
            "{engine}: every datagram forwarded or counted"
        );
        // At most the burst plus what the rate allowed while sending.
        let allowed = 12 + (took.as_secs_f64() * 125.0).ceil() as u64 + 1;
        assert!(
            got <= allowed,
            "{engine}: {got} forwarded, at most {allowed}"
        );
        assert!(dropped >= sent - allowed, "{engine}");
        assert_eq!(k.bps_limit, 1_000_000);
        // Lifting the limit at run time.
        c.ok(Command::SetLimits(Limits {
            bandwidth_mbps: Some(0),
            station_rate: None,
        }));
        exchange(&a, &b, v, 300, "no limit");
        relay.stop();
    }
}

/// Waits until the relay received `n` voice datagrams; returns counters.
fn wait_drops_total(c: &mut Control, n: u64) -> whelm_shared::channel::Counters {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let k = c.counters();
        let rx: u64 = k.workers.iter().map(|w| w.packets_in).sum();
        if rx >= n || Instant::now() > deadline {
            assert_eq!(rx, n);
            return k;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_whelm-relay"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn ctl_shows_users_calls_stations_counters() {
    let relay = start("mmsg", &["--workers", "1", "--reply-to", "source"]).unwrap();
    let sock = relay.socket.display().to_string();
    let a = udp("127.0.0.2");
    let mut c = Control::connect(&relay.socket, Role::Control);
    c.ok(Command::ReplaceAll(State {
        users: vec![
            user(41, "127.0.0.2", Some("s"), Some(a.local_addr().unwrap())),
            user(42, "127.0.0.3", None, None),
        ],
        calls: vec![call(41, 42)],
    }));
    let st = common::Station::bind("W1AW", "127.0.0.1:0");
    st.send(relay.ovp, &st.frame(b"hi"));
    c.wait_event(|e| matches!(e, Event::StationSeen { callsign, .. } if callsign == "W1AW"));
    let text = |args: &[&str]| {
        let o = ctl(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let users = text(&["--socket", &sock, "users"]);
    assert!(users.contains("41") && users.contains("127.0.0.2") && users.contains("2 users"));
    assert!(
        users.contains(&a.local_addr().unwrap().to_string()),
        "{users}"
    );
    let calls = text(&["--socket", &sock, "calls"]);
    assert!(calls.contains("41") && calls.contains("42") && calls.contains("1 calls"));
    let stations = text(&["--socket", &sock, "stations"]);
    assert!(
        stations.contains("W1AW") && stations.contains("1 stations"),
        "{stations}"
    );
    let counters = text(&["--socket", &sock, "counters"]);
    assert!(
        counters.contains("mmsg") && counters.contains("calls=1"),
        "{counters}"
    );
    let json = text(&["--socket", &sock, "users", "--json"]);
    match whelm_shared::channel::decode::<RelayMsg>(json.trim().as_bytes()).unwrap() {
        RelayMsg::Reply {
            outcome: Outcome::Snapshot(s),
            ..
        } => assert_eq!(s.users.len(), 2),
        other => panic!("{other:?}"),
    }
    // No relay there: a clear message and a non-zero exit.
    let o = ctl(&["--socket", "/nonexistent/relay.sock", "users"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is whelm-relay running"));
    relay.stop();
}

/// `SO_PEERCRED`: a peer that can open the socket file (it is in the
/// socket's group) but whose uid/gid the relay does not allow is refused
/// and logged; allowing its group by config lets it in.
#[test]
fn peer_credentials_are_checked() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("NOTICE: needs root and setpriv; skipping");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    for (extra, allowed) in [("", false), ("control_gids = [65533]\n", true)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("relay.sock");
        let cfg = dir.path().join("relay.toml");
        std::fs::write(&cfg, format!("control_socket_group = \"65533\"\n{extra}")).unwrap();
        let relay = start(
            "mmsg",
            &[
                "--workers",
                "1",
                "--config",
                cfg.to_str().unwrap(),
                "--control-socket",
                sock.to_str().unwrap(),
            ],
        )
        .unwrap();
        let meta = std::fs::metadata(&sock).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let out = std::process::Command::new("/usr/bin/setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--groups=65533",
                env!("CARGO_BIN_EXE_whelm-relay"),
                "ctl",
                "--socket",
                sock.to_str().unwrap(),
                "counters",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if allowed {
            assert!(out.status.success(), "{err}");
        } else {
            assert!(!out.status.success());
            assert!(err.contains("refused the connection"), "{err}");
            assert!(
                !err.contains("Permission denied"),
                "the file mode, not SO_PEERCRED, stopped it: {err}"
            );
            let log = relay.stderr();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !relay.stderr().contains("uid=65534") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = if log.contains("uid=65534") {
                log
            } else {
                relay.stderr()
            };
            assert!(
                log.contains("refused connection from pid=") && log.contains("uid=65534 gid=65534"),
                "{log}"
            );
        }
        relay.stop();
    }
}
