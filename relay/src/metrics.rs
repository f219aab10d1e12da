//! Every metric name in one place (STYLE.md practice 10), and the per-worker
//! counters behind them.
//!
//! A worker counts into [`LocalCounters`] (plain `u64`s, no atomics on the
//! packet path) and publishes them into its [`WorkerCounters`] once per loop
//! iteration with relaxed stores. The coordinator's stats thread reads the
//! published values with relaxed loads, without stopping the workers. One
//! writer per counter: the worker that owns it.
//!
//! The Prometheus names (`whelm_relay_*`) are here too: [`prom_series`] maps
//! each per-worker [`Metric`] to its family and label, and [`render`]
//! writes the text exposition format (version 0.0.4) from the workers'
//! counters and the coordinator's [`RelayGauges`].

use std::fmt::Write as _;
use std::sync::Arc;
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
    /// New OVP callsign (or a move to another IP) refused by a station cap.
    DropStationLimit,
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
    /// OVP datagram from the relay's own OVP address, or from a station
    /// whose frames would go back there.
    DropOwnAddress,
    /// A send that found no free send slot (io_uring) and was dropped.
    DropSendSlotsFull,
    /// Receive completions with ENOBUFS (buffer ring empty).
    RecvNoBufs,
    /// Multishot receives re-armed.
    RecvRearms,
    /// Other receive errors.
    RecvErrors,
    /// Waits that let datagrams gather (wake-up coalescing under load).
    CoalescedWaits,
    /// Loop iterations, idle wake-ups included: the worker's heartbeat (the
    /// coordinator feeds the systemd watchdog only while it moves).
    Loops,
    /// Loop iterations (io_uring) or receive batches (mmsg) that handled at
    /// least one completion or datagram.
    Batches,
    /// Completions (io_uring) or datagrams (mmsg) handled in those batches:
    /// with [`Metric::Batches`], the mean batch size.
    BatchItems,
    /// Gauge: io_uring send slots in use (0 on mmsg, which holds no sends
    /// across loops).
    SendSlotsInUse,
    /// Gauge: io_uring send slots in total (0 on mmsg).
    SendSlots,
}

impl Metric {
    /// Every metric in index order.
    pub const ALL: [Metric; 34] = [
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
        Metric::DropStationLimit,
        Metric::DropUnknownSource,
        Metric::DropNotInCall,
        Metric::DropPartnerNotRegistered,
        Metric::DropBandwidth,
        Metric::DropBadHello,
        Metric::DropHelloOverflow,
        Metric::VoiceHellos,
        Metric::DropTruncated,
        Metric::DropOwnAddress,
        Metric::DropSendSlotsFull,
        Metric::RecvNoBufs,
        Metric::RecvRearms,
        Metric::RecvErrors,
        Metric::CoalescedWaits,
        Metric::Loops,
        Metric::Batches,
        Metric::BatchItems,
        Metric::SendSlotsInUse,
        Metric::SendSlots,
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
            Metric::DropStationLimit => "drop_station_limit",
            Metric::DropUnknownSource => "drop_unknown_source",
            Metric::DropNotInCall => "drop_not_in_call",
            Metric::DropPartnerNotRegistered => "drop_partner_not_registered",
            Metric::DropBandwidth => "drop_bandwidth",
            Metric::DropBadHello => "drop_bad_hello",
            Metric::DropHelloOverflow => "drop_hello_overflow",
            Metric::VoiceHellos => "voice_hellos",
            Metric::DropTruncated => "drop_truncated",
            Metric::DropOwnAddress => "drop_own_address",
            Metric::DropSendSlotsFull => "drop_send_slots_full",
            Metric::RecvNoBufs => "recv_enobufs",
            Metric::RecvRearms => "recv_rearms",
            Metric::RecvErrors => "recv_errors",
            Metric::CoalescedWaits => "coalesced_waits",
            Metric::Loops => "loops",
            Metric::Batches => "batches",
            Metric::BatchItems => "batch_items",
            Metric::SendSlotsInUse => "send_slots_in_use",
            Metric::SendSlots => "send_slots",
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
            DropReason::StationLimit => Metric::DropStationLimit,
            DropReason::UnknownSource => Metric::DropUnknownSource,
            DropReason::NotInCall => Metric::DropNotInCall,
            DropReason::PartnerNotRegistered => Metric::DropPartnerNotRegistered,
            DropReason::Bandwidth => Metric::DropBandwidth,
            DropReason::BadHello => Metric::DropBadHello,
            DropReason::HelloOverflow => Metric::DropHelloOverflow,
            DropReason::Truncated => Metric::DropTruncated,
            DropReason::OwnAddress => Metric::DropOwnAddress,
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

/// Prometheus family names (all `whelm_relay_`; counters end in `_total`).
pub mod prom {
    /// `{worker, direction="in|out"}` datagrams.
    pub const PACKETS: &str = "whelm_relay_packets_total";
    /// `{worker, direction}` payload bytes.
    pub const BYTES: &str = "whelm_relay_bytes_total";
    /// `{worker}` valid OVP frames received.
    pub const OVP_FRAMES: &str = "whelm_relay_ovp_frames_total";
    /// `{worker, kind="ovp|voice"}` copies sent.
    pub const FORWARDED: &str = "whelm_relay_forwarded_total";
    /// `{worker}` sends the kernel refused.
    pub const SEND_ERRORS: &str = "whelm_relay_send_errors_total";
    /// `{worker, reason}` datagrams dropped (reason = the `drops` key of the
    /// command channel's counters, plus `hello_denied`).
    pub const DROPS: &str = "whelm_relay_drops_total";
    /// `{worker}` well-formed HELLOs handed to the coordinator.
    pub const VOICE_HELLOS: &str = "whelm_relay_voice_hellos_total";
    /// `{worker}` receive completions with ENOBUFS (buffer ring empty).
    pub const RECV_ENOBUFS: &str = "whelm_relay_recv_enobufs_total";
    /// `{worker}` multishot receives (re-)armed.
    pub const RECV_REARMS: &str = "whelm_relay_recv_rearms_total";
    /// `{worker}` other receive errors.
    pub const RECV_ERRORS: &str = "whelm_relay_recv_errors_total";
    /// `{worker}` coalesced waits.
    pub const COALESCED_WAITS: &str = "whelm_relay_coalesced_waits_total";
    /// `{worker}` loop iterations (the heartbeat the watchdog checks).
    pub const LOOPS: &str = "whelm_relay_worker_loops_total";
    /// `{worker}` summary: `_sum` completions/datagrams, `_count` batches.
    pub const BATCH_SIZE: &str = "whelm_relay_batch_size";
    /// `{worker}` io_uring send slots in use (ring occupancy).
    pub const SEND_SLOTS_IN_USE: &str = "whelm_relay_send_slots_in_use";
    /// `{worker}` io_uring send slots in total.
    pub const SEND_SLOTS: &str = "whelm_relay_send_slots";
    /// Workers running.
    pub const WORKERS: &str = "whelm_relay_workers";
    /// `{worker, core, engine}` = 1.
    pub const WORKER_INFO: &str = "whelm_relay_worker_info";
    /// Calls installed.
    pub const CALLS: &str = "whelm_relay_active_calls";
    /// Users allowed (by control).
    pub const USERS: &str = "whelm_relay_voice_users";
    /// OVP stations in the registry.
    pub const STATIONS: &str = "whelm_relay_active_stations";
    /// Stations removed by the inactivity timeout.
    pub const TIMED_OUT: &str = "whelm_relay_stations_timed_out_total";
    /// `{direction}` bandwidth in use over the last second.
    pub const BANDWIDTH: &str = "whelm_relay_bandwidth_bits_per_second";
    /// The bandwidth limit each way (0 = none).
    pub const BANDWIDTH_LIMIT: &str = "whelm_relay_bandwidth_limit_bits_per_second";
    /// `{result="ok|error"}` configuration reloads.
    pub const RELOADS: &str = "whelm_relay_config_reloads_total";
}

/// The Prometheus family of a per-worker metric and its extra label.
pub fn prom_series(m: Metric) -> (&'static str, Option<(&'static str, &'static str)>) {
    use prom::*;
    match m {
        Metric::RxPackets => (PACKETS, Some(("direction", "in"))),
        Metric::TxPackets => (PACKETS, Some(("direction", "out"))),
        Metric::RxBytes => (BYTES, Some(("direction", "in"))),
        Metric::TxBytes => (BYTES, Some(("direction", "out"))),
        Metric::OvpFrames => (OVP_FRAMES, None),
        Metric::OvpForwarded => (FORWARDED, Some(("kind", "ovp"))),
        Metric::VoiceForwarded => (FORWARDED, Some(("kind", "voice"))),
        Metric::TxErrors => (SEND_ERRORS, None),
        Metric::VoiceHellos => (VOICE_HELLOS, None),
        Metric::RecvNoBufs => (RECV_ENOBUFS, None),
        Metric::RecvRearms => (RECV_REARMS, None),
        Metric::RecvErrors => (RECV_ERRORS, None),
        Metric::CoalescedWaits => (COALESCED_WAITS, None),
        Metric::Loops => (LOOPS, None),
        Metric::Batches => ("whelm_relay_batch_size_count", None),
        Metric::BatchItems => ("whelm_relay_batch_size_sum", None),
        Metric::SendSlotsInUse => (SEND_SLOTS_IN_USE, None),
        Metric::SendSlots => (SEND_SLOTS, None),
        other => (DROPS, drop_key(other).map(|r| ("reason", r))),
    }
}

/// Numbers only the coordinator knows, published for the endpoint. Written
/// by the coordinator thread only; read by the metrics thread.
#[derive(Debug, Default)]
pub struct RelayGauges {
    /// Calls installed.
    pub calls: AtomicU64,
    /// Users allowed.
    pub users: AtomicU64,
    /// OVP stations.
    pub stations: AtomicU64,
    /// Stations timed out since start.
    pub timed_out: AtomicU64,
    /// Bits per second in over the last second.
    pub bps_in: AtomicU64,
    /// Bits per second out over the last second.
    pub bps_out: AtomicU64,
    /// Bandwidth limit each way, bits per second (0 = none).
    pub bps_limit: AtomicU64,
    /// Configuration reloads applied.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads refused.
    pub reloads_failed: AtomicU64,
    /// HELLOs refused, per worker that received them.
    pub hello_denied: Vec<AtomicU64>,
}

impl RelayGauges {
    /// Gauges for `workers` workers.
    pub fn new(workers: usize) -> RelayGauges {
        RelayGauges {
            hello_denied: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ..RelayGauges::default()
        }
    }
}

/// One worker as the endpoint shows it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// CPU it is pinned to.
    pub cpu: usize,
    /// `uring` or `mmsg`.
    pub engine: String,
    /// Its published counters.
    pub counters: Arc<WorkerCounters>,
}

fn help(family: &str) -> (&'static str, &'static str) {
    use prom::*;
    match family {
        PACKETS => (
            "counter",
            "Datagrams received (in) and sent (out) per worker.",
        ),
        BYTES => (
            "counter",
            "Payload bytes received (in) and sent (out) per worker.",
        ),
        OVP_FRAMES => ("counter", "Valid OVP frames received."),
        FORWARDED => (
            "counter",
            "Copies forwarded, OVP conference or Whelm voice.",
        ),
        SEND_ERRORS => ("counter", "Sends the kernel refused."),
        DROPS => ("counter", "Datagrams dropped, by reason."),
        VOICE_HELLOS => ("counter", "Well-formed voice HELLOs received."),
        RECV_ENOBUFS => (
            "counter",
            "Receive completions that found the buffer ring empty.",
        ),
        RECV_REARMS => ("counter", "Multishot receives armed or re-armed."),
        RECV_ERRORS => ("counter", "Other receive errors."),
        COALESCED_WAITS => (
            "counter",
            "Waits that let datagrams gather (wake-up coalescing under load).",
        ),
        LOOPS => ("counter", "Worker loop iterations, idle wake-ups included."),
        BATCH_SIZE => (
            "summary",
            "Completions (io_uring) or datagrams (mmsg) per non-empty batch.",
        ),
        SEND_SLOTS_IN_USE => ("gauge", "io_uring send slots in use."),
        SEND_SLOTS => ("gauge", "io_uring send slots in total (0 on mmsg)."),
        _ => ("untyped", "Whelm relay metric."),
    }
}

/// The Prometheus text exposition (version 0.0.4) of every metric.
pub fn render(workers: &[WorkerView], g: &RelayGauges) -> String {
    let snaps: Vec<[u64; Metric::COUNT]> = workers.iter().map(|w| w.counters.snapshot()).collect();
    let mut o = String::with_capacity(16 * 1024);
    let mut done: Vec<&str> = Vec::new();
    for m in Metric::ALL {
        let (name, _) = prom_series(m);
        let family = name
            .strip_suffix("_count")
            .or_else(|| name.strip_suffix("_sum"))
            .unwrap_or(name);
        if done.contains(&family) {
            continue;
        }
        done.push(family);
        let (kind, text) = help(family);
        let _ = writeln!(o, "# HELP {family} {text}\n# TYPE {family} {kind}");
        for n in Metric::ALL {
            let (nname, label) = prom_series(n);
            let nfamily = nname
                .strip_suffix("_count")
                .or_else(|| nname.strip_suffix("_sum"))
                .unwrap_or(nname);
            if nfamily != family {
                continue;
            }
            for (i, snap) in snaps.iter().enumerate() {
                let extra = label
                    .map(|(k, v)| format!(",{k}=\"{v}\""))
                    .unwrap_or_default();
                let _ = writeln!(o, "{nname}{{worker=\"{i}\"{extra}}} {}", snap[n as usize]);
            }
        }
        if family == prom::DROPS {
            for (i, d) in g.hello_denied.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{family}{{worker=\"{i}\",reason=\"{}\"}} {}",
                    stat::HELLO_DENIED,
                    d.load(Ordering::Relaxed)
                );
            }
        }
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let one = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    one(
        &mut o,
        prom::WORKERS,
        "gauge",
        "Worker threads (one per core).",
        workers.len() as u64,
    );
    let _ = writeln!(
        o,
        "# HELP {n} Worker core and engine.\n# TYPE {n} gauge",
        n = prom::WORKER_INFO
    );
    for (i, w) in workers.iter().enumerate() {
        let _ = writeln!(
            o,
            "{}{{worker=\"{i}\",core=\"{}\",engine=\"{}\"}} 1",
            prom::WORKER_INFO,
            w.cpu,
            w.engine
        );
    }
    one(
        &mut o,
        prom::CALLS,
        "gauge",
        "Calls installed.",
        load(&g.calls),
    );
    one(
        &mut o,
        prom::USERS,
        "gauge",
        "Users allowed by control.",
        load(&g.users),
    );
    one(
        &mut o,
        prom::STATIONS,
        "gauge",
        "OVP stations in the conference.",
        load(&g.stations),
    );
    one(
        &mut o,
        prom::TIMED_OUT,
        "counter",
        "OVP stations removed by the inactivity timeout.",
        load(&g.timed_out),
    );
    let _ = writeln!(
        o,
        "# HELP {n} Bandwidth in use over the last second.\n# TYPE {n} gauge\n\
         {n}{{direction=\"in\"}} {}\n{n}{{direction=\"out\"}} {}",
        load(&g.bps_in),
        load(&g.bps_out),
        n = prom::BANDWIDTH
    );
    one(
        &mut o,
        prom::BANDWIDTH_LIMIT,
        "gauge",
        "Voice bandwidth limit each way (0 = none).",
        load(&g.bps_limit),
    );
    let _ = writeln!(
        o,
        "# HELP {n} Configuration reloads.\n# TYPE {n} counter\n\
         {n}{{result=\"ok\"}} {}\n{n}{{result=\"error\"}} {}",
        load(&g.reloads_ok),
        load(&g.reloads_failed),
        n = prom::RELOADS
    );
    o
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

    /// Sets a gauge.
    #[inline]
    pub fn set(&mut self, m: Metric, v: u64) {
        self.vals[m as usize] = v;
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
    fn render_is_comment_or_name_labels_value() {
        let c = Arc::new(WorkerCounters::default());
        let mut l = LocalCounters::default();
        l.add(Metric::RxPackets, 3);
        l.inc(Metric::DropBadToken);
        l.publish(&c);
        let w = WorkerView {
            cpu: 1,
            engine: "mmsg".into(),
            counters: c,
        };
        let text = render(&[w.clone(), w], &RelayGauges::new(2));
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let f = rest.split(' ').next().unwrap();
                assert!(!families.contains(&f.to_owned()), "{f} twice");
                families.push(f.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, v) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("whelm_relay_"), "{line}");
            v.parse::<u64>().unwrap();
        }
        assert!(text.contains("whelm_relay_packets_total{worker=\"1\",direction=\"in\"} 3"));
        assert!(text.contains("whelm_relay_drops_total{worker=\"0\",reason=\"bad_token\"} 1"));
        assert!(text.contains("whelm_relay_drops_total{worker=\"1\",reason=\"hello_denied\"} 0"));
        assert!(text.contains("whelm_relay_batch_size_count{worker=\"0\"} 0"));
        assert!(
            text.contains("whelm_relay_worker_info{worker=\"0\",core=\"1\",engine=\"mmsg\"} 1")
        );
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
