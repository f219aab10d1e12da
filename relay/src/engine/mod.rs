//! Worker threads and their I/O engines.
//!
//! [`spawn_worker`] starts one thread: it pins itself, builds its engine
//! (io_uring, or recvmmsg/sendmmsg when io_uring setup fails or is not
//! chosen), reports which one to the starter, then loops until shutdown.
//! Both engines share [`WorkerCtx`]: the sockets, the table replica, the
//! update and event channels, the counters, and the loop's common steps.
//!
//! Loop order of both engines (STYLE.md practice 9): apply table updates,
//! reap completions / receive a batch, process it through
//! [`crate::batch::process`], submit the sends, report what was learned,
//! timers (seen-report, limiter purge), publish counters, wait. The wait
//! ends on traffic, on the worker's eventfd (written by the coordinator after
//! it queued updates, so a table change reaches an idle worker at once), or
//! after [`WORKER_TICK`] (timers, shutdown).
//!
//! Under load (above `coalesce_above` datagrams/s per worker) the wait is
//! a [`Coalescer`] delay instead: a worker wakes at most once per
//! `coalesce_us`, so that one wake-up, one pass and one send submission
//! handle a batch.

pub mod bufring;
pub mod mmsg;
pub mod uring;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use nix::sys::eventfd::EventFd;
use socket2::Socket;

use crate::config::{EngineChoice, EngineSizes};
use crate::core::{Core, PortKind};
use crate::metrics::{LocalCounters, Metric, WorkerCounters};
use crate::update::{Event, Hello, Update};

/// Longest an idle worker sleeps before looking at updates and shutdown.
pub const WORKER_TICK: Duration = Duration::from_millis(100);
/// How often a worker reports the stations it saw to the coordinator.
pub const SEEN_REPORT: Duration = Duration::from_millis(500);

/// How long a worker measures its receive rate before it decides again
/// whether to coalesce wake-ups. Long enough that a sender's burst (a
/// sendmmsg of 64 datagrams) at a low average rate does not switch it on:
/// with 2 ms, a 20,000/s load still saw a hundred coalesced waits per 5 s.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(10);

/// Wake-up coalescing, the interrupt moderation of a NIC done by the worker
/// itself: at low rates every datagram wakes the worker at once (lowest
/// latency); above a rate, the worker wakes at most once per `delay`, so
/// that one wake-up, one pass and one send submission handle several
/// datagrams. The rate is measured per [`COALESCE_WINDOW`], with
/// hysteresis: on at the threshold, off below half of it.
///
/// The delay runs from the previous wake-up, not from the end of the pass:
/// a pass that took longer than `delay` is followed by no wait at all. A
/// fixed sleep after each pass would idle the core for `delay` per pass
/// whatever the load, which near saturation stretches every cycle (at 84%
/// busy, a 50 µs sleep made 300 µs cycles and a 290 µs median latency) and
/// takes capacity away exactly when it is short.
#[derive(Debug, Clone)]
pub struct Coalescer {
    delay: Duration,
    above: u64,
    window_start: Instant,
    received: u64,
    active: bool,
    /// Start of the latest pass (the previous wake-up).
    pass_start: Instant,
}

impl Coalescer {
    /// `delay` zero turns coalescing off; `above` is in datagrams/s.
    pub fn new(delay: Duration, above: u32, now: Instant) -> Coalescer {
        Coalescer {
            delay,
            above: u64::from(above),
            window_start: now,
            received: 0,
            active: false,
            pass_start: now,
        }
    }

    /// Counts the `n` datagrams received by the pass that started (its wait
    /// ended) at `pass_start`; at the end of a window, decides.
    pub fn record(&mut self, pass_start: Instant, n: usize) {
        self.pass_start = pass_start;
        self.received += n as u64;
        let elapsed = pass_start.saturating_duration_since(self.window_start);
        if elapsed < COALESCE_WINDOW {
            return;
        }
        // received / elapsed >= above  <=>  received * 1e9 >= above * ns
        let lhs = u128::from(self.received) * 1_000_000_000;
        let rhs = u128::from(self.above) * elapsed.as_nanos();
        self.active = if self.active {
            2 * lhs >= rhs
        } else {
            lhs >= rhs
        };
        self.received = 0;
        self.window_start = pass_start;
    }

    /// Until when the next wait may gather datagrams: `None` when the worker
    /// should wake for the first datagram; else `delay` after the previous
    /// wake-up (a deadline already past: take what has arrived without
    /// waiting). No clock read, so a worker below the rate pays nothing.
    pub fn deadline(&self) -> Option<Instant> {
        (self.active && !self.delay.is_zero()).then(|| self.pass_start + self.delay)
    }
}

/// The engine a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring multishot recvmsg + provided buffers + SendMsg.
    Uring,
    /// recvmmsg/sendmmsg.
    Mmsg,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Uring => "uring",
            EngineKind::Mmsg => "mmsg",
        })
    }
}

/// Everything a worker owns, whatever its engine.
pub struct WorkerCtx {
    /// Worker index.
    pub index: usize,
    /// CPU it is pinned to.
    pub cpu: usize,
    /// Sockets, in [`PORTS`] order.
    pub sockets: Vec<Socket>,
    /// This worker's replica of the tables (it is the only writer).
    pub core: Core,
    /// Table updates from the coordinator.
    pub updates: Receiver<Update>,
    /// Events to the coordinator.
    pub events: Sender<Event>,
    /// HELLOs to the coordinator (bounded; full = dropped and counted).
    pub hellos: Sender<Hello>,
    /// Written by the coordinator after queueing updates.
    pub wake: Arc<EventFd>,
    /// Published counters (this worker writes, the stats thread reads).
    pub counters: Arc<WorkerCounters>,
    /// Private counters.
    pub local: LocalCounters,
    /// Set by main on SIGINT/SIGTERM.
    pub shutdown: Arc<AtomicBool>,
    /// Ring, buffer and batch sizes.
    pub sizes: EngineSizes,
    /// The sockets are IPv6 (dual-stack or v6-only).
    pub v6: bool,
    last_seen_report: Instant,
}

/// The port kind of each socket index.
pub const PORTS: [PortKind; 2] = [PortKind::Ovp, PortKind::Voice];

impl WorkerCtx {
    /// Bundles a worker's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        cpu: usize,
        sockets: Vec<Socket>,
        core: Core,
        updates: Receiver<Update>,
        events: Sender<Event>,
        hellos: Sender<Hello>,
        wake: Arc<EventFd>,
        counters: Arc<WorkerCounters>,
        shutdown: Arc<AtomicBool>,
        sizes: EngineSizes,
        v6: bool,
    ) -> WorkerCtx {
        WorkerCtx {
            index,
            cpu,
            sockets,
            core,
            updates,
            events,
            hellos,
            wake,
            counters,
            local: LocalCounters::default(),
            shutdown,
            sizes,
            v6,
            last_seen_report: Instant::now(),
        }
    }

    /// True once shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Applies every pending table update; acknowledges the highest commit
    /// generation applied to the coordinator.
    pub fn apply_updates(&mut self) {
        let mut generation = None;
        while let Ok(u) = self.updates.try_recv() {
            self.core.apply(&u);
            if let Update::Commit { generation: g, .. } = u {
                generation = Some(g);
            }
        }
        if let Some(generation) = generation {
            let _ = self.events.send(Event::Applied {
                worker: self.index,
                generation,
            });
        }
    }

    /// Sends what the replica learned to the coordinator; runs the timers;
    /// publishes the counters.
    pub fn after_batch(&mut self, now: Instant) {
        if self.core.has_hellos() {
            let worker = self.index;
            let mut overflow = 0;
            for h in self.core.take_hellos() {
                let msg = Hello {
                    worker,
                    user: h.user,
                    token: h.token,
                    src: h.src,
                };
                if let Err(TrySendError::Full(_)) = self.hellos.try_send(msg) {
                    overflow += 1;
                }
            }
            self.local.add(Metric::DropHelloOverflow, overflow);
        }
        if self.core.has_learned() {
            for what in self.core.take_learned() {
                // The coordinator outlives the workers; a send error means it
                // is gone and we are stopping anyway.
                let _ = self.events.send(Event::Learned {
                    worker: self.index,
                    what,
                    at: now,
                });
            }
        }
        if now.saturating_duration_since(self.last_seen_report) >= SEEN_REPORT {
            self.last_seen_report = now;
            let ids = self.core.take_seen();
            if !ids.is_empty() {
                let _ = self.events.send(Event::Seen { ids, at: now });
            }
            self.core.purge_limiter(now);
        }
        // The heartbeat the watchdog checks: every iteration, idle ones too.
        self.local.inc(Metric::Loops);
        self.local.publish(&self.counters);
    }
}

/// What a worker reports once its engine is set up.
pub type ReadyReport = Result<(usize, usize, EngineKind), String>;

/// Starts a worker thread. It reports its engine (or the setup error) on
/// `ready` before entering its loop.
pub fn spawn_worker(
    ctx: WorkerCtx,
    choice: EngineChoice,
    ready: Sender<ReadyReport>,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name(format!("relay-w{}", ctx.index))
        .spawn(move || run_worker(ctx, choice, ready))
}

fn run_worker(
    mut ctx: WorkerCtx,
    choice: EngineChoice,
    ready: Sender<ReadyReport>,
) -> anyhow::Result<()> {
    if let Err(e) = crate::net::pin_to(ctx.cpu) {
        tracing::warn!(worker = ctx.index, "not pinned: {e:#}");
    }
    // Coalesced waits are tens of microseconds; the default 50 µs slack
    // would double them.
    if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
        tracing::warn!(worker = ctx.index, "timer slack left at default: {e}");
    }
    let (index, cpu) = (ctx.index, ctx.cpu);
    if choice != EngineChoice::Mmsg {
        match uring::UringEngine::new(&ctx) {
            Ok(mut eng) => {
                let _ = ready.send(Ok((index, cpu, EngineKind::Uring)));
                return eng.run(&mut ctx);
            }
            Err(e) if choice == EngineChoice::Uring => {
                let msg = format!("worker {index}: io_uring setup failed: {e:#}");
                let _ = ready.send(Err(msg.clone()));
                anyhow::bail!(msg);
            }
            Err(e) => {
                tracing::warn!(
                    worker = index,
                    "io_uring setup failed, using recvmmsg/sendmmsg: {e:#}"
                );
            }
        }
    }
    let mut eng = mmsg::MmsgEngine::new(&ctx);
    let _ = ready.send(Ok((index, cpu, EngineKind::Mmsg)));
    eng.run(&mut ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_follows_the_rate_with_hysteresis() {
        let t0 = Instant::now();
        let w = COALESCE_WINDOW;
        let d = Duration::from_micros(50);
        // Datagrams in one window at `rate` per second.
        let per_window = |rate: u64| (rate * w.as_micros() as u64 / 1_000_000) as usize;
        let mut c = Coalescer::new(d, 50_000, t0);
        assert_eq!(c.deadline(), None);
        // 40k/s, in two halves: stays off; a decision needs a whole window.
        c.record(t0 + w / 2, per_window(20_000));
        assert_eq!(c.deadline(), None);
        c.record(t0 + w, per_window(20_000));
        assert_eq!(c.deadline(), None);
        // A burst of 64 inside a window at 20k/s on average: off.
        c.record(t0 + w + w / 4, 64);
        c.record(t0 + 2 * w, per_window(20_000) - 64);
        assert_eq!(c.deadline(), None);
        // 60k/s: on.
        c.record(t0 + 3 * w, per_window(60_000));
        assert_eq!(c.deadline(), Some(t0 + 3 * w + d));
        // 30k/s: still on (above half the threshold).
        c.record(t0 + 4 * w, per_window(30_000));
        assert_eq!(c.deadline(), Some(t0 + 4 * w + d));
        // 20k/s: off.
        c.record(t0 + 5 * w, per_window(20_000));
        assert_eq!(c.deadline(), None);
        // A silent second counts as a rate of almost zero.
        c.record(t0 + 5 * w + Duration::from_secs(1), per_window(60_000));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn the_delay_runs_from_the_previous_wake_up() {
        let t0 = Instant::now();
        let d = Duration::from_micros(50);
        let mut c = Coalescer::new(d, 1, t0);
        let t1 = t0 + COALESCE_WINDOW;
        c.record(t1, 1_000);
        // What is left of the wait at `now`.
        let left =
            |c: &Coalescer, now: Instant| c.deadline().map(|dl| dl.saturating_duration_since(now));
        // A pass of 20 us leaves 30 us to wait.
        assert_eq!(
            left(&c, t1 + Duration::from_micros(20)),
            Some(Duration::from_micros(30))
        );
        // A pass longer than the delay: no wait, take what is there.
        assert_eq!(
            left(&c, t1 + Duration::from_micros(80)),
            Some(Duration::ZERO)
        );
        // The next pass starts the clock again.
        let t2 = t1 + Duration::from_micros(80);
        c.record(t2, 10);
        assert_eq!(
            left(&c, t2 + Duration::from_micros(10)),
            Some(Duration::from_micros(40))
        );
    }

    #[test]
    fn zero_delay_never_coalesces() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO, 1, t0);
        c.record(t0 + 2 * COALESCE_WINDOW, 1_000_000);
        assert_eq!(c.deadline(), None);
    }
}
