//! The values that cross between the state machine and the rest: what it is
//! told ([`Input`]), what it asks for ([`Effect`]), the store jobs and their
//! results, the relay requests and what the relay link reports. Plain data, no behaviour.

use std::net::{IpAddr, SocketAddr};

pub use whelm_shared::channel::Command as RelayCommand;
use whelm_shared::channel::Outcome;
use whelm_shared::line::{Command, LineError, Reply, Status, UserId};

/// One TCP connection, numbered by the network thread from 1 upwards and
/// never reused in a process's life (so a late event for a closed session
/// can never reach a newer one: cleanup is keyed by session, not by user).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What the state machine is told.
#[derive(Debug)]
pub enum Input {
    /// The network thread accepted a connection.
    Connected {
        /// New session.
        session: SessionId,
        /// Peer address (for the relay's voice registration check).
        ip: IpAddr,
    },
    /// One line from a session, parsed once by the network thread.
    Line {
        /// From whom.
        session: SessionId,
        /// The command, or why the line is not one.
        line: Result<Command, LineError>,
    },
    /// The connection is gone (EOF, error, or the network thread dropped it
    /// because it did not read its replies).
    Disconnected {
        /// Which.
        session: SessionId,
    },
    /// A store worker finished a job that has an answer.
    Store(StoreResult),
    /// Time passed (the runtime sends it every tick, traffic or not).
    Tick,
    /// The relay link reported something.
    Relay(RelayInput),
    /// SIGTERM/SIGINT: mark everyone offline and close every session.
    Shutdown,
    /// SIGHUP reloaded the configuration: new limits and timers for what
    /// happens from now on (sessions and calls in progress are untouched).
    Reconfigure(Box<crate::machine::MachineConfig>),
}

/// What the state machine asks the runtime to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Queue a line to a session.
    Send {
        /// To whom.
        session: SessionId,
        /// The line.
        reply: Reply,
    },
    /// Close the session once what was queued to it is written.
    Close {
        /// Which.
        session: SessionId,
    },
    /// A job for the store workers.
    Store(StoreJob),
    /// A request for the relay link, with the id its reply will carry.
    Relay {
        /// Chosen by the machine, increasing; echoed in [`RelayInput::Reply`].
        id: u64,
        /// The command.
        cmd: RelayCommand,
    },
}

/// What the relay link reports (relay_link.rs turns channel messages into
/// these; the machine decides what they mean).
#[derive(Debug)]
pub enum RelayInput {
    /// The handshake with the relay succeeded. The machine answers with its
    /// sync request (Snapshot before it adopted one, ReplaceAll after).
    Connected,
    /// The connection is gone; every request not answered yet never will be.
    /// Sent after every reply read from that connection.
    Disconnected,
    /// The answer to the request with this id.
    Reply {
        /// The id the machine gave the request.
        id: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// A valid HELLO registered this voice address for `user`.
    VoiceRegistered {
        /// The user.
        user: UserId,
        /// Its voice address.
        addr: SocketAddr,
    },
    /// Bandwidth in use over the last second (bits per second; limit 0 = none).
    Counters {
        /// Received.
        bps_in: u64,
        /// Sent.
        bps_out: u64,
        /// The relay's limit each way.
        bps_limit: u64,
        /// The relay's worker count (cores it forwards on).
        workers: usize,
    },
}

/// A message to store (group-committed with others queued at the same time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsgJob {
    /// Who sent it (its `OK MSG` goes there).
    pub session: SessionId,
    /// The sender session's sequence number of this MSG.
    pub seq: u64,
    /// `messages.sender_id`.
    pub sender: UserId,
    /// Recipient (`channel_id` is computed from both ids).
    pub recipient: UserId,
    /// Byte-exact content.
    pub content: String,
    /// Also record it as pending for the recipient (who had no session when
    /// the MSG was queued; its next AUTH delivers it).
    pub pending: bool,
    /// Check that the recipient exists (an online recipient obviously does).
    pub check_recipient: bool,
}

/// Work for the store. Jobs run in the order queued, on one worker, so a
/// backlog fetch sees exactly the messages queued before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreJob {
    /// Find the user whose `session_token` this is.
    Lookup {
        /// Who asked.
        session: SessionId,
        /// The token.
        token: String,
    },
    /// `user` authenticated: status online, last_seen now, then fetch the
    /// first page of the messages pending for it (oldest first).
    Online {
        /// Its session.
        session: SessionId,
        /// The user.
        user: UserId,
    },
    /// The session took the previous page of its backlog (its messages are
    /// queued to it): fetch the next page, the messages pending after
    /// `after`.
    Backlog {
        /// Its session.
        session: SessionId,
        /// The user.
        user: UserId,
        /// The `upto` of the previous page.
        after: i64,
    },
    /// HEARTBEAT: last_seen now, and the status if given.
    Heartbeat {
        /// The user.
        user: UserId,
        /// New status.
        status: Option<Status>,
    },
    /// These users have no session any more.
    Offline {
        /// Users.
        users: Vec<UserId>,
    },
    /// Store a message.
    Msg(MsgJob),
    /// A committed message could not be delivered live: keep it for the
    /// recipient's next AUTH.
    AddPending {
        /// Recipient.
        recipient: UserId,
        /// `messages.id`.
        message_id: i64,
    },
    /// Messages up to this id were delivered to the recipient.
    Delivered {
        /// Recipient.
        recipient: UserId,
        /// Highest delivered `messages.id`.
        upto: i64,
    },
}

/// A stored message, as delivered in `MSG <json>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// `messages.id`.
    pub id: i64,
    /// Sender.
    pub sender: UserId,
    /// Recipient.
    pub recipient: UserId,
    /// Content.
    pub content: String,
    /// RFC 3339 UTC.
    pub timestamp: String,
}

/// One page of the messages pending for a user (at most the store's page
/// size of rows, oldest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingPage {
    /// The deliverable messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// The highest `messages.id` this page covers: its messages and the
    /// rows skipped as undeliverable (logged by the store). Marking the
    /// page delivered up to it consumes both. `None`: nothing was pending.
    pub upto: Option<i64>,
    /// The page was full: more may be pending after `upto`.
    pub more: bool,
}

/// Why a message was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgFailure {
    /// No such recipient.
    UnknownRecipient,
    /// The database failed (nothing committed).
    Database,
}

/// A user found by token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// `users.id`.
    pub id: UserId,
    /// `users.username`.
    pub username: String,
}

/// Answers of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreResult {
    /// Answer to [`StoreJob::Lookup`]; `Err` when the database failed.
    Lookup {
        /// Who asked.
        session: SessionId,
        /// The user, if the token is known.
        user: Result<Option<UserRecord>, ()>,
    },
    /// Answer to [`StoreJob::Online`] and [`StoreJob::Backlog`]: a page of
    /// the pending messages, oldest first.
    Backlog {
        /// Who asked.
        session: SessionId,
        /// For whom.
        user: UserId,
        /// The page; `Err` when the database failed (the messages stay
        /// pending).
        page: Result<PendingPage, ()>,
    },
    /// Answer to [`StoreJob::Msg`], sent after the commit.
    Msg {
        /// Sender's session.
        session: SessionId,
        /// Its sequence number.
        seq: u64,
        /// The recipient.
        recipient: UserId,
        /// Whether it was stored as pending.
        pending: bool,
        /// The stored message or why not.
        result: Result<StoredMessage, MsgFailure>,
    },
}
