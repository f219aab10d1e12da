//! The command channel between `whelm-control` (or an operator's
//! `whelm-relay ctl`) and `whelm-relay` (ARCHITECTURE.md, "command channel").
//!
//! Transport: a Unix stream socket owned by the relay; each message is one
//! line of JSON ended by `\n`, so an operator can read and type it with
//! `socat - UNIX-CONNECT:/run/whelm/relay.sock`. Nothing here depends on the
//! transport, so the same messages can later run over TCP.
//!
//! Conversation:
//! 1. The client sends [`ClientMsg::Hello`] with [`PROTOCOL_VERSION`] and the
//!    sizes it was built with; the relay answers [`RelayMsg::Welcome`] or
//!    [`RelayMsg::Refused`] (and closes) when the versions differ.
//! 2. The client sends [`ClientMsg::Request`]s, each with an id; the relay
//!    answers every one with exactly one [`RelayMsg::Reply`] carrying the same
//!    id. A command is validated completely before anything changes: an
//!    [`Outcome::Error`] means nothing was applied.
//! 3. The relay sends [`RelayMsg::Event`]s unasked: voice addresses learnt
//!    from HELLO, OVP stations seen and timed out, counters every second.
//!
//! After every (re)connect, control sends [`Command::ReplaceAll`] with its
//! full state, or first asks for a [`Command::Snapshot`] and adopts it (when
//! control restarted and the relay kept running).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::line::UserId;

/// Version of the messages below. A relay refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line either side accepts (a full state of many thousands of users
/// fits). A longer line is an error and the reader skips to the next `\n`.
pub const MAX_LINE_LEN: usize = 16 * 1024 * 1024;

/// Who is connecting, for the relay's log and for what it allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `whelm-control`: installs state, receives events.
    Control,
    /// An operator's `whelm-relay ctl`: reads state and counters, no events.
    Operator,
}

/// Messages to the relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message of a connection.
    Hello {
        /// Must equal the relay's [`PROTOCOL_VERSION`].
        version: u32,
        /// Who connects.
        role: Role,
        /// Free text for logs, e.g. `whelm-control 0.1.0 pid 1234`.
        agent: String,
    },
    /// A command; answered by exactly one [`RelayMsg::Reply`] with this id.
    Request {
        /// Chosen by the client; echoed in the reply.
        id: u64,
        /// What to do.
        command: Command,
    },
}

/// What control (or an operator) asks of the relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// User `user` authenticated from `ip`: accept `HELLO <user>` from that IP
    /// (and `HELLO <user> <token>` when `token` is set). Replaces an earlier
    /// entry of the same user, dropping its registered voice address if the
    /// IP changed.
    AllowUser(UserEntry),
    /// The user logged out, was kicked or timed out: forget the user, its
    /// voice address and any call it is in.
    RevokeUser {
        /// The user.
        user: UserId,
    },
    /// Forward voice between `a` and `b` (both must be allowed users, and in
    /// no other call).
    InstallCall(CallEntry),
    /// Stop forwarding between `a` and `b`. The reply comes after every
    /// worker has applied it.
    RemoveCall(CallEntry),
    /// Change limits; fields left `None` keep their value.
    SetLimits(Limits),
    /// Answered with [`Outcome::Snapshot`]: users, voice addresses, calls.
    Snapshot,
    /// Replace every user and call with `state` (sent after a reconnect).
    /// Voice addresses in it are installed as registered, so calls resume
    /// without new HELLOs after a relay restart.
    ReplaceAll(State),
    /// Answered with [`Outcome::Counters`].
    Counters,
    /// Answered with [`Outcome::Stations`]: the OVP conference registry.
    Stations,
    /// Re-read the relay's configuration file and apply what changes without
    /// a restart (limits, rate limits, allow/deny lists, log level, stats
    /// interval); calls and stations are untouched. Allowed to operators
    /// (`whelm-relay ctl reload`). Answered with [`Outcome::Reloaded`], or an
    /// [`Outcome::Error`] when the file has an error (nothing applied).
    Reload,
}

/// One allowed user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user.
    pub user: UserId,
    /// The IP the user's control session comes from; HELLO must come from it.
    pub ip: IpAddr,
    /// The session token, if `HELLO <id> <token>` is to be accepted from any IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The registered voice address, once the relay has seen a valid HELLO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<SocketAddr>,
}

/// One call: two users whose voice is forwarded to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallEntry {
    /// One party (the caller).
    pub a: UserId,
    /// The other party.
    pub b: UserId,
}

/// Limits control sets on the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bandwidth limit each way in Mbit/s (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u64>,
    /// OVP frames per second per station before drops (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station_rate: Option<u32>,
}

/// The users and calls the relay forwards for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Allowed users, with voice addresses where registered.
    pub users: Vec<UserEntry>,
    /// Active calls.
    pub calls: Vec<CallEntry>,
}

/// Messages from the relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMsg {
    /// The handshake succeeded.
    Welcome {
        /// The relay's [`PROTOCOL_VERSION`].
        version: u32,
        /// Free text: relay version, pid.
        agent: String,
    },
    /// The handshake failed; the relay closes the connection.
    Refused {
        /// Why, for the operator (e.g. the two versions).
        reason: String,
    },
    /// The answer to the request with this id.
    Reply {
        /// The request's id.
        id: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// Something the relay learnt.
    Event(Event),
}

/// The answer to one [`Command`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied on every worker.
    Ok,
    /// Nothing was applied.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// For the operator.
        message: String,
    },
    /// The answer to [`Command::Snapshot`].
    Snapshot(State),
    /// The answer to [`Command::Counters`].
    Counters(Counters),
    /// The answer to [`Command::Stations`].
    Stations {
        /// Every station in the registry.
        stations: Vec<StationInfo>,
    },
    /// The answer to [`Command::Reload`]: the configuration was re-read and
    /// applied on every worker.
    Reloaded {
        /// Keys applied, as `key: old -> new`.
        changed: Vec<String>,
        /// Keys that changed in the file but need a restart (kept at their
        /// running values), as `key: running -> file`.
        #[serde(default)]
        restart_needed: Vec<String>,
    },
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a message of this version.
    Malformed,
    /// A request before the handshake, or a second hello.
    Protocol,
    /// The command names a user the relay does not know.
    UnknownUser,
    /// A party is already in another call.
    Busy,
    /// A value is out of range (a user calling itself, ...).
    Invalid,
    /// An operator connection sent a command only control may send.
    NotAllowed,
    /// A limit of the relay's tables was reached.
    Full,
}

/// Something the relay tells control without being asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A valid HELLO registered this voice address for the user.
    VoiceRegistered {
        /// The user.
        user: UserId,
        /// Where its voice comes from and goes to.
        addr: SocketAddr,
    },
    /// An OVP station was seen for the first time, or at a new address.
    StationSeen {
        /// Callsign text.
        callsign: String,
        /// Source address of its frames.
        addr: SocketAddr,
    },
    /// An OVP station was silent for the timeout and was dropped.
    StationTimedOut {
        /// Callsign text.
        callsign: String,
    },
    /// Sent every second.
    Counters(Counters),
}

/// Totals over all workers, and bandwidth in use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per worker, in worker order.
    pub workers: Vec<WorkerCounters>,
    /// Bits per second received over the last second (all workers).
    pub bps_in: u64,
    /// Bits per second sent over the last second (all workers).
    pub bps_out: u64,
    /// The bandwidth limit each way in bits per second (0 = none).
    pub bps_limit: u64,
    /// Active calls installed.
    pub calls: u64,
    /// OVP stations in the registry.
    pub stations: u64,
}

/// One worker's counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Worker index.
    pub worker: u32,
    /// CPU the worker is pinned to, if pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// `uring` or `mmsg`.
    pub engine: String,
    /// Datagrams received.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Drops by reason (`bad_token`, `unknown_source`, `rate_limited`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// One OVP station as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationInfo {
    /// Callsign text.
    pub callsign: String,
    /// Where its frames come from.
    pub addr: SocketAddr,
    /// Seconds since its last frame.
    pub last_seen_secs: u64,
    /// Frames received from it.
    pub frames: u64,
}

/// Why a line is not a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_LINE_LEN`]; the reader skipped to the next `\n`.
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    /// Not a JSON message of this version.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// One message as one line with its `\n`.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these types cannot fail: no maps with non-string keys,
    // no floats, no custom serialisers.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Parses one line (with or without its `\n`).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, DecodeError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_LINE_LEN {
        return Err(DecodeError::TooLong);
    }
    Ok(serde_json::from_slice(line)?)
}

/// Splits a byte stream into lines, bounded by [`MAX_LINE_LEN`] (or a
/// smaller limit). Feed it what a socket read returned; take whole lines out.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already scanned for `\n`.
    scanned: usize,
    /// Discarding an over-long line up to its `\n`.
    skipping: bool,
    limit: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader::with_limit(MAX_LINE_LEN)
    }
}

impl LineReader {
    /// A reader with a line limit of `limit` bytes.
    pub fn with_limit(limit: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            scanned: 0,
            skipping: false,
            limit,
        }
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line without its `\n`; `Some(Err(TooLong))` once
    /// for each over-long line (whose bytes are dropped); `None` when no
    /// complete line is buffered.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, DecodeError>> {
        loop {
            match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    let end = self.scanned + pos;
                    let line: Vec<u8> = self.buf.drain(..=end).take(end).collect();
                    self.scanned = 0;
                    if std::mem::take(&mut self.skipping) {
                        continue;
                    }
                    if line.len() > self.limit {
                        return Some(Err(DecodeError::TooLong));
                    }
                    return Some(Ok(line));
                }
                None => {
                    if self.buf.len() > self.limit {
                        self.buf.clear();
                        self.scanned = 0;
                        if !self.skipping {
                            self.skipping = true;
                            return Some(Err(DecodeError::TooLong));
                        }
                    } else {
                        self.scanned = self.buf.len();
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(v: u64) -> UserId {
        UserId::new(v).unwrap()
    }

    #[test]
    fn wire_form_is_readable_json_lines() {
        let hello = ClientMsg::Hello {
            version: 1,
            role: Role::Control,
            agent: "t".into(),
        };
        assert_eq!(
            encode(&hello),
            b"{\"type\":\"hello\",\"version\":1,\"role\":\"control\",\"agent\":\"t\"}\n"
        );
        let req = ClientMsg::Request {
            id: 7,
            command: Command::AllowUser(UserEntry {
                user: uid(1),
                ip: "127.0.0.2".parse().unwrap(),
                token: None,
                voice: None,
            }),
        };
        assert_eq!(
            encode(&req),
            b"{\"type\":\"request\",\"id\":7,\"command\":{\"op\":\"allow_user\",\"user\":1,\"ip\":\"127.0.0.2\"}}\n"
        );
        let typed = br#"{"type":"request","id":3,"command":{"op":"install_call","a":1,"b":2}}"#;
        assert_eq!(
            decode::<ClientMsg>(typed).unwrap(),
            ClientMsg::Request {
                id: 3,
                command: Command::InstallCall(CallEntry {
                    a: uid(1),
                    b: uid(2)
                })
            }
        );
        let ok = RelayMsg::Reply {
            id: 3,
            outcome: Outcome::Ok,
        };
        assert_eq!(
            encode(&ok),
            b"{\"type\":\"reply\",\"id\":3,\"outcome\":{\"result\":\"ok\"}}\n"
        );
        let ev = RelayMsg::Event(Event::VoiceRegistered {
            user: uid(2),
            addr: "[::1]:5000".parse().unwrap(),
        });
        assert_eq!(encode(&ev), b"{\"type\":\"event\",\"event\":\"voice_registered\",\"user\":2,\"addr\":\"[::1]:5000\"}\n");
    }

    #[test]
    fn reload_wire_form() {
        let req = ClientMsg::Request {
            id: 4,
            command: Command::Reload,
        };
        assert_eq!(
            encode(&req),
            b"{\"type\":\"request\",\"id\":4,\"command\":{\"op\":\"reload\"}}\n"
        );
        let rep = RelayMsg::Reply {
            id: 4,
            outcome: Outcome::Reloaded {
                changed: vec!["deny: [] -> [\"K0K\"]".into()],
                restart_needed: vec![],
            },
        };
        let line = encode(&rep);
        assert!(
            line.starts_with(b"{\"type\":\"reply\",\"id\":4,\"outcome\":{\"result\":\"reloaded\"")
        );
        assert_eq!(decode::<RelayMsg>(&line).unwrap(), rep);
    }

    #[test]
    fn user_zero_and_unknown_ops_are_malformed() {
        for bad in [
            &br#"{"type":"request","id":1,"command":{"op":"revoke_user","user":0}}"#[..],
            br#"{"type":"request","id":1,"command":{"op":"format_disk"}}"#,
            br#"{"type":"request","id":1}"#,
            b"not json",
        ] {
            assert!(matches!(
                decode::<ClientMsg>(bad),
                Err(DecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn line_reader_splits_and_bounds() {
        let mut r = LineReader::with_limit(8);
        r.extend(b"ab\ncd");
        assert_eq!(r.next_line().unwrap().unwrap(), b"ab");
        assert!(r.next_line().is_none());
        r.extend(b"e\n0123456789");
        assert_eq!(r.next_line().unwrap().unwrap(), b"cde");
        assert!(matches!(r.next_line(), Some(Err(DecodeError::TooLong))));
        r.extend(b"more of the long line");
        assert!(r.next_line().is_none(), "reported once");
        r.extend(b"\nok\n");
        assert_eq!(
            r.next_line().unwrap().unwrap(),
            b"ok",
            "resynchronised at the next line"
        );
        assert!(r.next_line().is_none());
    }
}
