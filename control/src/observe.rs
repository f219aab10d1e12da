//! Operations around the server: the watchdog and SIGHUP reload.
//! Notification ([`Notifier`]), the watchdog schedule and the Prometheus
//! endpoint are `whelm_daemon`'s, shared with `whelm-relay`.
//!
//! - [`Notifier`]: `READY=1` once the listeners are bound and the store
//!   answered (runtime.rs calls it after both), `STATUS=` lines,
//!   `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` it does nothing.
//! - [`Watchdog`]: fed by the machine thread's loop, and only while the
//!   network thread has also gone round its loop recently ([`Progress`]): a
//!   hung machine or network thread stops the pings, and systemd restarts us.
//! - The metrics endpoint: [`whelm_daemon::metrics_http::MetricsServer`]
//!   serving `GET /metrics`, reading the atomics of [`Metrics`].
//! - [`Reloader`]: on SIGHUP re-reads the configuration; a configuration
//!   with an error is refused whole (logged, the running one kept).
//!   Otherwise limits, rate limits, timers, the call limit, the log filter,
//!   the summary interval and the TLS certificate are applied to new events;
//!   keys that need a restart are logged and kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::Waker;
use whelm_daemon::logging::{LogHandle, RateLimited};
use whelm_daemon::notify::{Notifier, WatchdogSchedule};

use crate::cli::Cli;
use crate::config::Config;
use crate::jobs::Input;
use crate::metrics::Metrics;
use crate::net::{NetCmd, Progress};

/// The watchdog schedule (`WATCHDOG_USEC`): a ping every half period while
/// the network thread keeps going round its loop.
#[derive(Debug)]
pub struct Watchdog {
    schedule: WatchdogSchedule,
    progress: Progress,
    stalls: RateLimited,
}

impl Watchdog {
    /// `None` when the service manager asked for no watchdog.
    pub fn from_env(progress: Progress) -> Option<Watchdog> {
        Some(Watchdog {
            schedule: WatchdogSchedule::from_env()?,
            progress,
            stalls: RateLimited::new(Duration::from_secs(10)),
        })
    }

    /// The period systemd enforces.
    pub fn period(&self) -> Duration {
        self.schedule.period()
    }

    /// Called from the machine loop on every iteration.
    pub fn feed(&mut self, now: Instant, notifier: &mut Notifier) {
        if !self.schedule.due(now) {
            return;
        }
        let age = self.progress.age(now);
        if age > self.schedule.period() {
            if let Some(held) = self.stalls.allow(now) {
                tracing::error!(
                    stalled_ms = age.as_millis(),
                    similar_errors_not_logged = held,
                    "network thread made no progress; not feeding the watchdog"
                );
            }
            return;
        }
        notifier.watchdog();
    }
}

/// Keys whose change needs a restart (a reload logs and keeps them).
const RESTART_KEYS: [&str; 6] = [
    "listen",
    "db",
    "relay_socket",
    "batch_max",
    "metrics_listen",
    "tls_listen",
];

/// Applies SIGHUP reloads (runs on the signal thread).
pub struct Reloader {
    /// The command line the process started with (its flags still win).
    pub cli: Cli,
    /// The configuration in force.
    pub current: Config,
    /// The machine thread's inputs.
    pub machine: Sender<Input>,
    /// The network thread's commands, and its waker.
    pub net: Sender<NetCmd>,
    /// Wakes the network thread.
    pub waker: Arc<Waker>,
    /// The log filter's handle (None in tests that install no subscriber).
    pub log: Option<LogHandle>,
    /// Reload counters.
    pub metrics: Arc<Metrics>,
    /// The summary interval in milliseconds (0: off), read by the machine loop.
    pub summary_ms: Arc<AtomicU64>,
    /// Sessions the open-file limit leaves room for, whatever
    /// `max_connections` says.
    pub session_cap: usize,
}

impl Reloader {
    /// Re-reads and applies; never fails (errors are logged and counted).
    pub fn reload(&mut self) {
        match self.try_reload() {
            Ok(()) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("configuration reload refused, running configuration kept: {e:#}");
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let mut new = Config::from_cli(&self.cli)?;
        // Everything is checked before anything is applied.
        let tls = match (&self.current.tls, &new.tls) {
            (Some(_), Some(t)) => Some(crate::tls::load(&t.cert, &t.key)?),
            _ => None,
        };
        let mut changed = Vec::new();
        for (k, (v, _)) in &new.effective {
            let old = self.current.effective.get(k).map(|x| &x.0);
            if old == Some(v) {
                continue;
            }
            let old = old.map(ToString::to_string).unwrap_or_default();
            if RESTART_KEYS.contains(&k.as_str()) {
                tracing::warn!(key = %k, running = %old, file = %v, "changing this key needs a restart; kept");
            } else {
                changed.push(format!("{k}: {old} -> {v}"));
            }
        }
        if let Some(h) = &self.log {
            whelm_daemon::logging::set_filter(h, &new.log)?;
        }
        let _ = self
            .machine
            .send(Input::Reconfigure(Box::new(new.machine.clone())));
        let _ = self.net.send(NetCmd::Reconfigure(new.net.clone(), tls));
        let _ = self.waker.wake();
        let ms = new
            .summary_interval
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.summary_ms.store(ms, Ordering::Relaxed);
        // Keys that need a restart keep their running values.
        let cur = &self.current;
        new.listen = cur.listen;
        new.db = cur.db.clone();
        new.relay_socket = cur.relay_socket.clone();
        new.batch_max = cur.batch_max;
        new.metrics_listen = cur.metrics_listen;
        new.tls = match (&cur.tls, new.tls.take()) {
            (Some(c), Some(n)) => Some(crate::config::TlsSettings {
                listen: c.listen,
                ..n
            }),
            (c, _) => c.clone(),
        };
        for k in RESTART_KEYS {
            if let Some(v) = cur.effective.get(k) {
                new.effective.insert(k.to_owned(), v.clone());
            }
        }
        if new.net.max_connections != cur.net.max_connections {
            crate::runtime::warn_if_capped(self.session_cap, new.net.max_connections);
        }
        if changed.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(changes = %changed.join(", "), "configuration reloaded");
        }
        self.current = new;
        Ok(())
    }
}
