//! One-way latency histogram (hdrhistogram, ns) and its percentiles.

use hdrhistogram::Histogram;

/// Highest latency recorded exactly: 60 s; larger values are clamped.
const MAX_NS: u64 = 60_000_000_000;

/// Percentiles of one run, in ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// A latency histogram.
#[derive(Debug, Clone)]
pub struct Latency {
    h: Histogram<u64>,
    /// Samples whose receive time preceded the send time (clock trouble),
    /// recorded as 0.
    pub negative: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram, 3 significant digits, 1 ns to 60 s.
    pub fn new() -> Latency {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 low,
        // sigfig <= 5): not input from outside the process.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant histogram bounds");
        Latency { h, negative: 0 }
    }

    /// Records one packet sent at `sent_ns` and received at `recv_ns`.
    pub fn record(&mut self, sent_ns: u64, recv_ns: u64) {
        let d = match recv_ns.checked_sub(sent_ns) {
            Some(d) => d,
            None => {
                self.negative += 1;
                0
            }
        };
        self.h.saturating_record(d.min(MAX_NS));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides; an error would only mean a clamp.
        let _ = self.h.add(&other.h);
        self.negative += other.negative;
    }

    /// The percentiles.
    pub fn percentiles(&self) -> Percentiles {
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.h.len(),
            p50: self.h.value_at_quantile(0.50),
            p90: self.h.value_at_quantile(0.90),
            p99: self.h.value_at_quantile(0.99),
            p999: self.h.value_at_quantile(0.999),
            max: self.h.max(),
            mean: self.h.mean(),
        }
    }

    /// Points of the cumulative distribution: (latency ns, fraction <= it),
    /// at quantiles spaced for a log-scale "nines" axis.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        if self.h.is_empty() {
            return Vec::new();
        }
        let mut pts = Vec::new();
        let mut q = 0.0f64;
        while q < 0.99999 {
            pts.push((self.h.value_at_quantile(q), q));
            // Finer steps as q approaches 1: a tenth of the remaining tail.
            q += ((1.0 - q) / 10.0).max(0.000_005);
        }
        pts.push((self.h.max(), 1.0));
        pts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(1_000, 1_000 + i * 1_000);
        }
        l.record(5, 1);
        let p = l.percentiles();
        assert_eq!(p.count, 1001);
        assert!((499_000..=501_000).contains(&p.p50), "{p:?}");
        assert!((989_000..=991_000).contains(&p.p99), "{p:?}");
        assert_eq!(l.negative, 1);
        assert!(p.max >= 999_000);
        let cdf = l.cdf();
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    }
}
