//! The authoritative Whelm voice state, owned by the coordinator (its only
//! writer): allowed users (IP, token, registered voice address) and calls.
//! Sans-IO: commands and HELLOs in, worker [`Update`]s (or a typed refusal)
//! out, so every rule here is tested without sockets.
//!
//! Every command is validated completely before anything changes (STYLE.md
//! practice 5): an `Err` means the state is untouched and no update is
//! produced.
//!
//! The worker tables are kept equal to [`VoiceState::desired`] of every
//! registered address: a route to the partner's registered address in both
//! directions (STYLE.md practice 4), or a hold with the reason datagrams are
//! dropped. `installed` mirrors what was broadcast, so each change emits only
//! the difference.
//!
//! Addresses are kept in the workers' socket family (v4-mapped IPv6 on a
//! dual-stack relay) and shown to control in canonical form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use whelm_shared::channel::{CallEntry, ErrorCode, State, UserEntry};
use whelm_shared::line::UserId;

use crate::core::{HoldReason, VoiceSlot};
use crate::net::{display_addr, for_socket};
use crate::update::Update;

/// Most users the relay accepts (a bound on the tables; [`ErrorCode::Full`]
/// beyond it).
pub const MAX_USERS: usize = 200_000;

/// A refused command: nothing was applied.
pub type Refusal = (ErrorCode, String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct UserRec {
    ip: IpAddr,
    token: Option<String>,
    voice: Option<SocketAddr>,
}

/// What a HELLO did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloResult {
    /// Not allowed: unknown user, wrong IP and no (or a wrong) token.
    Denied,
    /// Already registered at this address; nothing changes.
    Unchanged,
    /// Registered (or moved) the user's voice address.
    Registered {
        /// The address, canonical form (for the event to control).
        addr: SocketAddr,
        /// Table updates for every worker.
        updates: Vec<Update>,
    },
}

/// Users, calls and registered addresses.
#[derive(Debug, Default)]
pub struct VoiceState {
    /// The relay's sockets are IPv6 (v4 peers appear v4-mapped).
    v6: bool,
    users: BTreeMap<UserId, UserRec>,
    /// Both directions of every call.
    partner: HashMap<UserId, UserId>,
    /// Calls as installed (caller -> callee), for snapshots.
    calls: BTreeMap<UserId, UserId>,
    /// Registered address -> its user.
    owner: HashMap<SocketAddr, UserId>,
    /// What the workers hold for each registered address.
    installed: HashMap<SocketAddr, VoiceSlot>,
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Compares without an early exit on the first differing byte.
fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl VoiceState {
    /// Empty state for sockets of the given family.
    pub fn new(v6: bool) -> VoiceState {
        VoiceState {
            v6,
            ..VoiceState::default()
        }
    }

    /// Number of allowed users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    fn wire(&self, a: SocketAddr) -> SocketAddr {
        for_socket(display_addr(a), self.v6)
    }

    /// The registered addresses of `users` and of their partners.
    fn addrs_of(&self, users: &[UserId], out: &mut BTreeSet<SocketAddr>) {
        for u in users {
            for x in [Some(*u), self.partner.get(u).copied()]
                .into_iter()
                .flatten()
            {
                if let Some(v) = self.users.get(&x).and_then(|r| r.voice) {
                    out.insert(v);
                }
            }
        }
    }

    /// What the workers should hold for a registered address.
    fn desired(&self, addr: SocketAddr) -> Option<VoiceSlot> {
        let u = self.owner.get(&addr)?;
        Some(match self.partner.get(u) {
            None => VoiceSlot::Hold(HoldReason::NotInCall),
            Some(p) => match self.users.get(p).and_then(|r| r.voice) {
                Some(d) => VoiceSlot::Route(d),
                None => VoiceSlot::Hold(HoldReason::PartnerNotRegistered),
            },
        })
    }

    /// Brings `installed` (and so the workers) in line for `addrs`.
    fn reconcile(&mut self, addrs: BTreeSet<SocketAddr>) -> Vec<Update> {
        let mut out = Vec::new();
        for a in addrs {
            let want = self.desired(a);
            if self.installed.get(&a).copied() == want {
                continue;
            }
            match want {
                None => {
                    self.installed.remove(&a);
                    out.push(Update::RemoveVoiceRoute { src: a });
                }
                Some(slot) => {
                    self.installed.insert(a, slot);
                    out.push(match slot {
                        VoiceSlot::Route(dest) => Update::VoiceRoute { src: a, dest },
                        VoiceSlot::Hold(reason) => Update::VoiceHold { src: a, reason },
                    });
                }
            }
        }
        out
    }

    /// Runs `change` and returns the updates it makes necessary for the
    /// registered addresses of `users` and their partners, before and after.
    fn changing(&mut self, users: &[UserId], change: impl FnOnce(&mut Self)) -> Vec<Update> {
        let mut addrs = BTreeSet::new();
        self.addrs_of(users, &mut addrs);
        change(self);
        self.addrs_of(users, &mut addrs);
        self.reconcile(addrs)
    }

    /// Sets (or clears) a user's voice address, keeping `owner` exact. The
    /// user must exist. Another user holding the same address loses it.
    fn set_voice(&mut self, u: UserId, voice: Option<SocketAddr>) {
        let Some(old) = self.users.get(&u).map(|r| r.voice) else {
            return;
        };
        if let Some(o) = old
            && self.owner.get(&o) == Some(&u)
        {
            self.owner.remove(&o);
        }
        if let Some(v) = voice
            && let Some(prev) = self.owner.insert(v, u)
            && prev != u
            && let Some(r) = self.users.get_mut(&prev)
        {
            r.voice = None;
        }
        if let Some(r) = self.users.get_mut(&u) {
            r.voice = voice;
        }
    }

    fn check_voice_free(&self, u: UserId, voice: Option<SocketAddr>) -> Result<(), Refusal> {
        if let Some(v) = voice
            && let Some(o) = self.owner.get(&self.wire(v))
            && *o != u
        {
            return Err((
                ErrorCode::Invalid,
                format!("voice address {v} is registered for user {o}"),
            ));
        }
        Ok(())
    }

    /// `AllowUser`: adds or replaces a user. If the IP changed, the
    /// registered voice address is dropped (unless the entry names one).
    pub fn allow(&mut self, e: &UserEntry) -> Result<Vec<Update>, Refusal> {
        let exists = self.users.contains_key(&e.user);
        if !exists && self.users.len() >= MAX_USERS {
            return Err((ErrorCode::Full, format!("more than {MAX_USERS} users")));
        }
        self.check_voice_free(e.user, e.voice)?;
        let voice = match (e.voice, self.users.get(&e.user)) {
            (Some(v), _) => Some(self.wire(v)),
            (None, Some(old)) if same_ip(old.ip, e.ip) => old.voice,
            (None, _) => None,
        };
        let rec = UserRec {
            ip: e.ip.to_canonical(),
            token: e.token.clone(),
            voice: None,
        };
        let u = e.user;
        Ok(self.changing(&[u], |s| {
            let old_voice = s.users.get(&u).and_then(|r| r.voice);
            s.users.insert(
                u,
                UserRec {
                    voice: old_voice,
                    ..rec
                },
            );
            s.set_voice(u, voice);
        }))
    }

    /// `RevokeUser`: forgets the user, its address and its call.
    pub fn revoke(&mut self, u: UserId) -> Result<Vec<Update>, Refusal> {
        if !self.users.contains_key(&u) {
            return Err((ErrorCode::UnknownUser, format!("unknown user {u}")));
        }
        let partner = self.partner.get(&u).copied();
        let mut users = vec![u];
        users.extend(partner);
        Ok(self.changing(&users, |s| {
            s.set_voice(u, None);
            s.users.remove(&u);
            if let Some(p) = partner {
                s.unlink(u, p);
            }
        }))
    }

    fn unlink(&mut self, a: UserId, b: UserId) {
        self.partner.remove(&a);
        self.partner.remove(&b);
        if self.calls.get(&a) == Some(&b) {
            self.calls.remove(&a);
        } else {
            self.calls.remove(&b);
        }
    }

    /// `InstallCall`: both users allowed, distinct, in no other call.
    /// Installing the same call again changes nothing.
    pub fn install_call(&mut self, c: CallEntry) -> Result<Vec<Update>, Refusal> {
        let (a, b) = (c.a, c.b);
        if a == b {
            return Err((ErrorCode::Invalid, format!("user {a} cannot call itself")));
        }
        for u in [a, b] {
            if !self.users.contains_key(&u) {
                return Err((ErrorCode::UnknownUser, format!("unknown user {u}")));
            }
        }
        if self.partner.get(&a) == Some(&b) {
            return Ok(Vec::new());
        }
        for u in [a, b] {
            if let Some(p) = self.partner.get(&u) {
                return Err((
                    ErrorCode::Busy,
                    format!("user {u} is already in a call with user {p}"),
                ));
            }
        }
        Ok(self.changing(&[a, b], |s| {
            s.partner.insert(a, b);
            s.partner.insert(b, a);
            s.calls.insert(a, b);
        }))
    }

    /// `RemoveCall`: the call between `a` and `b` (either order) must exist.
    pub fn remove_call(&mut self, c: CallEntry) -> Result<Vec<Update>, Refusal> {
        let (a, b) = (c.a, c.b);
        if self.partner.get(&a) != Some(&b) {
            return Err((
                ErrorCode::Invalid,
                format!("no call between user {a} and user {b}"),
            ));
        }
        Ok(self.changing(&[a, b], |s| s.unlink(a, b)))
    }

    /// `ReplaceAll`: validates the whole state, then replaces users and
    /// calls; voice addresses in the entries are installed as registered.
    pub fn replace_all(&mut self, st: &State) -> Result<Vec<Update>, Refusal> {
        if st.users.len() > MAX_USERS {
            return Err((ErrorCode::Full, format!("more than {MAX_USERS} users")));
        }
        let mut users = BTreeMap::new();
        let mut owner = HashMap::new();
        for e in &st.users {
            let voice = e.voice.map(|v| self.wire(v));
            if users.contains_key(&e.user) {
                return Err((ErrorCode::Invalid, format!("user {} listed twice", e.user)));
            }
            if let Some(v) = voice
                && let Some(o) = owner.insert(v, e.user)
            {
                return Err((
                    ErrorCode::Invalid,
                    format!(
                        "voice address {} given for users {o} and {}",
                        display_addr(v),
                        e.user
                    ),
                ));
            }
            users.insert(
                e.user,
                UserRec {
                    ip: e.ip.to_canonical(),
                    token: e.token.clone(),
                    voice,
                },
            );
        }
        let mut partner = HashMap::new();
        let mut calls = BTreeMap::new();
        for c in &st.calls {
            if c.a == c.b {
                return Err((
                    ErrorCode::Invalid,
                    format!("user {} cannot call itself", c.a),
                ));
            }
            for u in [c.a, c.b] {
                if !users.contains_key(&u) {
                    return Err((
                        ErrorCode::UnknownUser,
                        format!("call {}-{} names unknown user {u}", c.a, c.b),
                    ));
                }
                if partner.contains_key(&u) {
                    return Err((ErrorCode::Busy, format!("user {u} is in two calls")));
                }
            }
            partner.insert(c.a, c.b);
            partner.insert(c.b, c.a);
            calls.insert(c.a, c.b);
        }
        let mut addrs: BTreeSet<SocketAddr> = self.installed.keys().copied().collect();
        addrs.extend(owner.keys().copied());
        self.users = users;
        self.owner = owner;
        self.partner = partner;
        self.calls = calls;
        Ok(self.reconcile(addrs))
    }

    /// Everything installed, addresses in canonical form.
    pub fn snapshot(&self) -> State {
        State {
            users: self
                .users
                .iter()
                .map(|(u, r)| UserEntry {
                    user: *u,
                    ip: r.ip,
                    token: r.token.clone(),
                    voice: r.voice.map(display_addr),
                })
                .collect(),
            calls: self
                .calls
                .iter()
                .map(|(a, b)| CallEntry { a: *a, b: *b })
                .collect(),
        }
    }

    /// A HELLO from `src`: allowed when the source IP is the user's allowed
    /// IP, or the token equals the user's session token (then from any IP).
    pub fn hello(&mut self, u: UserId, token: Option<&str>, src: SocketAddr) -> HelloResult {
        let Some(r) = self.users.get(&u) else {
            return HelloResult::Denied;
        };
        let by_ip = same_ip(r.ip, src.ip());
        let by_token = match (token, r.token.as_deref()) {
            (Some(t), Some(want)) => token_eq(t, want),
            _ => false,
        };
        // A wrong token is refused even from the right IP: the client sent
        // a credential and it is not the session's.
        let wrong_token = token.is_some() && r.token.is_some() && !by_token;
        let allowed = by_token || (by_ip && !wrong_token);
        if !allowed {
            return HelloResult::Denied;
        }
        if r.voice == Some(src) {
            return HelloResult::Unchanged;
        }
        let prev_owner = self.owner.get(&src).copied();
        let mut users = vec![u];
        users.extend(prev_owner);
        let updates = self.changing(&users, |s| s.set_voice(u, Some(src)));
        HelloResult::Registered {
            addr: display_addr(src),
            updates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(v: u64) -> UserId {
        UserId::new(v).unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn entry(u: u64, ip: &str) -> UserEntry {
        UserEntry {
            user: uid(u),
            ip: ip.parse().unwrap(),
            token: Some(format!("tok{u}")),
            voice: None,
        }
    }
    fn call(a: u64, b: u64) -> CallEntry {
        CallEntry {
            a: uid(a),
            b: uid(b),
        }
    }
    fn registered(r: HelloResult) -> Vec<Update> {
        match r {
            HelloResult::Registered { updates, .. } => updates,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn call_lifecycle_installs_both_directions() {
        let mut s = VoiceState::new(false);
        let (a, b) = (sa("127.0.0.2:4000"), sa("127.0.0.3:5000"));
        assert!(s.allow(&entry(1, "127.0.0.2")).unwrap().is_empty());
        assert!(s.allow(&entry(2, "127.0.0.3")).unwrap().is_empty());
        assert!(s.install_call(call(1, 2)).unwrap().is_empty());
        assert_eq!(
            registered(s.hello(uid(1), None, a)),
            vec![Update::VoiceHold {
                src: a,
                reason: HoldReason::PartnerNotRegistered
            }]
        );
        assert_eq!(
            registered(s.hello(uid(2), None, b)),
            vec![
                Update::VoiceRoute { src: a, dest: b },
                Update::VoiceRoute { src: b, dest: a }
            ]
        );
        assert_eq!(s.hello(uid(2), None, b), HelloResult::Unchanged);
        // Denied: another IP without token, a wrong token, an unknown user.
        assert_eq!(
            s.hello(uid(1), None, sa("127.0.0.4:4000")),
            HelloResult::Denied
        );
        assert_eq!(s.hello(uid(1), Some("nope"), a), HelloResult::Denied);
        assert_eq!(s.hello(uid(9), None, a), HelloResult::Denied);
        assert_eq!(
            s.install_call(call(2, 1)).unwrap(),
            vec![],
            "same call again"
        );
        assert_eq!(
            s.remove_call(call(2, 1)).unwrap(),
            vec![
                Update::VoiceHold {
                    src: a,
                    reason: HoldReason::NotInCall
                },
                Update::VoiceHold {
                    src: b,
                    reason: HoldReason::NotInCall
                }
            ]
        );
        assert_eq!(s.remove_call(call(1, 2)).unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(
            s.revoke(uid(1)).unwrap(),
            vec![Update::RemoveVoiceRoute { src: a }]
        );
        assert_eq!(s.revoke(uid(1)).unwrap_err().0, ErrorCode::UnknownUser);
    }

    #[test]
    fn token_hello_and_moves() {
        let mut s = VoiceState::new(false);
        s.allow(&entry(1, "127.0.0.2")).unwrap();
        s.allow(&entry(2, "127.0.0.3")).unwrap();
        s.install_call(call(1, 2)).unwrap();
        let (a, b) = (sa("127.0.0.2:4000"), sa("127.0.0.3:5000"));
        s.hello(uid(1), None, a);
        s.hello(uid(2), None, b);
        // The right token from anywhere moves user 1.
        let a2 = sa("10.9.9.9:7000");
        assert_eq!(
            registered(s.hello(uid(1), Some("tok1"), a2)),
            vec![
                Update::VoiceRoute { src: a2, dest: b },
                Update::RemoveVoiceRoute { src: a },
                Update::VoiceRoute { src: b, dest: a2 },
            ]
        );
        let snap = s.snapshot();
        assert_eq!(snap.users[0].voice, Some(a2));
        assert_eq!(snap.calls, vec![call(1, 2)]);
        // Re-allowing user 2 from a new IP drops its address.
        let e2 = entry(2, "127.0.0.9");
        assert_eq!(
            s.allow(&e2).unwrap(),
            vec![
                Update::VoiceHold {
                    src: a2,
                    reason: HoldReason::PartnerNotRegistered
                },
                Update::RemoveVoiceRoute { src: b },
            ]
        );
        // Same IP keeps it.
        s.hello(uid(2), None, sa("127.0.0.9:1"));
        assert!(s.allow(&e2).unwrap().is_empty());
    }

    #[test]
    fn validation_changes_nothing() {
        let mut s = VoiceState::new(false);
        s.allow(&entry(1, "127.0.0.2")).unwrap();
        s.allow(&entry(2, "127.0.0.3")).unwrap();
        s.allow(&entry(3, "127.0.0.4")).unwrap();
        assert_eq!(
            s.install_call(call(1, 1)).unwrap_err().0,
            ErrorCode::Invalid
        );
        assert_eq!(
            s.install_call(call(1, 7)).unwrap_err().0,
            ErrorCode::UnknownUser
        );
        s.install_call(call(1, 2)).unwrap();
        assert_eq!(s.install_call(call(3, 2)).unwrap_err().0, ErrorCode::Busy);
        let before = s.snapshot();
        let mut bad = before.clone();
        bad.calls.push(call(3, 1));
        assert_eq!(s.replace_all(&bad).unwrap_err().0, ErrorCode::Busy);
        let mut bad = before.clone();
        bad.users.push(entry(1, "127.0.0.5"));
        assert_eq!(s.replace_all(&bad).unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(s.snapshot(), before);
    }

    #[test]
    fn replace_all_installs_registered_addresses() {
        let mut s = VoiceState::new(true);
        let (a, b) = (sa("127.0.0.2:4000"), sa("127.0.0.3:5000"));
        let mut e1 = entry(1, "127.0.0.2");
        e1.voice = Some(a);
        let mut e2 = entry(2, "127.0.0.3");
        e2.voice = Some(b);
        let st = State {
            users: vec![e1, e2, entry(3, "::1")],
            calls: vec![call(1, 2)],
        };
        let mut ups = s.replace_all(&st).unwrap();
        ups.sort_by_key(|u| format!("{u:?}"));
        let (wa, wb) = (for_socket(a, true), for_socket(b, true));
        assert_eq!(
            ups,
            vec![
                Update::VoiceRoute { src: wa, dest: wb },
                Update::VoiceRoute { src: wb, dest: wa },
            ]
        );
        assert_eq!(s.snapshot(), st, "canonical addresses in the snapshot");
        // A v4 HELLO arrives v4-mapped on a dual-stack socket: same address.
        assert_eq!(s.hello(uid(1), None, wa), HelloResult::Unchanged);
        // Replacing with nothing removes everything.
        let mut ups = s.replace_all(&State::default()).unwrap();
        ups.sort_by_key(|u| format!("{u:?}"));
        assert_eq!(
            ups,
            vec![
                Update::RemoveVoiceRoute { src: wa },
                Update::RemoveVoiceRoute { src: wb },
            ]
        );
        assert_eq!(s.user_count(), 0);
    }
}
