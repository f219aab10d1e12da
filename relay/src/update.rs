//! Messages between the coordinator and the workers.
//!
//! - [`Update`]: coordinator -> every worker, applied to each replica between
//!   batches ([`crate::core::Core::apply`]). Voice variants exist for the
//!   command channel of issue 5; nothing sends them yet.
//! - [`Event`]: worker (or main) -> coordinator: what a worker learned, which
//!   stations it saw, shutdown.

use std::net::SocketAddr;
use std::time::Instant;

use whelm_shared::ovp::StationId;

/// A change to the per-worker forwarding tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Install a voice route: datagrams from `src` go to `dest` (issue 5).
    VoiceRoute {
        /// A registered voice address.
        src: SocketAddr,
        /// The call partner's registered voice address.
        dest: SocketAddr,
    },
    /// Remove the voice route from `src` (issue 5).
    RemoveVoiceRoute {
        /// A registered voice address.
        src: SocketAddr,
    },
}

/// Something a worker learned from traffic and already applied to its own
/// replica.
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
}

/// Messages to the coordinator.
#[derive(Debug, Clone)]
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
    /// Stations that sent valid frames to a worker since its last report.
    Seen {
        /// The callsigns.
        ids: Vec<StationId>,
        /// When the report was made.
        at: Instant,
    },
    /// Print final statistics and exit (sent by main after the workers
    /// stopped).
    Shutdown,
}
