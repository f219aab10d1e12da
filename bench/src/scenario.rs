//! The `ovp` and `baseline` scenarios: load points x repeats x targets
//! (the baseline forwarder and the relay with each engine asked for),
//! interleaved so that noise from the machine hits every target alike;
//! then the table, `runs.jsonl`, `summary.json` and `report.svg`.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::children::Target;
use crate::latency::Latency;
use crate::machine::Machine;
use crate::ovp_load::{self, LoadSpec, Outcome};
use crate::progress::Progress;
use crate::report::{self, BASELINE, GeneratorInfo, RunRecord};
use crate::svg::{self, CdfLine};

/// How long a server gets to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What the scenario measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// The bench's own forwarder.
    Baseline,
    /// `whelm-relay --engine <engine>` started by the bench.
    Relay(String),
    /// A server already running at this address (no CPU figures).
    External(SocketAddrV4),
}

impl TargetSpec {
    fn label(&self) -> String {
        match self {
            TargetSpec::Baseline => BASELINE.into(),
            TargetSpec::Relay(e) => format!("relay-{e}"),
            TargetSpec::External(_) => "external".into(),
        }
    }
}

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct OvpScenario {
    /// `ovp` or `baseline` (for the report).
    pub name: String,
    /// Stations in the conference.
    pub stations: usize,
    /// Share of stations transmitting, (0, 1].
    pub transmitting: f64,
    /// Frames/s per transmitting station when no total rate is given.
    pub rate_per_station: f64,
    /// Total offered rates (frames/s into the server), one per load point.
    pub rates: Vec<f64>,
    /// Measured window.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Drain.
    pub drain: Duration,
    /// Repeats of every (load, target).
    pub repeat: usize,
    /// Targets, in the order run within a repeat.
    pub targets: Vec<TargetSpec>,
    /// The relay binary.
    pub relay_bin: PathBuf,
    /// Cores of the server (relay `--cores`, forwarder pin).
    pub server_cores: Vec<usize>,
    /// The generator's core.
    pub gen_core: Option<usize>,
    /// Frames per sendmmsg.
    pub batch: usize,
    /// Frame length.
    pub frame_len: usize,
    /// Report directory.
    pub out: PathBuf,
    /// Largest share of the window the server or generator may wait for
    /// its core before the run counts as contended (excluded).
    pub max_wait: f64,
}

impl OvpScenario {
    fn transmitting_count(&self) -> usize {
        ((self.stations as f64 * self.transmitting).round() as usize).clamp(1, self.stations)
    }

    fn load_rates(&self) -> Vec<f64> {
        if self.rates.is_empty() {
            vec![self.transmitting_count() as f64 * self.rate_per_station]
        } else {
            self.rates.clone()
        }
    }
}

fn core_list(c: &[usize]) -> String {
    c.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

pub fn start_target(
    t: &TargetSpec,
    sc: &OvpScenario,
    stations: &[SocketAddrV4],
) -> anyhow::Result<Option<Target>> {
    let run_bound = sc.warmup + sc.duration + sc.drain + Duration::from_secs(60);
    match t {
        TargetSpec::External(_) => Ok(None),
        TargetSpec::Baseline => {
            let exe = std::env::current_exe().context("finding the whelm-bench executable")?;
            let mut cmd = Command::new(exe);
            cmd.args(["forwarder", "--bind", "127.0.0.1:0"])
                .args(["--max-seconds", &run_bound.as_secs().to_string()]);
            if let Some(c) = sc.server_cores.first() {
                cmd.args(["--core", &c.to_string()]);
            }
            let mut table: String = stations.iter().map(|a| format!("{a}\n")).collect();
            table.push('\n');
            Target::start(cmd, "the baseline forwarder", &table, READY_TIMEOUT).map(Some)
        }
        TargetSpec::Relay(engine) => {
            let mut cmd = Command::new(&sc.relay_bin);
            cmd.args(["--bind", "127.0.0.1", "--port", "0", "--voice-port", "0"])
                .args(["--reply-to", "source", "--engine", engine])
                .args(["--cores", &core_list(&sc.server_cores)])
                .args(["--station-rate", "0", "--stats-interval", "3600"]);
            // Several relays may run at once (tests): no fixed metrics port.
            if crate::calls::has_flag(&sc.relay_bin, "--metrics-listen") {
                cmd.args(["--metrics-listen", "off"]);
            }
            // Every load station is on 127.0.0.1: room for all of them.
            cmd.args(crate::calls::station_cap_args(&sc.relay_bin, sc.stations));
            Target::start(
                cmd,
                &format!("whelm-relay ({})", sc.relay_bin.display()),
                "",
                READY_TIMEOUT,
            )
            .map(Some)
        }
    }
}

/// Runs the scenario and writes its report.
pub fn run(sc: &OvpScenario) -> anyhow::Result<()> {
    if sc.stations < 2 {
        bail!("a conference needs at least 2 stations");
    }
    if !(sc.transmitting > 0.0 && sc.transmitting <= 1.0) {
        bail!("--transmitting is a share in (0, 1]");
    }
    if sc.repeat == 0 || sc.targets.is_empty() {
        bail!("nothing to run");
    }
    let machine = Machine::probe();
    let rates = sc.load_rates();
    let t = sc.transmitting_count();
    let run_secs = (sc.warmup + sc.duration).as_secs_f64() + 0.3;
    let total_runs = rates.len() * sc.repeat * sc.targets.len();
    eprintln!(
        "{}: {} stations ({} transmitting), loads {:?} frames/s, {} x {:?} + {:?} warm-up, \
         server cores {:?}, generator core {:?}; {} runs, ~{:.0} s",
        sc.name,
        sc.stations,
        t,
        rates,
        sc.repeat,
        sc.duration,
        sc.warmup,
        sc.server_cores,
        sc.gen_core,
        total_runs,
        total_runs as f64 * (run_secs + 0.5)
    );
    let progress = Progress::new(total_runs, run_secs);
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut index = 0;
    for (li, &rate) in rates.iter().enumerate() {
        for rep in 0..sc.repeat {
            for target in &sc.targets {
                progress.start_run(index, &format!("{} {rate:.0}/s #{rep}", target.label()));
                index += 1;
                let spec = LoadSpec {
                    stations: sc.stations,
                    transmitting: t,
                    rate,
                    warmup: sc.warmup,
                    duration: sc.duration,
                    drain: sc.drain,
                    batch: sc.batch,
                    gen_core: sc.gen_core,
                    frame_len: sc.frame_len,
                };
                let socks = ovp_load::bind_stations(sc.stations)?;
                let addrs: Vec<SocketAddrV4> = socks.iter().map(|s| s.addr).collect();
                let mut server = start_target(target, sc, &addrs)?;
                let addr = match (&server, target) {
                    (Some(s), _) => s.ovp,
                    (None, TargetSpec::External(a)) => *a,
                    (None, _) => bail!("no server address"),
                };
                let pid = server.as_ref().map(|s| s.pid);
                let outcome = ovp_load::run(&spec, &socks, addr, pid, &|f| progress.update(f));
                let (ready_line, stats) = match server.as_mut() {
                    Some(s) => {
                        s.stop();
                        (
                            s.ready_line.clone(),
                            report::key_values(&s.stderr(), "stats kind=final"),
                        )
                    }
                    None => (String::new(), BTreeMap::new()),
                };
                let outcome = outcome.with_context(|| format!("run of {}", target.label()))?;
                runs.push(record(
                    sc, target, li, rep, &spec, outcome, ready_line, stats, &machine,
                ));
            }
        }
    }
    progress.finish();
    let title = format!(
        "whelm-bench {}: {} stations, {} transmitting, {} ({})",
        sc.name,
        sc.stations,
        t,
        machine.git_commit.as_deref().unwrap_or("unknown commit"),
        machine.cpu_model
    );
    finish(&sc.name, &title, &runs, &sc.out, &machine)
}

/// Prints the table and the excluded runs, writes `runs.jsonl`,
/// `summary.json` and `report.svg` into `out`.
pub fn finish(
    name: &str,
    title: &str,
    runs: &[RunRecord],
    out: &std::path::Path,
    machine: &Machine,
) -> anyhow::Result<()> {
    let summaries = report::summarize(runs);
    println!(
        "whelm-bench {}: commit {} on {} ({} cpus, kernel {}); timestamps {}",
        name,
        machine.git_commit.as_deref().unwrap_or("unknown"),
        machine.cpu_model,
        machine.nproc,
        machine.kernel,
        runs.first().map_or("-", |r| r.timestamps.as_str())
    );
    print!("{}", report::table(&summaries));
    for r in runs.iter().filter(|r| !r.valid) {
        println!(
            "excluded: load {} {} #{}: achieved {:.0}/s of {:.0}/s offered, {} bench socket drops, \
             server waited {:.0}% and generator {:.0}% of the window for their cores",
            r.load_index,
            r.target,
            r.repeat,
            r.achieved_send_rate,
            r.offered_rate,
            r.bench_drops,
            r.target_cpu_wait_ratio.unwrap_or(0.0) * 100.0,
            r.generator.cpu_wait_ratio * 100.0
        );
    }
    report::write_files(out, runs, &summaries)?;
    let mut merged: Vec<(String, Latency)> = Vec::new();
    for r in runs {
        let label = format!("{} @{:.0}/s", r.target, r.offered_rate);
        let Some(h) = &r.histogram else { continue };
        match merged.iter_mut().find(|(l, _)| *l == label) {
            Some((_, m)) => m.merge(h),
            None => merged.push((label, h.clone())),
        }
    }
    let lines: Vec<CdfLine<'_>> = merged
        .iter()
        .map(|(label, latency)| CdfLine {
            label: label.clone(),
            latency,
        })
        .collect();
    let p = out.join("report.svg");
    std::fs::write(&p, svg::render(title, &lines, &summaries))
        .with_context(|| format!("writing {}", p.display()))?;
    println!(
        "report: {}/runs.jsonl, summary.json, report.svg",
        out.display()
    );
    Ok(())
}

/// The server or the generator waited for its core longer than `max_wait`
/// of the window: other processes shared the core, and the run measured
/// them as much as the server.
pub fn contended(o: &Outcome, max_wait: f64) -> bool {
    let w = o.window_ns.max(1) as f64;
    o.target_wait_ns.is_some_and(|t| t as f64 / w > max_wait) || o.gen_wait_ns as f64 / w > max_wait
}

#[allow(clippy::too_many_arguments)]
fn record(
    sc: &OvpScenario,
    target: &TargetSpec,
    load_index: usize,
    repeat: usize,
    spec: &LoadSpec,
    o: Outcome,
    ready_line: String,
    server_stats: BTreeMap<String, String>,
    machine: &Machine,
) -> RunRecord {
    let window_s = o.window_ns as f64 / 1e9;
    let fanout = spec.stations - 1;
    let generator_bound = o.generator_bound(spec.rate);
    let engine = match target {
        TargetSpec::Baseline => "mmsg".to_string(),
        _ => ready_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("engine="))
            .unwrap_or("unknown")
            .to_string(),
    };
    let timestamps = match (o.kernel_stamped, o.user_stamped) {
        (_, 0) => "kernel",
        (0, _) => "userspace",
        _ => "mixed",
    }
    .to_string();
    RunRecord {
        scenario: sc.name.clone(),
        target: target.label(),
        engine,
        load_index,
        repeat,
        stations: spec.stations,
        transmitting: spec.transmitting,
        fanout,
        frame_len: spec.frame_len,
        offered_rate: spec.rate,
        offered_forward_rate: spec.rate * fanout as f64,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        sent: o.sent_measured.iter().sum(),
        totals: o.totals,
        loss_ratio: if o.totals.expected == 0 {
            0.0
        } else {
            o.totals.lost as f64 / o.totals.expected as f64
        },
        latency_ns: o.latency.percentiles(),
        timestamps,
        achieved_send_rate: o.achieved_send_rate(),
        forwarded_rate: o.received_rate(),
        target_cpu_ns: o.target_cpu_ns,
        cpu_ns_per_forwarded: o
            .target_cpu_ns
            .filter(|_| o.totals.received > 0)
            .map(|c| c as f64 / o.totals.received as f64),
        target_cpu_util: o
            .target_cpu_ns
            .filter(|_| o.window_ns > 0)
            .map(|c| c as f64 / o.window_ns as f64),
        target_rss_kib: o.target_rss_kib,
        target_cpu_wait_ratio: o
            .target_wait_ns
            .filter(|_| o.window_ns > 0)
            .map(|w| w as f64 / o.window_ns as f64),
        generator: GeneratorInfo {
            core: spec.gen_core,
            pin_error: o.pin_error.clone(),
            bound: generator_bound,
            max_lag_ms: o.max_lag_ns as f64 / 1e6,
            cpu_util: if window_s > 0.0 {
                o.gen_cpu_ns as f64 / 1e9 / window_s
            } else {
                0.0
            },
            cpu_wait_ratio: if o.window_ns > 0 {
                o.gen_wait_ns as f64 / o.window_ns as f64
            } else {
                0.0
            },
        },
        bench_drops: o.bench_drops,
        server_socket_drops: o.server_socket_drops,
        stray: o.stray,
        contended: contended(&o, sc.max_wait),
        valid: !generator_bound && o.bench_drops == 0 && !contended(&o, sc.max_wait),
        server_cores: match target {
            TargetSpec::External(_) => Vec::new(),
            _ => sc.server_cores.clone(),
        },
        ready_line,
        server_stats,
        clock_drift_ns: o.clock_drift_ns,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine.clone(),
        histogram: Some(o.latency),
    }
}
