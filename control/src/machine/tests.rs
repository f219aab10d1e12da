//! Scenario tests of the sans-IO machine: every command in every state, the
//! exact effects, and nothing left over.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use whelm_shared::channel::{CallEntry, ErrorCode, Outcome, State, UserEntry};
use whelm_shared::line::{Command, ErrorReply, LineError, MessageJson, Reply, Status, UserId};

use super::{Machine, MachineConfig};
use crate::jobs::{
    Effect, Input, MsgFailure, MsgJob, PendingPage, RelayCommand, RelayInput, SessionId, StoreJob,
    StoreResult, StoredMessage, UserRecord,
};

mod relay;

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

fn sid(v: u64) -> SessionId {
    SessionId(v)
}

fn name(u: u64) -> String {
    format!("user{u}")
}

struct H {
    m: Machine,
    now: Instant,
    out: Vec<Effect>,
    /// The id the machine's next relay request must carry.
    next_id: u64,
}

fn relay(id: u64, cmd: RelayCommand) -> Effect {
    Effect::Relay { id, cmd }
}

fn entry(u: u64, ip: IpAddr) -> UserEntry {
    UserEntry {
        user: uid(u),
        ip,
        token: Some(format!("tok{u}")),
        voice: None,
    }
}

fn allow(id: u64, u: u64) -> Effect {
    relay(id, RelayCommand::AllowUser(entry(u, IP)))
}

fn revoke(id: u64, u: u64) -> Effect {
    relay(id, RelayCommand::RevokeUser { user: uid(u) })
}

fn call_entry(a: u64, b: u64) -> CallEntry {
    CallEntry {
        a: uid(a),
        b: uid(b),
    }
}

fn install(id: u64, a: u64, b: u64) -> Effect {
    relay(id, RelayCommand::InstallCall(call_entry(a, b)))
}

fn remove(id: u64, a: u64, b: u64) -> Effect {
    relay(id, RelayCommand::RemoveCall(call_entry(a, b)))
}

fn start_call(s: u64, partner: u64) -> Effect {
    send(
        s,
        Reply::StartCall {
            partner: uid(partner),
            username: name(partner),
        },
    )
}

fn send(s: u64, reply: Reply) -> Effect {
    Effect::Send {
        session: sid(s),
        reply,
    }
}

fn err(s: u64, e: ErrorReply) -> Effect {
    send(s, Reply::Error(e))
}

fn msg(id: i64, from: u64, to: u64, text: &str) -> StoredMessage {
    StoredMessage {
        id,
        sender: uid(from),
        recipient: uid(to),
        content: text.into(),
        timestamp: "2026-11-21T10:00:00Z".into(),
    }
}

fn msg_reply(s: u64, m: &StoredMessage) -> Effect {
    send(
        s,
        Reply::Msg(MessageJson {
            sender_id: m.sender.get(),
            recipient_id: m.recipient.get(),
            content: m.content.clone(),
            timestamp: m.timestamp.clone(),
        }),
    )
}

impl H {
    fn new() -> H {
        H::with(MachineConfig {
            rate_per_sec: 0.0,
            ..MachineConfig::default()
        })
    }

    /// A machine whose relay link is up and has adopted an empty snapshot.
    fn with(cfg: MachineConfig) -> H {
        let mut h = H::unlinked(cfg);
        assert_eq!(
            h.input(Input::Relay(RelayInput::Connected)),
            vec![relay(1, RelayCommand::Snapshot)]
        );
        h.next_id = 2;
        assert_eq!(
            h.reply(1, Outcome::Snapshot(State::default())),
            vec![],
            "an empty snapshot adopts nothing"
        );
        h
    }

    /// A machine with no relay link (none configured, or not up yet).
    fn unlinked(cfg: MachineConfig) -> H {
        let now = Instant::now();
        let mut h = H {
            m: Machine::new(cfg),
            now,
            out: Vec::new(),
            next_id: 1,
        };
        // The first tick arms the heartbeat check.
        h.input(Input::Tick);
        h
    }

    /// Reserves the next `n` relay request ids; returns the first.
    fn ids(&mut self, n: u64) -> u64 {
        let first = self.next_id;
        self.next_id += n;
        first
    }

    fn reply(&mut self, id: u64, outcome: Outcome) -> Vec<Effect> {
        self.input(Input::Relay(RelayInput::Reply { id, outcome }))
    }

    fn ok(&mut self, id: u64) -> Vec<Effect> {
        self.reply(id, Outcome::Ok)
    }

    /// Nothing is waiting for the relay.
    fn settled(&self) {
        assert!(self.m.pending.is_empty(), "{:?}", self.m.pending);
        for (id, s) in &self.m.sessions {
            assert!(s.held.is_empty(), "session {id:?} holds {:?}", s.held);
        }
    }

    fn input(&mut self, i: Input) -> Vec<Effect> {
        self.m.handle(self.now, i, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.input(Input::Tick)
    }

    fn connect(&mut self, s: u64) {
        let e = self.input(Input::Connected {
            session: sid(s),
            ip: IP,
        });
        assert_eq!(e, vec![]);
    }

    fn line(&mut self, s: u64, text: &str) -> Vec<Effect> {
        self.input(Input::Line {
            session: sid(s),
            line: Command::parse(text.as_bytes()),
        })
    }

    fn lookup(&mut self, s: u64, user: Option<u64>) -> Vec<Effect> {
        self.input(Input::Store(StoreResult::Lookup {
            session: sid(s),
            user: Ok(user.map(|u| UserRecord {
                id: uid(u),
                username: name(u),
            })),
        }))
    }

    fn backlog(&mut self, s: u64, u: u64, msgs: Vec<StoredMessage>) -> Vec<Effect> {
        self.input(Input::Store(StoreResult::Backlog {
            session: sid(s),
            user: uid(u),
            page: Ok(PendingPage {
                upto: msgs.iter().map(|m| m.id).max(),
                messages: msgs,
                more: false,
            }),
        }))
    }

    /// Connects session `s` and authenticates it as user `u` (empty
    /// backlog); the relay acknowledges the AllowUser.
    fn login(&mut self, s: u64, u: u64) {
        let id = self.ids(1);
        self.connect(s);
        assert_eq!(
            self.line(s, &format!("AUTH tok{u}")),
            vec![Effect::Store(StoreJob::Lookup {
                session: sid(s),
                token: format!("tok{u}"),
            })]
        );
        assert_eq!(
            self.lookup(s, Some(u)),
            vec![
                send(
                    s,
                    Reply::OkAuth {
                        user: uid(u),
                        username: name(u)
                    }
                ),
                Effect::Store(StoreJob::Online {
                    session: sid(s),
                    user: uid(u)
                }),
                allow(id, u),
            ]
        );
        assert_eq!(self.ok(id), vec![]);
        assert_eq!(self.backlog(s, u, vec![]), vec![]);
    }

    /// Session `s` (user `from`) calls `to` (session `ts`); ringing.
    fn ring(&mut self, s: u64, from: u64, ts: u64, to: u64) {
        assert_eq!(
            self.line(s, &format!("CALL {to}")),
            vec![
                send(s, Reply::OkCalling { callee: uid(to) }),
                send(
                    ts,
                    Reply::Incoming {
                        caller: uid(from),
                        username: name(from)
                    }
                ),
            ]
        );
    }

    /// Rings and accepts; START_CALL goes once the relay installed the call.
    fn in_call(&mut self, s: u64, from: u64, ts: u64, to: u64) {
        self.ring(s, from, ts, to);
        let id = self.ids(1);
        assert_eq!(
            self.line(ts, &format!("ACCEPT {from}")),
            vec![install(id, from, to)]
        );
        assert_eq!(self.ok(id), vec![start_call(s, to), start_call(ts, from)]);
    }
}

#[test]
fn before_auth_every_command_is_refused() {
    let mut h = H::new();
    h.connect(1);
    for l in [
        "HEARTBEAT",
        "HEARTBEAT away",
        "CALL 2",
        "ACCEPT 2",
        "REJECT 2",
        "HANGUP",
        "MSG 2 hi",
    ] {
        assert_eq!(
            h.line(1, l),
            vec![err(1, ErrorReply::NotAuthenticated)],
            "{l}"
        );
    }
    // So are other commands with bad arguments, and unknown words: any
    // command but AUTH.
    for l in [
        "CALL abc",
        "PING",
        "HEARTBEAT bogus",
        "MSG 2",
        "MSG 2 ",
        "ACCEPT",
        "HANGUP x",
    ] {
        assert_eq!(
            h.line(1, l),
            vec![err(1, ErrorReply::NotAuthenticated)],
            "{l}"
        );
    }
    // A malformed AUTH keeps its own error; empty lines get nothing.
    assert_eq!(
        h.line(1, "AUTH"),
        vec![err(1, ErrorReply::InvalidArguments)]
    );
    assert_eq!(h.line(1, ""), vec![]);
    let e = h.input(Input::Line {
        session: sid(1),
        line: Err(LineError::TooLong),
    });
    assert_eq!(e, vec![err(1, ErrorReply::LineTooLong)]);
}

#[test]
fn auth_failure_then_success() {
    let mut h = H::new();
    h.connect(1);
    h.line(1, "AUTH bad");
    assert_eq!(h.lookup(1, None), vec![err(1, ErrorReply::InvalidToken)]);
    // A database failure is also an invalid token for the client.
    h.line(1, "AUTH bad");
    let e = h.input(Input::Store(StoreResult::Lookup {
        session: sid(1),
        user: Err(()),
    }));
    assert_eq!(e, vec![err(1, ErrorReply::InvalidToken)]);
    assert_eq!(
        h.line(1, "HANGUP"),
        vec![err(1, ErrorReply::NotAuthenticated)]
    );
    // Then the same session may authenticate.
    h.m.sessions.remove(&sid(1));
    h.login(1, 7);
    assert_eq!(h.m.online_count(), 1);
    // AUTH again on an authenticated session is refused.
    assert_eq!(
        h.line(1, "AUTH tok7"),
        vec![err(1, ErrorReply::InvalidArguments)]
    );
}

#[test]
fn lines_queue_while_auth_is_looked_up() {
    let mut h = H::new();
    h.connect(1);
    h.line(1, "AUTH tok1");
    let id = h.ids(1);
    assert_eq!(h.line(1, "HEARTBEAT away"), vec![]);
    assert_eq!(h.line(1, "HANGUP"), vec![]);
    let e = h.lookup(1, Some(1));
    assert_eq!(
        e,
        vec![
            send(
                1,
                Reply::OkAuth {
                    user: uid(1),
                    username: name(1)
                }
            ),
            Effect::Store(StoreJob::Online {
                session: sid(1),
                user: uid(1)
            }),
            allow(id, 1),
            Effect::Store(StoreJob::Heartbeat {
                user: uid(1),
                status: Some(Status::Away)
            }),
            send(1, Reply::OkHeartbeat),
            err(1, ErrorReply::NotInCall),
        ]
    );
    // Queued lines after a failed lookup are refused as unauthenticated.
    h.connect(2);
    h.line(2, "AUTH nope");
    h.line(2, "CALL 1");
    assert_eq!(
        h.lookup(2, None),
        vec![
            err(2, ErrorReply::InvalidToken),
            err(2, ErrorReply::NotAuthenticated)
        ]
    );
}

#[test]
fn heartbeat_stores_status() {
    let mut h = H::new();
    h.login(1, 1);
    assert_eq!(
        h.line(1, "HEARTBEAT"),
        vec![
            Effect::Store(StoreJob::Heartbeat {
                user: uid(1),
                status: None
            }),
            send(1, Reply::OkHeartbeat)
        ]
    );
    assert_eq!(
        h.line(1, "HEARTBEAT sleeping"),
        vec![err(1, ErrorReply::InvalidStatus)]
    );
}

#[test]
fn idle_commands() {
    let mut h = H::new();
    h.login(1, 1);
    assert_eq!(h.line(1, "CALL 1"), vec![err(1, ErrorReply::CallSelf)]);
    assert_eq!(h.line(1, "CALL 2"), vec![err(1, ErrorReply::UserOffline)]);
    assert_eq!(h.line(1, "ACCEPT 2"), vec![err(1, ErrorReply::NoSuchCall)]);
    assert_eq!(h.line(1, "REJECT 2"), vec![err(1, ErrorReply::NoSuchCall)]);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
    assert_eq!(h.line(1, "CALL x"), vec![err(1, ErrorReply::InvalidUserId)]);
    assert_eq!(h.line(1, "CALL 0"), vec![err(1, ErrorReply::InvalidUserId)]);
    assert_eq!(
        h.line(1, "MSG 2"),
        vec![err(1, ErrorReply::InvalidMsgFormat)]
    );
    assert_eq!(h.line(1, "MSG 2  "), vec![err(1, ErrorReply::EmptyMessage)]);
    assert_eq!(h.m.call_count(), 0);
}

#[test]
fn call_accept_hangup() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    assert_eq!(h.m.call_count(), 1);
    // In a call: everything call-related is refused.
    assert_eq!(h.line(1, "CALL 2"), vec![err(1, ErrorReply::AlreadyInCall)]);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![err(2, ErrorReply::NoSuchCall)]);
    assert_eq!(h.line(2, "REJECT 1"), vec![err(2, ErrorReply::NoSuchCall)]);
    // The HANGUP replies wait until the relay removed the forwarding.
    let id = h.ids(1);
    assert_eq!(h.line(2, "HANGUP"), vec![remove(id, 1, 2)]);
    assert_eq!(
        h.ok(id),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            send(2, Reply::OkHangup),
        ]
    );
    h.settled();
    assert_eq!(h.m.call_count(), 0);
    // Both idle again: they can call once more.
    h.ring(2, 2, 1, 1);
}

#[test]
fn calling_and_ringing_states() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.login(3, 3);
    h.ring(1, 1, 2, 2);
    // Caller while ringing.
    assert_eq!(h.line(1, "CALL 3"), vec![err(1, ErrorReply::AlreadyInCall)]);
    assert_eq!(h.line(1, "ACCEPT 2"), vec![err(1, ErrorReply::NoSuchCall)]);
    assert_eq!(h.line(1, "REJECT 2"), vec![err(1, ErrorReply::NoSuchCall)]);
    // Callee while ringing.
    assert_eq!(h.line(2, "CALL 3"), vec![err(2, ErrorReply::AlreadyInCall)]);
    assert_eq!(h.line(2, "ACCEPT 3"), vec![err(2, ErrorReply::NoSuchCall)]);
    // Third party: both are busy.
    assert_eq!(h.line(3, "CALL 1"), vec![err(3, ErrorReply::UserBusy)]);
    assert_eq!(h.line(3, "CALL 2"), vec![err(3, ErrorReply::UserBusy)]);
    // Heartbeat and MSG still work while ringing.
    assert_eq!(h.line(2, "HEARTBEAT busy").len(), 2);
    // Caller cancels.
    assert_eq!(
        h.line(1, "HANGUP"),
        vec![
            send(2, Reply::Hangup { user: uid(1) }),
            send(1, Reply::OkHangup)
        ]
    );
    assert_eq!(h.line(2, "ACCEPT 1"), vec![err(2, ErrorReply::NoSuchCall)]);
    // Callee hangs up a ringing call: the caller gets HANGUP.
    h.ring(1, 1, 2, 2);
    assert_eq!(
        h.line(2, "HANGUP"),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            send(2, Reply::OkHangup)
        ]
    );
    assert_eq!(h.m.call_count(), 0);
}

#[test]
fn reject() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.ring(1, 1, 2, 2);
    assert_eq!(h.line(2, "REJECT 3"), vec![err(2, ErrorReply::NoSuchCall)]);
    assert_eq!(
        h.line(2, "REJECT 1"),
        vec![
            send(1, Reply::Rejected { callee: uid(2) }),
            send(2, Reply::OkRejected)
        ]
    );
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
    assert_eq!(h.m.call_count(), 0);
}

#[test]
fn accepting_a_call_never_offered_is_an_error() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.login(3, 3);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![err(2, ErrorReply::NoSuchCall)]);
    h.ring(1, 1, 2, 2);
    // User 3 cannot accept a call meant for 2, nor 1 its own call.
    assert_eq!(h.line(3, "ACCEPT 1"), vec![err(3, ErrorReply::NoSuchCall)]);
    assert_eq!(h.line(1, "ACCEPT 1"), vec![err(1, ErrorReply::NoSuchCall)]);
    assert_eq!(h.m.call_count(), 1);
}

#[test]
fn callee_going_offline_while_ringing() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.ring(1, 1, 2, 2);
    let id = h.ids(1);
    assert_eq!(
        h.input(Input::Disconnected { session: sid(2) }),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            Effect::Store(StoreJob::Offline {
                users: vec![uid(2)]
            }),
            revoke(id, 2),
        ]
    );
    assert_eq!(h.ok(id), vec![]);
    assert_eq!(h.line(1, "CALL 2"), vec![err(1, ErrorReply::UserOffline)]);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
}

#[test]
fn partner_disconnecting_in_call_removes_relay_entry() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    let id = h.ids(2);
    assert_eq!(
        h.input(Input::Disconnected { session: sid(1) }),
        vec![
            remove(id, 1, 2),
            Effect::Store(StoreJob::Offline {
                users: vec![uid(1)]
            }),
            revoke(id + 1, 1),
        ]
    );
    assert_eq!(h.ok(id), vec![send(2, Reply::Hangup { user: uid(1) })]);
    assert_eq!(h.ok(id + 1), vec![]);
    h.settled();
    // A late disconnect of the same session does nothing.
    assert_eq!(h.input(Input::Disconnected { session: sid(1) }), vec![]);
}

#[test]
fn both_sides_hang_up_at_once() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    // Both lines arrive together; the machine handles them in order. The
    // second HANGUP's error queues behind the first's held HANGUP.
    let id = h.ids(1);
    assert_eq!(h.line(1, "HANGUP"), vec![remove(id, 1, 2)]);
    assert_eq!(h.line(2, "HANGUP"), vec![]);
    assert_eq!(
        h.ok(id),
        vec![
            send(2, Reply::Hangup { user: uid(1) }),
            err(2, ErrorReply::NotInCall),
            send(1, Reply::OkHangup),
        ]
    );
    h.settled();
}

#[test]
fn call_limit() {
    let mut h = H::with(MachineConfig {
        max_calls: 1,
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    for i in 1..=4 {
        h.login(i, i);
    }
    h.ring(1, 1, 2, 2);
    assert_eq!(h.line(3, "CALL 4"), vec![err(3, ErrorReply::AtCapacity)]);
    h.line(1, "HANGUP");
    h.ring(3, 3, 4, 4);
}

#[test]
fn call_limit_per_core_follows_the_relay_worker_count() {
    let mut h = H::with(MachineConfig {
        max_calls: 1,
        max_calls_per_core: Some(1),
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    for i in 1..=6 {
        h.login(i, i);
    }
    // No counters from the relay yet: max_calls.
    assert_eq!(h.m.call_limit(), 1);
    h.input(Input::Relay(crate::jobs::RelayInput::Counters {
        bps_in: 0,
        bps_out: 0,
        bps_limit: 0,
        workers: 2,
    }));
    assert_eq!(h.m.call_limit(), 2);
    h.ring(1, 1, 2, 2);
    h.ring(3, 3, 4, 4);
    assert_eq!(h.line(5, "CALL 6"), vec![err(5, ErrorReply::AtCapacity)]);
    assert_eq!(h.m.stats().calls_refused, 1);
    assert_eq!(h.m.stats().calls_offered, 2);
}

#[test]
fn reconfigure_applies_to_new_calls_only() {
    let mut h = H::with(MachineConfig {
        max_calls: 2,
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    for i in 1..=4 {
        h.login(i, i);
    }
    h.ring(1, 1, 2, 2);
    let cfg = MachineConfig {
        max_calls: 1,
        ..h.m.config().clone()
    };
    assert_eq!(h.input(Input::Reconfigure(Box::new(cfg))), vec![]);
    // The ringing call stays; a new one is over the new limit.
    assert_eq!(h.m.call_count(), 1);
    assert_eq!(h.line(3, "CALL 4"), vec![err(3, ErrorReply::AtCapacity)]);
    h.line(1, "HANGUP");
    h.ring(3, 3, 4, 4);
}

#[test]
fn ringing_expires_with_hangup_to_both() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.ring(1, 1, 2, 2);
    // Heartbeats keep both alive; the ring still expires after 60 s.
    assert_eq!(h.advance(Duration::from_secs(29)), vec![]);
    h.line(1, "HEARTBEAT");
    h.line(2, "HEARTBEAT");
    assert_eq!(h.advance(Duration::from_secs(29)), vec![]);
    h.line(1, "HEARTBEAT");
    h.line(2, "HEARTBEAT");
    assert_eq!(
        h.advance(Duration::from_secs(2)),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            send(2, Reply::Hangup { user: uid(1) }),
        ]
    );
    assert_eq!(h.m.call_count(), 0);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![err(2, ErrorReply::NoSuchCall)]);
    // An accepted call does not expire.
    h.in_call(1, 1, 2, 2);
    for _ in 0..7 {
        h.line(1, "HEARTBEAT");
        h.line(2, "HEARTBEAT");
        assert_eq!(h.advance(Duration::from_secs(10)), vec![]);
    }
    assert_eq!(h.m.call_count(), 1);
}

#[test]
fn heartbeat_timeout_closes_and_hangs_up() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    // Checked every 10 s; session 2 keeps heartbeating, session 1 does not.
    for _ in 0..2 {
        assert_eq!(h.advance(Duration::from_secs(10)), vec![]);
        h.line(2, "HEARTBEAT");
    }
    let id = h.ids(2);
    assert_eq!(
        h.advance(Duration::from_secs(10)),
        vec![
            remove(id, 1, 2),
            Effect::Store(StoreJob::Offline {
                users: vec![uid(1)]
            }),
            revoke(id + 1, 1),
            Effect::Close { session: sid(1) },
        ]
    );
    assert_eq!(h.ok(id), vec![send(2, Reply::Hangup { user: uid(1) })]);
    assert_eq!(h.ok(id + 1), vec![]);
    h.settled();
    assert_eq!(h.m.online_count(), 1);
}

#[test]
fn unauthenticated_connection_deadline() {
    let mut h = H::new();
    h.connect(1);
    h.connect(2);
    assert_eq!(h.advance(Duration::from_secs(5)), vec![]);
    h.login(3, 3);
    h.line(2, "AUTH slow");
    assert_eq!(
        h.advance(Duration::from_secs(5)),
        vec![
            Effect::Close { session: sid(1) },
            Effect::Close { session: sid(2) }
        ]
    );
    // A late lookup answer for the closed session is ignored.
    assert_eq!(h.lookup(2, Some(9)), vec![]);
    assert_eq!(h.m.session_count(), 1);
}

#[test]
fn second_auth_kicks_the_first_session_only() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    h.connect(3);
    h.line(3, "AUTH tok1");
    // The old session's cleanup removes the call but does not revoke user
    // 1: the new session's AllowUser replaces its entry.
    let id = h.ids(2);
    assert_eq!(
        h.lookup(3, Some(1)),
        vec![
            send(1, Reply::Kicked),
            remove(id, 1, 2),
            Effect::Close { session: sid(1) },
            send(
                3,
                Reply::OkAuth {
                    user: uid(1),
                    username: name(1)
                }
            ),
            Effect::Store(StoreJob::Online {
                session: sid(3),
                user: uid(1)
            }),
            allow(id + 1, 1),
        ]
    );
    assert_eq!(h.ok(id), vec![send(2, Reply::Hangup { user: uid(1) })]);
    assert_eq!(h.ok(id + 1), vec![]);
    h.settled();
    assert_eq!(h.backlog(3, 1, vec![]), vec![]);
    // The old connection's disconnect arrives late: the new session stays.
    assert_eq!(h.input(Input::Disconnected { session: sid(1) }), vec![]);
    assert_eq!(h.m.online_count(), 2);
    h.ring(2, 2, 3, 1);
}

fn msg_job(s: u64, seq: u64, from: u64, to: u64, text: &str, pending: bool) -> Effect {
    Effect::Store(StoreJob::Msg(MsgJob {
        session: sid(s),
        seq,
        sender: uid(from),
        recipient: uid(to),
        content: text.into(),
        pending,
        check_recipient: pending,
    }))
}

fn msg_done(
    s: u64,
    seq: u64,
    to: u64,
    pending: bool,
    r: Result<StoredMessage, MsgFailure>,
) -> Input {
    Input::Store(StoreResult::Msg {
        session: sid(s),
        seq,
        recipient: uid(to),
        pending,
        result: r,
    })
}

#[test]
fn message_to_online_user() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    assert_eq!(
        h.line(1, "MSG 2 hi \"there\""),
        vec![msg_job(1, 1, 1, 2, "hi \"there\"", false)]
    );
    // Replies to session 1 wait behind the pending MSG.
    assert_eq!(h.line(1, "HANGUP"), vec![]);
    let m = msg(10, 1, 2, "hi \"there\"");
    assert_eq!(
        h.input(msg_done(1, 1, 2, false, Ok(m.clone()))),
        vec![
            send(1, Reply::OkMsg),
            err(1, ErrorReply::NotInCall),
            msg_reply(2, &m)
        ]
    );
}

#[test]
fn message_failures() {
    let mut h = H::new();
    h.login(1, 1);
    assert_eq!(
        h.line(1, "MSG 5 hello"),
        vec![msg_job(1, 1, 1, 5, "hello", true)]
    );
    assert_eq!(
        h.line(1, "MSG 5 again"),
        vec![msg_job(1, 2, 1, 5, "again", true)]
    );
    // Completions in order; the second reply waits for the first.
    assert_eq!(
        h.input(msg_done(1, 1, 5, true, Err(MsgFailure::UnknownRecipient))),
        vec![err(1, ErrorReply::InvalidUserId)]
    );
    assert_eq!(
        h.input(msg_done(1, 2, 5, true, Err(MsgFailure::Database))),
        vec![err(1, ErrorReply::FailedToSend)]
    );
    // Sender gone before the commit: nothing to send, nothing to deliver.
    h.line(1, "MSG 5 x");
    h.input(Input::Disconnected { session: sid(1) });
    assert_eq!(
        h.input(msg_done(1, 3, 5, true, Ok(msg(3, 1, 5, "x")))),
        vec![]
    );
}

#[test]
fn offline_delivery_in_order_once() {
    let mut h = H::new();
    h.login(1, 1);
    h.line(1, "MSG 2 one");
    h.line(1, "MSG 2 two");
    let (m1, m2) = (msg(1, 1, 2, "one"), msg(2, 1, 2, "two"));
    assert_eq!(
        h.input(msg_done(1, 1, 2, true, Ok(m1.clone()))),
        vec![send(1, Reply::OkMsg)]
    );
    assert_eq!(
        h.input(msg_done(1, 2, 2, true, Ok(m2.clone()))),
        vec![send(1, Reply::OkMsg)]
    );
    // User 2 logs in: the backlog is delivered, then marked delivered.
    h.connect(2);
    h.line(2, "AUTH tok2");
    h.lookup(2, Some(2));
    // A message committed while the backlog is fetched (queued while 2 was
    // online, so not pending) waits and goes out after the backlog.
    h.line(1, "MSG 2 three");
    let m3 = msg(3, 1, 2, "three");
    assert_eq!(
        h.input(msg_done(1, 3, 2, false, Ok(m3.clone()))),
        vec![send(1, Reply::OkMsg)]
    );
    assert_eq!(
        h.backlog(2, 2, vec![m1.clone(), m2.clone()]),
        vec![
            msg_reply(2, &m1),
            msg_reply(2, &m2),
            msg_reply(2, &m3),
            Effect::Store(StoreJob::Delivered {
                recipient: uid(2),
                upto: 2
            }),
        ]
    );
}

#[test]
fn pending_message_completing_during_fetch_is_not_duplicated() {
    let mut h = H::new();
    h.login(1, 1);
    h.line(1, "MSG 2 one");
    h.connect(2);
    h.line(2, "AUTH tok2");
    h.lookup(2, Some(2));
    let m1 = msg(1, 1, 2, "one");
    // Queued while 2 was offline: the backlog fetch (queued later) has it.
    assert_eq!(
        h.input(msg_done(1, 1, 2, true, Ok(m1.clone()))),
        vec![send(1, Reply::OkMsg)]
    );
    assert_eq!(
        h.backlog(2, 2, vec![m1.clone()]),
        vec![
            msg_reply(2, &m1),
            Effect::Store(StoreJob::Delivered {
                recipient: uid(2),
                upto: 1
            })
        ]
    );
}

fn page(s: u64, u: u64, msgs: &[StoredMessage], upto: Option<i64>, more: bool) -> Input {
    Input::Store(StoreResult::Backlog {
        session: sid(s),
        user: uid(u),
        page: Ok(PendingPage {
            messages: msgs.to_vec(),
            upto,
            more,
        }),
    })
}

#[test]
fn backlog_in_pages() {
    let mut h = H::new();
    h.login(1, 1);
    h.connect(2);
    h.line(2, "AUTH tok2");
    h.lookup(2, Some(2));
    // A message committed live during the fetch waits for the last page.
    h.line(1, "MSG 2 live");
    let live = msg(9, 1, 2, "live");
    assert_eq!(
        h.input(msg_done(1, 1, 2, false, Ok(live.clone()))),
        vec![send(1, Reply::OkMsg)]
    );
    let (m1, m2, m4) = (msg(1, 1, 2, "a"), msg(2, 1, 2, "b"), msg(4, 1, 2, "d"));
    // A full page: queued to the session, marked delivered, and only then
    // the next page is asked for (after its last id, 3: a skipped row).
    assert_eq!(
        h.input(page(2, 2, &[m1.clone(), m2.clone()], Some(3), true)),
        vec![
            msg_reply(2, &m1),
            msg_reply(2, &m2),
            Effect::Store(StoreJob::Delivered {
                recipient: uid(2),
                upto: 3
            }),
            Effect::Store(StoreJob::Backlog {
                session: sid(2),
                user: uid(2),
                after: 3
            }),
        ]
    );
    // A page of nothing but skipped rows still moves on.
    assert_eq!(
        h.input(page(2, 2, &[], Some(5), true)),
        vec![
            Effect::Store(StoreJob::Delivered {
                recipient: uid(2),
                upto: 5
            }),
            Effect::Store(StoreJob::Backlog {
                session: sid(2),
                user: uid(2),
                after: 5
            }),
        ]
    );
    // The last page, then what was buffered; then live.
    assert_eq!(
        h.input(page(2, 2, std::slice::from_ref(&m4), Some(6), false)),
        vec![
            msg_reply(2, &m4),
            msg_reply(2, &live),
            Effect::Store(StoreJob::Delivered {
                recipient: uid(2),
                upto: 6
            }),
        ]
    );
    h.line(1, "MSG 2 now");
    let now = msg(10, 1, 2, "now");
    assert_eq!(
        h.input(msg_done(1, 2, 2, false, Ok(now.clone()))),
        vec![send(1, Reply::OkMsg), msg_reply(2, &now)]
    );
    // An empty last page (the previous one was exactly full).
    h.connect(3);
    h.line(3, "AUTH tok3");
    h.lookup(3, Some(3));
    assert_eq!(h.input(page(3, 3, &[], None, true)), vec![]);
    h.line(1, "MSG 3 hi");
    let hi = msg(11, 1, 3, "hi");
    assert_eq!(
        h.input(msg_done(1, 3, 3, false, Ok(hi.clone()))),
        vec![send(1, Reply::OkMsg), msg_reply(3, &hi)]
    );
}

#[test]
fn backlog_paging_stops_with_the_session_or_a_failed_fetch() {
    let mut h = H::new();
    h.login(1, 1);
    h.connect(2);
    h.line(2, "AUTH tok2");
    let id = h.ids(2);
    h.lookup(2, Some(2));
    let m1 = msg(1, 1, 2, "a");
    h.input(page(2, 2, &[m1], Some(1), true));
    h.line(1, "MSG 2 live");
    let live = msg(7, 1, 2, "live");
    h.input(msg_done(1, 1, 2, false, Ok(live)));
    // Gone between pages: the buffered message is pending again, and the
    // next page (already asked for) goes nowhere and asks for nothing.
    assert_eq!(
        h.input(Input::Disconnected { session: sid(2) }),
        vec![
            Effect::Store(StoreJob::Offline {
                users: vec![uid(2)]
            }),
            revoke(id + 1, 2),
            Effect::Store(StoreJob::AddPending {
                recipient: uid(2),
                message_id: 7
            }),
        ]
    );
    assert_eq!(
        h.input(page(2, 2, &[msg(2, 1, 2, "b")], Some(2), true)),
        vec![]
    );
    // A fetch that failed: the rest stays pending, the session goes live
    // with what was buffered, nothing is marked delivered.
    h.connect(3);
    h.line(3, "AUTH tok2");
    h.lookup(3, Some(2));
    h.input(page(3, 2, &[], Some(1), true));
    h.line(1, "MSG 2 later");
    let later = msg(8, 1, 2, "later");
    h.input(msg_done(1, 2, 2, false, Ok(later.clone())));
    assert_eq!(
        h.input(Input::Store(StoreResult::Backlog {
            session: sid(3),
            user: uid(2),
            page: Err(()),
        })),
        vec![msg_reply(3, &later)]
    );
}

#[test]
fn recipient_leaving_before_commit_keeps_message_pending() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.line(1, "MSG 2 bye");
    let id = h.ids(1);
    assert_eq!(
        h.input(Input::Disconnected { session: sid(2) }),
        vec![
            Effect::Store(StoreJob::Offline {
                users: vec![uid(2)]
            }),
            revoke(id, 2),
        ]
    );
    let m = msg(4, 1, 2, "bye");
    assert_eq!(
        h.input(msg_done(1, 1, 2, false, Ok(m))),
        vec![
            send(1, Reply::OkMsg),
            Effect::Store(StoreJob::AddPending {
                recipient: uid(2),
                message_id: 4
            })
        ]
    );
    // Buffered during a fetch, then the session dies: pending again.
    h.login(2, 2);
    h.connect(3);
    h.line(3, "AUTH tok2");
    h.line(1, "MSG 2 later");
    let id = h.ids(2);
    assert!(h.lookup(3, Some(2)).contains(&allow(id, 2)));
    let m = msg(5, 1, 2, "later");
    h.input(msg_done(1, 2, 2, false, Ok(m)));
    assert_eq!(
        h.input(Input::Disconnected { session: sid(3) }),
        vec![
            Effect::Store(StoreJob::Offline {
                users: vec![uid(2)]
            }),
            revoke(id + 1, 2),
            Effect::Store(StoreJob::AddPending {
                recipient: uid(2),
                message_id: 5
            }),
        ]
    );
}

#[test]
fn rate_limit() {
    let mut h = H::with(MachineConfig {
        rate_per_sec: 2.0,
        rate_burst: 3.0,
        ..MachineConfig::default()
    });
    h.login(1, 1); // AUTH takes one token
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::RateLimited)]);
    h.now += Duration::from_millis(500);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::NotInCall)]);
    assert_eq!(h.line(1, "HANGUP"), vec![err(1, ErrorReply::RateLimited)]);
}

#[test]
fn shutdown_marks_everyone_offline() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.connect(3);
    assert_eq!(
        h.input(Input::Shutdown),
        vec![
            Effect::Close { session: sid(1) },
            Effect::Close { session: sid(2) },
            Effect::Close { session: sid(3) },
            Effect::Store(StoreJob::Offline {
                users: vec![uid(1), uid(2)]
            }),
        ]
    );
    assert_eq!(h.m.session_count(), 0);
}

#[test]
fn unknown_session_inputs_are_ignored() {
    let mut h = H::new();
    assert_eq!(h.line(42, "AUTH x"), vec![]);
    assert_eq!(h.input(Input::Disconnected { session: sid(42) }), vec![]);
    assert_eq!(h.backlog(42, 1, vec![]), vec![]);
}
