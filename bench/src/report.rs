//! Reports: one JSON object per run (`runs.jsonl`), summaries over repeats
//! with ratios to the baseline of the same invocation (`summary.json`), and
//! the human table on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::flows::Totals;
use crate::latency::{Latency, Percentiles};
use crate::machine::Machine;
use crate::stats::Spread;

/// Label of the baseline target.
pub const BASELINE: &str = "baseline";

/// The generator's side of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratorInfo {
    /// Core it asked for.
    pub core: Option<usize>,
    /// Why it is not pinned (None: pinned).
    pub pin_error: Option<String>,
    /// Achieved < 99% of the offered rate: not a measurement of the target.
    pub bound: bool,
    /// Largest backlog in the window, ms.
    pub max_lag_ms: f64,
    /// Generator thread CPU / wall time in the window.
    pub cpu_util: f64,
    /// Share of the window the generator waited for its CPU (neighbours).
    pub cpu_wait_ratio: f64,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    /// Scenario name (`ovp`, `baseline`).
    pub scenario: String,
    /// `baseline` or `relay-<engine>`.
    pub target: String,
    /// Engine that ran (from the ready line).
    pub engine: String,
    /// Index of the load point.
    pub load_index: usize,
    /// Repeat number, from 0.
    pub repeat: usize,
    /// Stations in the conference.
    pub stations: usize,
    /// Stations transmitting.
    pub transmitting: usize,
    /// Copies per frame (stations - 1).
    pub fanout: usize,
    /// Frame length, bytes.
    pub frame_len: usize,
    /// Frames/s offered into the server.
    pub offered_rate: f64,
    /// Copies/s the server should forward at that rate.
    pub offered_forward_rate: f64,
    /// Measured window, s.
    pub duration_s: f64,
    /// Warm-up (excluded), s.
    pub warmup_s: f64,
    /// Measured frames sent.
    pub sent: u64,
    /// Expected/received/lost/reordered/duplicated copies.
    pub totals: Totals,
    /// lost / expected.
    pub loss_ratio: f64,
    /// One-way latency of measured copies, ns.
    pub latency_ns: Percentiles,
    /// Receive timestamps: `kernel` (SO_TIMESTAMPNS), `userspace`, or `mixed`.
    pub timestamps: String,
    /// Frames/s the generator achieved.
    pub achieved_send_rate: f64,
    /// Copies/s received.
    pub forwarded_rate: f64,
    /// Server CPU (utime+stime) in the window, ns.
    pub target_cpu_ns: Option<u64>,
    /// Server CPU per forwarded copy, ns.
    pub cpu_ns_per_forwarded: Option<f64>,
    /// Server CPU / wall time in the window.
    pub target_cpu_util: Option<f64>,
    /// Server RSS at the end of the window, KiB.
    pub target_rss_kib: Option<u64>,
    /// Share of the window the server's threads waited for a CPU: other
    /// processes on its core. Above a few percent the run measured the
    /// neighbours as much as the server.
    pub target_cpu_wait_ratio: Option<f64>,
    /// The generator.
    pub generator: GeneratorInfo,
    /// Datagrams the bench's own sockets dropped (SO_RXQ_OVFL).
    pub bench_drops: u64,
    /// Datagrams the server's socket(s) dropped on arrival (its receive
    /// queue overflowed: the server did not keep up), from /proc/net/udp.
    pub server_socket_drops: Option<u64>,
    /// Datagrams that were not this run's probes.
    pub stray: u64,
    /// The server or generator waited for its core more than the allowed
    /// share of the window (`--max-wait`): neighbours were measured too.
    pub contended: bool,
    /// Not generator-bound, no bench socket drops, not contended: the
    /// figures are the server's. Summaries use valid runs only (all runs
    /// when none is valid, marked in the table).
    pub valid: bool,
    /// Cores of the server.
    pub server_cores: Vec<usize>,
    /// The server's ready line.
    pub ready_line: String,
    /// The server's final statistics (relay: `stats kind=final` fields).
    pub server_stats: BTreeMap<String, String>,
    /// Realtime vs monotonic drift in the run, ns (kernel timestamps).
    pub clock_drift_ns: i64,
    /// Unix time at the end of the run.
    pub unix_time: u64,
    /// Where it ran.
    pub machine: Machine,
    /// The run's latency histogram (not serialised; for figures).
    #[serde(skip)]
    pub histogram: Option<Latency>,
}

/// Summary of one (load point, target) over repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Load point index.
    pub load_index: usize,
    /// Target label.
    pub target: String,
    /// Offered frames/s into the server.
    pub offered_rate: f64,
    /// Offered copies/s.
    pub offered_forward_rate: f64,
    /// Runs summarised (valid ones; all of them if none is valid).
    pub runs: usize,
    /// Runs excluded: generator-bound, bench socket drops, or contended.
    pub bench_bound_runs: usize,
    /// Copies/s received.
    pub forwarded_rate: Spread,
    /// Loss ratio.
    pub loss_ratio: Spread,
    /// Latency p50, ns.
    pub p50_ns: Spread,
    /// Latency p99, ns.
    pub p99_ns: Spread,
    /// Latency p99.9, ns.
    pub p999_ns: Spread,
    /// Latency max, ns.
    pub max_ns: Spread,
    /// CPU per forwarded copy, ns.
    pub cpu_ns_per_forwarded: Spread,
    /// RSS, KiB.
    pub rss_kib: Spread,
    /// Share of the window the server waited for its CPU (neighbours).
    pub server_cpu_wait: Spread,
    /// Medians as a ratio to the baseline at the same load (target / baseline).
    pub vs_baseline: Option<Ratios>,
}

/// target / baseline, from medians.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Ratios {
    /// CPU per forwarded copy.
    pub cpu_per_forwarded: Option<f64>,
    /// p50 latency.
    pub p50: Option<f64>,
    /// p99 latency.
    pub p99: Option<f64>,
    /// Forwarded rate.
    pub forwarded_rate: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Summaries per (load, target), in run order of first appearance.
pub fn summarize(runs: &[RunRecord]) -> Vec<Summary> {
    let mut keys: Vec<(usize, String)> = Vec::new();
    for r in runs {
        let k = (r.load_index, r.target.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out: Vec<Summary> = keys
        .iter()
        .map(|(load, target)| {
            let all: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.load_index == *load && &r.target == target)
                .collect();
            let valid: Vec<&RunRecord> = all.iter().copied().filter(|r| r.valid).collect();
            let used = if valid.is_empty() { &all } else { &valid };
            let f = |g: &dyn Fn(&RunRecord) -> f64| -> Spread {
                Spread::of(&used.iter().map(|r| g(r)).collect::<Vec<_>>())
            };
            let first = all[0];
            Summary {
                load_index: *load,
                target: target.clone(),
                offered_rate: first.offered_rate,
                offered_forward_rate: first.offered_forward_rate,
                runs: used.len(),
                bench_bound_runs: all.len() - valid.len(),
                forwarded_rate: f(&|r| r.forwarded_rate),
                loss_ratio: f(&|r| r.loss_ratio),
                p50_ns: f(&|r| r.latency_ns.p50 as f64),
                p99_ns: f(&|r| r.latency_ns.p99 as f64),
                p999_ns: f(&|r| r.latency_ns.p999 as f64),
                max_ns: f(&|r| r.latency_ns.max as f64),
                cpu_ns_per_forwarded: f(&|r| r.cpu_ns_per_forwarded.unwrap_or(f64::NAN)),
                rss_kib: f(&|r| r.target_rss_kib.map_or(f64::NAN, |v| v as f64)),
                server_cpu_wait: f(&|r| r.target_cpu_wait_ratio.unwrap_or(f64::NAN)),
                vs_baseline: None,
            }
        })
        .collect();
    let bases: Vec<Summary> = out
        .iter()
        .filter(|s| s.target == BASELINE)
        .cloned()
        .collect();
    for s in out.iter_mut().filter(|s| s.target != BASELINE) {
        if let Some(b) = bases.iter().find(|b| b.load_index == s.load_index) {
            s.vs_baseline = Some(Ratios {
                cpu_per_forwarded: ratio(
                    s.cpu_ns_per_forwarded.median,
                    b.cpu_ns_per_forwarded.median,
                ),
                p50: ratio(s.p50_ns.median, b.p50_ns.median),
                p99: ratio(s.p99_ns.median, b.p99_ns.median),
                forwarded_rate: ratio(s.forwarded_rate.median, b.forwarded_rate.median),
            });
        }
    }
    out
}

fn us(ns: f64) -> String {
    format!("{:.1}", ns / 1000.0)
}

fn x(r: Option<f64>) -> String {
    r.map_or("-".into(), |v| format!("{v:.2}x"))
}

/// The human table.
pub fn table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<4} {:<12} {:>10} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>6}",
        "load",
        "target",
        "offered/s",
        "fwd/s",
        "loss%",
        "p50us",
        "p99us",
        "p99.9us",
        "maxus",
        "cpu ns/f",
        "cpu/b",
        "p99/b",
        "wait%",
        "runs"
    );
    for s in summaries {
        let r = s.vs_baseline;
        let _ = writeln!(
            t,
            "{:<4} {:<12} {:>10.0} {:>11.0} {:>8.4} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>6}",
            s.load_index,
            s.target,
            s.offered_rate,
            s.forwarded_rate.median,
            s.loss_ratio.median * 100.0,
            us(s.p50_ns.median),
            us(s.p99_ns.median),
            us(s.p999_ns.median),
            us(s.max_ns.median),
            if s.cpu_ns_per_forwarded.n == 0 {
                "-".into()
            } else {
                format!("{:.0}", s.cpu_ns_per_forwarded.median)
            },
            x(r.and_then(|r| r.cpu_per_forwarded)),
            x(r.and_then(|r| r.p99)),
            if s.server_cpu_wait.n == 0 {
                "-".into()
            } else {
                format!("{:.1}", s.server_cpu_wait.median * 100.0)
            },
            if s.bench_bound_runs > 0 {
                format!("{}!{}", s.runs, s.bench_bound_runs)
            } else {
                s.runs.to_string()
            },
        );
    }
    let _ = writeln!(
        t,
        "medians over runs; cpu ns/f = server utime+stime per forwarded copy; /b = ratio to the \
         baseline forwarder at the same load; wait% = share of the window the server waited for \
         its core (other processes: noise); runs N!M = M more runs excluded (bench-bound or \
         contended; if all were, N counts them)"
    );
    let spreads: Vec<String> = summaries
        .iter()
        .filter(|s| s.runs > 1)
        .map(|s| {
            format!(
                "{}:{} fwd/s {:.0}..{:.0}, p99 {}..{} us, cpu {:.0}..{:.0} ns",
                s.load_index,
                s.target,
                s.forwarded_rate.min,
                s.forwarded_rate.max,
                us(s.p99_ns.min),
                us(s.p99_ns.max),
                s.cpu_ns_per_forwarded.min,
                s.cpu_ns_per_forwarded.max
            )
        })
        .collect();
    if !spreads.is_empty() {
        let _ = writeln!(t, "spread (min..max):");
        for s in spreads {
            let _ = writeln!(t, "  {s}");
        }
    }
    t
}

/// Writes `runs.jsonl` and `summary.json` into `dir`.
pub fn write_files(dir: &Path, runs: &[RunRecord], summaries: &[Summary]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut jsonl = String::new();
    for r in runs {
        jsonl.push_str(&serde_json::to_string(r).context("serialising a run")?);
        jsonl.push('\n');
    }
    let p = dir.join("runs.jsonl");
    std::fs::write(&p, jsonl).with_context(|| format!("writing {}", p.display()))?;
    let p = dir.join("summary.json");
    let s = serde_json::to_string_pretty(summaries).context("serialising the summary")?;
    std::fs::write(&p, s).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// `key=value` fields of the last line containing `marker`.
pub fn key_values(text: &str, marker: &str) -> BTreeMap<String, String> {
    text.lines()
        .rev()
        .find(|l| l.contains(marker))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_of_the_last_stats_line() {
        let t = "a stats kind=final x=1\nINFO stats kind=final frames=5 y=z\nother";
        let kv = key_values(t, "stats kind=final");
        assert_eq!(kv.get("frames").map(String::as_str), Some("5"));
        assert!(!kv.contains_key("x"));
    }
}
