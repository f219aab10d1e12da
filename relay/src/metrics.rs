//! Every metric name in one place (STYLE.md practice 10), and the per-worker
//! counters behind them.
//!
//! A worker counts into [`LocalCounters`] (plain `u64`s, no atomics on the
//! packet path) and publishes them into its [`WorkerCounters`] once per loop
//! iteration with relaxed stores. The coordinator's stats thread reads the
//! published values with relaxed loads, without stopping the workers. One
//! writer per counter: the worker that owns it.

use std::sync::atomic::{AtomicU64, Ordering};

use whelm_shared::ovp::FrameError;

use crate::core::DropReason;

/// One per-worker counter. The discriminant is its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Datagrams received, both ports.
    RxPackets,
    /// Bytes received (payload), both ports.
    RxBytes,
    /// Valid OVP frames received (passed validation and the lists).
    OvpFrames,
    /// OVP frame copies sent successfully to stations.
    OvpForwarded,
    /// Voice datagrams sent successfully.
    VoiceForwarded,
    /// Datagrams sent successfully, both ports.
    TxPackets,
    /// Bytes sent successfully.
    TxBytes,
    /// Sends that the kernel refused (error completion or sendmmsg error).
    TxErrors,
    /// OVP decode error: shorter than the header.
    DropTooShort,
    /// OVP decode error: wrong token.
    DropBadToken,
    /// OVP decode error: station id not valid base-40.
    DropBadStationId,
    /// Dropped by the per-source rate limit.
    DropRateLimited,
    /// Callsign on the deny list.
    DropDenied,
    /// Callsign not on the allow list.
    DropNotAllowed,
    /// Voice datagram from an address that is not registered.
    DropUnknownSource,
    /// Voice datagram from a registered address whose user is in no call.
    DropNotInCall,
    /// Voice datagram whose call partner has no registered address.
    DropPartnerNotRegistered,
    /// Voice datagram over the worker's share of the bandwidth limit.
    DropBandwidth,
    /// Datagram starting with `HELLO ` that is not a well-formed HELLO.
    DropBadHello,
    /// Well-formed HELLO that found the worker's queue or the coordinator's
    /// channel full.
    DropHelloOverflow,
    /// Well-formed HELLOs handed to the coordinator.
    VoiceHellos,
    /// Datagram larger than a receive buffer.
    DropTruncated,
    /// A send that found no free send slot (io_uring) and was dropped.
    DropSendSlotsFull,
    /// Receive completions with ENOBUFS (buffer ring empty).
    RecvNoBufs,
    /// Multishot receives re-armed.
    RecvRearms,
    /// Other receive errors.
    RecvErrors,
}

impl Metric {
    /// Every metric in index order.
    pub const ALL: [Metric; 26] = [
        Metric::RxPackets,
        Metric::RxBytes,
        Metric::OvpFrames,
        Metric::OvpForwarded,
        Metric::VoiceForwarded,
        Metric::TxPackets,
        Metric::TxBytes,
        Metric::TxErrors,
        Metric::DropTooShort,
        Metric::DropBadToken,
        Metric::DropBadStationId,
        Metric::DropRateLimited,
        Metric::DropDenied,
        Metric::DropNotAllowed,
        Metric::DropUnknownSource,
        Metric::DropNotInCall,
        Metric::DropPartnerNotRegistered,
        Metric::DropBandwidth,
        Metric::DropBadHello,
        Metric::DropHelloOverflow,
        Metric::VoiceHellos,
        Metric::DropTruncated,
        Metric::DropSendSlotsFull,
        Metric::RecvNoBufs,
        Metric::RecvRearms,
        Metric::RecvErrors,
    ];
    /// Number of metrics.
    pub const COUNT: usize = Metric::ALL.len();

    /// Stable snake_case name, used as `key=value` in stats lines.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RxPackets => "rx_packets",
            Metric::RxBytes => "rx_bytes",
            Metric::OvpFrames => "ovp_frames",
            Metric::OvpForwarded => "ovp_forwarded",
            Metric::VoiceForwarded => "voice_forwarded",
            Metric::TxPackets => "tx_packets",
            Metric::TxBytes => "tx_bytes",
            Metric::TxErrors => "tx_errors",
            Metric::DropTooShort => "drop_too_short",
            Metric::DropBadToken => "drop_bad_token",
            Metric::DropBadStationId => "drop_bad_station_id",
            Metric::DropRateLimited => "drop_rate_limited",
            Metric::DropDenied => "drop_denied",
            Metric::DropNotAllowed => "drop_not_allowed",
            Metric::DropUnknownSource => "drop_unknown_source",
            Metric::DropNotInCall => "drop_not_in_call",
            Metric::DropPartnerNotRegistered => "drop_partner_not_registered",
            Metric::DropBandwidth => "drop_bandwidth",
            Metric::DropBadHello => "drop_bad_hello",
            Metric::DropHelloOverflow => "drop_hello_overflow",
            Metric::VoiceHellos => "voice_hellos",
            Metric::DropTruncated => "drop_truncated",
            Metric::DropSendSlotsFull => "drop_send_slots_full",
            Metric::RecvNoBufs => "recv_enobufs",
            Metric::RecvRearms => "recv_rearms",
            Metric::RecvErrors => "recv_errors",
        }
    }

    /// The counter a drop reason increments.
    pub fn for_drop(reason: DropReason) -> Metric {
        match reason {
            DropReason::Decode(FrameError::TooShort) => Metric::DropTooShort,
            DropReason::Decode(FrameError::BadToken) => Metric::DropBadToken,
            DropReason::Decode(FrameError::BadStationId) => Metric::DropBadStationId,
            DropReason::RateLimited => Metric::DropRateLimited,
            DropReason::Denied => Metric::DropDenied,
            DropReason::NotAllowed => Metric::DropNotAllowed,
            DropReason::UnknownSource => Metric::DropUnknownSource,
            DropReason::NotInCall => Metric::DropNotInCall,
            DropReason::PartnerNotRegistered => Metric::DropPartnerNotRegistered,
            DropReason::Bandwidth => Metric::DropBandwidth,
            DropReason::BadHello => Metric::DropBadHello,
            DropReason::HelloOverflow => Metric::DropHelloOverflow,
            DropReason::Truncated => Metric::DropTruncated,
        }
    }
}

/// Conference-level stat names printed by the coordinator (not per worker).
pub mod stat {
    /// Valid OVP frames received (sum of [`super::Metric::OvpFrames`]).
    pub const FRAMES_RECEIVED: &str = "frames_received";
    /// OVP frame copies forwarded (sum of [`super::Metric::OvpForwarded`]).
    pub const FRAMES_FORWARDED: &str = "frames_forwarded";
    /// Stations in the registry.
    pub const ACTIVE_STATIONS: &str = "active_stations";
    /// Sum of the three OVP decode-error counters.
    pub const DECODE_ERRORS: &str = "decode_errors";
    /// Stations removed by the inactivity timeout since start.
    pub const TIMED_OUT: &str = "timed_out";
    /// Frames dropped by the rate limit.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Frames dropped by the allow and deny lists.
    pub const LIST_DROPS: &str = "list_drops";
    /// HELLOs the coordinator refused (unknown user, wrong IP, wrong
    /// token); per worker in the command channel's counters.
    pub const HELLO_DENIED: &str = "hello_denied";
}

/// The name of a drop counter in the command channel's per-worker `drops`
/// map: the metric name without `drop_` (`unknown_source`, `not_in_call`,
/// `partner_not_registered`, `bandwidth`, ...); None for other metrics.
pub fn drop_key(m: Metric) -> Option<&'static str> {
    m.name().strip_prefix("drop_")
}

/// Published counters of one worker. Written only by that worker.
#[derive(Debug)]
pub struct WorkerCounters {
    vals: [AtomicU64; Metric::COUNT],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            vals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerCounters {
    /// Reads one counter (relaxed: a monitoring snapshot, not a fence).
    pub fn get(&self, m: Metric) -> u64 {
        self.vals[m as usize].load(Ordering::Relaxed)
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> [u64; Metric::COUNT] {
        std::array::from_fn(|i| self.vals[i].load(Ordering::Relaxed))
    }
}

/// The worker's private counters, published once per loop iteration.
#[derive(Debug, Clone)]
pub struct LocalCounters {
    vals: [u64; Metric::COUNT],
}

impl Default for LocalCounters {
    fn default() -> Self {
        LocalCounters {
            vals: [0; Metric::COUNT],
        }
    }
}

impl LocalCounters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&mut self, m: Metric, n: u64) {
        self.vals[m as usize] = self.vals[m as usize].wrapping_add(n);
    }

    /// Adds one to a counter.
    #[inline]
    pub fn inc(&mut self, m: Metric) {
        self.add(m, 1);
    }

    /// Reads a counter.
    pub fn get(&self, m: Metric) -> u64 {
        self.vals[m as usize]
    }

    /// Publishes every value (single writer: relaxed stores suffice).
    pub fn publish(&self, to: &WorkerCounters) {
        for (dst, &v) in to.vals.iter().zip(self.vals.iter()) {
            dst.store(v, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indexed() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::COUNT);
    }

    #[test]
    fn publish_roundtrip() {
        let mut l = LocalCounters::default();
        l.add(Metric::RxBytes, 10);
        l.inc(Metric::RxPackets);
        let w = WorkerCounters::default();
        l.publish(&w);
        assert_eq!(w.get(Metric::RxBytes), 10);
        assert_eq!(w.snapshot()[Metric::RxPackets as usize], 1);
    }
}
