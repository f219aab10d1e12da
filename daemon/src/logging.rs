//! Structured logs (tracing) on stderr: the human format on a terminal, a
//! compact one (no timestamps, no colour: journald adds both) when stderr is
//! the journal (`JOURNAL_STREAM` names its device and inode). The filter
//! sits behind a reload handle so a reload (SIGHUP, the relay's
//! `ctl reload`) can change the level. Repeated errors go through
//! [`RateLimited`]. Nothing is logged per packet above trace level: the
//! relay's packet path counts (its metrics) instead.

use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the log filter of the running process.
pub type LogHandle = reload::Handle<EnvFilter, Registry>;

/// Whether stderr is the journal's stream (systemd sets `JOURNAL_STREAM`
/// to `DEV:INODE` of the stream it connected to stdout/stderr).
pub fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        // Cannot check: trust the variable.
        Err(_) => true,
    }
}

/// Installs the subscriber with `filter` (falls back to `info` if it does
/// not parse; the configuration check reports it properly later).
pub fn init(filter: &str) -> LogHandle {
    let f = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(f);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if under_journald() {
        let _ = tracing_subscriber::registry()
            .with(layer)
            .with(fmt.compact().without_time().with_ansi(false))
            .try_init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = tracing_subscriber::registry()
            .with(layer)
            .with(fmt.with_ansi(ansi))
            .try_init();
    }
    handle
}

/// Replaces the filter.
pub fn set_filter(handle: &LogHandle, filter: &str) -> anyhow::Result<()> {
    let f =
        EnvFilter::try_new(filter).map_err(|e| anyhow::anyhow!("log filter {filter:?}: {e}"))?;
    handle
        .reload(f)
        .map_err(|e| anyhow::anyhow!("reloading the log filter: {e}"))
}

/// Lets one event through per interval and counts the ones held back.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// At most one event per `every`.
    pub const fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last one)` when this event may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_counts_what_it_holds_back() {
        let mut r = RateLimited::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.allow(t), Some(0));
        assert_eq!(r.allow(t + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t + Duration::from_secs(2)), None);
        assert_eq!(r.allow(t + Duration::from_secs(11)), Some(2));
    }
}
