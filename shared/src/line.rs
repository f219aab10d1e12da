//! The Whelm control line protocol (PROTOCOLS.md section 1).
//!
//! UTF-8 lines ending in `\n` (`\r\n` accepted). The server parses
//! [`Command`]s and formats [`Reply`]s; the bench client does the opposite,
//! so both directions are here and round-trip.
//!
//! Two kinds of failure are kept apart (STYLE.md practice 6):
//! - [`LineError`]: the bytes are not a command at all, or its arguments do
//!   not parse. The server answers with [`LineError::reply`] and keeps the
//!   session.
//! - A command that parses but is not allowed (calling a busy user, ...) is
//!   decided by the control state machine, which answers with an [`ErrorReply`].

use std::fmt;
use std::num::NonZeroU64;

/// Default TCP port of the control protocol.
pub const DEFAULT_PORT: u16 = 5000;
/// Longest line the server accepts, without its line ending. Longer lines are
/// an error; the connection layer discards up to the next `\n`.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// A user id: `users.id`. Never zero, at most `i64::MAX` (a signed BIGINT).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u64", into = "u64")]
pub struct UserId(NonZeroU64);

impl UserId {
    /// A user id from a database value; `None` for 0 or above `i64::MAX`.
    pub fn new(v: u64) -> Option<UserId> {
        if v > i64::MAX as u64 {
            return None;
        }
        NonZeroU64::new(v).map(UserId)
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// Parses a decimal id: ASCII digits only (no sign, no spaces), 1..=i64::MAX.
    pub fn parse(s: &str) -> Option<UserId> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok().and_then(UserId::new)
    }
}

impl TryFrom<u64> for UserId {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        UserId::new(v).ok_or_else(|| format!("invalid user id {v}"))
    }
}

impl From<UserId> for u64 {
    fn from(u: UserId) -> u64 {
        u.get()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

/// Presence status, as stored in `users.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Connected and active.
    Online,
    /// Connected, away.
    Away,
    /// Connected, do not disturb.
    Busy,
    /// Not connected (set by the server, never sent by a client).
    Offline,
}

impl Status {
    /// The word on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// A status a client may send with HEARTBEAT (`offline` is not one).
    pub fn parse_client(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }

    /// Any stored status.
    pub fn parse_stored(s: &str) -> Option<Status> {
        match s {
            "offline" => Some(Status::Offline),
            other => Status::parse_client(other),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `AUTH <session_token>`
    Auth {
        /// `users.session_token`
        token: String,
    },
    /// `HEARTBEAT [status]`
    Heartbeat {
        /// The new status, if given.
        status: Option<Status>,
    },
    /// `CALL <user_id>`
    Call {
        /// The callee.
        callee: UserId,
    },
    /// `ACCEPT <caller_id>`
    Accept {
        /// Who called.
        caller: UserId,
    },
    /// `REJECT <caller_id>`
    Reject {
        /// Who called.
        caller: UserId,
    },
    /// `HANGUP`
    Hangup,
    /// `MSG <recipient_id> <content>`
    Msg {
        /// The recipient.
        recipient: UserId,
        /// Everything after the second space, unchanged.
        content: String,
    },
}

/// Why a line is not a command. [`LineError::reply`] is the answer to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// An empty line (ignored by the server).
    #[error("empty line")]
    Empty,
    /// More than [`MAX_LINE_LEN`] bytes.
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// The command word is not one we know.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// A command that needs an argument got none.
    #[error("{0} needs an argument")]
    MissingArgument(&'static str),
    /// A command got more arguments than it takes.
    #[error("{0} takes fewer arguments")]
    TrailingInput(&'static str),
    /// A user id that is not a positive decimal number.
    #[error("invalid user id")]
    InvalidUserId,
    /// HEARTBEAT with a status other than online, away, busy.
    #[error("invalid status")]
    InvalidStatus,
    /// MSG without a recipient id and content.
    #[error("invalid MSG format")]
    InvalidMsgFormat,
    /// MSG whose content is empty or only white space.
    #[error("empty message")]
    EmptyMessage,
}

impl LineError {
    /// True when the line has a command word other than AUTH: an unknown
    /// word, or another command with bad arguments. Before authentication
    /// such a line is answered `ERROR Not authenticated`, as any command but
    /// AUTH is (PROTOCOLS.md); an empty, overlong or non-UTF-8 line, or a
    /// malformed AUTH, keeps its own error.
    pub fn is_other_than_auth(&self) -> bool {
        match self {
            LineError::Empty | LineError::TooLong | LineError::InvalidUtf8 => false,
            LineError::MissingArgument(c) | LineError::TrailingInput(c) => *c != "AUTH",
            LineError::Unknown(_)
            | LineError::InvalidUserId
            | LineError::InvalidStatus
            | LineError::InvalidMsgFormat
            | LineError::EmptyMessage => true,
        }
    }

    /// The error line the server sends back (reference wording where one exists).
    pub fn reply(&self) -> ErrorReply {
        match self {
            LineError::Empty | LineError::Unknown(_) => {
                let word = match self {
                    LineError::Unknown(w) => w.clone(),
                    _ => String::new(),
                };
                ErrorReply::UnknownCommand(word)
            }
            LineError::TooLong => ErrorReply::LineTooLong,
            LineError::InvalidUtf8 => ErrorReply::InvalidUtf8,
            LineError::MissingArgument(_) | LineError::TrailingInput(_) => {
                ErrorReply::InvalidArguments
            }
            LineError::InvalidUserId => ErrorReply::InvalidUserId,
            LineError::InvalidStatus => ErrorReply::InvalidStatus,
            LineError::InvalidMsgFormat => ErrorReply::InvalidMsgFormat,
            LineError::EmptyMessage => ErrorReply::EmptyMessage,
        }
    }
}

/// Strips one trailing `\n` and then every `\r` before it, so that no
/// argument ends in `\r` (a line `AUTH x\r\r\n` is `AUTH x`; found by the
/// line_parser fuzz target: one stripped `\r` left the second in the token,
/// which then did not round trip).
fn strip_eol(mut b: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = b {
        b = rest;
    }
    while let [rest @ .., b'\r'] = b {
        b = rest;
    }
    b
}

impl Command {
    /// Parses one line (with or without its `\n`/`\r\n`).
    pub fn parse(line: &[u8]) -> Result<Command, LineError> {
        let line = strip_eol(line);
        if line.len() > MAX_LINE_LEN {
            return Err(LineError::TooLong);
        }
        let line = std::str::from_utf8(line).map_err(|_| LineError::InvalidUtf8)?;
        if line.is_empty() {
            return Err(LineError::Empty);
        }
        let (word, rest) = match line.split_once(' ') {
            Some((w, r)) => (w, Some(r)),
            None => (line, None),
        };
        match word {
            "AUTH" => {
                let token = one_arg("AUTH", rest)?;
                Ok(Command::Auth {
                    token: token.to_owned(),
                })
            }
            "HEARTBEAT" => match rest {
                None => Ok(Command::Heartbeat { status: None }),
                Some(r) => {
                    let s = one_arg("HEARTBEAT", Some(r))?;
                    let status = Status::parse_client(s).ok_or(LineError::InvalidStatus)?;
                    Ok(Command::Heartbeat {
                        status: Some(status),
                    })
                }
            },
            "CALL" => Ok(Command::Call {
                callee: id_arg("CALL", rest)?,
            }),
            "ACCEPT" => Ok(Command::Accept {
                caller: id_arg("ACCEPT", rest)?,
            }),
            "REJECT" => Ok(Command::Reject {
                caller: id_arg("REJECT", rest)?,
            }),
            "HANGUP" => match rest {
                None => Ok(Command::Hangup),
                Some(r) if r.trim_matches(' ').is_empty() => Ok(Command::Hangup),
                Some(_) => Err(LineError::TrailingInput("HANGUP")),
            },
            "MSG" => {
                let (id, content) = rest
                    .and_then(|r| r.split_once(' '))
                    .ok_or(LineError::InvalidMsgFormat)?;
                let recipient = UserId::parse(id).ok_or(LineError::InvalidMsgFormat)?;
                if content.trim().is_empty() {
                    return Err(LineError::EmptyMessage);
                }
                Ok(Command::Msg {
                    recipient,
                    content: content.to_owned(),
                })
            }
            // A line cut as `FOO\r BAR` leaves the `\r` on the word; the
            // reply line would end in it and read back without it.
            other => Err(LineError::Unknown(
                other
                    .trim_end_matches(|c: char| c.is_ascii_whitespace())
                    .to_owned(),
            )),
        }
    }

    /// The line a client sends, without its `\n`.
    pub fn to_line(&self) -> String {
        self.to_string()
    }
}

fn one_arg<'a>(cmd: &'static str, rest: Option<&'a str>) -> Result<&'a str, LineError> {
    // Arguments are separated by spaces; stray trailing spaces and carriage
    // returns are tolerated (`AUTH x\r ` is `AUTH x`: found by the
    // line_parser fuzz target), any other character is part of the argument.
    let r = rest
        .map(|r| r.trim_end_matches([' ', '\r']))
        .filter(|r| !r.is_empty());
    let r = r.ok_or(LineError::MissingArgument(cmd))?;
    if r.contains(' ') {
        return Err(LineError::TrailingInput(cmd));
    }
    Ok(r)
}

fn id_arg(cmd: &'static str, rest: Option<&str>) -> Result<UserId, LineError> {
    UserId::parse(one_arg(cmd, rest)?).ok_or(LineError::InvalidUserId)
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Auth { token } => write!(f, "AUTH {token}"),
            Command::Heartbeat { status: None } => f.write_str("HEARTBEAT"),
            Command::Heartbeat { status: Some(s) } => write!(f, "HEARTBEAT {s}"),
            Command::Call { callee } => write!(f, "CALL {callee}"),
            Command::Accept { caller } => write!(f, "ACCEPT {caller}"),
            Command::Reject { caller } => write!(f, "REJECT {caller}"),
            Command::Hangup => f.write_str("HANGUP"),
            Command::Msg { recipient, content } => write!(f, "MSG {recipient} {content}"),
        }
    }
}

/// The JSON object of an instant message delivered with `MSG <json>`.
/// Field order is the wire order of the reference server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageJson {
    /// Sender's `users.id`.
    pub sender_id: u64,
    /// Recipient's `users.id`.
    pub recipient_id: u64,
    /// The message text.
    pub content: String,
    /// RFC 3339, UTC (`2026-11-21T10:00:00Z`).
    pub timestamp: String,
}

/// An `ERROR ...` line. The reference server's wordings are kept exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorReply {
    /// `ERROR Unknown command: <word>`
    UnknownCommand(String),
    /// `ERROR Not authenticated`
    NotAuthenticated,
    /// `ERROR Invalid token`
    InvalidToken,
    /// `ERROR User offline`
    UserOffline,
    /// `ERROR User busy`
    UserBusy,
    /// `ERROR Server at capacity, try again later`
    AtCapacity,
    /// `ERROR Server bandwidth exceeded, try again later`
    BandwidthExceeded,
    /// `ERROR Invalid MSG format`
    InvalidMsgFormat,
    /// `ERROR Empty message`
    EmptyMessage,
    /// `ERROR Failed to send message`
    FailedToSend,
    /// `ERROR Invalid user ID`
    InvalidUserId,
    /// `ERROR Invalid status`
    InvalidStatus,
    /// `ERROR Invalid arguments`
    InvalidArguments,
    /// `ERROR Line too long`
    LineTooLong,
    /// `ERROR Invalid UTF-8`
    InvalidUtf8,
    /// `ERROR Cannot call yourself`
    CallSelf,
    /// `ERROR Already in a call`
    AlreadyInCall,
    /// `ERROR No incoming call from that user`
    NoSuchCall,
    /// `ERROR Not in a call`
    NotInCall,
    /// `ERROR Rate limit exceeded`
    RateLimited,
}

impl ErrorReply {
    const TABLE: [(&'static str, ErrorReply); 19] = [
        ("Not authenticated", ErrorReply::NotAuthenticated),
        ("Invalid token", ErrorReply::InvalidToken),
        ("User offline", ErrorReply::UserOffline),
        ("User busy", ErrorReply::UserBusy),
        (
            "Server at capacity, try again later",
            ErrorReply::AtCapacity,
        ),
        (
            "Server bandwidth exceeded, try again later",
            ErrorReply::BandwidthExceeded,
        ),
        ("Invalid MSG format", ErrorReply::InvalidMsgFormat),
        ("Empty message", ErrorReply::EmptyMessage),
        ("Failed to send message", ErrorReply::FailedToSend),
        ("Invalid user ID", ErrorReply::InvalidUserId),
        ("Invalid status", ErrorReply::InvalidStatus),
        ("Invalid arguments", ErrorReply::InvalidArguments),
        ("Line too long", ErrorReply::LineTooLong),
        ("Invalid UTF-8", ErrorReply::InvalidUtf8),
        ("Cannot call yourself", ErrorReply::CallSelf),
        ("Already in a call", ErrorReply::AlreadyInCall),
        ("No incoming call from that user", ErrorReply::NoSuchCall),
        ("Not in a call", ErrorReply::NotInCall),
        ("Rate limit exceeded", ErrorReply::RateLimited),
    ];

    /// The text after `ERROR `.
    pub fn text(&self) -> String {
        match self {
            ErrorReply::UnknownCommand(w) => format!("Unknown command: {w}"),
            other => Self::TABLE
                .iter()
                .find(|(_, e)| e == other)
                .map(|(t, _)| (*t).to_owned())
                .unwrap_or_default(),
        }
    }

    fn parse(text: &str) -> Option<ErrorReply> {
        if let Some(w) = text.strip_prefix("Unknown command: ") {
            return Some(ErrorReply::UnknownCommand(w.to_owned()));
        }
        Self::TABLE
            .iter()
            .find(|(t, _)| *t == text)
            .map(|(_, e)| e.clone())
    }
}

/// A line the server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK AUTH <user_id> <username>`
    OkAuth {
        /// The authenticated user.
        user: UserId,
        /// `users.username`
        username: String,
    },
    /// `OK HEARTBEAT`
    OkHeartbeat,
    /// `OK CALLING <user_id>` (to the caller)
    OkCalling {
        /// The callee.
        callee: UserId,
    },
    /// `INCOMING <caller_id> <caller_username>` (to the callee)
    Incoming {
        /// The caller.
        caller: UserId,
        /// The caller's username.
        username: String,
    },
    /// `START_CALL <partner_id> <partner_username>` (to both)
    StartCall {
        /// The other party.
        partner: UserId,
        /// The other party's username.
        username: String,
    },
    /// `REJECTED <callee_id>` (to the caller)
    Rejected {
        /// Who rejected.
        callee: UserId,
    },
    /// `OK REJECTED` (to the rejecter)
    OkRejected,
    /// `HANGUP <user_id>` (to the partner of who hung up, or to both on timeout)
    Hangup {
        /// Who hung up (or the other party, on a ringing timeout).
        user: UserId,
    },
    /// `OK HANGUP`
    OkHangup,
    /// `OK MSG`: the message is committed.
    OkMsg,
    /// `MSG <json>` (to the recipient)
    Msg(MessageJson),
    /// `KICKED Another session connected`
    Kicked,
    /// `ERROR <text>`
    Error(ErrorReply),
}

/// Why a server line did not parse as a [`Reply`] (client side).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised server line: {0:?}")]
pub struct ReplyParseError(pub String);

impl Reply {
    /// The line, without its `\n`.
    pub fn to_line(&self) -> String {
        self.to_string()
    }

    /// The line with its `\n`, as bytes ready to send.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut s = self.to_string();
        s.push('\n');
        s.into_bytes()
    }

    /// Parses a server line (client side; used by the bench and tests).
    pub fn parse(line: &str) -> Result<Reply, ReplyParseError> {
        let line = line
            .strip_suffix('\n')
            .unwrap_or(line)
            .trim_end_matches('\r');
        let err = || ReplyParseError(line.to_owned());
        let id = |s: &str| UserId::parse(s).ok_or_else(err);
        let id_name = |s: &str| -> Result<(UserId, String), ReplyParseError> {
            let (i, n) = s.split_once(' ').ok_or_else(err)?;
            Ok((id(i)?, n.to_owned()))
        };
        if let Some(r) = line.strip_prefix("ERROR ") {
            return ErrorReply::parse(r).map(Reply::Error).ok_or_else(err);
        }
        if let Some(r) = line.strip_prefix("MSG ") {
            return serde_json::from_str(r).map(Reply::Msg).map_err(|_| err());
        }
        if let Some(r) = line.strip_prefix("OK AUTH ") {
            let (user, username) = id_name(r)?;
            return Ok(Reply::OkAuth { user, username });
        }
        if let Some(r) = line.strip_prefix("OK CALLING ") {
            return Ok(Reply::OkCalling { callee: id(r)? });
        }
        if let Some(r) = line.strip_prefix("INCOMING ") {
            let (caller, username) = id_name(r)?;
            return Ok(Reply::Incoming { caller, username });
        }
        if let Some(r) = line.strip_prefix("START_CALL ") {
            let (partner, username) = id_name(r)?;
            return Ok(Reply::StartCall { partner, username });
        }
        if let Some(r) = line.strip_prefix("REJECTED ") {
            return Ok(Reply::Rejected { callee: id(r)? });
        }
        if let Some(r) = line.strip_prefix("HANGUP ") {
            return Ok(Reply::Hangup { user: id(r)? });
        }
        match line {
            "OK HEARTBEAT" => Ok(Reply::OkHeartbeat),
            "OK REJECTED" => Ok(Reply::OkRejected),
            "OK HANGUP" => Ok(Reply::OkHangup),
            "OK MSG" => Ok(Reply::OkMsg),
            "KICKED Another session connected" => Ok(Reply::Kicked),
            _ => Err(err()),
        }
    }
}

impl From<ErrorReply> for Reply {
    fn from(e: ErrorReply) -> Reply {
        Reply::Error(e)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::OkAuth { user, username } => write!(f, "OK AUTH {user} {username}"),
            Reply::OkHeartbeat => f.write_str("OK HEARTBEAT"),
            Reply::OkCalling { callee } => write!(f, "OK CALLING {callee}"),
            Reply::Incoming { caller, username } => write!(f, "INCOMING {caller} {username}"),
            Reply::StartCall { partner, username } => write!(f, "START_CALL {partner} {username}"),
            Reply::Rejected { callee } => write!(f, "REJECTED {callee}"),
            Reply::OkRejected => f.write_str("OK REJECTED"),
            Reply::Hangup { user } => write!(f, "HANGUP {user}"),
            Reply::OkHangup => f.write_str("OK HANGUP"),
            Reply::OkMsg => f.write_str("OK MSG"),
            Reply::Msg(m) => {
                // Serialising a struct of integers and strings cannot fail.
                let json = serde_json::to_string(m).map_err(|_| fmt::Error)?;
                write!(f, "MSG {json}")
            }
            Reply::Kicked => f.write_str("KICKED Another session connected"),
            Reply::Error(e) => write!(f, "ERROR {}", e.text()),
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
    fn parses_every_command() {
        let cases = [
            (
                "AUTH abc123",
                Command::Auth {
                    token: "abc123".into(),
                },
            ),
            ("HEARTBEAT", Command::Heartbeat { status: None }),
            (
                "HEARTBEAT away",
                Command::Heartbeat {
                    status: Some(Status::Away),
                },
            ),
            ("CALL 7", Command::Call { callee: uid(7) }),
            ("ACCEPT 7", Command::Accept { caller: uid(7) }),
            ("REJECT 7", Command::Reject { caller: uid(7) }),
            ("HANGUP", Command::Hangup),
            (
                "MSG 2 hi there  ",
                Command::Msg {
                    recipient: uid(2),
                    content: "hi there  ".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Command::parse(line.as_bytes()), Ok(want.clone()), "{line}");
            assert_eq!(
                Command::parse(format!("{line}\r\n").as_bytes()),
                Ok(want),
                "{line} CRLF"
            );
        }
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let cases: [(&[u8], LineError); 15] = [
            (b"", LineError::Empty),
            (b"\r\n", LineError::Empty),
            (b"PING", LineError::Unknown("PING".into())),
            (b"auth x", LineError::Unknown("auth".into())),
            (b"FOO\r BAR", LineError::Unknown("FOO".into())),
            (b"AUTH", LineError::MissingArgument("AUTH")),
            (b"AUTH a b", LineError::TrailingInput("AUTH")),
            (b"CALL", LineError::MissingArgument("CALL")),
            (b"CALL abc", LineError::InvalidUserId),
            (b"CALL 0", LineError::InvalidUserId),
            (b"CALL -1", LineError::InvalidUserId),
            (b"CALL 99999999999999999999", LineError::InvalidUserId),
            (b"HEARTBEAT sleeping", LineError::InvalidStatus),
            (b"MSG 2", LineError::InvalidMsgFormat),
            (b"MSG 2   ", LineError::EmptyMessage),
        ];
        for (line, want) in cases {
            assert_eq!(
                Command::parse(line),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            Command::parse(b"MSG x hi"),
            Err(LineError::InvalidMsgFormat)
        );
        assert_eq!(Command::parse(b"CALL \xff"), Err(LineError::InvalidUtf8));
        assert_eq!(
            Command::parse(b"AUTH x\r\r\n"),
            Ok(Command::Auth { token: "x".into() })
        );
        assert_eq!(
            Command::parse(&vec![b'A'; MAX_LINE_LEN + 1]),
            Err(LineError::TooLong)
        );
    }

    #[test]
    fn reply_wordings() {
        let cases = [
            (
                Reply::OkAuth {
                    user: uid(1),
                    username: "alice".into(),
                },
                "OK AUTH 1 alice",
            ),
            (Reply::OkHeartbeat, "OK HEARTBEAT"),
            (Reply::OkCalling { callee: uid(2) }, "OK CALLING 2"),
            (
                Reply::Incoming {
                    caller: uid(1),
                    username: "alice".into(),
                },
                "INCOMING 1 alice",
            ),
            (
                Reply::StartCall {
                    partner: uid(2),
                    username: "bob".into(),
                },
                "START_CALL 2 bob",
            ),
            (Reply::Rejected { callee: uid(2) }, "REJECTED 2"),
            (Reply::OkRejected, "OK REJECTED"),
            (Reply::Hangup { user: uid(1) }, "HANGUP 1"),
            (Reply::OkHangup, "OK HANGUP"),
            (Reply::OkMsg, "OK MSG"),
            (Reply::Kicked, "KICKED Another session connected"),
            (
                Reply::Msg(MessageJson {
                    sender_id: 1,
                    recipient_id: 2,
                    content: "hi".into(),
                    timestamp: "2026-11-21T10:00:00Z".into(),
                }),
                r#"MSG {"sender_id":1,"recipient_id":2,"content":"hi","timestamp":"2026-11-21T10:00:00Z"}"#,
            ),
            (ErrorReply::InvalidToken.into(), "ERROR Invalid token"),
            (
                ErrorReply::NotAuthenticated.into(),
                "ERROR Not authenticated",
            ),
            (ErrorReply::UserOffline.into(), "ERROR User offline"),
            (ErrorReply::UserBusy.into(), "ERROR User busy"),
            (
                ErrorReply::AtCapacity.into(),
                "ERROR Server at capacity, try again later",
            ),
            (
                ErrorReply::BandwidthExceeded.into(),
                "ERROR Server bandwidth exceeded, try again later",
            ),
            (
                ErrorReply::InvalidMsgFormat.into(),
                "ERROR Invalid MSG format",
            ),
            (ErrorReply::EmptyMessage.into(), "ERROR Empty message"),
            (
                ErrorReply::FailedToSend.into(),
                "ERROR Failed to send message",
            ),
            (
                ErrorReply::UnknownCommand("PING".into()).into(),
                "ERROR Unknown command: PING",
            ),
        ];
        for (reply, line) in cases {
            assert_eq!(reply.to_line(), line);
            assert_eq!(Reply::parse(line), Ok(reply));
        }
        assert_eq!(Reply::OkMsg.to_wire(), b"OK MSG\n");
    }

    #[test]
    fn every_error_reply_has_text() {
        for (text, e) in ErrorReply::TABLE.iter() {
            assert_eq!(e.text(), *text);
        }
        let unknown = LineError::Unknown("X".into()).reply();
        assert_eq!(Reply::Error(unknown).to_line(), "ERROR Unknown command: X");
    }
}
