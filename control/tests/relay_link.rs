//! The real `whelm-control` against a fake relay on a temporary Unix socket
//! (STYLE.md practice 11): the fake answers the handshake, records the exact
//! command sequence, and acknowledges each request only when the test says
//! so, which shows that replies wait for the relay's Ok.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Client, Server, add_user, temp_db};
use whelm_shared::channel::{
    self, CallEntry, ClientMsg, Command, Counters, Event, Outcome, PROTOCOL_VERSION, RelayMsg,
    Role, State, UserEntry,
};
use whelm_shared::line::UserId;

const WAIT: Duration = Duration::from_secs(20);
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

/// A fake relay: listens on `path`, serves one connection at a time.
struct FakeRelay {
    listener: UnixListener,
    conn: Option<(BufReader<UnixStream>, UnixStream)>,
}

impl FakeRelay {
    fn listen(path: &Path) -> FakeRelay {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        FakeRelay {
            listener,
            conn: None,
        }
    }

    /// Accepts control's connection (bounded) and completes the handshake.
    fn accept(&mut self) {
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "control never connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        self.conn = Some((BufReader::new(stream.try_clone().unwrap()), stream));
        match self.read() {
            ClientMsg::Hello { version, role, .. } => {
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(role, Role::Control);
            }
            other => panic!("expected hello, got {other:?}"),
        }
        self.write(&RelayMsg::Welcome {
            version: PROTOCOL_VERSION,
            agent: "fake relay".into(),
        });
    }

    fn read(&mut self) -> ClientMsg {
        let (r, _) = self.conn.as_mut().expect("not connected");
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read from control timed out");
        assert!(n > 0, "control closed the connection");
        channel::decode(line.as_bytes()).unwrap()
    }

    fn write(&mut self, msg: &RelayMsg) {
        let (_, w) = self.conn.as_mut().expect("not connected");
        w.write_all(&channel::encode(msg)).unwrap();
    }

    /// The next request: (id, command).
    fn request(&mut self) -> (u64, Command) {
        match self.read() {
            ClientMsg::Request { id, command } => (id, command),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// The next request must be `want`; returns its id (not yet answered).
    fn expect(&mut self, want: &Command) -> u64 {
        let (id, got) = self.request();
        assert_eq!(&got, want);
        id
    }

    fn reply(&mut self, id: u64, outcome: Outcome) {
        self.write(&RelayMsg::Reply { id, outcome });
    }

    fn ok(&mut self, id: u64) {
        self.reply(id, Outcome::Ok);
    }

    /// Expects `want` and answers Ok at once.
    fn expect_ok(&mut self, want: &Command) {
        let id = self.expect(want);
        self.ok(id);
    }

    /// Nothing more arrives within `d`.
    fn quiet(&mut self, d: Duration) {
        let (r, w) = self.conn.as_mut().expect("not connected");
        w.set_read_timeout(Some(d)).unwrap();
        let mut line = String::new();
        match r.read_line(&mut line) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("unexpected from control: {other:?} {line:?}"),
        }
        w.set_read_timeout(Some(WAIT)).unwrap();
    }

    /// Drops the connection (a relay crash, as control sees it).
    fn hang_up(&mut self) {
        self.conn = None;
    }
}

/// No line arrives on `c` within `d`.
fn silent(c: &mut Client, d: Duration) {
    c.w.set_read_timeout(Some(d)).unwrap();
    let mut l = String::new();
    match c.r.read_line(&mut l) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?} {l:?}"),
    }
    c.w.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
}

fn allow(user: u64, token: &str) -> Command {
    Command::AllowUser(UserEntry {
        user: uid(user),
        ip: LOCALHOST,
        token: Some(token.into()),
        voice: None,
    })
}

fn call(a: u64, b: u64) -> CallEntry {
    CallEntry {
        a: uid(a),
        b: uid(b),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    tokens: Vec<String>,
    db: String,
}

fn setup(users: usize) -> Setup {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap().to_owned();
    let tokens = (1..=users)
        .map(|i| add_user(&db, &format!("u{i}")))
        .collect();
    let sock = dir.path().join("relay.sock");
    Setup {
        _dir: dir,
        sock,
        tokens,
        db,
    }
}

#[test]
fn command_sequence_and_replies_wait_for_the_relay() {
    let s = setup(2);
    let mut relay = FakeRelay::listen(&s.sock);
    let server = Server::start(&s.db, &["--relay-socket", s.sock.to_str().unwrap()]);
    assert!(
        server
            .ready_line
            .split_whitespace()
            .any(|w| w == format!("relay={}", s.sock.display())),
        "{}",
        server.ready_line
    );
    relay.accept();
    // First connection of this control: ask for the relay's state.
    let id = relay.expect(&Command::Snapshot);
    relay.reply(id, Outcome::Snapshot(State::default()));

    let mut a = server.client();
    assert_eq!(a.auth(&s.tokens[0], "u1"), 1);
    relay.expect_ok(&allow(1, &s.tokens[0]));
    let mut b = server.client();
    assert_eq!(b.auth(&s.tokens[1], "u2"), 2);
    relay.expect_ok(&allow(2, &s.tokens[1]));

    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 u1");
    b.send("ACCEPT 1");
    let id = relay.expect(&Command::InstallCall(call(1, 2)));
    // START_CALL waits for the install.
    silent(&mut a, Duration::from_millis(300));
    relay.ok(id);
    a.expect("START_CALL 2 u2");
    b.expect("START_CALL 1 u1");

    a.send("HANGUP");
    let id = relay.expect(&Command::RemoveCall(call(1, 2)));
    // Forwarding is not known to be removed yet: no HANGUP replies.
    silent(&mut a, Duration::from_millis(300));
    silent(&mut b, Duration::from_millis(1));
    relay.ok(id);
    a.expect("OK HANGUP");
    b.expect("HANGUP 1");

    drop(a);
    relay.expect_ok(&Command::RevokeUser { user: uid(1) });
    relay.quiet(Duration::from_millis(300));
}

#[test]
fn serves_without_relay_then_syncs_and_resyncs_after_relay_restart() {
    let s = setup(4);
    // No relay yet: control is ready and serves.
    let server = Server::start(&s.db, &["--relay-socket", s.sock.to_str().unwrap()]);
    let mut a = server.client();
    a.auth(&s.tokens[0], "u1");
    let mut b = server.client();
    b.auth(&s.tokens[1], "u2");
    a.send("CALL 2");
    a.expect("OK CALLING 2");
    b.expect("INCOMING 1 u1");
    b.send("ACCEPT 1");
    // No relay: START_CALL at once.
    a.expect("START_CALL 2 u2");
    b.expect("START_CALL 1 u1");

    // The relay appears: Snapshot first, then what control already has.
    let mut relay = FakeRelay::listen(&s.sock);
    relay.accept();
    let id = relay.expect(&Command::Snapshot);
    relay.expect_ok(&allow(1, &s.tokens[0]));
    relay.expect_ok(&allow(2, &s.tokens[1]));
    relay.expect_ok(&Command::InstallCall(call(1, 2)));
    relay.reply(id, Outcome::Snapshot(State::default()));
    let addr1 = "127.0.0.1:40001".parse().unwrap();
    relay.write(&RelayMsg::Event(Event::VoiceRegistered {
        user: uid(1),
        addr: addr1,
    }));

    let mut c = server.client();
    c.auth(&s.tokens[2], "u3");
    relay.expect_ok(&allow(3, &s.tokens[2]));
    let mut d = server.client();
    d.auth(&s.tokens[3], "u4");
    relay.expect_ok(&allow(4, &s.tokens[3]));

    // The relay restarts: control re-installs everything it knows, with
    // the voice address it was told about.
    relay.hang_up();
    relay.accept();
    let (id, cmd) = relay.request();
    let Command::ReplaceAll(state) = cmd else {
        panic!("expected ReplaceAll, got {cmd:?}");
    };
    relay.ok(id);
    assert_eq!(state.calls, vec![call(1, 2)]);
    assert_eq!(state.users.len(), 4);
    for (i, u) in state.users.iter().enumerate() {
        assert_eq!(u.user, uid(i as u64 + 1));
        assert_eq!(u.ip, LOCALHOST);
        assert_eq!(u.token.as_deref(), Some(s.tokens[i].as_str()));
        assert_eq!(u.voice, if i == 0 { Some(addr1) } else { None });
    }

    // Bandwidth above 90% of the limit: new calls are refused. The counters
    // event goes before the RemoveCall's Ok, so once OK HANGUP arrived the
    // machine has seen it.
    a.send("HANGUP");
    let id = relay.expect(&Command::RemoveCall(call(1, 2)));
    relay.write(&RelayMsg::Event(Event::Counters(Counters {
        bps_in: 95_000_000,
        bps_out: 1,
        bps_limit: 100_000_000,
        ..Counters::default()
    })));
    relay.ok(id);
    a.expect("OK HANGUP");
    b.expect("HANGUP 1");
    c.send("CALL 4");
    c.expect("ERROR Server bandwidth exceeded, try again later");
    relay.write(&RelayMsg::Event(Event::Counters(Counters {
        bps_in: 90_000_000,
        bps_out: 90_000_000,
        bps_limit: 100_000_000,
        ..Counters::default()
    })));
    // At 90% calls are admitted again (polled: the event and the CALL take
    // different paths into the machine).
    let deadline = Instant::now() + WAIT;
    loop {
        c.send("CALL 4");
        let l = c.line();
        if l == "OK CALLING 4" {
            break;
        }
        assert_eq!(l, "ERROR Server bandwidth exceeded, try again later");
        assert!(Instant::now() < deadline, "counters never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.expect("INCOMING 3 u3");
    relay.quiet(Duration::from_millis(200));
}
