//! The coordinator thread: sole writer of the authoritative station
//! [`Registry`], broadcaster of table [`Update`]s to every worker, timer for
//! station timeouts (it runs whether or not packets arrive), and the stats
//! printer (every `stats_interval` and at shutdown).
//!
//! Stats lines are `key=value` fields after a fixed word, for grepping:
//! `stats kind=periodic|final frames_received=.. frames_forwarded=..
//! active_stations=.. decode_errors=.. timed_out=.. rate_limited=.. ...`,
//! then one `station callsign=.. addr=.. last_seen_s=..` line per station and
//! one `worker id=.. core=.. engine=.. <metric>=..` line per worker.

use std::fmt::Write as _;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::engine::EngineKind;
use crate::metrics::{Metric, WorkerCounters, stat};
use crate::net::display_addr;
use crate::registry::{Notice, Registry};
use crate::update::{Event, Update};

/// What the coordinator knows of a worker, for stats lines.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// CPU.
    pub cpu: usize,
    /// Engine.
    pub engine: EngineKind,
    /// Its published counters.
    pub counters: Arc<WorkerCounters>,
}

/// The coordinator's state.
pub struct Coordinator {
    registry: Registry,
    events: Receiver<Event>,
    workers: Vec<Sender<Update>>,
    info: Vec<WorkerInfo>,
    stats_interval: Duration,
    tick: Duration,
    last_totals: [u64; Metric::COUNT],
}

/// Sums one metric over totals.
fn total(t: &[u64; Metric::COUNT], m: Metric) -> u64 {
    t[m as usize]
}

impl Coordinator {
    /// A coordinator for `workers` (update senders, in worker order).
    pub fn new(
        timeout: Duration,
        stats_interval: Duration,
        events: Receiver<Event>,
        workers: Vec<Sender<Update>>,
        info: Vec<WorkerInfo>,
    ) -> Coordinator {
        // Expiry resolution: a quarter of the timeout, at most one second.
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        Coordinator {
            registry: Registry::new(timeout),
            events,
            workers,
            info,
            stats_interval,
            tick,
            last_totals: [0; Metric::COUNT],
        }
    }

    /// Starts the thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("relay-coord".into())
            .spawn(move || self.run())
    }

    fn broadcast(&self, u: Update) {
        for w in &self.workers {
            // A worker that already stopped does not need updates.
            let _ = w.send(u);
        }
    }

    fn notice(&self, n: Notice) {
        match n {
            Notice::New(id, a) => tracing::info!("NEW STATION: {id} at {}", display_addr(a)),
            Notice::Moved(id, from, to) => tracing::info!(
                "STATION MOVED: {id} from {} to {}",
                display_addr(from),
                display_addr(to)
            ),
            Notice::TimedOut(id, a) => {
                tracing::info!("STATION TIMED OUT: {id} at {}", display_addr(a))
            }
        }
    }

    fn run(mut self) {
        let mut next_stats = Instant::now() + self.stats_interval;
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick
                .min(next_stats)
                .saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(Event::Learned { what, at, worker }) => {
                    tracing::trace!(worker, ?what, "learned");
                    let (u, n) = self.registry.learned(what, at);
                    if let Some(n) = n {
                        self.notice(n);
                    }
                    if let Some(u) = u {
                        self.broadcast(u);
                    }
                }
                Ok(Event::Seen { ids, at }) => self.registry.seen(&ids, at),
                Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.print_stats(true);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.tick;
                for (u, n) in self.registry.expire(now) {
                    self.notice(n);
                    self.broadcast(u);
                }
            }
            if now >= next_stats {
                next_stats = now + self.stats_interval;
                self.print_stats(false);
            }
        }
    }

    fn print_stats(&mut self, final_: bool) {
        let mut totals = [0u64; Metric::COUNT];
        let per_worker: Vec<[u64; Metric::COUNT]> =
            self.info.iter().map(|w| w.counters.snapshot()).collect();
        for snap in &per_worker {
            for (t, v) in totals.iter_mut().zip(snap.iter()) {
                *t += v;
            }
        }
        let decode = |t: &[u64; Metric::COUNT]| {
            total(t, Metric::DropTooShort)
                + total(t, Metric::DropBadToken)
                + total(t, Metric::DropBadStationId)
        };
        let mut line = format!(
            "stats kind={} {}={} {}={} {}={} {}={} {}={} {}={} {}={}",
            if final_ { "final" } else { "periodic" },
            stat::FRAMES_RECEIVED,
            total(&totals, Metric::OvpFrames),
            stat::FRAMES_FORWARDED,
            total(&totals, Metric::OvpForwarded),
            stat::ACTIVE_STATIONS,
            self.registry.len(),
            stat::DECODE_ERRORS,
            decode(&totals),
            stat::TIMED_OUT,
            self.registry.timed_out(),
            stat::RATE_LIMITED,
            total(&totals, Metric::DropRateLimited),
            stat::LIST_DROPS,
            total(&totals, Metric::DropDenied) + total(&totals, Metric::DropNotAllowed),
        );
        for m in Metric::ALL {
            let _ = write!(line, " {}={}", m.name(), total(&totals, m));
        }
        tracing::info!("{line}");
        let now = Instant::now();
        for (id, s) in self.registry.stations() {
            tracing::info!(
                "station callsign={id} addr={} last_seen_s={}",
                display_addr(s.src),
                now.saturating_duration_since(s.last_seen).as_secs()
            );
        }
        for (i, (w, snap)) in self.info.iter().zip(per_worker.iter()).enumerate() {
            let mut l = format!("worker id={i} core={} engine={}", w.cpu, w.engine);
            for m in Metric::ALL {
                let _ = write!(l, " {}={}", m.name(), snap[m as usize]);
            }
            tracing::info!("{l}");
        }
        // Decode-error alarm over the interval (over the whole run at the end).
        let base = if final_ {
            [0; Metric::COUNT]
        } else {
            self.last_totals
        };
        let frames = total(&totals, Metric::OvpFrames) - total(&base, Metric::OvpFrames);
        let errors = decode(&totals) - decode(&base);
        if errors > 0 && errors * 10 > frames + errors {
            tracing::warn!(
                "decode errors exceed 10% of frames: decode_errors={errors} frames={}",
                frames + errors
            );
        }
        self.last_totals = totals;
    }
}
