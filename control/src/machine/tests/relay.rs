//! Scenario tests of the relay side of the machine (`machine/relay.rs`):
//! adoption, grace, resync, held replies, admission by bandwidth.

use super::*;

fn voice(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

fn entry_with_voice(u: u64, port: u16) -> UserEntry {
    UserEntry {
        voice: Some(voice(1, port)),
        ..entry(u, IP)
    }
}

fn counters(bps_in: u64, bps_out: u64, bps_limit: u64) -> Input {
    Input::Relay(RelayInput::Counters {
        bps_in,
        bps_out,
        bps_limit,
        workers: 0,
    })
}

/// A fresh machine whose first connection brings a snapshot of a relay that
/// outlived the previous control: users 1..=4 (with voice addresses), calls
/// 1-2 and 3-4.
fn adopted() -> H {
    let mut h = H::unlinked(MachineConfig {
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    assert_eq!(
        h.input(Input::Relay(RelayInput::Connected)),
        vec![relay(1, RelayCommand::Snapshot)]
    );
    h.next_id = 2;
    let snapshot = State {
        users: (1..=4)
            .map(|u| entry_with_voice(u, 7000 + u as u16))
            .collect(),
        calls: vec![call_entry(1, 2), call_entry(3, 4)],
    };
    assert_eq!(h.reply(1, Outcome::Snapshot(snapshot)), vec![]);
    assert_eq!(h.m.call_count(), 2);
    assert_eq!(h.m.online_count(), 0, "adopted users have no session");
    h
}

/// Session `s` authenticates as `u`; the AllowUser carries the voice address
/// the snapshot had (same IP), and the relay acknowledges it.
fn reattach(h: &mut H, s: u64, u: u64) {
    h.connect(s);
    h.line(s, &format!("AUTH tok{u}"));
    let id = h.ids(1);
    assert_eq!(
        h.lookup(s, Some(u)),
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
            relay(
                id,
                RelayCommand::AllowUser(entry_with_voice(u, 7000 + u as u16))
            ),
        ]
    );
    assert_eq!(h.ok(id), vec![]);
    assert_eq!(h.backlog(s, u, vec![]), vec![]);
}

#[test]
fn adopted_users_come_back_into_their_calls() {
    let mut h = adopted();
    reattach(&mut h, 11, 1);
    reattach(&mut h, 13, 3);
    // Back in the call: no new call, and HANGUP works once the relay
    // removed the forwarding. Partner 2 has no session: nothing to send.
    assert_eq!(
        h.line(11, "CALL 5"),
        vec![err(11, ErrorReply::AlreadyInCall)]
    );
    let id = h.ids(1);
    assert_eq!(h.line(11, "HANGUP"), vec![remove(id, 1, 2)]);
    assert_eq!(h.ok(id), vec![send(11, Reply::OkHangup)]);
    // A detached user is offline for callers.
    assert_eq!(h.line(11, "CALL 2"), vec![err(11, ErrorReply::UserOffline)]);
    assert_eq!(h.line(11, "CALL 4"), vec![err(11, ErrorReply::UserOffline)]);
    // New calls work at once.
    h.login(15, 5);
    h.in_call(11, 1, 15, 5);
    h.settled();

    // The grace period (one heartbeat timeout) ends: users 2 and 4 did not
    // come back. 2 is in no call any more; 4's call with 3 is removed and 3
    // hears HANGUP 4 once the relay removed it.
    for _ in 0..2 {
        assert_eq!(h.advance(Duration::from_secs(10)), vec![]);
        for s in [11, 13, 15] {
            h.line(s, "HEARTBEAT");
        }
    }
    let id = h.ids(3);
    assert_eq!(
        h.advance(Duration::from_secs(10)),
        vec![
            revoke(id, 2),
            remove(id + 1, 3, 4),
            revoke(id + 2, 4),
            Effect::Store(StoreJob::Offline {
                users: vec![uid(2), uid(4)]
            }),
        ]
    );
    assert_eq!(h.ok(id), vec![]);
    assert_eq!(h.ok(id + 1), vec![send(13, Reply::Hangup { user: uid(4) })]);
    assert_eq!(h.ok(id + 2), vec![]);
    h.settled();
    assert_eq!(h.m.call_count(), 1, "only the new call 1-5");
    assert_eq!(h.line(13, "HANGUP"), vec![err(13, ErrorReply::NotInCall)]);
    // Nothing more happens later.
    for s in [11, 13, 15] {
        h.line(s, "HEARTBEAT");
    }
    assert_eq!(h.advance(Duration::from_secs(10)), vec![]);
}

#[test]
fn reattached_partner_hears_hangup_from_the_other_reattached_one() {
    let mut h = adopted();
    reattach(&mut h, 11, 1);
    reattach(&mut h, 12, 2);
    let id = h.ids(1);
    assert_eq!(h.line(12, "HANGUP"), vec![remove(id, 1, 2)]);
    assert_eq!(
        h.ok(id),
        vec![
            send(11, Reply::Hangup { user: uid(2) }),
            send(12, Reply::OkHangup)
        ]
    );
    h.settled();
}

#[test]
fn snapshot_calls_control_cannot_adopt_are_removed() {
    let mut h = H::unlinked(MachineConfig::default());
    // User 1 authenticated before the relay was reachable: no request yet.
    h.connect(1);
    h.line(1, "AUTH tok1");
    h.lookup(1, Some(1));
    h.backlog(1, 1, vec![]);
    // On connect: Snapshot first, then what this process already has.
    assert_eq!(
        h.input(Input::Relay(RelayInput::Connected)),
        vec![relay(1, RelayCommand::Snapshot), allow(2, 1)]
    );
    h.next_id = 3;
    let snapshot = State {
        users: vec![entry(1, IP), entry(2, IP)],
        // 2-9: user 9 is not allowed on the relay; 1-2 is adoptable (1 is
        // attached and idle).
        calls: vec![call_entry(2, 9), call_entry(1, 2)],
    };
    assert_eq!(
        h.reply(1, Outcome::Snapshot(snapshot)),
        vec![remove(3, 2, 9)]
    );
    h.next_id = 4;
    assert_eq!(h.m.call_count(), 1);
    assert_eq!(h.ok(2), vec![]);
    assert_eq!(h.ok(3), vec![]);
    let id = h.ids(1);
    assert_eq!(h.line(1, "HANGUP"), vec![remove(id, 1, 2)]);
    assert_eq!(h.ok(id), vec![send(1, Reply::OkHangup)]);
    h.settled();
}

#[test]
fn link_down_releases_held_replies_and_later_sends_at_once() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.in_call(1, 1, 2, 2);
    let id = h.ids(1);
    assert_eq!(h.line(1, "HANGUP"), vec![remove(id, 1, 2)]);
    // The relay goes away before answering: nothing forwards without it.
    assert_eq!(
        h.input(Input::Relay(RelayInput::Disconnected)),
        vec![
            send(2, Reply::Hangup { user: uid(1) }),
            send(1, Reply::OkHangup)
        ]
    );
    // A late reply of the old connection is ignored.
    assert_eq!(h.ok(id), vec![]);
    h.settled();
    // Link down: no requests; START_CALL and HANGUP replies go at once.
    h.ring(1, 1, 2, 2);
    assert_eq!(
        h.line(2, "ACCEPT 1"),
        vec![start_call(1, 2), start_call(2, 1)]
    );
    assert_eq!(
        h.line(2, "HANGUP"),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            send(2, Reply::OkHangup)
        ]
    );
    assert_eq!(
        h.input(Input::Disconnected { session: sid(2) }),
        vec![Effect::Store(StoreJob::Offline {
            users: vec![uid(2)]
        })]
    );
    h.settled();
}

#[test]
fn reconnect_replaces_all_with_voice_addresses() {
    let mut h = H::new();
    for u in 1..=3 {
        h.login(u, u);
    }
    h.in_call(1, 1, 2, 2);
    assert_eq!(h.line(3, "CALL 1"), vec![err(3, ErrorReply::UserBusy)]);
    for (u, port) in [(1, 7001), (2, 7002)] {
        let e = h.input(Input::Relay(RelayInput::VoiceRegistered {
            user: uid(u),
            addr: voice(1, port),
        }));
        assert_eq!(e, vec![]);
    }
    // A voice event for a user control does not know is ignored.
    h.input(Input::Relay(RelayInput::VoiceRegistered {
        user: uid(9),
        addr: voice(9, 9),
    }));
    assert_eq!(h.input(Input::Relay(RelayInput::Disconnected)), vec![]);
    let id = h.ids(1);
    let expected = State {
        users: vec![
            entry_with_voice(1, 7001),
            entry_with_voice(2, 7002),
            entry(3, IP),
        ],
        calls: vec![call_entry(1, 2)],
    };
    assert_eq!(
        h.input(Input::Relay(RelayInput::Connected)),
        vec![relay(id, RelayCommand::ReplaceAll(expected))]
    );
    assert_eq!(h.ok(id), vec![]);
    h.settled();
}

#[test]
fn bandwidth_admission_above_ninety_percent() {
    let mut h = H::new();
    for u in 1..=4 {
        h.login(u, u);
    }
    h.input(counters(91, 10, 100));
    assert_eq!(
        h.line(1, "CALL 2"),
        vec![err(1, ErrorReply::BandwidthExceeded)]
    );
    h.input(counters(10, 91_000_001, 100_000_000));
    assert_eq!(
        h.line(1, "CALL 2"),
        vec![err(1, ErrorReply::BandwidthExceeded)]
    );
    // At exactly 90% a call is still admitted; no limit means no check.
    h.input(counters(90, 90, 100));
    h.ring(1, 1, 2, 2);
    h.input(counters(u64::MAX, u64::MAX, 0));
    h.ring(3, 3, 4, 4);
    // Counters from a link that went down no longer count.
    h.line(1, "HANGUP");
    h.line(3, "HANGUP");
    h.input(counters(99, 99, 100));
    assert_eq!(
        h.line(1, "CALL 2"),
        vec![err(1, ErrorReply::BandwidthExceeded)]
    );
    h.input(Input::Relay(RelayInput::Disconnected));
    h.ring(1, 1, 2, 2);
    // The call limit is checked first.
    let mut h = H::with(MachineConfig {
        max_calls: 1,
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    for u in 1..=4 {
        h.login(u, u);
    }
    h.ring(1, 1, 2, 2);
    h.input(counters(99, 99, 100));
    assert_eq!(h.line(3, "CALL 4"), vec![err(3, ErrorReply::AtCapacity)]);
}

#[test]
fn install_refused_for_unknown_user_allows_both_again() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.ring(1, 1, 2, 2);
    let id = h.ids(4);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![install(id, 1, 2)]);
    let unknown = Outcome::Error {
        code: ErrorCode::UnknownUser,
        message: "user 2 unknown".into(),
    };
    assert_eq!(
        h.reply(id, unknown.clone()),
        vec![allow(id + 1, 1), allow(id + 2, 2), install(id + 3, 1, 2)]
    );
    assert_eq!(h.ok(id + 1), vec![]);
    assert_eq!(h.ok(id + 2), vec![]);
    assert_eq!(h.ok(id + 3), vec![start_call(1, 2), start_call(2, 1)]);
    h.settled();
    // Refused again after the retry (or for another reason): logged, and
    // the call is still reported (control's state is authoritative; the next
    // resync re-installs it).
    let id = h.ids(5);
    assert_eq!(h.line(1, "HANGUP"), vec![remove(id, 1, 2)]);
    h.ok(id);
    h.ring(1, 1, 2, 2);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![install(id + 1, 1, 2)]);
    assert_eq!(
        h.reply(id + 1, unknown.clone()),
        vec![allow(id + 2, 1), allow(id + 3, 2), install(id + 4, 1, 2)]
    );
    h.ok(id + 2);
    h.ok(id + 3);
    assert_eq!(
        h.reply(id + 4, unknown),
        vec![start_call(1, 2), start_call(2, 1)]
    );
    h.settled();
    let id = h.ids(2);
    assert_eq!(h.line(1, "HANGUP"), vec![remove(id, 1, 2)]);
    h.ok(id);
    h.ring(1, 1, 2, 2);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![install(id + 1, 1, 2)]);
    let busy = Outcome::Error {
        code: ErrorCode::Busy,
        message: "busy".into(),
    };
    assert_eq!(
        h.reply(id + 1, busy),
        vec![start_call(1, 2), start_call(2, 1)]
    );
    h.settled();
}

#[test]
fn replies_queue_behind_a_held_start_call() {
    let mut h = H::new();
    h.login(1, 1);
    h.login(2, 2);
    h.ring(1, 1, 2, 2);
    let id = h.ids(2);
    assert_eq!(h.line(2, "ACCEPT 1"), vec![install(id, 1, 2)]);
    // The callee hangs up before the install is acknowledged: its replies
    // keep their order behind START_CALL.
    assert_eq!(
        h.line(2, "HEARTBEAT"),
        vec![Effect::Store(StoreJob::Heartbeat {
            user: uid(2),
            status: None
        })]
    );
    assert_eq!(h.line(2, "HANGUP"), vec![remove(id + 1, 1, 2)]);
    assert_eq!(
        h.ok(id),
        vec![
            start_call(1, 2),
            start_call(2, 1),
            send(2, Reply::OkHeartbeat)
        ]
    );
    assert_eq!(
        h.ok(id + 1),
        vec![
            send(1, Reply::Hangup { user: uid(2) }),
            send(2, Reply::OkHangup)
        ]
    );
    h.settled();
}

#[test]
fn kicked_session_never_revokes_the_new_one() {
    let mut h = H::new();
    h.login(1, 1);
    h.input(Input::Relay(RelayInput::VoiceRegistered {
        user: uid(1),
        addr: voice(1, 7001),
    }));
    h.connect(2);
    h.line(2, "AUTH tok1");
    let id = h.ids(1);
    // Same IP: the voice address stays with the new session's entry.
    assert_eq!(
        h.lookup(2, Some(1)),
        vec![
            send(1, Reply::Kicked),
            Effect::Close { session: sid(1) },
            send(
                2,
                Reply::OkAuth {
                    user: uid(1),
                    username: name(1)
                }
            ),
            Effect::Store(StoreJob::Online {
                session: sid(2),
                user: uid(1)
            }),
            relay(id, RelayCommand::AllowUser(entry_with_voice(1, 7001))),
        ]
    );
    h.ok(id);
    // The old session's disconnect and timeouts touch nothing.
    assert_eq!(h.input(Input::Disconnected { session: sid(1) }), vec![]);
    assert_eq!(h.advance(Duration::from_secs(10)), vec![]);
    assert_eq!(h.m.online_count(), 1);
    h.settled();
}

#[test]
fn unlinked_machine_emits_no_relay_requests() {
    let mut h = H::unlinked(MachineConfig {
        rate_per_sec: 0.0,
        ..MachineConfig::default()
    });
    h.connect(1);
    h.line(1, "AUTH tok1");
    assert!(
        !h.lookup(1, Some(1))
            .iter()
            .any(|e| matches!(e, Effect::Relay { .. }))
    );
    assert_eq!(h.m.pending.len(), 0);
}
