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
