//! Messages between the coordinator and the workers.
//!
//! - [`Update`]: coordinator -> every worker, applied to each replica between
//!   batches ([`crate::core::Core::apply`]). A command's updates travel as one
//!   [`Update::Commit`], applied as a whole between two batches (atomic from
//!   the worker's point of view) and acknowledged with [`Event::Applied`].
//! - [`Event`]: worker (or main, or the command socket threads) ->
//!   coordinator: what a worker learned (or refused, at most once a minute
//!   per worker), which stations it saw, that it applied a commit, command
//!   channel traffic, shutdown.
//! - [`Hello`]: worker -> coordinator on their own bounded channel (a HELLO
//!   flood is dropped and counted at the worker, never blocks it).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use whelm_shared::line::UserId;
use whelm_shared::ovp::StationId;

use crate::cmdsock::ConnEvent;
use crate::core::HoldReason;

/// A change to the per-worker forwarding tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Insert an OVP station or move it to a new source address.
    Station {
        /// The callsign.
        id: StationId,
        /// Its source address (the destination follows from `--reply-to`).
        src: SocketAddr,
    },
    /// Remove an OVP station (timeout).
    RemoveStation {
        /// The callsign.
        id: StationId,
    },
    /// Install a voice route: datagrams from `src` go to `dest`.
    VoiceRoute {
        /// A registered voice address.
        src: SocketAddr,
        /// The call partner's registered voice address.
        dest: SocketAddr,
    },
    /// `src` is a registered voice address that has nowhere to send to
    /// (dropped and counted by `reason`).
    VoiceHold {
        /// A registered voice address.
        src: SocketAddr,
        /// Why its datagrams are dropped.
        reason: HoldReason,
    },
    /// Forget the voice address `src` (its datagrams become unknown sources).
    RemoveVoiceRoute {
        /// A formerly registered voice address.
        src: SocketAddr,
    },
    /// This worker's share of the voice bandwidth limit, bytes per second
    /// each way (0 = none).
    Bandwidth {
        /// Bytes per second.
        bytes_per_sec: u64,
    },
    /// OVP per-source rate limit (0 = none) and burst.
    StationRate {
        /// Frames per second.
        rate: u32,
        /// Burst in frames.
        burst: u32,
    },
    /// OVP station caps (a configuration reload). Stations already
    /// registered stay; new ones are refused while a cap is reached.
    StationLimits {
        /// Stations in total at most.
        max_stations: usize,
        /// Stations per source IP at most.
        max_stations_per_ip: usize,
    },
    /// Replace the OVP allow list (None: no allow list) and deny list
    /// (a configuration reload).
    Lists {
        /// Only these callsigns are forwarded, when set.
        allow: Option<Arc<HashSet<StationId>>>,
        /// These callsigns are never forwarded.
        deny: Arc<HashSet<StationId>>,
    },
    /// Several updates applied together, then acknowledged with
    /// [`Event::Applied`] carrying `generation`.
    Commit {
        /// The updates, in order.
        updates: Arc<[Update]>,
        /// Generation number of this commit (increasing).
        generation: u64,
    },
}

/// Which OVP station cap refused a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StationCap {
    /// `max_stations`: the registry is full.
    Total,
    /// `max_stations_per_ip`: the source IP has its share.
    PerIp,
}

impl StationCap {
    /// The configuration key that sets this cap.
    pub fn key(self) -> &'static str {
        match self {
            StationCap::Total => "max_stations",
            StationCap::PerIp => "max_stations_per_ip",
        }
    }
}

/// Something a worker learned from traffic and already applied to its own
/// replica, or (`Refused`) did not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// First valid frame from a callsign.
    NewStation {
        /// The callsign.
        id: StationId,
        /// Where it came from.
        src: SocketAddr,
    },
    /// A known callsign sent from a different address.
    Moved {
        /// The callsign.
        id: StationId,
        /// The address this replica knew.
        from: SocketAddr,
        /// The new source address.
        to: SocketAddr,
    },
    /// A new callsign, or a move to another IP, refused by a station cap
    /// (the frame was dropped as `station_limit`). Reported at most once a
    /// minute per worker ([`crate::core::STATION_LIMIT_REPORT`]), only so the
    /// coordinator can log it; the counter counts every refusal.
    Refused {
        /// The callsign.
        id: StationId,
        /// Where its frame came from.
        src: SocketAddr,
        /// The cap that refused it.
        cap: StationCap,
        /// That cap's value.
        limit: usize,
    },
    /// A callsign whose frames would be sent to the relay's own OVP address
    /// (a station on the relay's host, `--reply-to listen-port`) was not
    /// registered; its frames are dropped as `own_address`. Reported like
    /// [`Learned::Refused`], at most once a minute per worker.
    OwnAddress {
        /// The callsign.
        id: StationId,
        /// Where its frame came from.
        src: SocketAddr,
        /// Where the relay would have sent its share of the conference.
        dest: SocketAddr,
    },
}

/// A parsed `HELLO <user_id> [<token>]` datagram and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Worker that received it.
    pub worker: usize,
    /// The user it claims to be.
    pub user: UserId,
    /// The session token, if sent.
    pub token: Option<Box<str>>,
    /// Source address (as the worker's socket reports it).
    pub src: SocketAddr,
}

/// Messages to the coordinator.
#[derive(Debug)]
pub enum Event {
    /// A worker learned something.
    Learned {
        /// Worker index.
        worker: usize,
        /// What it learned.
        what: Learned,
        /// When.
        at: Instant,
    },
    /// Stations that sent valid frames to a worker since its last report,
    /// with the number of frames.
    Seen {
        /// The callsigns and frame counts.
        ids: Vec<(StationId, u32)>,
        /// When the report was made.
        at: Instant,
    },
    /// A worker applied every commit up to `generation`.
    Applied {
        /// Worker index.
        worker: usize,
        /// Highest generation applied.
        generation: u64,
    },
    /// Command channel traffic (from the socket threads).
    Conn(ConnEvent),
    /// SIGHUP: re-read the configuration file (sent by main).
    Reload,
    /// Print final statistics and exit (sent by main after the workers
    /// stopped).
    Shutdown,
}
