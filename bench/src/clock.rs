//! Clocks of the measurement. Send timestamps are CLOCK_MONOTONIC ns
//! (sender and receiver are threads of one process). Kernel receive timestamps
//! (`SO_TIMESTAMPNS`) are CLOCK_REALTIME; [`RealtimeOffset`] converts them.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The process's monotonic epoch: the first call of [`mono_ns`].
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// CLOCK_MONOTONIC (std's `Instant` on Linux) in ns since this process's
/// epoch. Senders and receivers of a run are threads of one process.
pub fn mono_ns() -> u64 {
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// CLOCK_REALTIME in ns since 1970 (0 if the clock is before 1970).
pub fn real_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `realtime - monotonic`, measured once per run: the tightest of a few
/// bracketed samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeOffset(i128);

impl RealtimeOffset {
    /// Measures the offset now.
    pub fn measure() -> RealtimeOffset {
        let mut best: Option<(u64, i128)> = None;
        for _ in 0..16 {
            let a = mono_ns();
            let r = real_ns();
            let b = mono_ns();
            let width = b.saturating_sub(a);
            let off = i128::from(r) - i128::from(a / 2 + b / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, off));
            }
        }
        RealtimeOffset(best.map_or(0, |(_, o)| o))
    }

    /// A realtime instant (ns) as monotonic ns.
    pub fn to_mono(self, real_ns: u64) -> u64 {
        let m = i128::from(real_ns) - self.0;
        m.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The difference between two offsets in ns (clock steps during a run).
    pub fn drift_ns(self, later: RealtimeOffset) -> i128 {
        later.0 - self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_converts_now_to_now() {
        let off = RealtimeOffset::measure();
        let m = off.to_mono(real_ns());
        let now = mono_ns();
        assert!(m.abs_diff(now) < 50_000_000, "{m} vs {now}");
    }
}
