//! The relay's systemd watchdog. Notification ([`Notifier`]), the watchdog
//! schedule and the Prometheus endpoint are `whelm_daemon`'s, shared with
//! `whelm-control`.
//!
//! - [`Notifier`]: `READY=1` once every socket is bound and every worker
//!   runs (relay.rs), `STATUS=` with the periodic summary (coordinator),
//!   `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` it does nothing.
//! - [`Watchdog`]: fed from the coordinator's loop every half period, and
//!   only while every worker's loop counter ([`crate::metrics::Metric::Loops`],
//!   bumped on every iteration, idle wake-ups included) has moved within the
//!   period: a stuck worker (or a stuck coordinator) stops the pings and
//!   systemd restarts the relay. The stall is logged (rate-limited).
//! - The metrics endpoint: [`whelm_daemon::metrics_http::MetricsServer`]
//!   with [`crate::metrics::render`].

use std::time::{Duration, Instant};

use whelm_daemon::logging::RateLimited;
use whelm_daemon::notify::{Notifier, WatchdogSchedule};

/// The watchdog schedule (`WATCHDOG_USEC`) and each worker's last progress.
#[derive(Debug)]
pub struct Watchdog {
    schedule: WatchdogSchedule,
    /// Per worker: the loop counter last read and when it last moved.
    seen: Vec<(u64, Instant)>,
    stalls: RateLimited,
}

impl Watchdog {
    /// `None` when the service manager asked for no watchdog.
    pub fn from_env(workers: usize) -> Option<Watchdog> {
        let schedule = WatchdogSchedule::from_env()?;
        Some(Watchdog::new(schedule.period(), workers))
    }

    /// A watchdog of `period` over `workers` workers.
    pub fn new(period: Duration, workers: usize) -> Watchdog {
        let now = Instant::now();
        Watchdog {
            schedule: WatchdogSchedule::new(period, now),
            seen: vec![(0, now); workers],
            stalls: RateLimited::new(Duration::from_secs(10)),
        }
    }

    /// The period systemd enforces.
    pub fn period(&self) -> Duration {
        self.schedule.period()
    }

    /// When the next ping is due (the coordinator wakes up for it).
    pub fn next_due(&self) -> Instant {
        self.schedule.next_due()
    }

    /// Records the workers' loop counters; true when a ping is due and every
    /// worker moved within the period. Logs (rate-limited) the stalled ones.
    pub fn check(&mut self, now: Instant, loops: impl Iterator<Item = u64>) -> bool {
        for (s, l) in self.seen.iter_mut().zip(loops) {
            if s.0 != l {
                *s = (l, now);
            }
        }
        if !self.schedule.due(now) {
            return false;
        }
        let period = self.schedule.period();
        let stalled: Vec<String> = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) > period)
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

#[cfg(test)]
mod tests {
    use super::*;

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
