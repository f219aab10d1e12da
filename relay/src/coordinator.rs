//! The coordinator thread: sole writer of the authoritative tables (the OVP
//! station [`Registry`] and the voice [`VoiceState`]), broadcaster of table
//! [`Update`]s to every worker, server of the command channel's requests,
//! timer for station timeouts (it runs whether or not packets arrive), the
//! once-a-second counters event, and the stats printer (every
//! `stats_interval` and at shutdown).
//!
//! Acknowledgement after apply: the updates of one command go to every
//! worker as one [`Update::Commit`] with a new generation number, and the
//! worker's eventfd is written so an idle worker wakes at once. Each worker
//! answers [`Event::Applied`]; a reply waits in `pending` until every worker
//! applied its generation. Replies leave in request order (a read-only reply
//! waits behind an earlier change), so control can rely on "RemoveCall
//! acknowledged" meaning "no worker forwards that call any more".
//!
//! Never blocked by a peer: replies and events go into each connection's
//! bounded queue; a connection whose queue is full is closed and logged, and
//! the installed state stays.
//!
//! Operations (issue 7): the coordinator feeds the systemd watchdog from
//! its loop only while every worker's loop counter moves
//! ([`crate::observe::Watchdog`]), sends `STATUS=` with each summary,
//! publishes the [`RelayGauges`] for the metrics endpoint, and applies
//! configuration reloads ([`Event::Reload`] on SIGHUP, [`Command::Reload`]
//! from `whelm-relay ctl reload`): the file is re-read and validated whole
//! by [`Config::load`] before anything changes; limits, lists, the log
//! filter and the stats interval are applied; calls and stations stay.
//!
//! Station caps: the [`Registry`] refuses what is beyond `max_stations` /
//! `max_stations_per_ip` (a worker's replica may have admitted it in a race)
//! and the undo is broadcast; a refusal, by the registry or reported by a
//! worker, is logged at most once per [`STATION_LIMIT_WARN`].
//!
//! `STATION MOVED` lines come from the network (one callsign sent from two
//! sources alternately moves on every frame), so at most
//! [`MOVED_LOG_LINES`] of them are logged per [`MOVED_LOG_WINDOW`]; the
//! moves beyond are counted and reported in one line when the window ends,
//! and at shutdown. The control channel still hears of every move.
//!
//! Stats lines are `key=value` fields after a fixed word, for grepping:
//! `stats kind=periodic|final frames_received=.. frames_forwarded=..
//! active_stations=.. decode_errors=.. timed_out=.. rate_limited=.. ...`,
//! then one `station callsign=.. addr=.. last_seen_s=..` line per station and
//! one `worker id=.. core=.. engine=.. <metric>=..` line per worker.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::EventFd;
use whelm_daemon::logging::{LogHandle, RateLimited};
use whelm_daemon::notify::Notifier;
use whelm_shared::channel::{
    self, Command, ErrorCode, Limits, Outcome, RelayMsg, Role, StationInfo,
};
use whelm_shared::ovp::StationId;

use crate::cmdsock::{ConnEvent, ConnHandle};
use crate::config::{Cli, Config};
use crate::engine::EngineKind;
use crate::metrics::{Metric, RelayGauges, WorkerCounters, drop_key, stat};
use crate::net::display_addr;
use crate::observe::Watchdog;
use crate::registry::{Notice, Registry, StationLimits};
use crate::update::{Event, Hello, Update};
use crate::voice::{HelloResult, Refusal, VoiceState};

/// Highest bandwidth limit accepted, Mbit/s.
pub const MAX_BANDWIDTH_MBPS: u64 = crate::config::MAX_BANDWIDTH_MBPS;
/// Interval of the counters event.
pub const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);

/// What the coordinator knows of a worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// CPU.
    pub cpu: usize,
    /// Engine.
    pub engine: EngineKind,
    /// Its published counters.
    pub counters: Arc<WorkerCounters>,
}

/// How the coordinator reaches one worker.
#[derive(Debug, Clone)]
pub struct WorkerLink {
    /// Table updates.
    pub updates: Sender<Update>,
    /// Written after queueing updates, so an idle worker wakes at once.
    pub wake: Arc<EventFd>,
}

impl WorkerLink {
    fn send(&self, u: Update) {
        // A worker that already stopped does not need updates.
        let _ = self.updates.send(u);
        let _ = self.wake.write(1);
    }
}

/// Limits in force.
#[derive(Debug, Clone, Copy)]
pub struct LimitsState {
    /// Voice bandwidth limit each way, Mbit/s (0 = none).
    pub bandwidth_mbps: u64,
    /// OVP frames/s per source (0 = none).
    pub station_rate: u32,
    /// OVP burst.
    pub station_burst: u32,
    /// OVP station caps (the registry enforces them).
    pub stations: StationLimits,
}

/// The station-cap warning is logged at most this often.
pub const STATION_LIMIT_WARN: Duration = crate::core::STATION_LIMIT_REPORT;

/// `STATION MOVED` lines logged per [`MOVED_LOG_WINDOW`] at most.
pub const MOVED_LOG_LINES: u32 = 20;
/// The window of [`MOVED_LOG_LINES`].
pub const MOVED_LOG_WINDOW: Duration = Duration::from_secs(10);

/// A number of log lines per window; the lines beyond are counted.
#[derive(Debug)]
struct LogBudget {
    lines: u32,
    window: Duration,
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new(lines: u32, window: Duration, now: Instant) -> LogBudget {
        LogBudget {
            lines,
            window,
            start: now,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged in this window; if not, it is
    /// counted as suppressed.
    fn allow(&mut self) -> bool {
        if self.used < self.lines {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// If the window is over, starts the next one and returns how many
    /// lines the ended one suppressed (None: nothing to report).
    fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.start) < self.window {
            return None;
        }
        self.start = now;
        self.used = 0;
        self.flush()
    }

    /// The lines suppressed so far (None: none), counting from zero again.
    fn flush(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.suppressed)).filter(|&n| n > 0)
    }
}

/// What a reload needs: the command line the relay started with (its flags
/// still win over the file), the configuration in force, the log filter.
pub struct ReloadCtx {
    /// The start-up command line.
    pub cli: Cli,
    /// The configuration in force (restart-only keys at their start values).
    pub current: Config,
    /// The log filter's handle (None when no subscriber was installed).
    pub log: Option<LogHandle>,
}

/// Operations wiring of the coordinator.
pub struct Ops {
    /// Published for the metrics endpoint.
    pub gauges: Arc<RelayGauges>,
    /// The systemd watchdog, when `WATCHDOG_USEC` asks for one.
    pub watchdog: Option<Watchdog>,
    /// `WATCHDOG=1` and `STATUS=`.
    pub notifier: Notifier,
    /// Reload support (None: reloads are refused).
    pub reload: Option<ReloadCtx>,
    /// Set by main once `READY=1` went out; no `WATCHDOG=1` before it.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

/// A reload's worker updates, applied changes and restart-only changes.
type Reloaded = (Vec<Update>, Vec<String>, Vec<String>);

/// Who a queued line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// One connection (a reply).
    Conn(u64),
    /// Every control connection (an event).
    Controls,
}

/// One line waiting for every worker to apply generation `generation`.
struct Pending {
    generation: u64,
    to: Target,
    line: Vec<u8>,
}

/// The coordinator's state.
pub struct Coordinator {
    registry: Registry,
    voice: VoiceState,
    events: Receiver<Event>,
    hellos: Receiver<Hello>,
    workers: Vec<WorkerLink>,
    info: Vec<WorkerInfo>,
    stats_interval: Duration,
    tick: Duration,
    last_totals: [u64; Metric::COUNT],
    limits: LimitsState,
    /// Last commit generation broadcast.
    generation: u64,
    /// Highest generation each worker applied.
    applied: Vec<u64>,
    pending: VecDeque<Pending>,
    conns: BTreeMap<u64, ConnHandle>,
    /// HELLOs refused, per worker that received them.
    hello_denied: Vec<u64>,
    /// (when, rx bytes, tx bytes) at the last counters sample.
    rate_sample: (Instant, u64, u64),
    bps: (u64, u64),
    ops: Ops,
    /// A reload changed `stats_interval`; the loop reschedules.
    stats_changed: bool,
    /// The station-cap warning's rate limit.
    limit_warn: RateLimited,
    /// `STATION MOVED` lines.
    moved_log: LogBudget,
}

/// Sums one metric over totals.
fn total(t: &[u64; Metric::COUNT], m: Metric) -> u64 {
    t[m as usize]
}

/// Commands an operator connection may not send. `Reload` is allowed: it
/// only re-reads the file the operator controls anyway.
fn is_change(c: &Command) -> bool {
    !matches!(
        c,
        Command::Snapshot | Command::Counters | Command::Stations | Command::Reload
    )
}

impl Coordinator {
    /// A coordinator for `workers` (in worker order).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        timeout: Duration,
        stats_interval: Duration,
        events: Receiver<Event>,
        hellos: Receiver<Hello>,
        workers: Vec<WorkerLink>,
        info: Vec<WorkerInfo>,
        limits: LimitsState,
        v6: bool,
    ) -> Coordinator {
        // Expiry resolution: a quarter of the timeout, at most one second.
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let n = workers.len();
        Coordinator {
            registry: Registry::new(timeout, limits.stations),
            voice: VoiceState::new(v6),
            events,
            hellos,
            workers,
            info,
            stats_interval,
            tick,
            last_totals: [0; Metric::COUNT],
            limits,
            generation: 0,
            applied: vec![0; n],
            pending: VecDeque::new(),
            conns: BTreeMap::new(),
            hello_denied: vec![0; n],
            rate_sample: (Instant::now(), 0, 0),
            bps: (0, 0),
            ops: Ops {
                gauges: Arc::new(RelayGauges::new(n)),
                watchdog: None,
                notifier: Notifier::new(),
                reload: None,
                ready: Arc::default(),
            },
            stats_changed: false,
            limit_warn: RateLimited::new(STATION_LIMIT_WARN),
            moved_log: LogBudget::new(MOVED_LOG_LINES, MOVED_LOG_WINDOW, Instant::now()),
        }
    }

    /// Replaces the operations wiring (gauges, watchdog, reload).
    pub fn with_ops(mut self, ops: Ops) -> Coordinator {
        self.ops = ops;
        self
    }

    /// This worker's share of the bandwidth limit in bytes/s (0 = none).
    fn bandwidth_share(&self) -> u64 {
        self.limits.bandwidth_mbps * 1_000_000 / 8 / self.workers.len().max(1) as u64
    }

    /// Starts the thread. Installs the configured limits first.
    pub fn spawn(mut self) -> std::io::Result<JoinHandle<()>> {
        let ups = vec![Update::Bandwidth {
            bytes_per_sec: self.bandwidth_share(),
        }];
        self.commit(ups);
        self.publish_gauges();
        std::thread::Builder::new()
            .name("relay-coord".into())
            .spawn(move || self.run())
    }

    fn broadcast(&self, u: Update) {
        for w in &self.workers {
            w.send(u.clone());
        }
    }

    /// Sends `updates` to every worker as one commit; returns the generation
    /// a reply must wait for (the previous one when there is nothing to do).
    fn commit(&mut self, updates: Vec<Update>) -> u64 {
        if updates.is_empty() {
            return self.generation;
        }
        self.generation += 1;
        let updates: Arc<[Update]> = updates.into();
        let generation = self.generation;
        self.broadcast(Update::Commit {
            updates,
            generation,
        });
        generation
    }

    fn notice(&mut self, n: Notice) {
        let ev = match n {
            Notice::New(id, a) => {
                tracing::info!("NEW STATION: {id} at {}", display_addr(a));
                channel::Event::StationSeen {
                    callsign: id.to_string(),
                    addr: display_addr(a),
                }
            }
            Notice::Moved(id, from, to) => {
                self.report_unlogged_moves(false);
                if self.moved_log.allow() {
                    tracing::info!(
                        "STATION MOVED: {id} from {} to {}",
                        display_addr(from),
                        display_addr(to)
                    );
                }
                channel::Event::StationSeen {
                    callsign: id.to_string(),
                    addr: display_addr(to),
                }
            }
            Notice::TimedOut(id, a) => {
                tracing::info!("STATION TIMED OUT: {id} at {}", display_addr(a));
                channel::Event::StationTimedOut {
                    callsign: id.to_string(),
                }
            }
            Notice::Refused {
                id,
                src,
                cap,
                limit,
            } => {
                self.warn_limit(id, src, cap.key(), limit);
                return;
            }
            Notice::OwnAddress { id, src, dest } => {
                tracing::warn!(
                    "station {id} at {} not registered: the conference would be sent to {}, \
                     the relay's own address (a station on the relay's host with \
                     --reply-to listen-port; use --reply-to source); its frames are dropped \
                     as own_address",
                    display_addr(src),
                    display_addr(dest)
                );
                return;
            }
        };
        self.tell_controls(ev);
    }

    /// The one line for the `STATION MOVED` lines not logged: when the
    /// budget's window is over, or (`all`) whatever was suppressed so far.
    fn report_unlogged_moves(&mut self, all: bool) {
        let n = if all {
            self.moved_log.flush()
        } else {
            self.moved_log.roll(Instant::now())
        };
        if let Some(n) = n {
            tracing::info!(
                "STATION MOVED: {n} more moves not logged (at most {MOVED_LOG_LINES} lines per {} s)",
                MOVED_LOG_WINDOW.as_secs()
            );
        }
    }

    /// The station-cap warning, at most once per [`STATION_LIMIT_WARN`]
    /// (a flood of new callsigns is counted, not logged).
    fn warn_limit(&mut self, id: StationId, src: SocketAddr, key: &str, limit: usize) {
        if self.limit_warn.allow(Instant::now()).is_none() {
            return;
        }
        let dropped: u64 = self
            .info
            .iter()
            .map(|w| w.counters.get(Metric::DropStationLimit))
            .sum();
        tracing::warn!(
            "station limit reached: {key}={limit}; refused {id} from {} ({} stations, {} from that IP); \
             frames from new callsigns beyond it are dropped and counted as {} ({dropped} so far); \
             this warning repeats at most once a minute",
            display_addr(src),
            self.registry.len(),
            self.registry.stations_from(src.ip()),
            Metric::DropStationLimit.name(),
        );
    }

    fn run(mut self) {
        let mut next_stats = Instant::now() + self.stats_interval;
        let mut next_tick = Instant::now() + self.tick;
        let mut next_counters = Instant::now() + COUNTERS_INTERVAL;
        let never = crossbeam_channel::never();
        let mut hellos_open = true;
        loop {
            let mut due = next_tick.min(next_stats).min(next_counters);
            if let Some(w) = &self.ops.watchdog {
                due = due.min(w.next_due());
            }
            let wait = due.saturating_duration_since(Instant::now());
            let hellos = if hellos_open { &self.hellos } else { &never };
            crossbeam_channel::select! {
                recv(self.events) -> ev => match ev {
                    Ok(Event::Shutdown) | Err(_) => {
                        self.report_unlogged_moves(true);
                        self.print_stats(true);
                        return;
                    }
                    Ok(ev) => self.on_event(ev),
                },
                recv(hellos) -> h => match h {
                    Ok(h) => self.on_hello(h),
                    Err(_) => hellos_open = false,
                },
                default(wait) => {}
            }
            let now = Instant::now();
            if let Some(w) = &mut self.ops.watchdog
                && self.ops.ready.load(Ordering::Relaxed)
            {
                let loops = self.info.iter().map(|i| i.counters.get(Metric::Loops));
                w.feed(now, loops, &mut self.ops.notifier);
            }
            if std::mem::take(&mut self.stats_changed) {
                next_stats = now + self.stats_interval;
            }
            if now >= next_tick {
                next_tick = now + self.tick;
                self.report_unlogged_moves(false);
                for (u, n) in self.registry.expire(now) {
                    self.notice(n);
                    self.broadcast(u);
                }
            }
            if now >= next_counters {
                next_counters = now + COUNTERS_INTERVAL;
                self.sample_rates(now);
                self.publish_gauges();
                if self.conns.values().any(|c| c.role == Role::Control) {
                    let c = self.counters();
                    self.tell_controls(channel::Event::Counters(c));
                }
            }
            if now >= next_stats {
                next_stats = now + self.stats_interval;
                self.print_stats(false);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Learned { what, at, worker } => {
                tracing::trace!(worker, ?what, "learned");
                let (u, n) = self.registry.learned(what, at);
                if let Some(n) = n {
                    self.notice(n);
                }
                if let Some(u) = u {
                    self.broadcast(u);
                }
            }
            Event::Seen { ids, at } => self.registry.seen(&ids, at),
            Event::Applied { worker, generation } => {
                if let Some(a) = self.applied.get_mut(worker) {
                    *a = (*a).max(generation);
                }
                self.flush_pending();
            }
            Event::Conn(c) => self.on_conn(c),
            Event::Reload => {
                if let Ok((updates, _, _)) = self.reload() {
                    self.commit(updates);
                }
            }
            Event::Shutdown => {}
        }
    }

    fn on_hello(&mut self, h: Hello) {
        match self.voice.hello(h.user, h.token.as_deref(), h.src) {
            HelloResult::Denied => {
                if let Some(c) = self.hello_denied.get_mut(h.worker) {
                    *c += 1;
                }
                if let Some(g) = self.ops.gauges.hello_denied.get(h.worker) {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                // Per datagram: trace only.
                tracing::trace!(user = %h.user, src = %display_addr(h.src), "HELLO denied");
            }
            HelloResult::Unchanged => {}
            HelloResult::Registered { addr, updates } => {
                tracing::info!("VOICE REGISTERED: user {} at {addr}", h.user);
                self.commit(updates);
                self.tell_controls(channel::Event::VoiceRegistered { user: h.user, addr });
            }
        }
    }

    fn on_conn(&mut self, c: ConnEvent) {
        match c {
            ConnEvent::Opened(h) => {
                self.conns.insert(h.id, h);
            }
            ConnEvent::Closed { conn } => {
                if let Some(h) = self.conns.remove(&conn) {
                    tracing::info!(
                        conn,
                        role = ?h.role,
                        "command connection gone; installed state stays"
                    );
                }
                self.pending.retain(|p| p.to != Target::Conn(conn));
            }
            ConnEvent::Invalid {
                conn,
                id,
                code,
                message,
            } => {
                let generation = self.generation;
                self.reply(conn, id, Outcome::Error { code, message }, generation);
            }
            ConnEvent::Request { conn, id, command } => self.on_request(conn, id, command),
        }
    }

    fn on_request(&mut self, conn: u64, id: u64, command: Command) {
        let Some(role) = self.conns.get(&conn).map(|c| c.role) else {
            return;
        };
        tracing::debug!(conn, id, ?command, "command");
        let result: Result<(Vec<Update>, Outcome), Refusal> = if role != Role::Control
            && is_change(&command)
        {
            Err((
                ErrorCode::NotAllowed,
                "only a control connection may change state".into(),
            ))
        } else {
            match command {
                Command::AllowUser(e) => self.voice.allow(&e).map(|u| (u, Outcome::Ok)),
                Command::RevokeUser { user } => self.voice.revoke(user).map(|u| (u, Outcome::Ok)),
                Command::InstallCall(c) => self.voice.install_call(c).map(|u| (u, Outcome::Ok)),
                Command::RemoveCall(c) => self.voice.remove_call(c).map(|u| (u, Outcome::Ok)),
                Command::ReplaceAll(st) => self.voice.replace_all(&st).map(|u| (u, Outcome::Ok)),
                Command::SetLimits(l) => self.set_limits(&l).map(|u| (u, Outcome::Ok)),
                Command::Snapshot => Ok((Vec::new(), Outcome::Snapshot(self.voice.snapshot()))),
                Command::Counters => Ok((Vec::new(), Outcome::Counters(self.counters()))),
                Command::Stations => Ok((
                    Vec::new(),
                    Outcome::Stations {
                        stations: self.stations(),
                    },
                )),
                Command::Reload => self.reload().map(|(u, changed, restart_needed)| {
                    (
                        u,
                        Outcome::Reloaded {
                            changed,
                            restart_needed,
                        },
                    )
                }),
            }
        };
        self.publish_gauges();
        match result {
            Ok((updates, outcome)) => {
                let generation = self.commit(updates);
                self.reply(conn, id, outcome, generation);
            }
            Err((code, message)) => {
                tracing::debug!(conn, id, ?code, "command refused: {message}");
                let generation = self.generation;
                self.reply(conn, id, Outcome::Error { code, message }, generation);
            }
        }
    }

    fn set_limits(&mut self, l: &Limits) -> Result<Vec<Update>, Refusal> {
        if let Some(b) = l.bandwidth_mbps
            && b > MAX_BANDWIDTH_MBPS
        {
            return Err((
                ErrorCode::Invalid,
                format!("bandwidth_mbps {b} above {MAX_BANDWIDTH_MBPS}"),
            ));
        }
        let mut ups = Vec::new();
        if let Some(b) = l.bandwidth_mbps {
            self.limits.bandwidth_mbps = b;
            ups.push(Update::Bandwidth {
                bytes_per_sec: self.bandwidth_share(),
            });
        }
        if let Some(r) = l.station_rate {
            self.limits.station_rate = r;
            self.limits.station_burst = r.max(1);
            ups.push(Update::StationRate {
                rate: r,
                burst: r.max(1),
            });
        }
        tracing::info!(
            bandwidth_mbps = self.limits.bandwidth_mbps,
            station_rate = self.limits.station_rate,
            "limits set"
        );
        Ok(ups)
    }

    /// Re-reads and validates the configuration, then applies the
    /// reloadable keys that changed; counts and logs the outcome. Returns the
    /// worker updates, the applied changes and the restart-only changes.
    fn reload(&mut self) -> Result<Reloaded, Refusal> {
        match self.try_reload() {
            Ok(r) => {
                self.ops.gauges.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                self.ops
                    .gauges
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                let msg = format!("{e:#}");
                tracing::error!("configuration reload refused, running configuration kept: {msg}");
                Err((ErrorCode::Invalid, msg))
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<Reloaded> {
        let Some(ctx) = self.ops.reload.as_mut() else {
            anyhow::bail!("this relay has no configuration to reload");
        };
        // Validated whole before anything is applied.
        let new = Config::load(&ctx.cli)?;
        let (changed, restart) = ctx.current.diff(&new);
        let moved = |k: &str| changed.iter().any(|c| c.starts_with(&format!("{k}: ")));
        // The log filter first: the only step that can still fail.
        if moved("log")
            && let Some(h) = &ctx.log
        {
            whelm_daemon::logging::set_filter(h, &new.log)?;
        }
        for r in &restart {
            tracing::warn!(change = %r, "changing this key needs a restart; running value kept");
        }
        let cur = &mut ctx.current;
        for k in crate::config::RELOADABLE {
            if let Some(v) = new.effective.get(k) {
                cur.effective.insert(k.to_owned(), v.clone());
            }
        }
        cur.log.clone_from(&new.log);
        cur.bandwidth_mbps = new.bandwidth_mbps;
        cur.station_rate = new.station_rate;
        cur.station_burst = new.station_burst;
        cur.max_stations = new.max_stations;
        cur.max_stations_per_ip = new.max_stations_per_ip;
        cur.allow.clone_from(&new.allow);
        cur.deny.clone_from(&new.deny);
        cur.stats_interval = new.stats_interval;
        // Only what changed in the file: a limit control set at run time
        // (set_limits) stays unless the file's value changed.
        let mut ups = Vec::new();
        if moved("bandwidth_mbps") {
            self.limits.bandwidth_mbps = new.bandwidth_mbps;
            ups.push(Update::Bandwidth {
                bytes_per_sec: self.bandwidth_share(),
            });
        }
        if moved("station_rate") || moved("station_burst") {
            self.limits.station_rate = new.station_rate;
            self.limits.station_burst = new.station_burst;
            ups.push(Update::StationRate {
                rate: new.station_rate,
                burst: new.station_burst,
            });
        }
        if moved("max_stations") || moved("max_stations_per_ip") {
            let l = StationLimits {
                max_stations: new.max_stations,
                max_stations_per_ip: new.max_stations_per_ip,
            };
            self.limits.stations = l;
            self.registry.set_limits(l);
            ups.push(Update::StationLimits {
                max_stations: l.max_stations,
                max_stations_per_ip: l.max_stations_per_ip,
            });
        }
        if moved("allow") || moved("deny") {
            ups.push(Update::Lists {
                allow: new.allow.map(Arc::new),
                deny: Arc::new(new.deny),
            });
        }
        if moved("stats_interval") {
            self.stats_interval = new.stats_interval;
            self.stats_changed = true;
        }
        if changed.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(changes = %changed.join(", "), "configuration reloaded");
        }
        Ok((ups, changed, restart))
    }

    /// Publishes the coordinator's numbers for the metrics endpoint.
    fn publish_gauges(&self) {
        let g = &self.ops.gauges;
        g.calls
            .store(self.voice.call_count() as u64, Ordering::Relaxed);
        g.users
            .store(self.voice.user_count() as u64, Ordering::Relaxed);
        g.stations
            .store(self.registry.len() as u64, Ordering::Relaxed);
        g.timed_out
            .store(self.registry.timed_out(), Ordering::Relaxed);
        g.bps_in.store(self.bps.0, Ordering::Relaxed);
        g.bps_out.store(self.bps.1, Ordering::Relaxed);
        g.bps_limit.store(
            self.limits.bandwidth_mbps.saturating_mul(1_000_000),
            Ordering::Relaxed,
        );
    }

    fn min_applied(&self) -> u64 {
        self.applied.iter().copied().min().unwrap_or(u64::MAX)
    }

    /// Sends a reply once every worker applied `generation`, in request order.
    fn reply(&mut self, conn: u64, id: u64, outcome: Outcome, generation: u64) {
        let line = channel::encode(&RelayMsg::Reply { id, outcome });
        self.queue(Target::Conn(conn), line, generation);
    }

    /// Sends `line` once every worker applied `generation`, after every
    /// line queued before it.
    fn queue(&mut self, to: Target, line: Vec<u8>, generation: u64) {
        if self.pending.is_empty() && generation <= self.min_applied() {
            self.send_to(to, line);
        } else {
            self.pending.push_back(Pending {
                generation,
                to,
                line,
            });
        }
    }

    fn send_to(&mut self, to: Target, line: Vec<u8>) {
        match to {
            Target::Conn(c) => self.deliver(c, line),
            Target::Controls => {
                let ids: Vec<u64> = self
                    .conns
                    .values()
                    .filter(|c| c.role == Role::Control)
                    .map(|c| c.id)
                    .collect();
                for id in ids {
                    self.deliver(id, line.clone());
                }
            }
        }
    }

    fn flush_pending(&mut self) {
        let min = self.min_applied();
        while self.pending.front().is_some_and(|p| p.generation <= min) {
            if let Some(p) = self.pending.pop_front() {
                self.send_to(p.to, p.line);
            }
        }
    }

    fn deliver(&mut self, conn: u64, line: Vec<u8>) {
        let Some(h) = self.conns.get(&conn) else {
            return;
        };
        if !h.send(line) {
            tracing::warn!(
                conn,
                role = ?h.role,
                agent = %h.agent,
                "command connection does not read its replies; disconnecting it (installed state stays)"
            );
            h.close();
            self.conns.remove(&conn);
        }
    }

    /// An event to every control connection, after every worker applied
    /// the latest commit (a `voice_registered` means the routes are live).
    fn tell_controls(&mut self, ev: channel::Event) {
        if !self.conns.values().any(|c| c.role == Role::Control) {
            return;
        }
        let line = channel::encode(&RelayMsg::Event(ev));
        let generation = self.generation;
        self.queue(Target::Controls, line, generation);
    }

    fn sample_rates(&mut self, now: Instant) {
        let (mut rx, mut tx) = (0u64, 0u64);
        for w in &self.info {
            rx += w.counters.get(Metric::RxBytes);
            tx += w.counters.get(Metric::TxBytes);
        }
        let (t0, rx0, tx0) = self.rate_sample;
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        if dt > 0.0 {
            self.bps = (
                (rx.saturating_sub(rx0) as f64 * 8.0 / dt) as u64,
                (tx.saturating_sub(tx0) as f64 * 8.0 / dt) as u64,
            );
        }
        self.rate_sample = (now, rx, tx);
    }

    /// Per-worker counters and totals for the command channel.
    pub fn counters(&self) -> channel::Counters {
        let workers = self
            .info
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let snap = w.counters.snapshot();
                let mut drops: BTreeMap<String, u64> = Metric::ALL
                    .iter()
                    .filter_map(|&m| drop_key(m).map(|k| (k.to_string(), snap[m as usize])))
                    .collect();
                drops.insert(
                    stat::HELLO_DENIED.to_string(),
                    self.hello_denied.get(i).copied().unwrap_or(0),
                );
                channel::WorkerCounters {
                    worker: i as u32,
                    cpu: Some(w.cpu as u32),
                    engine: w.engine.to_string(),
                    packets_in: snap[Metric::RxPackets as usize],
                    packets_out: snap[Metric::TxPackets as usize],
                    bytes_in: snap[Metric::RxBytes as usize],
                    bytes_out: snap[Metric::TxBytes as usize],
                    drops,
                }
            })
            .collect();
        channel::Counters {
            workers,
            bps_in: self.bps.0,
            bps_out: self.bps.1,
            bps_limit: self.limits.bandwidth_mbps * 1_000_000,
            calls: self.voice.call_count() as u64,
            stations: self.registry.len() as u64,
        }
    }

    fn stations(&self) -> Vec<StationInfo> {
        let now = Instant::now();
        self.registry
            .stations()
            .map(|(id, s)| StationInfo {
                callsign: id.to_string(),
                addr: display_addr(s.src),
                last_seen_secs: now.saturating_duration_since(s.last_seen).as_secs(),
                frames: s.frames,
            })
            .collect()
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
            "stats kind={} {}={} {}={} {}={} {}={} {}={} {}={} {}={} {}={} users={} calls={}",
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
            stat::HELLO_DENIED,
            self.hello_denied.iter().sum::<u64>(),
            self.voice.user_count(),
            self.voice.call_count(),
        );
        for m in Metric::ALL {
            let _ = write!(line, " {}={}", m.name(), total(&totals, m));
        }
        tracing::info!("{line}");
        let status = format!(
            "{} stations, {} calls, {} users; frames {} in / {} out; voice {} / {} bit/s",
            self.registry.len(),
            self.voice.call_count(),
            self.voice.user_count(),
            total(&totals, Metric::OvpFrames),
            total(&totals, Metric::OvpForwarded),
            self.bps.0,
            self.bps.1
        );
        self.ops.notifier.status(&status);
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
                "decode errors exceed 10% of the datagrams to the OVP port: \
                 decode_errors={errors} frames_received={frames} (valid)"
            );
        }
        self.last_totals = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_counts_what_it_suppresses_and_reports_it_once() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(2, Duration::from_secs(10), t0);
        assert!(b.allow());
        assert!(b.allow());
        assert!(!b.allow());
        assert!(!b.allow());
        assert_eq!(b.roll(t0 + Duration::from_secs(9)), None, "window not over");
        assert_eq!(b.roll(t0 + Duration::from_secs(10)), Some(2));
        // A new window: two lines again; nothing left to report.
        assert!(b.allow());
        assert!(b.allow());
        assert_eq!(b.roll(t0 + Duration::from_secs(19)), None);
        assert!(!b.allow());
        assert_eq!(b.flush(), Some(1));
        assert_eq!(b.flush(), None);
    }
}
