//! Talking to systemd: [`Notifier`] speaks the documented `NOTIFY_SOCKET`
//! datagram protocol (the sd-notify crate): `READY=1` with a status line,
//! `STATUS=` lines, `STOPPING=1` at shutdown, `WATCHDOG=1`. Without
//! `NOTIFY_SOCKET` it does nothing. [`WatchdogSchedule`] is the watchdog
//! period systemd asked for (`WATCHDOG_USEC`) and when the next ping is due
//! (every half period); each daemon decides whether a due ping is sent
//! (only while its threads make progress).

use std::time::{Duration, Instant};

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

    /// `WATCHDOG=1` (the daemon's watchdog sends it when
    /// [`WatchdogSchedule::due`] and its progress check agree).
    pub fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog schedule (`WATCHDOG_USEC`): a ping is due every half period.
#[derive(Debug)]
pub struct WatchdogSchedule {
    period: Duration,
    next: Instant,
}

impl WatchdogSchedule {
    /// `None` when the service manager asked for no watchdog.
    pub fn from_env() -> Option<WatchdogSchedule> {
        let usec = watchdog_usec(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        Some(WatchdogSchedule::new(
            Duration::from_micros(usec),
            Instant::now(),
        ))
    }

    /// A schedule of `period` whose first ping is due at `first`.
    pub fn new(period: Duration, first: Instant) -> WatchdogSchedule {
        WatchdogSchedule {
            period,
            next: first,
        }
    }

    /// The period systemd enforces.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When the next ping is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// True when a ping is due at `now`; the next one is then due half a
    /// period later (whether or not this one is sent).
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period / 2;
        true
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
    fn a_ping_is_due_every_half_period() {
        let t0 = Instant::now();
        let mut s = WatchdogSchedule::new(Duration::from_millis(500), t0);
        assert!(s.due(t0));
        assert_eq!(s.next_due(), t0 + Duration::from_millis(250));
        assert!(!s.due(t0 + Duration::from_millis(249)));
        assert!(s.due(t0 + Duration::from_millis(300)));
        assert_eq!(s.next_due(), t0 + Duration::from_millis(550));
    }
}
