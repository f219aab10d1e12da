//! Operations around the server: systemd notification, the watchdog, the
//! Prometheus endpoint and SIGHUP reload.
//!
//! - [`Notifier`]: the documented `NOTIFY_SOCKET` datagram protocol (the
//!   sd-notify crate): `READY=1` once the listeners are bound and the store
//!   answered (runtime.rs calls it after both), `STATUS=` lines,
//!   `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` it does nothing.
//! - [`Watchdog`]: fed by the machine thread's loop, and only while the
//!   network thread has also gone round its loop recently ([`Progress`]): a
//!   hung machine or network thread stops the pings, and systemd restarts us.
//! - [`MetricsServer`]: `GET /metrics` in the Prometheus text format on its
//!   own thread (tiny_http), reading the atomics of [`Metrics`].
//! - [`Reloader`]: on SIGHUP re-reads the configuration; a configuration
//!   with an error is refused whole (logged, the running one kept).
//!   Otherwise limits, rate limits, timers, the call limit, the log filter,
//!   the summary interval and the TLS certificate are applied to new events;
//!   keys that need a restart are logged and kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Sender;
use mio::Waker;
use sd_notify::NotifyState;

use crate::cli::Cli;
use crate::config::Config;
use crate::jobs::Input;
use crate::logging::{LogHandle, RateLimited};
use crate::metrics::Metrics;
use crate::net::{NetCmd, Progress};

/// Talks to the service manager when `NOTIFY_SOCKET` is set.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    errors: RateLimited,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (the environment is left as it is).
    pub fn new() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            errors: RateLimited::new(Duration::from_secs(60)),
        }
    }

    fn send(&mut self, state: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, state)
            && let Some(held) = self.errors.allow(Instant::now())
        {
            tracing::warn!(error = %e, similar_errors_not_logged = held, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line.
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1`.
    fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog schedule (`WATCHDOG_USEC`): a ping every half period while
/// the network thread keeps going round its loop.
#[derive(Debug)]
pub struct Watchdog {
    period: Duration,
    next: Instant,
    progress: Progress,
    stalls: RateLimited,
}

impl Watchdog {
    /// `None` when the service manager asked for no watchdog.
    pub fn from_env(progress: Progress) -> Option<Watchdog> {
        let usec = watchdog_usec(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        Some(Watchdog {
            period: Duration::from_micros(usec),
            next: Instant::now(),
            progress,
            stalls: RateLimited::new(Duration::from_secs(10)),
        })
    }

    /// The period systemd enforces.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Called from the machine loop on every iteration.
    pub fn feed(&mut self, now: Instant, notifier: &mut Notifier) {
        if now < self.next {
            return;
        }
        self.next = now + self.period / 2;
        let age = self.progress.age(now);
        if age > self.period {
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

/// The watchdog period as sd_watchdog_enabled(3) reads it: `WATCHDOG_USEC`
/// a positive number; `WATCHDOG_PID`, when set, must be this process (the
/// sd-notify crate also refuses an unset `WATCHDOG_PID`, which the man page
/// allows).
fn watchdog_usec(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(me) => None,
        _ => Some(usec),
    }
}

/// The Prometheus endpoint's thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (port resolved).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics`.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind the metrics endpoint {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .with_context(|| format!("local address of the metrics endpoint {addr}"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("");
                    let resp = if path == "/metrics" || path == "/" {
                        let mut r = tiny_http::Response::from_string(metrics.render());
                        if let Ok(h) = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/plain; version=0.0.4; charset=utf-8",
                        ) {
                            r = r.with_header(h);
                        }
                        r
                    } else {
                        tiny_http::Response::from_string("not found\n").with_status_code(404)
                    };
                    let _ = req.respond(resp);
                }
            })
            .context("spawning the metrics thread")?;
        Ok(MetricsServer {
            server,
            thread: Some(thread),
            addr: local,
        })
    }

    /// Stops the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
            crate::logging::set_filter(h, &new.log)?;
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
        if changed.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(changes = %changed.join(", "), "configuration reloaded");
        }
        self.current = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_as_the_man_page_says() {
        assert_eq!(watchdog_usec(Some("500000"), None, 7), Some(500_000));
        assert_eq!(watchdog_usec(Some("500000"), Some("7"), 7), Some(500_000));
        assert_eq!(watchdog_usec(Some("500000"), Some("8"), 7), None);
        assert_eq!(watchdog_usec(Some("0"), None, 7), None);
        assert_eq!(watchdog_usec(Some("x"), None, 7), None);
        assert_eq!(watchdog_usec(None, Some("7"), 7), None);
    }
}
