//! `capacity`: the highest load the relay carries per core within the
//! bounds (median loss <= `--max-loss`, median p99 one-way latency <=
//! `--p99-us`, generator keeping up), for Whelm calls and for conference
//! stations, and the config lines that set it.
//!
//! Search per kind: start low, double while a step passes, then bisect
//! between the last pass and the first failure until they are within 10%
//! or the time budget is spent. Every step is `--repeat` runs of a fresh
//! relay; their medians decide. A step the generator could not offer is
//! neither pass nor fail: the search stops there and says so (the figure is
//! then a lower bound set by the bench, not by the relay).
//!
//! Calls: the load is searched as a total datagram rate over a fixed set of
//! `--calls` calls (the relay's cost per datagram is one table lookup,
//! independent of the number of calls), and reported as calls =
//! rate / (2 x pps). Stations: `n` stations all transmitting 25 frames/s,
//! every frame forwarded to the `n - 1` others.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::calls::{self, CallsScenario, Users};
use crate::ovp_load::{self, LoadSpec, Outcome};
use crate::scenario::{OvpScenario, TargetSpec, contended, start_target};
use crate::stats::Spread;

/// Frames/s of a transmitting OVP station (PROTOCOLS.md section 3: 40 ms).
const STATION_FPS: f64 = 25.0;
/// Bisection stops when the bounds are this close (relative).
const PRECISION: f64 = 0.1;
/// Seconds a run costs besides its warm-up and window (start, setup, drain).
const RUN_OVERHEAD_S: f64 = 2.0;

/// Options of the search.
#[derive(Debug, Clone)]
pub struct CapacityOptions {
    /// Search calls.
    pub calls: bool,
    /// Search stations.
    pub stations: bool,
    /// Relay engine.
    pub engine: String,
    /// Relay cores.
    pub server_cores: Vec<usize>,
    /// Generator core.
    pub gen_core: Option<usize>,
    /// Largest median loss ratio of a passing step.
    pub max_loss: f64,
    /// Largest median p99 of a passing step, ns.
    pub max_p99_ns: f64,
    /// Runs per step.
    pub repeat: usize,
    /// Measured window per run.
    pub duration: Duration,
    /// Warm-up per run.
    pub warmup: Duration,
    /// Total time budget.
    pub budget: Duration,
    /// Calls carrying the calls load.
    pub calls_sockets: usize,
    /// Datagrams/s per direction of a call.
    pub pps: f64,
    /// whelm-relay.
    pub relay_bin: std::path::PathBuf,
    /// whelm-control.
    pub control_bin: std::path::PathBuf,
    /// Contention bound (share of the window).
    pub max_wait: f64,
}

/// The verdict of one step.
#[derive(Debug, Clone, Copy)]
struct Step {
    pass: bool,
    generator_bound: bool,
    loss: f64,
    p99_ns: f64,
}

fn judge(o: &CapacityOptions, outcomes: &[(Outcome, f64)]) -> Step {
    let loss = Spread::of(
        &outcomes
            .iter()
            .map(|(x, _)| {
                if x.totals.expected == 0 {
                    1.0
                } else {
                    x.totals.lost as f64 / x.totals.expected as f64
                }
            })
            .collect::<Vec<_>>(),
    )
    .median;
    let p99 = Spread::of(
        &outcomes
            .iter()
            .map(|(x, _)| x.latency.percentiles().p99 as f64)
            .collect::<Vec<_>>(),
    )
    .median;
    let bound = outcomes
        .iter()
        .filter(|(x, rate)| x.generator_bound(*rate))
        .count();
    let generator_bound = bound * 2 > outcomes.len();
    Step {
        pass: !generator_bound && loss <= o.max_loss && p99 <= o.max_p99_ns,
        generator_bound,
        loss,
        p99_ns: p99,
    }
}

/// What a search found.
#[derive(Debug, Clone)]
struct Found {
    /// Highest passing load (rate for calls, stations for stations).
    best: Option<(f64, Step)>,
    /// Why it stopped.
    stop: String,
}

/// Doubling, then bisection, of `load` from `start`; `eval` runs a step.
fn search(
    name: &str,
    start: f64,
    integer: bool,
    deadline: Instant,
    step_cost: Duration,
    mut eval: impl FnMut(f64) -> anyhow::Result<Step>,
) -> anyhow::Result<Found> {
    let mut lo: Option<(f64, Step)> = None;
    let mut hi: Option<f64> = None;
    let mut load = start;
    loop {
        if Instant::now() + step_cost > deadline {
            return Ok(Found {
                best: lo,
                stop: "time budget spent".into(),
            });
        }
        let s = eval(load)?;
        eprintln!(
            "capacity {name}: {load:.0} -> {} (loss {:.4}%, p99 {:.0} us{})",
            if s.pass { "pass" } else { "FAIL" },
            s.loss * 100.0,
            s.p99_ns / 1000.0,
            if s.generator_bound {
                ", generator could not offer it"
            } else {
                ""
            }
        );
        if s.generator_bound {
            return Ok(Found {
                best: lo,
                stop: format!(
                    "the generator could not offer {load:.0}: a lower bound set by the bench"
                ),
            });
        }
        if s.pass {
            lo = Some((load, s));
        } else {
            hi = Some(load);
        }
        let next = match (lo.as_ref().map(|l| l.0), hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => h / 2.0,
            (Some(l), Some(h)) => {
                if (h - l) / l <= PRECISION || (integer && h - l <= 1.0) {
                    return Ok(Found {
                        best: lo,
                        stop: format!("bisected to within {:.0}%", PRECISION * 100.0),
                    });
                }
                (l + h) / 2.0
            }
            (None, None) => load,
        };
        let next = if integer { next.round().max(2.0) } else { next };
        if lo.is_none() && next < start / 64.0 {
            return Ok(Found {
                best: None,
                stop: "even the smallest load failed".into(),
            });
        }
        if (next - load).abs() < f64::EPSILON {
            return Ok(Found {
                best: lo,
                stop: "no further step".into(),
            });
        }
        load = next;
    }
}

/// Runs the search and prints the config lines.
pub fn run(o: &CapacityOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let cores = o.server_cores.len().max(1);
    let core_list: String = o
        .server_cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let kinds = usize::from(o.calls) + usize::from(o.stations);
    let run_s = (o.warmup + o.duration).as_secs_f64() + RUN_OVERHEAD_S;
    let step_cost = Duration::from_secs_f64(run_s * o.repeat as f64);
    eprintln!(
        "capacity: relay engine {} on cores [{core_list}], generator core {:?}; bounds: loss <= {:.3}%, \
         p99 <= {:.0} us; {} runs per step of {:?} + {:?} warm-up; budget {:?}",
        o.engine,
        o.gen_core,
        o.max_loss * 100.0,
        o.max_p99_ns / 1000.0,
        o.repeat,
        o.duration,
        o.warmup,
        o.budget
    );
    let mut lines = Vec::new();
    let mut engine_seen = String::from(o.engine.as_str());
    if o.calls {
        let share = o.budget.as_secs_f64() / kinds.max(1) as f64;
        let deadline = started + Duration::from_secs_f64(share);
        let sc = CallsScenario {
            calls: o.calls_sockets.max(1),
            pps: o.pps,
            rates: Vec::new(),
            duration: o.duration,
            warmup: o.warmup,
            drain: Duration::from_millis(300),
            repeat: o.repeat,
            targets: Vec::new(),
            relay_bin: o.relay_bin.clone(),
            control_bin: o.control_bin.clone(),
            server_cores: o.server_cores.clone(),
            gen_core: o.gen_core,
            batch: 64,
            frame_len: 160,
            out: std::path::PathBuf::new(),
            max_wait: o.max_wait,
            relay_args: Vec::new(),
        };
        let mut users = Users::new(&o.control_bin)?;
        users.ensure(2 * sc.calls)?;
        let target = TargetSpec::Relay(o.engine.clone());
        let start = sc.calls as f64 * 2.0 * o.pps;
        let found = search(
            "calls (datagrams/s)",
            start,
            false,
            deadline,
            step_cost,
            |rate| {
                let spec = calls::spec_of(&sc, rate);
                let mut outs = Vec::new();
                for _ in 0..o.repeat {
                    let (out, ready, _) = calls::one_run(&sc, &target, &mut users, &spec, &|_| {})?;
                    if let Some(e) = ready
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("engine="))
                    {
                        engine_seen = e.to_string();
                    }
                    if contended(&out, o.max_wait) {
                        eprintln!("capacity: a contended run (other processes on the cores), kept");
                    }
                    outs.push((out, rate));
                }
                Ok(judge(o, &outs))
            },
        )?;
        match &found.best {
            Some((rate, s)) => {
                let per_core = (rate / (2.0 * o.pps) / cores as f64).floor() as u64;
                println!(
                    "calls: {per_core} per core ({rate:.0} datagrams/s relayed on {cores} core(s), \
                     {} B at {} pps per direction, engine {engine_seen}, loss {:.4}%, p99 {:.0} us; {})",
                    160,
                    o.pps,
                    s.loss * 100.0,
                    s.p99_ns / 1000.0,
                    found.stop
                );
                lines.push(format!("max_calls_per_core = {per_core}    # control.toml"));
            }
            None => println!("calls: no passing load ({})", found.stop),
        }
    }
    if o.stations {
        let deadline = started + o.budget;
        let found = search("stations", 10.0, true, deadline, step_cost, |n| {
            let n = n as usize;
            let sc = OvpScenario {
                name: "capacity".into(),
                stations: n,
                transmitting: 1.0,
                rate_per_station: STATION_FPS,
                rates: Vec::new(),
                duration: o.duration,
                warmup: o.warmup,
                drain: Duration::from_millis(300),
                repeat: o.repeat,
                targets: Vec::new(),
                relay_bin: o.relay_bin.clone(),
                server_cores: o.server_cores.clone(),
                gen_core: o.gen_core,
                batch: 64,
                frame_len: ovp_load::DEFAULT_FRAME_LEN,
                out: std::path::PathBuf::new(),
                max_wait: o.max_wait,
            };
            let rate = n as f64 * STATION_FPS;
            let spec = LoadSpec {
                stations: n,
                transmitting: n,
                rate,
                warmup: o.warmup,
                duration: o.duration,
                drain: Duration::from_millis(300),
                batch: 64,
                gen_core: o.gen_core,
                frame_len: ovp_load::DEFAULT_FRAME_LEN,
            };
            let target = TargetSpec::Relay(o.engine.clone());
            let mut outs = Vec::new();
            for _ in 0..o.repeat {
                let socks = ovp_load::bind_stations(n)?;
                let addrs: Vec<_> = socks.iter().map(|s| s.addr).collect();
                let mut server =
                    start_target(&target, &sc, &addrs)?.context("the relay was not started")?;
                let out = ovp_load::run(&spec, &socks, server.ovp, Some(server.pid), &|_| {});
                server.stop();
                outs.push((out?, rate));
            }
            Ok(judge(o, &outs))
        })?;
        match &found.best {
            Some((n, s)) => {
                let per_core = (n / cores as f64).floor() as u64;
                println!(
                    "stations: {per_core} per core ({n:.0} stations transmitting {STATION_FPS} frames/s \
                     = {:.0} forwarded/s on {cores} core(s), loss {:.4}%, p99 {:.0} us; {})",
                    n * (n - 1.0) * STATION_FPS,
                    s.loss * 100.0,
                    s.p99_ns / 1000.0,
                    found.stop
                );
                lines.push(format!(
                    "# conference: at most {per_core} stations per core, all transmitting"
                ));
            }
            None => println!("stations: no passing load ({})", found.stop),
        }
    }
    lines.push(format!("cores = [{core_list}]    # relay.toml"));
    println!("config lines to paste:");
    for l in &lines {
        println!("  {l}");
    }
    eprintln!("capacity: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(pass: bool) -> Step {
        Step {
            pass,
            generator_bound: false,
            loss: 0.0,
            p99_ns: 0.0,
        }
    }

    #[test]
    fn doubling_then_bisection_finds_the_edge() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tried = Vec::new();
        let f = search("t", 10.0, true, deadline, Duration::ZERO, |n| {
            tried.push(n);
            Ok(step(n <= 57.0))
        })
        .unwrap();
        let best = f.best.unwrap().0;
        assert!((52.0..=57.0).contains(&best), "{best} {tried:?}");
        assert_eq!(&tried[..4], &[10.0, 20.0, 40.0, 80.0]);
        assert!(tried.len() < 12, "{tried:?}");
    }

    #[test]
    fn budget_and_failure_stop_the_search() {
        let past = Instant::now();
        let f = search("t", 10.0, false, past, Duration::from_secs(1), |_| {
            Ok(step(true))
        })
        .unwrap();
        assert!(f.best.is_none() && f.stop.contains("budget"));
        let later = Instant::now() + Duration::from_secs(60);
        let f = search("t", 10.0, false, later, Duration::ZERO, |_| Ok(step(false))).unwrap();
        assert!(f.best.is_none(), "{f:?}");
    }
}
