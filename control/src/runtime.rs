//! Wiring: the threads and the channels between them.
//!
//! ```text
//!  network thread ──Input──▶ machine thread ──StoreJob──▶ store worker
//!   (mio, net.rs)  ◀─NetCmd── (machine/)     ◀──Input─────  (store/worker.rs)
//!        ▲  Waker                 │ (id, Command) ▲ Input::Relay
//!        └────────────────────────┘──────────▶ relay link (relay_link.rs)
//!  signal thread ──Input::Shutdown / Reconfigure──▶ machine thread
//!        └── SIGHUP: NetCmd::Reconfigure ──▶ network thread
//!  metrics thread (whelm_daemon::metrics_http) reads the atomics every thread publishes
//! ```
//!
//! Order at start: store reachable (migrate), listeners bound (plain, TLS,
//! metrics), threads up, the ready line, then `READY=1`. The machine loop
//! feeds the systemd watchdog (observe.rs), publishes its metrics every
//! tick and logs the summary line; at shutdown it sends `STOPPING=1`.
//!
//! The machine thread drains its inputs in bursts, applies each, sends the
//! effects on, and wakes the network thread once per burst. It ticks on its
//! own clock, so timers run on an idle server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::Waker;
use whelm_daemon::logging::LogHandle;
use whelm_daemon::metrics_http::MetricsServer;
use whelm_daemon::notify::Notifier;

use crate::cli::Cli;
use crate::config::Config;
use crate::jobs::{Effect, Input, StoreJob};
use crate::machine::Machine;
use crate::metrics::Metrics;
use crate::net::{Net, NetCmd, Progress};
use crate::observe::{Reloader, Watchdog};
use crate::relay_link::RelayLink;
use crate::store::{self, Store};

/// Inputs handled per burst before effects go out.
const BURST: usize = 4096;

/// Binds the listener (with a large accept backlog).
pub fn bind(addr: SocketAddr) -> anyhow::Result<mio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .with_context(|| format!("creating a socket for {addr}"))?;
    sock.set_reuse_address(true)
        .with_context(|| format!("SO_REUSEADDR on {addr}"))?;
    sock.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    sock.listen(4096)
        .with_context(|| format!("cannot listen on {addr}"))?;
    sock.set_nonblocking(true)
        .with_context(|| format!("non-blocking {addr}"))?;
    let std_listener: std::net::TcpListener = sock.into();
    Ok(mio::net::TcpListener::from_std(std_listener))
}

/// Descriptors control needs besides its sessions: listeners, poll,
/// waker, store files or connection, pipes, the metrics endpoint.
const FD_RESERVE: u64 = 64;

/// Raises the open-file limit's soft value to the hard one (every session
/// is a descriptor: 10,000 sessions need it) and logs the limit in force.
/// Returns how many sessions it leaves room for (the limit less
/// [`FD_RESERVE`]): more would starve the store and the relay link of
/// descriptors, so sessions are capped there and a warning says so when
/// that is below `max_connections`.
fn raise_nofile(max_connections: usize) -> usize {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return usize::MAX;
        }
    };
    let mut limit = soft;
    if soft < hard {
        // An unlimited hard limit is not a valid soft one: the kernel caps
        // open files at fs.nr_open.
        let want = if hard == RLIM_INFINITY {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(1 << 20)
        } else {
            hard
        };
        if want > soft {
            match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
                Ok(()) => limit = want,
                Err(e) => tracing::warn!(
                    error = %e,
                    soft,
                    hard,
                    "could not raise the open-file limit (RLIMIT_NOFILE)"
                ),
            }
        }
    }
    tracing::info!(soft = limit, hard, "open-file limit (RLIMIT_NOFILE)");
    let cap = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    warn_if_capped(cap, max_connections);
    cap
}

/// Warns when the descriptor cap on sessions (see [`raise_nofile`]) is below
/// `max_connections`, at start and at a reload that sets it.
pub(crate) fn warn_if_capped(cap: usize, max_connections: usize) {
    if cap < max_connections {
        tracing::warn!(
            max_connections,
            sessions = cap,
            "the open-file limit is below max_connections plus {FD_RESERVE}: \
             sessions are capped at the limit less {FD_RESERVE}, and the excess is \
             refused as at max_connections; raise LimitNOFILE"
        );
    }
}

/// What is ready, for the one ready line scripts and tests wait for.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The line protocol's address (port resolved).
    pub listen: SocketAddr,
    /// The store's description (DSN password masked).
    pub store: String,
    /// The relay link's description.
    pub relay: String,
    /// The Prometheus endpoint, when on.
    pub metrics: Option<SocketAddr>,
    /// The TLS listener, when on.
    pub tls: Option<SocketAddr>,
}

impl Ready {
    /// `whelm-control ready: listen=ADDR store=S relay=R [metrics=ADDR]
    /// [tls=ADDR]`. Fields are only ever appended.
    pub fn line(&self) -> String {
        let mut l = format!(
            "whelm-control ready: listen={} store={} relay={}",
            self.listen, self.store, self.relay
        );
        if let Some(m) = self.metrics {
            l.push_str(&format!(" metrics={m}"));
        }
        if let Some(t) = self.tls {
            l.push_str(&format!(" tls={t}"));
        }
        l
    }
}

/// What `serve` needs besides the configuration.
pub struct Options {
    /// The command line, re-applied over the file on SIGHUP.
    pub cli: Cli,
    /// The log filter's handle, for reloads.
    pub log: Option<LogHandle>,
}

/// Runs the server until SIGTERM/SIGINT; SIGHUP reloads the configuration.
/// `ready` is called once every listener is bound and the store answered;
/// then `READY=1` goes to the service manager.
pub fn serve(
    cfg: &Config,
    mut store: Box<dyn Store>,
    opts: Options,
    ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let session_cap = raise_nofile(cfg.net.max_connections);
    let mut notifier = Notifier::new();
    notifier.status("starting: opening the store");
    store
        .migrate()
        .with_context(|| format!("creating tables in {}", store.describe()))?;
    let listener = bind(cfg.listen)?;
    let local = listener
        .local_addr()
        .with_context(|| format!("local address of {}", cfg.listen))?;
    let tls = match &cfg.tls {
        Some(t) => {
            let config = crate::tls::load(&t.cert, &t.key)?;
            let l = bind(t.listen).with_context(|| "the TLS listener")?;
            let addr = l
                .local_addr()
                .with_context(|| format!("local address of {}", t.listen))?;
            Some((l, config, addr))
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let metrics_server = match cfg.metrics_listen {
        Some(a) => {
            let m = metrics.clone();
            Some(MetricsServer::start(a, "metrics", move || m.render())?)
        }
        None => None,
    };

    let (in_tx, in_rx) = crossbeam_channel::unbounded::<Input>();
    let (net_tx, net_rx) = crossbeam_channel::unbounded::<NetCmd>();
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<StoreJob>();

    let progress = Progress::new();
    let watchdog = Watchdog::from_env(progress.clone());
    let idle_wait = watchdog.as_ref().map_or(Duration::from_secs(1), |w| {
        (w.period() / 4).min(Duration::from_secs(1))
    });
    let (mut net, waker) = Net::new(listener, net_rx, in_tx.clone(), cfg.net.clone())
        .context("setting up the network poll")?;
    net.observe(metrics.clone(), progress, idle_wait);
    net.cap_sessions(session_cap);
    let tls_addr = match tls {
        Some((l, config, addr)) => {
            net.set_tls(l, config)
                .context("registering the TLS listener")?;
            Some(addr)
        }
        None => None,
    };
    let describe = store.describe();
    let net_thread = thread::Builder::new()
        .name("net".into())
        .spawn(move || net.run())
        .context("spawning the network thread")?;
    let answers = in_tx.clone();
    let batch_max = cfg.batch_max;
    let store_metrics = metrics.clone();
    let store_thread = thread::Builder::new()
        .name("store".into())
        .spawn(move || store::worker::run(store, job_rx, answers, batch_max, store_metrics))
        .context("spawning the store worker")?;

    let summary_ms = Arc::new(AtomicU64::new(
        cfg.summary_interval
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    ));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let mut reloader = Reloader {
        cli: opts.cli,
        current: cfg.clone(),
        machine: in_tx.clone(),
        net: net_tx.clone(),
        waker: waker.clone(),
        log: opts.log,
        metrics: metrics.clone(),
        summary_ms: summary_ms.clone(),
        session_cap,
    };
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reloader.reload();
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
                let _ = reloader.machine.send(Input::Shutdown);
                break;
            }
        })
        .context("spawning the signal thread")?;
    let relay = RelayLink::start(cfg.relay_socket.clone(), in_tx.clone())?;
    drop(in_tx);
    let r = Ready {
        listen: local,
        store: describe,
        relay: relay.describe(),
        metrics: metrics_server.as_ref().map(|m| m.addr),
        tls: tls_addr,
    };
    // The machine's first figures (the call limit, zero sessions) are
    // published before the ready line, so a scrape right after it never
    // reads the metrics' initial zeros.
    let machine = Machine::new(cfg.machine.clone());
    metrics.publish_machine(&machine.stats());
    ready(&r);
    notifier.ready(&format!("serving on {local}"));

    let ops = Ops {
        notifier,
        watchdog,
        metrics: metrics.clone(),
        summary_ms,
    };
    machine_loop(machine, cfg, &in_rx, &net_tx, &waker, job_tx, relay, ops);

    // The store worker has the final Offline job; it exits when its queue
    // is drained and the channel closed.
    if store_thread.join().is_err() {
        tracing::error!("store worker panicked");
    }
    let _ = net_tx.send(NetCmd::Shutdown);
    let _ = waker.wake();
    if net_thread.join().is_err() {
        tracing::error!("network thread panicked");
    }
    if let Some(m) = metrics_server {
        m.stop();
    }
    tracing::info!("final summary: {}", metrics.summary());
    tracing::info!("stopped");
    Ok(())
}

/// The machine loop's operations side: notification, watchdog, metrics
/// and the summary line.
struct Ops {
    notifier: Notifier,
    watchdog: Option<Watchdog>,
    metrics: Arc<Metrics>,
    summary_ms: Arc<AtomicU64>,
}

fn tick_interval(cfg: &Config) -> Duration {
    let m = &cfg.machine;
    let shortest = m
        .heartbeat_check
        .min(m.ring_timeout)
        .min(m.auth_timeout)
        .min(m.heartbeat_timeout);
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

#[allow(clippy::too_many_arguments)]
fn machine_loop(
    mut machine: Machine,
    cfg: &Config,
    inputs: &Receiver<Input>,
    net: &Sender<NetCmd>,
    waker: &Arc<Waker>,
    jobs: Sender<StoreJob>,
    mut relay: RelayLink,
    mut ops: Ops,
) {
    // Ticks stay at least as frequent as the shortest timer configured at
    // start (100 ms at most), so a reload to shorter timers still works.
    let tick = tick_interval(cfg);
    let mut next_tick = Instant::now();
    let mut last_summary = Instant::now();
    let mut effects = Vec::with_capacity(1024);
    let mut stop = false;
    ops.metrics.publish_machine(&machine.stats());
    while !stop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = match inputs.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut now = Instant::now();
        if let Some(first) = first {
            stop |= matches!(first, Input::Shutdown);
            machine.handle(now, first, &mut effects);
            for _ in 0..BURST {
                if stop {
                    break;
                }
                let Ok(i) = inputs.try_recv() else { break };
                stop |= matches!(i, Input::Shutdown);
                machine.handle(now, i, &mut effects);
            }
            now = Instant::now();
        }
        if stop {
            ops.notifier.stopping();
        }
        if now >= next_tick && !stop {
            machine.handle(now, Input::Tick, &mut effects);
            next_tick = now + tick;
            ops.metrics.publish_machine(&machine.stats());
            let every = ops.summary_ms.load(Ordering::Relaxed);
            if every > 0
                && now.saturating_duration_since(last_summary).as_millis() >= u128::from(every)
            {
                last_summary = now;
                let line = ops.metrics.summary();
                tracing::info!("summary: {line}");
                ops.notifier.status(&line);
            }
        }
        if let Some(w) = ops.watchdog.as_mut() {
            w.feed(now, &mut ops.notifier);
        }
        let mut wake = false;
        for e in effects.drain(..) {
            match e {
                Effect::Send { session, reply } => {
                    wake = true;
                    let _ = net.send(NetCmd::Send(session, reply.to_wire()));
                }
                Effect::Close { session } => {
                    wake = true;
                    let _ = net.send(NetCmd::Close(session));
                }
                Effect::Store(job) => {
                    let _ = jobs.send(job);
                }
                Effect::Relay { id, cmd } => relay.send(id, cmd),
            }
        }
        if wake {
            let _ = waker.wake();
        }
    }
    ops.metrics.publish_machine(&machine.stats());
    tracing::info!(sessions = machine.session_count(), "machine stopped");
    // The relay keeps its state: a control restart or upgrade drops no
    // call; the next start adopts the relay's snapshot.
    relay.stop();
    drop(jobs);
}
