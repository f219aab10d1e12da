//! The soak's checks, without I/O: RSS against its baseline, loss ratios,
//! messages, errors; each a named [`Check`] with the figures behind it.

use serde::Serialize;

/// RSS of one process over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssStats {
    /// The first sample, KiB.
    pub first_kib: Option<u64>,
    /// The sample at the end of the warm-up, KiB.
    pub baseline_kib: Option<u64>,
    /// Seconds into the run of the baseline sample.
    pub baseline_at_s: Option<f64>,
    /// Smallest sample after the baseline, KiB.
    pub min_after_kib: Option<u64>,
    /// Largest sample after the baseline, KiB.
    pub max_after_kib: Option<u64>,
    /// The last sample, KiB.
    pub last_kib: Option<u64>,
    /// The sample after the baseline farthest from it, as
    /// (sample - baseline) / baseline (signed; 0 without samples).
    pub max_deviation: f64,
    /// Samples after the baseline.
    pub samples_after: u64,
    /// Samples that could not be read (process gone).
    pub unreadable: u64,
}

impl RssStats {
    /// One sample; `baseline`: this one is the end of the warm-up; after
    /// it, every sample is compared with it.
    pub fn sample(&mut self, kib: Option<u64>, t_s: f64, baseline: bool) {
        let Some(kib) = kib else {
            self.unreadable += 1;
            return;
        };
        self.first_kib.get_or_insert(kib);
        self.last_kib = Some(kib);
        if baseline {
            self.baseline_kib = Some(kib);
            self.baseline_at_s = Some(t_s);
            return;
        }
        let Some(base) = self.baseline_kib.filter(|&b| b > 0) else {
            return;
        };
        self.samples_after += 1;
        self.min_after_kib = Some(self.min_after_kib.map_or(kib, |m| m.min(kib)));
        self.max_after_kib = Some(self.max_after_kib.map_or(kib, |m| m.max(kib)));
        let dev = (kib as f64 - base as f64) / base as f64;
        if dev.abs() > self.max_deviation.abs() {
            self.max_deviation = dev;
        }
    }
}

/// One check of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// The figures behind it.
    pub detail: String,
}

impl Check {
    /// A check.
    pub fn new(name: impl Into<String>, pass: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            pass,
            detail: detail.into(),
        }
    }
}

/// The RSS check of `who`: a baseline, at least one sample after it, every
/// one within `tolerance` of it.
pub fn rss_check(who: &str, r: &RssStats, tolerance: f64) -> Check {
    let name = format!("{who} RSS within {:.1}% of its baseline", tolerance * 100.0);
    let Some(base) = r.baseline_kib else {
        return Check::new(
            name,
            false,
            "no baseline sample (the run ended in its warm-up?)",
        );
    };
    if r.samples_after == 0 {
        return Check::new(name, false, "no sample after the warm-up");
    }
    let detail = format!(
        "max deviation {:+.2}% (baseline {base} KiB at {:.0} s, after it {}..{} KiB over {} \
         samples{})",
        r.max_deviation * 100.0,
        r.baseline_at_s.unwrap_or(0.0),
        r.min_after_kib.unwrap_or(0),
        r.max_after_kib.unwrap_or(0),
        r.samples_after,
        if r.unreadable > 0 {
            format!(", {} unreadable", r.unreadable)
        } else {
            String::new()
        }
    );
    Check::new(
        name,
        r.max_deviation.abs() <= tolerance && r.unreadable == 0,
        detail,
    )
}

/// Loss ratio, 0 when nothing was expected.
pub fn loss_ratio(lost: u64, expected: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        lost as f64 / expected as f64
    }
}

/// The loss check of `what`: something measured, lost / expected below
/// `max_loss`.
pub fn loss_check(what: &str, expected: u64, lost: u64, max_loss: f64, note: &str) -> Check {
    let ratio = loss_ratio(lost, expected);
    Check::new(
        format!("{what} loss under {}%", max_loss * 100.0),
        expected > 0 && ratio < max_loss,
        format!("{lost} of {expected} lost ({:.4}%){note}", ratio * 100.0),
    )
}

/// PASS or FAIL.
pub fn word(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_deviation_is_measured_from_the_baseline() {
        let mut r = RssStats::default();
        r.sample(Some(900), 1.0, false);
        r.sample(Some(1000), 2.0, true);
        r.sample(Some(1030), 3.0, false);
        r.sample(Some(960), 4.0, false);
        r.sample(Some(1010), 5.0, false);
        assert_eq!(r.first_kib, Some(900));
        assert_eq!((r.min_after_kib, r.max_after_kib), (Some(960), Some(1030)));
        assert!((r.max_deviation + 0.04).abs() < 1e-9, "{}", r.max_deviation);
        assert!(rss_check("relay", &r, 0.05).pass);
        assert!(!rss_check("relay", &r, 0.03).pass);
        r.sample(None, 6.0, false);
        assert!(
            !rss_check("relay", &r, 0.05).pass,
            "a vanished process fails"
        );
        let mut w = RssStats::default();
        w.sample(Some(5), 1.0, false);
        assert!(!rss_check("control", &w, 0.05).pass, "no baseline");
        w.sample(Some(5), 2.0, true);
        assert!(!rss_check("control", &w, 0.05).pass, "nothing after it");
    }

    #[test]
    fn loss_needs_traffic_and_a_small_ratio() {
        assert!(loss_check("voice", 10_000, 9, 0.001, "").pass);
        assert!(!loss_check("voice", 10_000, 10, 0.001, "").pass);
        assert!(!loss_check("voice", 0, 0, 0.001, "").pass);
        assert_eq!(loss_ratio(0, 0), 0.0);
    }
}
