//! Proptest strategies for every wire type, in one place.

use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use whelm_shared::channel::{self, CallEntry, ClientMsg, UserEntry};
use whelm_shared::line::{Command, ErrorReply, MessageJson, Reply, Status, UserId};

/// 1 to 9 base-40 characters: every such callsign fits in 48 bits.
pub(crate) fn callsign() -> impl Strategy<Value = String> {
    "[A-Z0-9/.\\-]{1,9}"
}

pub(crate) fn user_id() -> impl Strategy<Value = UserId> {
    (1..=i64::MAX as u64).prop_map(|v| UserId::new(v).unwrap())
}

/// Text without line breaks (one line on the wire), may contain spaces.
fn one_line() -> impl Strategy<Value = String> {
    "[^\r\n]{0,40}"
}

/// A word: no space, no line break, not empty.
fn word() -> impl Strategy<Value = String> {
    "[^ \r\n]{1,20}"
}

/// A username as `OK AUTH` / `INCOMING` carry it (rest of the line).
fn username() -> impl Strategy<Value = String> {
    "[^\r\n]{0,20}"
}

/// MSG content: one line with at least one non-space character.
fn content() -> impl Strategy<Value = String> {
    ("[^\r\n]{0,30}", "[!-~]", "[^\r\n]{0,30}").prop_map(|(a, b, c)| format!("{a}{b}{c}"))
}

pub(crate) fn command() -> impl Strategy<Value = Command> {
    let status = prop_oneof![
        Just(None),
        Just(Some(Status::Online)),
        Just(Some(Status::Away)),
        Just(Some(Status::Busy)),
    ];
    prop_oneof![
        word().prop_map(|token| Command::Auth { token }),
        status.prop_map(|status| Command::Heartbeat { status }),
        user_id().prop_map(|callee| Command::Call { callee }),
        user_id().prop_map(|caller| Command::Accept { caller }),
        user_id().prop_map(|caller| Command::Reject { caller }),
        Just(Command::Hangup),
        (user_id(), content()).prop_map(|(recipient, content)| Command::Msg { recipient, content }),
    ]
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        Just(ErrorReply::NotAuthenticated),
        Just(ErrorReply::InvalidToken),
        Just(ErrorReply::UserOffline),
        Just(ErrorReply::UserBusy),
        Just(ErrorReply::AtCapacity),
        Just(ErrorReply::BandwidthExceeded),
        Just(ErrorReply::InvalidMsgFormat),
        Just(ErrorReply::EmptyMessage),
        Just(ErrorReply::FailedToSend),
        Just(ErrorReply::InvalidUserId),
        Just(ErrorReply::NoSuchCall),
        Just(ErrorReply::RateLimited),
        one_line().prop_map(ErrorReply::UnknownCommand),
    ]
}

pub(crate) fn reply() -> impl Strategy<Value = Reply> {
    let msg = (
        1..=i64::MAX as u64,
        1..=i64::MAX as u64,
        any::<String>(),
        one_line(),
    )
        .prop_map(|(sender_id, recipient_id, content, timestamp)| {
            Reply::Msg(MessageJson {
                sender_id,
                recipient_id,
                content,
                timestamp,
            })
        });
    prop_oneof![
        (user_id(), username()).prop_map(|(user, username)| Reply::OkAuth { user, username }),
        Just(Reply::OkHeartbeat),
        user_id().prop_map(|callee| Reply::OkCalling { callee }),
        (user_id(), username()).prop_map(|(caller, username)| Reply::Incoming { caller, username }),
        (user_id(), username())
            .prop_map(|(partner, username)| Reply::StartCall { partner, username }),
        user_id().prop_map(|callee| Reply::Rejected { callee }),
        Just(Reply::OkRejected),
        user_id().prop_map(|user| Reply::Hangup { user }),
        Just(Reply::OkHangup),
        Just(Reply::OkMsg),
        msg,
        Just(Reply::Kicked),
        error_reply().prop_map(Reply::Error),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn user_entry() -> impl Strategy<Value = UserEntry> {
    (
        user_id(),
        ip(),
        proptest::option::of(word()),
        proptest::option::of((ip(), any::<u16>())),
    )
        .prop_map(|(user, ip, token, voice)| UserEntry {
            user,
            ip,
            token,
            voice: voice.map(|(i, p)| SocketAddr::new(i, p)),
        })
}

fn call() -> impl Strategy<Value = CallEntry> {
    (user_id(), user_id()).prop_map(|(a, b)| CallEntry { a, b })
}

/// Every request a client can send on the command channel.
pub(crate) fn channel_request() -> impl Strategy<Value = ClientMsg> {
    let state = (
        proptest::collection::vec(user_entry(), 0..4),
        proptest::collection::vec(call(), 0..4),
    )
        .prop_map(|(users, calls)| channel::State { users, calls });
    let limits = (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(bandwidth_mbps, station_rate)| channel::Limits {
            bandwidth_mbps,
            station_rate,
        });
    let command = prop_oneof![
        user_entry().prop_map(channel::Command::AllowUser),
        user_id().prop_map(|user| channel::Command::RevokeUser { user }),
        call().prop_map(channel::Command::InstallCall),
        call().prop_map(channel::Command::RemoveCall),
        limits.prop_map(channel::Command::SetLimits),
        Just(channel::Command::Snapshot),
        state.prop_map(channel::Command::ReplaceAll),
        Just(channel::Command::Counters),
        Just(channel::Command::Stations),
    ];
    (any::<u64>(), command).prop_map(|(id, command)| ClientMsg::Request { id, command })
}
