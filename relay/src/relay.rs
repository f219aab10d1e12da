//! Start-up and shutdown: bind every worker's sockets (the first on the
//! configured port, possibly 0, the rest on the resolved port) and the
//! command socket, start the workers, wait until each reports its engine,
//! start the coordinator and the command socket's acceptor, hand the ready
//! line to the caller, wait for SIGINT/SIGTERM, stop (removing the socket
//! file).
//!
//! Operations (issue 7): the metrics endpoint is bound with the sockets
//! (before any worker starts, so a bad address fails the start cleanly) and
//! appended to the ready line as `metrics=ADDR:PORT`; `READY=1` goes to
//! systemd right before the ready line, `STOPPING=1` when shutdown begins;
//! a SIGHUP (the `reload` flag) becomes an [`Event::Reload`] for the
//! coordinator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use socket2::Socket;

use nix::sys::eventfd::{EfdFlags, EventFd};
use whelm_daemon::logging::LogHandle;
use whelm_daemon::metrics_http::MetricsServer;
use whelm_daemon::notify::Notifier;

use crate::cmdsock::{self, PeerPolicy};
use crate::config::{Cli, Config};
use crate::coordinator::{Coordinator, LimitsState, Ops, ReloadCtx, WorkerInfo, WorkerLink};
use crate::core::{Core, CoreConfig, OwnIps};
use crate::engine::{self, EngineKind, WorkerCtx};
use crate::metrics::{RelayGauges, WorkerCounters, WorkerView};
use crate::net::{bind_udp, ensure_port_free, local_addr};
use crate::observe::Watchdog;
use crate::registry::StationLimits;
use crate::update::{Event, Hello};

/// HELLOs queued for the coordinator at most; a flood beyond is dropped and
/// counted by the workers.
const HELLO_QUEUE: usize = 4096;

/// Removes the command socket file when the relay stops.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the relay listens on, once every worker runs.
#[derive(Debug, Clone)]
pub struct Ready {
    /// OVP address, port resolved.
    pub ovp: SocketAddr,
    /// Voice address, port resolved.
    pub voice: SocketAddr,
    /// Engine of each worker, with its core.
    pub engines: Vec<(usize, EngineKind)>,
    /// The metrics endpoint, when enabled.
    pub metrics: Option<SocketAddr>,
}

impl Ready {
    /// The one line printed to stdout. Fields are only ever appended.
    pub fn line(&self) -> String {
        let mut kinds: Vec<String> = self.engines.iter().map(|(_, e)| e.to_string()).collect();
        kinds.dedup();
        let mut l = format!(
            "whelm-relay ready: ovp={} voice={} engine={} workers={}",
            self.ovp,
            self.voice,
            kinds.join(","),
            self.engines.len()
        );
        if let Some(m) = self.metrics {
            l.push_str(&format!(" metrics={m}"));
        }
        l
    }
}

/// What main hands to [`run`] besides the configuration.
#[derive(Default)]
pub struct Options {
    /// The start-up command line: a reload re-reads the file with these
    /// flags on top. None: reloads are refused.
    pub cli: Option<Cli>,
    /// The log filter's handle, for reloads of `log`.
    pub log: Option<LogHandle>,
    /// Set by the SIGHUP handler; the main loop turns it into a reload.
    pub reload: Arc<AtomicBool>,
}

/// Binds `n` SO_REUSEPORT sockets on one address; port 0 resolves on the
/// first.
fn bind_group(addr: SocketAddr, n: usize) -> anyhow::Result<(Vec<Socket>, SocketAddr)> {
    ensure_port_free(addr)?;
    let first = bind_udp(addr)?;
    let resolved = local_addr(&first)?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind_udp(resolved)?);
    }
    Ok((v, resolved))
}

/// How often the main thread looks at shutdown, reload and worker exits.
const MAIN_TICK: Duration = Duration::from_millis(100);

/// Moves this thread, and so every thread it starts afterwards (the
/// coordinator, the command channel, metrics), off the worker cores when
/// the process may run on others: their wake-ups would otherwise preempt a
/// worker in the middle of a batch. Workers pin themselves to their core.
/// With a worker on every allowed core (the usual production set-up) this
/// does nothing.
fn keep_housekeeping_off(workers: &[usize]) {
    let others: Vec<usize> = crate::config::allowed_cpus()
        .into_iter()
        .filter(|c| !workers.contains(c))
        .collect();
    if others.is_empty() {
        return;
    }
    match crate::net::pin_to_set(&others) {
        Ok(()) => tracing::info!("housekeeping threads on cores {others:?}, off the worker cores"),
        Err(e) => tracing::warn!("housekeeping threads stay on every core: {e:#}"),
    }
}

/// The IPs at which a socket bound to `bind` receives (see
/// [`crate::core::OwnIps`]): `bind` itself, or, when it is unspecified, the
/// host's addresses now (loopback counts always).
fn own_ips(bind: std::net::IpAddr) -> OwnIps {
    if !bind.is_unspecified() {
        return OwnIps::Bound(bind.to_canonical());
    }
    let mut set = std::collections::HashSet::new();
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            for a in addrs {
                let ip = a.address.as_ref().and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| std::net::IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip {
                    set.insert(ip.to_canonical());
                }
            }
        }
        Err(e) => tracing::warn!(
            "cannot list the host's addresses ({e}): only loopback counts as the relay's own \
             address for OVP frames"
        ),
    }
    OwnIps::Any(set)
}

/// Runs the relay until `stop` is set (by a signal handler) or a worker
/// fails. `on_ready` is called once with the listening addresses.
pub fn run(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    opts: Options,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let n = cfg.cores.len();
    keep_housekeeping_off(&cfg.cores);
    let (ovp_socks, ovp) = bind_group(SocketAddr::new(cfg.bind, cfg.port), n)?;
    let (voice_socks, voice) = bind_group(SocketAddr::new(cfg.bind, cfg.voice_port), n)?;
    let v6 = ovp.is_ipv6();
    let listener = match cmdsock::bind(&cfg.control_socket, cfg.control_socket_group) {
        Ok(l) => Some(l),
        Err(e) if !cfg.control_socket_explicit => {
            // The built-in default path is shared by every relay on the host
            // (tests, benches): without a configured path, run without the
            // command channel rather than not at all, and say so loudly.
            tracing::warn!(
                "command channel disabled: {e:#} (pass --control-socket PATH to require one)"
            );
            None
        }
        Err(e) => return Err(e),
    };
    let _socket_file = listener
        .as_ref()
        .map(|_| SocketFile(cfg.control_socket.clone()));
    let gauges = Arc::new(RelayGauges::new(n));
    let views: Arc<OnceLock<Vec<WorkerView>>> = Arc::default();
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let (g, v) = (gauges.clone(), views.clone());
            let render = move || crate::metrics::render(v.get().map_or(&[], Vec::as_slice), &g);
            match MetricsServer::start(addr, "relay-metrics", render) {
                Ok(m) => Some(m),
                // As with the command socket: the built-in default address
                // is shared by every relay on the host (tests, benches), so
                // only a configured address is required.
                Err(e) if !cfg.metrics_explicit() => {
                    tracing::warn!(
                        "metrics endpoint disabled: {e:#} (set metrics_listen to require one)"
                    );
                    None
                }
                Err(e) => return Err(e),
            }
        }
        None => None,
    };
    let core_cfg = CoreConfig {
        reply_to: cfg.reply_to,
        ovp_port: ovp.port(),
        station_rate: cfg.station_rate,
        station_burst: cfg.station_burst,
        allow: cfg.allow.clone(),
        deny: cfg.deny.clone(),
        max_stations: cfg.max_stations,
        max_stations_per_ip: cfg.max_stations_per_ip,
        own_ips: own_ips(cfg.bind),
    };
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<Event>();
    let (hello_tx, hello_rx) = crossbeam_channel::bounded::<Hello>(HELLO_QUEUE);
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let mut handles = Vec::with_capacity(n);
    let mut update_txs = Vec::with_capacity(n);
    let mut counters = Vec::with_capacity(n);
    for (i, (o, v)) in ovp_socks.into_iter().zip(voice_socks).enumerate() {
        let (utx, urx) = crossbeam_channel::unbounded();
        // Blocking mode: the io_uring read on it must wait, not fail with
        // EAGAIN; the mmsg engine reads it only after poll said readable.
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .with_context(|| format!("eventfd for worker {i}"))?,
        );
        update_txs.push(WorkerLink {
            updates: utx,
            wake: wake.clone(),
        });
        let c = Arc::new(WorkerCounters::default());
        counters.push(c.clone());
        let ctx = WorkerCtx::new(
            i,
            cfg.cores[i],
            vec![o, v],
            Core::new(core_cfg.clone()),
            urx,
            ev_tx.clone(),
            hello_tx.clone(),
            wake,
            c,
            stop.clone(),
            cfg.sizes,
            v6,
        );
        handles.push(
            engine::spawn_worker(ctx, cfg.engine, ready_tx.clone())
                .with_context(|| format!("spawning worker {i}"))?,
        );
    }
    drop(ready_tx);
    drop(hello_tx);
    let wakes: Vec<Arc<EventFd>> = update_txs.iter().map(|l| l.wake.clone()).collect();
    let mut engines = vec![(0usize, EngineKind::Mmsg); n];
    let mut failure = None;
    for _ in 0..n {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok((i, cpu, kind))) => {
                tracing::info!("worker {i} on core {cpu}: engine {kind}");
                engines[i] = (cpu, kind);
            }
            Ok(Err(msg)) => failure = Some(msg),
            Err(_) => failure = Some("a worker did not start".into()),
        }
    }
    if let Some(msg) = failure {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        bail!(msg);
    }
    let _ = views.set(
        engines
            .iter()
            .zip(&counters)
            .map(|(&(cpu, engine), c)| WorkerView {
                cpu,
                engine: engine.to_string(),
                counters: c.clone(),
            })
            .collect(),
    );
    let info = engines
        .iter()
        .zip(&counters)
        .map(|(&(cpu, engine), c)| WorkerInfo {
            cpu,
            engine,
            counters: c.clone(),
        })
        .collect();
    let limits = LimitsState {
        bandwidth_mbps: cfg.bandwidth_mbps,
        station_rate: cfg.station_rate,
        station_burst: cfg.station_burst,
        stations: StationLimits {
            max_stations: cfg.max_stations,
            max_stations_per_ip: cfg.max_stations_per_ip,
        },
    };
    let ready_flag = Arc::new(AtomicBool::new(false));
    let watchdog = Watchdog::from_env(n);
    if let Some(w) = &watchdog {
        tracing::info!(
            period_ms = w.period().as_millis() as u64,
            "systemd watchdog: fed while every worker loop moves"
        );
    }
    let ops = Ops {
        gauges,
        watchdog,
        notifier: Notifier::new(),
        reload: opts.cli.map(|cli| ReloadCtx {
            cli,
            current: cfg.clone(),
            log: opts.log,
        }),
        ready: ready_flag.clone(),
    };
    let coord = Coordinator::new(
        cfg.timeout,
        cfg.stats_interval,
        ev_rx,
        hello_rx,
        update_txs,
        info,
        limits,
        v6,
    )
    .with_ops(ops)
    .spawn()
    .context("spawning the coordinator")?;
    let acceptor = match listener {
        Some(l) => {
            let policy = PeerPolicy::current(cfg.control_uids.clone(), cfg.control_gids.clone());
            tracing::info!(
                "command channel on {} (uid {} gid {} allowed)",
                cfg.control_socket.display(),
                policy.uid,
                policy.gid
            );
            Some(
                cmdsock::spawn_acceptor(l, policy, ev_tx.clone(), stop.clone())
                    .context("spawning the command socket thread")?,
            )
        }
        None => None,
    };
    let ready = Ready {
        ovp,
        voice,
        engines,
        metrics: metrics.as_ref().map(|m| m.addr),
    };
    tracing::info!("{}", ready.line());
    let mut notifier = Notifier::new();
    notifier.ready(&ready.line());
    ready_flag.store(true, Ordering::Relaxed);
    on_ready(&ready);

    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) {
        if handles.iter().any(|h| h.is_finished()) {
            result = Err(anyhow::anyhow!("a worker stopped unexpectedly"));
            break;
        }
        if opts.reload.swap(false, Ordering::Relaxed) {
            let _ = ev_tx.send(Event::Reload);
        }
        std::thread::sleep(MAIN_TICK);
    }
    notifier.stopping();
    tracing::info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    for w in &wakes {
        let _ = w.write(1);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (i, h) in handles.into_iter().enumerate() {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("worker {i}: {e:#}");
                result = Err(e);
            }
            Err(_) => result = Err(anyhow::anyhow!("worker {i} panicked")),
        }
    }
    let _ = ev_tx.send(Event::Shutdown);
    let _ = coord.join();
    if let Some(a) = acceptor {
        let _ = a.join();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    result
}
