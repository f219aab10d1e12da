//! The call and presence state machine. Sans-IO (STYLE.md practice 1): it
//! owns every session, user and call, takes one [`Input`] with the current
//! time and pushes [`Effect`]s; no sockets, no clock, no store.
//!
//! Session states: not authenticated (`New`), token lookup pending
//! (`Looking`: lines queue until the answer), authenticated (with its backlog
//! of offline messages being fetched, then live). An authenticated user is
//! idle, calling (caller of a ringing call), ringing (callee of one) or in a
//! call. What each command does in each state is in the table in
//! `docs` of [`Machine::handle`]; the scenario tests in `tests.rs` cover it.
//!
//! Replies to one session leave in the order of its commands: a reply queued
//! behind a `MSG` whose commit is pending waits for that `OK MSG`, and one
//! queued behind a relay request (`START_CALL` behind `InstallCall`,
//! `HANGUP`/`OK HANGUP` behind `RemoveCall`) waits for the relay's reply.
//! The relay side (requests, adoption, resync, grace) is in [`relay`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use whelm_shared::line::{Command, ErrorReply, LineError, MessageJson, Reply, UserId};

use whelm_shared::channel::UserEntry;

use crate::jobs::{
    Effect, Input, MsgFailure, MsgJob, PendingPage, RelayCommand, SessionId, StoreJob, StoreResult,
    StoredMessage,
};

mod relay;
#[cfg(test)]
mod tests;

use relay::{Pending, PendingKind};

/// Limits and timers of the machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// A session without HEARTBEAT for this long is closed (reference: 30 s).
    pub heartbeat_timeout: Duration,
    /// How often heartbeats are checked (reference: 10 s).
    pub heartbeat_check: Duration,
    /// A ringing call expires after this long.
    pub ring_timeout: Duration,
    /// A connection must authenticate within this long.
    pub auth_timeout: Duration,
    /// Concurrent calls (ringing and active), when `max_calls_per_core` is
    /// unset or the relay's worker count is not known yet.
    pub max_calls: usize,
    /// Calls per relay worker: the limit is the worker count the relay
    /// reports in its counters times this (ARCHITECTURE.md, scale).
    pub max_calls_per_core: Option<usize>,
    /// Commands per second per session (0: no limit).
    pub rate_per_sec: f64,
    /// Commands a session may send at once above the rate.
    pub rate_burst: f64,
    /// Lines a session may queue while its AUTH is being looked up.
    pub max_queued_before_auth: usize,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            heartbeat_timeout: Duration::from_secs(30),
            heartbeat_check: Duration::from_secs(10),
            ring_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
            max_calls: 400,
            max_calls_per_core: None,
            rate_per_sec: 1000.0,
            rate_burst: 2000.0,
            max_queued_before_auth: 64,
        }
    }
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A reply waiting behind a pending `MSG` of the same session.
#[derive(Debug)]
enum Held {
    /// The `MSG` with this sequence number is not committed yet.
    Msg(u64),
    /// This reply goes once the relay answered the request with this id.
    Relay(u64, Reply),
    /// Ready to go once everything before it has gone.
    Ready(Reply),
}

#[derive(Debug)]
enum Backlog {
    /// The pending messages are being fetched, a page at a time (each page
    /// is queued to the session, marked delivered, and only then is the
    /// next one asked for); messages committed meanwhile (not pending in
    /// the database) wait here to go out after the last page.
    Fetching(Vec<StoredMessage>),
    /// Backlog delivered; messages go out as they commit.
    Live,
}

#[derive(Debug)]
struct Authed {
    user: UserId,
    username: String,
    /// The session token it authenticated with (the relay accepts
    /// `HELLO <id> <token>` with it).
    token: String,
    last_heartbeat: Instant,
    backlog: Backlog,
}

#[derive(Debug)]
enum AuthState {
    New,
    /// The token being looked up, and the lines queued meanwhile.
    Looking(String, VecDeque<Result<Command, LineError>>),
    Authed(Authed),
}

#[derive(Debug)]
struct Session {
    ip: IpAddr,
    auth: AuthState,
    bucket: Bucket,
    held: VecDeque<Held>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    Ringing,
    Active,
}

#[derive(Clone, Copy, Debug)]
struct Call {
    caller: UserId,
    callee: UserId,
    state: CallState,
}

impl Call {
    fn partner(&self, u: UserId) -> UserId {
        if u == self.caller {
            self.callee
        } else {
            self.caller
        }
    }
}

/// Why a session ends (decides what is written to the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The connection closed; the user goes offline.
    Gone,
    /// We close it (timeout); the user goes offline.
    Closed,
    /// Replaced by a newer session of the same user: no offline write.
    Kicked,
}

/// The machine. One thread owns it (STYLE.md practice 3).
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    sessions: HashMap<SessionId, Session>,
    /// Authenticated users and their one session.
    users: HashMap<UserId, SessionId>,
    /// The call each user is in (ringing or active).
    in_call: HashMap<UserId, u64>,
    calls: HashMap<u64, Call>,
    next_call: u64,
    next_seq: u64,
    /// Sessions in connection order with their authentication deadline.
    auth_deadlines: VecDeque<(Instant, SessionId)>,
    /// Ringing calls in order with their expiry.
    ring_deadlines: VecDeque<(Instant, u64)>,
    next_heartbeat_check: Option<Instant>,
    /// Whether the relay link is up (written by [`RelayInput`]s). While it is
    /// down no request is emitted: the resync after the reconnect covers it.
    ///
    /// [`RelayInput`]: crate::jobs::RelayInput
    relay_up: bool,
    /// A relay snapshot was adopted (or was not needed): later reconnects
    /// send ReplaceAll; before that, a connect asks for a Snapshot.
    adopted: bool,
    next_relay_id: u64,
    /// Relay requests not answered yet, and who holds replies behind them.
    pending: HashMap<u64, Pending>,
    /// Users adopted from a relay snapshot whose client has not come back
    /// (no session); their relay entry and calls stay until the grace
    /// deadline.
    detached: HashMap<UserId, UserEntry>,
    /// Grace deadlines of detached users, in adoption order.
    grace_deadlines: VecDeque<(Instant, UserId)>,
    /// Voice addresses the relay reported (VoiceRegistered) or a snapshot
    /// held, per authenticated or detached user: re-installed by ReplaceAll.
    voice: HashMap<UserId, SocketAddr>,
    /// The relay's last counters: (bps_in, bps_out, bps_limit).
    bandwidth: Option<(u64, u64, u64)>,
    /// The relay's worker count from its last counters (0: not known).
    relay_workers: usize,
    /// Totals since start, published as metrics.
    totals: Totals,
}

/// Counts since start (read by [`Machine::stats`]).
#[derive(Debug, Default)]
struct Totals {
    calls_offered: u64,
    calls_refused: u64,
    messages_stored: u64,
    messages_delivered: u64,
}

impl Machine {
    /// A machine with no sessions.
    pub fn new(cfg: MachineConfig) -> Machine {
        Machine {
            cfg,
            sessions: HashMap::new(),
            users: HashMap::new(),
            in_call: HashMap::new(),
            calls: HashMap::new(),
            next_call: 1,
            next_seq: 1,
            auth_deadlines: VecDeque::new(),
            ring_deadlines: VecDeque::new(),
            next_heartbeat_check: None,
            relay_up: false,
            adopted: false,
            next_relay_id: 1,
            pending: HashMap::new(),
            detached: HashMap::new(),
            grace_deadlines: VecDeque::new(),
            voice: HashMap::new(),
            bandwidth: None,
            relay_workers: 0,
            totals: Totals::default(),
        }
    }

    /// The call limit in force: relay workers × `max_calls_per_core` when
    /// both are known, else `max_calls`.
    pub fn call_limit(&self) -> usize {
        match self.cfg.max_calls_per_core {
            Some(per_core) if self.relay_workers > 0 => self.relay_workers.saturating_mul(per_core),
            _ => self.cfg.max_calls,
        }
    }

    /// The limits and timers in force.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Numbers for the metrics endpoint and the summary line.
    pub fn stats(&self) -> crate::metrics::MachineStats {
        let active = self
            .calls
            .values()
            .filter(|c| c.state == CallState::Active)
            .count();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        crate::metrics::MachineStats {
            sessions: n(self.sessions.len()),
            users: n(self.users.len()),
            ringing: n(self.calls.len() - active),
            active: n(active),
            call_limit: n(self.call_limit()),
            calls_offered: self.totals.calls_offered,
            calls_refused: self.totals.calls_refused,
            messages_stored: self.totals.messages_stored,
            messages_delivered: self.totals.messages_delivered,
            relay_up: self.relay_up,
        }
    }

    /// Sessions open.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Users authenticated.
    pub fn online_count(&self) -> usize {
        self.users.len()
    }

    /// Calls ringing or active.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Handles one input, pushing effects in the order they must happen.
    ///
    /// | command | not authenticated | idle | calling / ringing | in call |
    /// |---|---|---|---|---|
    /// | AUTH | look up token | `ERROR Invalid arguments` | same | same |
    /// | HEARTBEAT | `ERROR Not authenticated` | `OK HEARTBEAT` | same | same |
    /// | CALL | idem | ring, or offline/busy/self/capacity error | `ERROR Already in a call` | same |
    /// | ACCEPT c | idem | `ERROR No incoming call...` | callee of c: start call | error |
    /// | REJECT c | idem | error | callee of c: `REJECTED`/`OK REJECTED` | error |
    /// | HANGUP | idem | `ERROR Not in a call` | cancel: partner `HANGUP me` | end call |
    /// | MSG | idem | store, `OK MSG` after the commit | same | same |
    pub fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Connected { session, ip } => self.connected(now, session, ip),
            Input::Line { session, line } => self.line(now, session, line, out),
            Input::Disconnected { session } => self.end_session(session, End::Gone, out),
            Input::Store(r) => self.store_result(now, r, out),
            Input::Tick => self.tick(now, out),
            Input::Relay(r) => self.relay_input(now, r, out),
            // New limits and timers apply to what happens from now on:
            // sessions, calls and deadlines already set are left alone.
            Input::Reconfigure(cfg) => self.cfg = *cfg,
            Input::Shutdown => self.shutdown(out),
        }
    }

    fn connected(&mut self, now: Instant, session: SessionId, ip: IpAddr) {
        let s = Session {
            ip,
            auth: AuthState::New,
            bucket: Bucket {
                tokens: self.cfg.rate_burst,
                at: now,
            },
            held: VecDeque::new(),
        };
        self.sessions.insert(session, s);
        self.auth_deadlines
            .push_back((now + self.cfg.auth_timeout, session));
    }

    /// Queues a reply to a session, behind any reply held for a pending MSG.
    fn send(&mut self, session: SessionId, reply: Reply, out: &mut Vec<Effect>) {
        if let Some(s) = self.sessions.get_mut(&session) {
            if s.held.is_empty() {
                out.push(Effect::Send { session, reply });
            } else {
                s.held.push_back(Held::Ready(reply));
            }
        }
    }

    fn err(&mut self, session: SessionId, e: ErrorReply, out: &mut Vec<Effect>) {
        self.send(session, Reply::Error(e), out);
    }

    /// Takes one token from the session's bucket; `false` when empty.
    fn allow(&mut self, now: Instant, session: SessionId) -> bool {
        let rate = self.cfg.rate_per_sec;
        let burst = self.cfg.rate_burst;
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        if rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(s.bucket.at).as_secs_f64();
        s.bucket.tokens = (s.bucket.tokens + dt * rate).min(burst);
        s.bucket.at = now;
        if s.bucket.tokens >= 1.0 {
            s.bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn line(
        &mut self,
        now: Instant,
        session: SessionId,
        line: Result<Command, LineError>,
        out: &mut Vec<Effect>,
    ) {
        if matches!(line, Err(LineError::Empty)) || !self.sessions.contains_key(&session) {
            return;
        }
        if !self.allow(now, session) {
            self.err(session, ErrorReply::RateLimited, out);
            return;
        }
        self.process(now, session, line, out);
    }

    /// One line that passed the rate limit.
    fn process(
        &mut self,
        now: Instant,
        session: SessionId,
        line: Result<Command, LineError>,
        out: &mut Vec<Effect>,
    ) {
        let max_queued = self.cfg.max_queued_before_auth;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let user = match &mut s.auth {
            AuthState::Looking(_, q) => {
                if q.len() < max_queued {
                    q.push_back(line);
                } else {
                    self.err(session, ErrorReply::RateLimited, out);
                }
                return;
            }
            AuthState::New => None,
            AuthState::Authed(a) => Some(a.user),
        };
        let cmd = match line {
            Ok(c) => c,
            Err(e) if user.is_none() && e.is_other_than_auth() => {
                self.err(session, ErrorReply::NotAuthenticated, out);
                return;
            }
            Err(e) => {
                self.err(session, e.reply(), out);
                return;
            }
        };
        let Some(user) = user else {
            match cmd {
                Command::Auth { token } => {
                    s.auth = AuthState::Looking(token.clone(), VecDeque::new());
                    out.push(Effect::Store(StoreJob::Lookup { session, token }));
                }
                _ => self.err(session, ErrorReply::NotAuthenticated, out),
            }
            return;
        };
        match cmd {
            // Re-authentication on an authenticated session is refused; a
            // new connection replaces this one instead.
            Command::Auth { .. } => self.err(session, ErrorReply::InvalidArguments, out),
            Command::Heartbeat { status } => {
                if let AuthState::Authed(a) = &mut s.auth {
                    a.last_heartbeat = now;
                }
                out.push(Effect::Store(StoreJob::Heartbeat { user, status }));
                self.send(session, Reply::OkHeartbeat, out);
            }
            Command::Call { callee } => self.call(now, session, user, callee, out),
            Command::Accept { caller } => self.accept(session, user, caller, out),
            Command::Reject { caller } => self.reject(session, user, caller, out),
            Command::Hangup => self.hangup(session, user, out),
            Command::Msg { recipient, content } => {
                let online = self.users.contains_key(&recipient);
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.held.push_back(Held::Msg(seq));
                }
                out.push(Effect::Store(StoreJob::Msg(MsgJob {
                    session,
                    seq,
                    sender: user,
                    recipient,
                    content,
                    pending: !online,
                    check_recipient: !online,
                })));
            }
        }
    }

    fn username(&self, user: UserId) -> String {
        self.users
            .get(&user)
            .and_then(|s| self.sessions.get(s))
            .and_then(|s| match &s.auth {
                AuthState::Authed(a) => Some(a.username.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn session_of(&self, user: UserId) -> Option<SessionId> {
        self.users.get(&user).copied()
    }

    fn call(
        &mut self,
        now: Instant,
        session: SessionId,
        user: UserId,
        callee: UserId,
        out: &mut Vec<Effect>,
    ) {
        let e = if callee == user {
            Some(ErrorReply::CallSelf)
        } else if self.in_call.contains_key(&user) {
            Some(ErrorReply::AlreadyInCall)
        } else if !self.users.contains_key(&callee) {
            Some(ErrorReply::UserOffline)
        } else if self.in_call.contains_key(&callee) {
            Some(ErrorReply::UserBusy)
        } else if self.calls.len() >= self.call_limit() {
            Some(ErrorReply::AtCapacity)
        } else if self.bandwidth_exceeded() {
            Some(ErrorReply::BandwidthExceeded)
        } else {
            None
        };
        if let Some(e) = e {
            if matches!(e, ErrorReply::AtCapacity | ErrorReply::BandwidthExceeded) {
                self.totals.calls_refused += 1;
            }
            self.err(session, e, out);
            return;
        }
        self.totals.calls_offered += 1;
        let key = self.next_call;
        self.next_call += 1;
        self.calls.insert(
            key,
            Call {
                caller: user,
                callee,
                state: CallState::Ringing,
            },
        );
        self.in_call.insert(user, key);
        self.in_call.insert(callee, key);
        self.ring_deadlines
            .push_back((now + self.cfg.ring_timeout, key));
        self.send(session, Reply::OkCalling { callee }, out);
        let username = self.username(user);
        if let Some(cs) = self.session_of(callee) {
            self.send(
                cs,
                Reply::Incoming {
                    caller: user,
                    username,
                },
                out,
            );
        }
    }

    /// The ringing call `caller` -> `user`, if there is one.
    fn ringing_from(&self, user: UserId, caller: UserId) -> Option<u64> {
        let key = *self.in_call.get(&user)?;
        let c = self.calls.get(&key)?;
        (c.state == CallState::Ringing && c.callee == user && c.caller == caller).then_some(key)
    }

    fn accept(&mut self, session: SessionId, user: UserId, caller: UserId, out: &mut Vec<Effect>) {
        let Some(key) = self.ringing_from(user, caller) else {
            self.err(session, ErrorReply::NoSuchCall, out);
            return;
        };
        if let Some(c) = self.calls.get_mut(&key) {
            c.state = CallState::Active;
        }
        // START_CALL waits for the relay's Ok: when a client hears it, its
        // voice is forwarded (same rule as HANGUP after RemoveCall).
        let id = self.install_call(caller, user, false, out);
        let (cname, uname) = (self.username(caller), self.username(user));
        if let Some(cs) = self.session_of(caller) {
            self.send_after(
                id,
                cs,
                Reply::StartCall {
                    partner: user,
                    username: uname,
                },
                out,
            );
        }
        self.send_after(
            id,
            session,
            Reply::StartCall {
                partner: caller,
                username: cname,
            },
            out,
        );
    }

    fn reject(&mut self, session: SessionId, user: UserId, caller: UserId, out: &mut Vec<Effect>) {
        let Some(key) = self.ringing_from(user, caller) else {
            self.err(session, ErrorReply::NoSuchCall, out);
            return;
        };
        self.remove_call(key);
        if let Some(cs) = self.session_of(caller) {
            self.send(cs, Reply::Rejected { callee: user }, out);
        }
        self.send(session, Reply::OkRejected, out);
    }

    fn remove_call(&mut self, key: u64) -> Option<Call> {
        let c = self.calls.remove(&key)?;
        self.in_call.remove(&c.caller);
        self.in_call.remove(&c.callee);
        Some(c)
    }

    /// Ends `user`'s call (if any): an installed call is removed from the
    /// relay and the partner's `HANGUP <user>` waits for the relay's Ok.
    /// `None`: not in a call; `Some(id)`: ended, replies about it wait for
    /// relay request `id` (if any).
    fn end_call_of(&mut self, user: UserId, out: &mut Vec<Effect>) -> Option<Option<u64>> {
        let key = self.in_call.get(&user).copied()?;
        let c = self.remove_call(key)?;
        let id = if c.state == CallState::Active {
            self.request(
                RelayCommand::RemoveCall(whelm_shared::channel::CallEntry {
                    a: c.caller,
                    b: c.callee,
                }),
                PendingKind::Other,
                out,
            )
        } else {
            None
        };
        let partner = c.partner(user);
        if let Some(ps) = self.session_of(partner) {
            self.send_after(id, ps, Reply::Hangup { user }, out);
        }
        Some(id)
    }

    fn hangup(&mut self, session: SessionId, user: UserId, out: &mut Vec<Effect>) {
        match self.end_call_of(user, out) {
            Some(id) => self.send_after(id, session, Reply::OkHangup, out),
            None => self.err(session, ErrorReply::NotInCall, out),
        }
    }

    /// Removes a session and everything it owns. Only this session's state
    /// is touched: a user's newer session survives its old one's cleanup.
    fn end_session(&mut self, session: SessionId, end: End, out: &mut Vec<Effect>) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        if let AuthState::Authed(a) = s.auth {
            if self.users.get(&a.user) == Some(&session) {
                self.users.remove(&a.user);
                self.end_call_of(a.user, out);
                if end != End::Kicked {
                    out.push(Effect::Store(StoreJob::Offline {
                        users: vec![a.user],
                    }));
                    self.revoke(a.user, out);
                }
                // Kicked: the new session's AllowUser replaces the entry;
                // revoking here would remove what the new session needs.
            }
            if let Backlog::Fetching(buf) = a.backlog {
                for m in buf {
                    out.push(Effect::Store(StoreJob::AddPending {
                        recipient: m.recipient,
                        message_id: m.id,
                    }));
                }
            }
        }
        if end != End::Gone {
            out.push(Effect::Close { session });
        }
    }

    fn store_result(&mut self, now: Instant, r: StoreResult, out: &mut Vec<Effect>) {
        match r {
            StoreResult::Lookup { session, user } => self.lookup_done(now, session, user, out),
            StoreResult::Backlog {
                session,
                user,
                page,
            } => self.backlog_done(session, user, page, out),
            StoreResult::Msg {
                session,
                seq,
                recipient,
                pending,
                result,
            } => self.msg_done(session, seq, recipient, pending, result, out),
        }
    }

    fn lookup_done(
        &mut self,
        now: Instant,
        session: SessionId,
        user: Result<Option<crate::jobs::UserRecord>, ()>,
        out: &mut Vec<Effect>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let (token, queued) = match std::mem::replace(&mut s.auth, AuthState::New) {
            AuthState::Looking(t, q) => (t, q),
            other => {
                s.auth = other;
                return;
            }
        };
        match user {
            Ok(Some(rec)) => {
                if let Some(old) = self.users.get(&rec.id).copied() {
                    self.send(old, Reply::Kicked, out);
                    self.end_session(old, End::Kicked, out);
                }
                let ip = match self.sessions.get_mut(&session) {
                    Some(s) => {
                        s.auth = AuthState::Authed(Authed {
                            user: rec.id,
                            username: rec.username.clone(),
                            token: token.clone(),
                            last_heartbeat: now,
                            backlog: Backlog::Fetching(Vec::new()),
                        });
                        s.ip
                    }
                    None => return,
                };
                self.users.insert(rec.id, session);
                // A user adopted from the relay's snapshot is back: attached
                // again, still in its call.
                self.detached.remove(&rec.id);
                self.send(
                    session,
                    Reply::OkAuth {
                        user: rec.id,
                        username: rec.username,
                    },
                    out,
                );
                out.push(Effect::Store(StoreJob::Online {
                    session,
                    user: rec.id,
                }));
                self.allow_user(rec.id, ip, token, out);
            }
            Ok(None) | Err(()) => self.err(session, ErrorReply::InvalidToken, out),
        }
        for line in queued {
            self.process(now, session, line, out);
        }
    }

    fn deliver(&mut self, session: SessionId, m: StoredMessage, out: &mut Vec<Effect>) {
        let json = MessageJson {
            sender_id: m.sender.get(),
            recipient_id: m.recipient.get(),
            content: m.content,
            timestamp: m.timestamp,
        };
        self.totals.messages_delivered += 1;
        self.send(session, Reply::Msg(json), out);
    }

    /// A page of the backlog: queued to the session, then marked delivered
    /// (its skipped rows too); then the next page is asked for, or, after
    /// the last one (or a failed fetch: the rest stays pending for the next
    /// AUTH), the messages buffered meanwhile go out and the session is
    /// live.
    fn backlog_done(
        &mut self,
        session: SessionId,
        user: UserId,
        page: Result<PendingPage, ()>,
        out: &mut Vec<Effect>,
    ) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let AuthState::Authed(a) = &s.auth else {
            return;
        };
        if a.user != user {
            return;
        }
        let page = page.unwrap_or_default();
        for m in page.messages {
            self.deliver(session, m, out);
        }
        let delivered = page.upto.map(|upto| {
            Effect::Store(StoreJob::Delivered {
                recipient: user,
                upto,
            })
        });
        if let (Some(after), true) = (page.upto, page.more) {
            out.extend(delivered);
            out.push(Effect::Store(StoreJob::Backlog {
                session,
                user,
                after,
            }));
            return;
        }
        let buffered = match self.sessions.get_mut(&session).map(|s| &mut s.auth) {
            Some(AuthState::Authed(a)) => match std::mem::replace(&mut a.backlog, Backlog::Live) {
                Backlog::Fetching(b) => b,
                Backlog::Live => Vec::new(),
            },
            _ => Vec::new(),
        };
        for m in buffered {
            self.deliver(session, m, out);
        }
        out.extend(delivered);
    }

    fn msg_done(
        &mut self,
        session: SessionId,
        seq: u64,
        recipient: UserId,
        pending: bool,
        result: Result<StoredMessage, MsgFailure>,
        out: &mut Vec<Effect>,
    ) {
        let reply = match &result {
            Ok(_) => Reply::OkMsg,
            Err(MsgFailure::UnknownRecipient) => Reply::Error(ErrorReply::InvalidUserId),
            Err(MsgFailure::Database) => Reply::Error(ErrorReply::FailedToSend),
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            if let Some(slot) = s
                .held
                .iter_mut()
                .find(|h| matches!(h, Held::Msg(q) if *q == seq))
            {
                *slot = Held::Ready(reply);
            }
            while let Some(Held::Ready(_)) = s.held.front() {
                if let Some(Held::Ready(r)) = s.held.pop_front() {
                    out.push(Effect::Send { session, reply: r });
                }
            }
        }
        let Ok(m) = result else {
            return;
        };
        self.totals.messages_stored += 1;
        match self.session_of(recipient) {
            Some(rs) => {
                let live = match self.sessions.get_mut(&rs).map(|s| &mut s.auth) {
                    Some(AuthState::Authed(a)) => match &mut a.backlog {
                        Backlog::Live => true,
                        Backlog::Fetching(buf) => {
                            // A pending message was queued before this
                            // session's backlog fetch, which returns it.
                            if !pending {
                                buf.push(m.clone());
                            }
                            false
                        }
                    },
                    _ => false,
                };
                if live {
                    let id = m.id;
                    self.deliver(rs, m, out);
                    if pending {
                        out.push(Effect::Store(StoreJob::Delivered {
                            recipient,
                            upto: id,
                        }));
                    }
                }
            }
            None if !pending => out.push(Effect::Store(StoreJob::AddPending {
                recipient,
                message_id: m.id,
            })),
            None => {}
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.grace_tick(now, out);
        while let Some(&(deadline, session)) = self.auth_deadlines.front() {
            if deadline > now {
                break;
            }
            self.auth_deadlines.pop_front();
            let unauth = self
                .sessions
                .get(&session)
                .is_some_and(|s| !matches!(s.auth, AuthState::Authed(_)));
            if unauth {
                self.end_session(session, End::Closed, out);
            }
        }
        while let Some(&(deadline, key)) = self.ring_deadlines.front() {
            if deadline > now {
                break;
            }
            self.ring_deadlines.pop_front();
            let ringing = self
                .calls
                .get(&key)
                .is_some_and(|c| c.state == CallState::Ringing);
            let removed = if ringing { self.remove_call(key) } else { None };
            if let Some(c) = removed {
                if let Some(s) = self.session_of(c.caller) {
                    self.send(s, Reply::Hangup { user: c.callee }, out);
                }
                if let Some(s) = self.session_of(c.callee) {
                    self.send(s, Reply::Hangup { user: c.caller }, out);
                }
            }
        }
        let due = match self.next_heartbeat_check {
            None => {
                self.next_heartbeat_check = Some(now + self.cfg.heartbeat_check);
                false
            }
            Some(t) => t <= now,
        };
        if due {
            self.next_heartbeat_check = Some(now + self.cfg.heartbeat_check);
            let timeout = self.cfg.heartbeat_timeout;
            let mut expired: Vec<SessionId> = self
                .sessions
                .iter()
                .filter_map(|(id, s)| match &s.auth {
                    AuthState::Authed(a)
                        if now.saturating_duration_since(a.last_heartbeat) >= timeout =>
                    {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            expired.sort();
            for id in expired {
                self.end_session(id, End::Closed, out);
            }
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Effect>) {
        let mut users: Vec<UserId> = self.users.keys().copied().collect();
        users.sort();
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        for id in ids {
            let buf = match self.sessions.remove(&id).map(|s| s.auth) {
                Some(AuthState::Authed(Authed {
                    backlog: Backlog::Fetching(buf),
                    ..
                })) => buf,
                _ => Vec::new(),
            };
            {
                for m in buf {
                    out.push(Effect::Store(StoreJob::AddPending {
                        recipient: m.recipient,
                        message_id: m.id,
                    }));
                }
            }
            out.push(Effect::Close { session: id });
        }
        self.users.clear();
        self.in_call.clear();
        self.calls.clear();
        if !users.is_empty() {
            out.push(Effect::Store(StoreJob::Offline { users }));
        }
    }
}
