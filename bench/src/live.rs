//! Running totals of load runs while they run, and a request to end them
//! early: what a long scenario (`soak`) needs from the generators of
//! [`crate::voice_load`] and [`crate::ovp_load`] to print progress lines.
//!
//! A generator keeps the exact accounting ([`crate::flows`]) to itself. A
//! [`Publisher`] adds to a shared [`Live`] only what changed since its last
//! publication, so many runs (one per call) can publish into one `Live`,
//! and what they published last (after their drain) is their exact result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared by the scenario (reads, asks to stop) and any number of runs
/// (publish, watch `stop`).
#[derive(Debug, Default)]
pub struct Live {
    sent: AtomicU64,
    expected: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    /// Set by the scenario: every run publishing here ends its measured
    /// window at its next check (within about 250 ms), then drains.
    pub stop: AtomicBool,
}

/// One reading of [`Live`] (or what one run publishes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveSnapshot {
    /// Measured packets sent.
    pub sent: u64,
    /// Copies that should arrive (sent x receivers per packet).
    pub expected: u64,
    /// Distinct copies received.
    pub received: u64,
    /// While a run runs: sequence gaps ([`crate::flows::Flow::gaps`]), a
    /// lower bound that excludes packets in flight; after its drain: the
    /// exact loss (expected - received per flow).
    pub lost: u64,
}

impl Live {
    /// A new set of counters, all zero.
    pub fn new() -> Live {
        Live::default()
    }

    /// The sums published so far.
    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    /// Whether runs were asked to end.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One run's view of a [`Live`]: remembers what it published.
#[derive(Debug)]
pub struct Publisher<'a> {
    live: &'a Live,
    last: LiveSnapshot,
}

impl<'a> Publisher<'a> {
    /// A run that has published nothing yet.
    pub fn new(live: &'a Live) -> Publisher<'a> {
        Publisher {
            live,
            last: LiveSnapshot::default(),
        }
    }

    /// Replaces this run's contribution with `now`.
    pub fn publish(&mut self, now: LiveSnapshot) {
        move_by(&self.live.sent, self.last.sent, now.sent);
        move_by(&self.live.expected, self.last.expected, now.expected);
        move_by(&self.live.received, self.last.received, now.received);
        move_by(&self.live.lost, self.last.lost, now.lost);
        self.last = now;
    }

    /// Whether the scenario asked runs to end.
    pub fn stopping(&self) -> bool {
        self.live.stopping()
    }
}

fn move_by(a: &AtomicU64, old: u64, new: u64) {
    if new >= old {
        a.fetch_add(new - old, Ordering::Relaxed);
    } else {
        a.fetch_sub(old - new, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_their_latest_figures() {
        let live = Live::new();
        let mut a = Publisher::new(&live);
        let mut b = Publisher::new(&live);
        let snap = |sent, received, lost| LiveSnapshot {
            sent,
            expected: sent,
            received,
            lost,
        };
        a.publish(snap(10, 8, 1));
        b.publish(snap(5, 5, 0));
        a.publish(snap(20, 19, 0));
        assert_eq!(live.snapshot(), snap(25, 24, 0));
        assert!(!a.stopping());
        live.stop.store(true, Ordering::Relaxed);
        assert!(b.stopping());
    }
}
