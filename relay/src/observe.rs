//! Operations around the relay, as in `whelm-control`: systemd
//! notification, the watchdog and the Prometheus endpoint.
//!
//! - [`Notifier`]: the documented `NOTIFY_SOCKET` datagram protocol (the
//!   sd-notify crate): `READY=1` once every socket is bound and every worker
//!   runs (relay.rs), `STATUS=` with the periodic summary (coordinator),
//!   `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` it does nothing.
//! - [`Watchdog`]: fed from the coordinator's loop every half period, and
//!   only while every worker's loop counter ([`crate::metrics::Metric::Loops`],
//!   bumped on every iteration, idle wake-ups included) has moved within the
//!   period: a stuck worker (or a stuck coordinator) stops the pings and
//!   systemd restarts the relay. The stall is logged (rate-limited).
//! - [`MetricsServer`]: `GET /metrics` in the Prometheus text format on its
//!   own thread (tiny_http).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use sd_notify::NotifyState;

use crate::logging::RateLimited;

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
    /// Reads `NOTIFY_SOCKET` (the environment is left as it is, so every
    /// thread's notifier sees it).
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

/// The watchdog schedule (`WATCHDOG_USEC`) and each worker's last progress.
#[derive(Debug)]
pub struct Watchdog {
    period: Duration,
    next: Instant,
    /// Per worker: the loop counter last read and when it last moved.
    seen: Vec<(u64, Instant)>,
    stalls: RateLimited,
}

impl Watchdog {
    /// `None` when the service manager asked for no watchdog.
    pub fn from_env(workers: usize) -> Option<Watchdog> {
        let usec = watchdog_usec(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        Some(Watchdog::new(Duration::from_micros(usec), workers))
    }

    /// A watchdog of `period` over `workers` workers.
    pub fn new(period: Duration, workers: usize) -> Watchdog {
        let now = Instant::now();
        Watchdog {
            period,
            next: now,
            seen: vec![(0, now); workers],
            stalls: RateLimited::new(Duration::from_secs(10)),
        }
    }

    /// The period systemd enforces.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When the next ping is due (the coordinator wakes up for it).
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Records the workers' loop counters; true when a ping is due and every
    /// worker moved within the period. Logs (rate-limited) the stalled ones.
    pub fn check(&mut self, now: Instant, loops: impl Iterator<Item = u64>) -> bool {
        for (s, l) in self.seen.iter_mut().zip(loops) {
            if s.0 != l {
                *s = (l, now);
            }
        }
        if now < self.next {
            return false;
        }
        self.next = now + self.period / 2;
        let stalled: Vec<String> = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) > self.period)
            .map(|(i, (_, t))| {
                format!("{i} ({} ms)", now.saturating_duration_since(*t).as_millis())
            })
            .collect();
        if stalled.is_empty() {
            return true;
        }
        if let Some(held) = self.stalls.allow(now) {
            tracing::error!(
                workers = %stalled.join(", "),
                similar_errors_not_logged = held,
                "worker loop made no progress within the watchdog period; not feeding the watchdog"
            );
        }
        false
    }

    /// [`Watchdog::check`], then `WATCHDOG=1` when it says so.
    pub fn feed(
        &mut self,
        now: Instant,
        loops: impl Iterator<Item = u64>,
        notifier: &mut Notifier,
    ) {
        if self.check(now, loops) {
            notifier.watchdog();
        }
    }
}

/// The watchdog period as sd_watchdog_enabled(3) reads it: `WATCHDOG_USEC`
/// a positive number; `WATCHDOG_PID`, when set, must be this process (the
/// sd-notify crate also refuses an unset `WATCHDOG_PID`, which the man page
/// allows; control does the same).
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
    /// Binds `addr` and serves `GET /metrics` with what `render` returns.
    pub fn start(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + 'static,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind the metrics endpoint {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .with_context(|| format!("local address of the metrics endpoint {addr}"))?;
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("relay-metrics".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("");
                    let resp = if path == "/metrics" || path == "/" {
                        let mut r = tiny_http::Response::from_string(render());
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

    #[test]
    fn a_stuck_worker_stops_the_pings() {
        let mut w = Watchdog::new(Duration::from_millis(500), 2);
        let t0 = Instant::now();
        assert!(w.check(t0, [1, 1].into_iter()));
        // Not due yet.
        assert!(!w.check(t0 + Duration::from_millis(100), [2, 2].into_iter()));
        assert!(w.check(t0 + Duration::from_millis(300), [3, 3].into_iter()));
        // Worker 1 stops moving at 300 ms; at 900 ms it has been 600 ms.
        assert!(w.check(t0 + Duration::from_millis(600), [4, 3].into_iter()));
        assert!(!w.check(t0 + Duration::from_millis(900), [5, 3].into_iter()));
        // It moves again: pings resume.
        assert!(w.check(t0 + Duration::from_millis(1200), [6, 4].into_iter()));
    }
}
