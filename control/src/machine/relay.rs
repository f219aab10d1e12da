//! The machine's half of the relay command channel (ARCHITECTURE.md, "What
//! survives what"). Still sans-IO: requests leave as [`Effect::Relay`] with
//! an id the machine chooses; the link reports back as [`RelayInput`]s.
//!
//! - **Requests** are emitted only while the link is up, each with a
//!   [`Pending`] entry. Replies held behind one (`START_CALL` behind
//!   `InstallCall`, `HANGUP <id>` / `OK HANGUP` behind `RemoveCall`) go when
//!   the relay answers, or at once when the link goes down: nothing forwards
//!   without a relay, and the resync after the reconnect re-installs what is
//!   still live.
//! - **First connection** of this process (nothing adopted yet): `Snapshot`,
//!   then `AllowUser`/`InstallCall` for sessions that authenticated before the
//!   relay was reachable. The snapshot is *adopted*: its users become
//!   detached users (no session) with a grace deadline of one heartbeat
//!   timeout, their calls stay installed. A detached user who authenticates
//!   in time is attached again and is back in its call; at the deadline the
//!   others are revoked (their calls removed, a partner who came back gets
//!   `HANGUP <id>`).
//! - **Every later connection** (relay restarted, or only the socket
//!   dropped): `ReplaceAll` with the full state, voice addresses included, so
//!   calls resume without new HELLOs. It is idempotent, so it is always sent.
//! - **Install refused** with `unknown_user` (an `AllowUser` lost): re-send
//!   `AllowUser` for both parties, then `InstallCall` once more; other
//!   refusals are logged and the held `START_CALL` goes anyway (control's
//!   state stays authoritative and the next resync re-installs it).

use std::net::IpAddr;
use std::time::Instant;

use whelm_shared::channel::{CallEntry, ErrorCode, Outcome, State, UserEntry};
use whelm_shared::line::{Reply, UserId};

use super::{AuthState, Call, CallState, Held, Machine};
use crate::jobs::{Effect, RelayCommand, RelayInput, SessionId, StoreJob};

/// What an unanswered relay request was for.
#[derive(Debug)]
pub(super) enum PendingKind {
    /// The first connection's snapshot: adopt the answer.
    Snapshot,
    /// A call install (retried once after `unknown_user`).
    Install {
        /// Caller.
        a: UserId,
        /// Callee.
        b: UserId,
        /// This is the retry.
        retried: bool,
    },
    /// Anything else: only the replies held behind it matter.
    Other,
}

/// One relay request not answered yet.
#[derive(Debug)]
pub(super) struct Pending {
    kind: PendingKind,
    /// Sessions with a [`Held::Relay`] reply waiting for this request.
    holders: Vec<SessionId>,
}

/// Sends the replies at the front of `held` that are ready.
fn flush(session: SessionId, held: &mut std::collections::VecDeque<Held>, out: &mut Vec<Effect>) {
    while let Some(Held::Ready(_)) = held.front() {
        if let Some(Held::Ready(reply)) = held.pop_front() {
            out.push(Effect::Send { session, reply });
        }
    }
}

impl Machine {
    /// Emits a relay request if the link is up; its id, for holding replies.
    pub(super) fn request(
        &mut self,
        cmd: RelayCommand,
        kind: PendingKind,
        out: &mut Vec<Effect>,
    ) -> Option<u64> {
        if !self.relay_up {
            return None;
        }
        let id = self.next_relay_id;
        self.next_relay_id += 1;
        out.push(Effect::Relay { id, cmd });
        self.pending.insert(
            id,
            Pending {
                kind,
                holders: Vec::new(),
            },
        );
        Some(id)
    }

    /// Queues `reply` behind relay request `id` (at once without one).
    pub(super) fn send_after(
        &mut self,
        id: Option<u64>,
        session: SessionId,
        reply: Reply,
        out: &mut Vec<Effect>,
    ) {
        let pending = id.and_then(|id| self.pending.get_mut(&id).map(|p| (id, p)));
        let (Some((id, p)), Some(s)) = (pending, self.sessions.get_mut(&session)) else {
            self.send(session, reply, out);
            return;
        };
        s.held.push_back(Held::Relay(id, reply));
        p.holders.push(session);
    }

    /// Request `id` is answered (or never will be): its held replies go.
    fn release(&mut self, id: u64, holders: Vec<SessionId>, out: &mut Vec<Effect>) {
        for session in holders {
            let Some(s) = self.sessions.get_mut(&session) else {
                continue;
            };
            for h in s.held.iter_mut() {
                if matches!(h, Held::Relay(hid, _) if *hid == id)
                    && let Held::Relay(_, r) = std::mem::replace(h, Held::Msg(0))
                {
                    *h = Held::Ready(r);
                }
            }
            flush(session, &mut s.held, out);
        }
    }

    /// The relay entry of an authenticated or detached user.
    fn entry_of(&self, user: UserId) -> Option<UserEntry> {
        let voice = self.voice.get(&user).copied();
        if let Some(s) = self.users.get(&user).and_then(|s| self.sessions.get(s))
            && let AuthState::Authed(a) = &s.auth
        {
            return Some(UserEntry {
                user,
                ip: s.ip,
                token: Some(a.token.clone()),
                voice,
            });
        }
        self.detached
            .get(&user)
            .map(|e| UserEntry { voice, ..e.clone() })
    }

    /// Active calls (the ones installed on the relay), by caller id.
    fn active_calls(&self) -> Vec<CallEntry> {
        let mut calls: Vec<CallEntry> = self
            .calls
            .values()
            .filter(|c| c.state == CallState::Active)
            .map(|c| CallEntry {
                a: c.caller,
                b: c.callee,
            })
            .collect();
        calls.sort_by_key(|c| (c.a, c.b));
        calls
    }

    /// Everything the relay should hold, for `ReplaceAll`.
    pub(super) fn full_state(&self) -> State {
        let mut users: Vec<UserId> = self
            .users
            .keys()
            .chain(self.detached.keys())
            .copied()
            .collect();
        users.sort();
        users.dedup();
        State {
            users: users.into_iter().filter_map(|u| self.entry_of(u)).collect(),
            calls: self.active_calls(),
        }
    }

    /// `user` authenticated from `ip` with `token`: allow its HELLO. A voice
    /// address known from the same IP is kept (the relay keeps it too).
    pub(super) fn allow_user(
        &mut self,
        user: UserId,
        ip: IpAddr,
        token: String,
        out: &mut Vec<Effect>,
    ) {
        let voice = match self.voice.get(&user) {
            Some(a) if a.ip() == ip => Some(*a),
            Some(_) => {
                self.voice.remove(&user);
                None
            }
            None => None,
        };
        let entry = UserEntry {
            user,
            ip,
            token: Some(token),
            voice,
        };
        self.request(RelayCommand::AllowUser(entry), PendingKind::Other, out);
    }

    /// `user` is gone: forget it on the relay (and its voice address here).
    pub(super) fn revoke(&mut self, user: UserId, out: &mut Vec<Effect>) {
        self.voice.remove(&user);
        self.request(RelayCommand::RevokeUser { user }, PendingKind::Other, out);
    }

    /// Installs the call `a` -> `b`.
    pub(super) fn install_call(
        &mut self,
        a: UserId,
        b: UserId,
        retried: bool,
        out: &mut Vec<Effect>,
    ) -> Option<u64> {
        self.request(
            RelayCommand::InstallCall(CallEntry { a, b }),
            PendingKind::Install { a, b, retried },
            out,
        )
    }

    /// The relay's last counters show more than 90% of its limit in use,
    /// either way (PROTOCOLS.md section 2: 20% margin of the reference; the
    /// issue sets 90%).
    pub(super) fn bandwidth_exceeded(&self) -> bool {
        match self.bandwidth {
            Some((bps_in, bps_out, limit)) if limit > 0 => {
                let threshold = u128::from(limit) * 9;
                u128::from(bps_in) * 10 > threshold || u128::from(bps_out) * 10 > threshold
            }
            _ => false,
        }
    }

    pub(super) fn relay_input(&mut self, now: Instant, input: RelayInput, out: &mut Vec<Effect>) {
        match input {
            RelayInput::Connected => self.relay_connected(out),
            RelayInput::Disconnected => self.relay_disconnected(out),
            RelayInput::Reply { id, outcome } => self.relay_reply(now, id, outcome, out),
            RelayInput::VoiceRegistered { user, addr } => {
                if self.users.contains_key(&user) || self.detached.contains_key(&user) {
                    self.voice.insert(user, addr);
                }
            }
            RelayInput::Counters {
                bps_in,
                bps_out,
                bps_limit,
                workers,
            } => {
                self.bandwidth = Some((bps_in, bps_out, bps_limit));
                self.relay_workers = workers;
            }
        }
    }

    fn relay_connected(&mut self, out: &mut Vec<Effect>) {
        self.relay_up = true;
        if self.adopted {
            let state = self.full_state();
            tracing::info!(
                users = state.users.len(),
                calls = state.calls.len(),
                "relay connected: re-installing the full state"
            );
            self.request(RelayCommand::ReplaceAll(state), PendingKind::Other, out);
            return;
        }
        tracing::info!("relay connected: asking for its state to adopt");
        self.request(RelayCommand::Snapshot, PendingKind::Snapshot, out);
        // Sessions that authenticated while the relay was unreachable. Sent
        // after the Snapshot, which therefore shows the relay as it was.
        let mut users: Vec<UserId> = self.users.keys().copied().collect();
        users.sort();
        for u in users {
            if let Some(e) = self.entry_of(u) {
                self.request(RelayCommand::AllowUser(e), PendingKind::Other, out);
            }
        }
        for c in self.active_calls() {
            self.install_call(c.a, c.b, false, out);
        }
    }

    fn relay_disconnected(&mut self, out: &mut Vec<Effect>) {
        self.relay_up = false;
        self.bandwidth = None;
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort();
        for id in ids {
            if let Some(p) = self.pending.remove(&id) {
                self.release(id, p.holders, out);
            }
        }
    }

    fn relay_reply(&mut self, now: Instant, id: u64, outcome: Outcome, out: &mut Vec<Effect>) {
        let Some(Pending { kind, holders }) = self.pending.remove(&id) else {
            tracing::debug!(
                id,
                "relay reply to no pending request (from before a reconnect)"
            );
            return;
        };
        match (kind, outcome) {
            (PendingKind::Snapshot, Outcome::Snapshot(state)) => self.adopt(now, state, out),
            (PendingKind::Snapshot, other) => {
                tracing::error!(?other, "the relay did not answer Snapshot with its state");
                self.adopted = true;
            }
            (
                PendingKind::Install {
                    a,
                    b,
                    retried: false,
                },
                Outcome::Error {
                    code: ErrorCode::UnknownUser,
                    message,
                },
            ) => {
                tracing::warn!(%a, %b, %message, "relay does not know a party: allowing both again");
                if let Some(new_id) = self.retry_install(a, b, out) {
                    self.rekey(id, new_id, holders);
                    return;
                }
            }
            (_, Outcome::Error { code, message }) => {
                tracing::warn!(id, ?code, %message, "relay refused a request");
            }
            _ => {}
        }
        self.release(id, holders, out);
    }

    /// Re-allows both parties of a still-active call and installs it again.
    fn retry_install(&mut self, a: UserId, b: UserId, out: &mut Vec<Effect>) -> Option<u64> {
        let active = self
            .in_call
            .get(&a)
            .and_then(|k| self.calls.get(k))
            .is_some_and(|c| c.state == CallState::Active && c.caller == a && c.callee == b);
        if !active {
            return None;
        }
        for u in [a, b] {
            if let Some(e) = self.entry_of(u) {
                self.request(RelayCommand::AllowUser(e), PendingKind::Other, out);
            }
        }
        self.install_call(a, b, true, out)
    }

    /// Moves the replies held behind request `old` to request `new`.
    fn rekey(&mut self, old: u64, new: u64, holders: Vec<SessionId>) {
        for session in &holders {
            if let Some(s) = self.sessions.get_mut(session) {
                for h in s.held.iter_mut() {
                    if let Held::Relay(id, _) = h
                        && *id == old
                    {
                        *id = new;
                    }
                }
            }
        }
        if let Some(p) = self.pending.get_mut(&new) {
            p.holders.extend(holders);
        }
    }

    /// Takes over the state of a relay that outlived the previous control
    /// process (see the module docs).
    fn adopt(&mut self, now: Instant, state: State, out: &mut Vec<Effect>) {
        self.adopted = true;
        let deadline = now + self.cfg.heartbeat_timeout;
        let mut users = 0usize;
        for e in state.users {
            // A session of this process already allowed it again, after the
            // snapshot: that entry is the current one.
            if self.users.contains_key(&e.user) || self.detached.contains_key(&e.user) {
                continue;
            }
            if let Some(v) = e.voice {
                self.voice.insert(e.user, v);
            }
            self.grace_deadlines.push_back((deadline, e.user));
            self.detached.insert(e.user, e);
            users += 1;
        }
        let mut calls = 0usize;
        for c in state.calls {
            let known = |u: UserId| self.users.contains_key(&u) || self.detached.contains_key(&u);
            let free = |u: UserId| !self.in_call.contains_key(&u);
            if c.a != c.b && known(c.a) && known(c.b) && free(c.a) && free(c.b) {
                let key = self.next_call;
                self.next_call += 1;
                self.calls.insert(
                    key,
                    Call {
                        caller: c.a,
                        callee: c.b,
                        state: CallState::Active,
                    },
                );
                self.in_call.insert(c.a, key);
                self.in_call.insert(c.b, key);
                calls += 1;
            } else {
                tracing::warn!(a = %c.a, b = %c.b, "relay call not adoptable: removing it");
                self.request(RelayCommand::RemoveCall(c), PendingKind::Other, out);
            }
        }
        tracing::info!(
            users,
            calls,
            grace_secs = self.cfg.heartbeat_timeout.as_secs_f64(),
            "adopted the relay's state; users not back by the deadline are revoked"
        );
    }

    /// Revokes detached users whose grace period ended.
    pub(super) fn grace_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let mut expired = Vec::new();
        while let Some(&(deadline, user)) = self.grace_deadlines.front() {
            if deadline > now {
                break;
            }
            self.grace_deadlines.pop_front();
            if self.detached.remove(&user).is_some() {
                self.end_call_of(user, out);
                self.revoke(user, out);
                expired.push(user);
            }
        }
        if !expired.is_empty() {
            tracing::info!(users = expired.len(), "adopted users did not come back");
            out.push(Effect::Store(StoreJob::Offline { users: expired }));
        }
    }
}
