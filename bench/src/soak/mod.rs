//! The `soak` scenario: the real whelm-relay and whelm-control (the
//! `calls` scenario's stack, [`crate::calls::start_stack_with`], with
//! `--reply-to source` for the conference) under a steady mixed load for a
//! long time, checking that memory stays flat and nothing is lost.
//!
//! Until the deadline, concurrently:
//! - [`churn`]: call churn, one thread per concurrent call, each call set
//!   up over the line protocol, voice through [`crate::voice_load`], hung up;
//! - [`messages`]: `MSG` at a steady rate between always-online users,
//!   every `OK MSG` recorded, deliveries checked at the recipients;
//! - an OVP conference through [`crate::ovp_load`] (one run for the whole
//!   duration, every station transmitting at 25 frames/s).
//!
//! This thread samples both processes' RSS every second ([`procstat`]),
//! takes the baseline at the end of the warm-up, prints a progress line
//! every interval, and asks everything to stop if a process dies. After the
//! deadline: control and relay stop, [`store`] reads the SQLite file
//! read-only, [`verdict`] makes the checks; the table and the verdict go to
//! stdout, `soak.json`, `summary.txt` and `COMMAND` to the report directory.

pub mod churn;
pub mod messages;
pub mod store;
pub mod verdict;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::calls::{StackExtras, Users, start_stack_with};
use crate::children::parse_ready;
use crate::flows::{LossyFlow, Totals};
use crate::latency::{Latency, Percentiles};
use crate::live::{Live, LiveSnapshot};
use crate::machine::Machine;
use crate::ovp_load::{self, LoadSpec, Outcome};
use crate::procstat;
use crate::voice_load;

use self::churn::{ChurnConfig, LossyCall, SlotResult};
use self::messages::{MsgConfig, MsgLive, MsgResult};
use self::store::StoreCheck;
use self::verdict::{Check, RssStats, loss_check, loss_ratio, rss_check, word};

/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for message answers and deliveries after the deadline.
const MSG_DRAIN: Duration = Duration::from_secs(10);
/// Longest warm-up by default (else 10% of the run).
const MAX_DEFAULT_WARMUP: Duration = Duration::from_secs(60);
/// Most concurrent calls (one thread each).
pub const MAX_CALLS: usize = 500;
/// Most message pairs.
pub const MAX_PAIRS: usize = 500;
/// Most conference stations.
pub const MAX_STATIONS: usize = 200;

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// RSS warm-up: the baseline is the sample at its end.
    pub warmup: Duration,
    /// Progress line period.
    pub interval: Duration,
    /// Concurrent calls of the churn.
    pub calls: usize,
    /// Voice datagrams/s per direction of a call.
    pub pps: f64,
    /// Voice time per call.
    pub hold: Duration,
    /// Pause between the calls of one slot.
    pub gap: Duration,
    /// Voice datagram length.
    pub frame_len: usize,
    /// Message sender/recipient pairs.
    pub pairs: usize,
    /// Messages/s over all senders.
    pub msg_rate: f64,
    /// Conference stations (all transmitting).
    pub stations: usize,
    /// OVP frames/s per station.
    pub station_fps: f64,
    /// Longest wait for a call's (and the conference's) last packets.
    pub drain: Duration,
    /// Largest allowed |RSS - baseline| / baseline.
    pub rss_tolerance: f64,
    /// Largest allowed loss ratio (voice, OVP each).
    pub max_loss: f64,
    /// Relay engine (`auto`, `uring`, `mmsg`).
    pub engine: String,
    /// Relay cores (`--cores`).
    pub relay_cores: String,
    /// whelm-relay.
    pub relay_bin: PathBuf,
    /// whelm-control.
    pub control_bin: PathBuf,
    /// Store (`--db` of whelm-control); None: SQLite in a temporary dir.
    pub db: Option<String>,
    /// Report directory.
    pub out: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// The default warm-up of a run: 10% of it or 60 s, whichever is less.
pub fn default_warmup(duration: Duration) -> Duration {
    (duration / 10).min(MAX_DEFAULT_WARMUP)
}

/// The default report directory: `bench/reports/<UTC date>-soak-<length>`
/// (`30m`, `20s`) under the current directory if it has `bench/reports`,
/// else under the checkout the executable was built in, else under
/// `whelm-bench-report/`; `-2`, `-3` ... appended if it exists.
pub fn default_out(duration: Duration) -> PathBuf {
    let secs = duration.as_secs();
    let len = if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    };
    let (y, m, d) = civil_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0)),
    );
    let name = format!("{y:04}-{m:02}-{d:02}-soak-{len}");
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.join("bench/reports")));
    let base = [Some(PathBuf::from("bench/reports")), from_exe]
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("whelm-bench-report"));
    let first = base.join(&name);
    (2..100)
        .map(|i| base.join(format!("{name}-{i}")))
        .fold(
            first,
            |chosen, next| {
                if chosen.exists() { next } else { chosen }
            },
        )
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One progress sample (also in the report).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds into the run.
    pub t_s: f64,
    /// Relay RSS, KiB.
    pub relay_rss_kib: Option<u64>,
    /// Control RSS, KiB.
    pub control_rss_kib: Option<u64>,
    /// Calls completed so far.
    pub calls: u64,
    /// Voice so far (lost: exact for finished calls, sequence gaps for
    /// running ones).
    pub voice: LiveSnapshot,
    /// Conference so far (lost: sequence gaps until the end).
    pub ovp: LiveSnapshot,
    /// Messages sent.
    pub msgs_sent: u64,
    /// Messages acknowledged.
    pub msgs_acked: u64,
    /// Messages delivered.
    pub msgs_delivered: u64,
}

/// Traffic of one kind, in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Measured packets sent.
    pub sent: u64,
    /// Expected, received, lost, reordered, duplicated copies.
    pub totals: Totals,
    /// lost / expected.
    pub loss_ratio: f64,
    /// Datagrams the bench's own sockets dropped (counted as lost).
    pub bench_drops: u64,
    /// Datagrams that were not the bench's probes.
    pub stray: u64,
    /// How lost packets are counted.
    pub accounting: String,
    /// The first flows that lost packets (OVP; voice lists lossy calls).
    pub lossy_flows: Vec<LossyFlow>,
}

/// The call churn, in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    /// Calls completed.
    pub calls_completed: u64,
    /// Errors (call set-up, voice, hang-up, connection).
    pub errors: u64,
    /// The first errors.
    pub error_samples: Vec<String>,
    /// Slots that stopped after consecutive errors.
    pub slots_gave_up: u64,
    /// CALL -> both START_CALL, ns.
    pub setup_ns: Percentiles,
    /// The first calls that lost voice packets, and where.
    pub lossy_calls: Vec<LossyCall>,
    /// Voice figures.
    pub voice: Traffic,
}

/// Messages, in the report.
#[derive(Debug, Clone, Serialize)]
pub struct MessagesReport {
    /// What the senders and recipients saw.
    pub load: MsgResult,
    /// The store check (None: not run, see `store_note`).
    pub store: Option<StoreCheck>,
    /// How acknowledged messages were verified.
    pub store_note: String,
}

/// The JSON report (`soak.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `soak`.
    pub scenario: String,
    /// `PASS` or `FAIL`.
    pub verdict: String,
    /// Every check.
    pub checks: Vec<Check>,
    /// Asked duration, s.
    pub duration_s: f64,
    /// Warm-up, s.
    pub warmup_s: f64,
    /// From the start of the load to the end of the last drain, s.
    pub elapsed_s: f64,
    /// Options (the rest of the command line).
    pub options: BTreeMap<String, String>,
    /// RSS of the relay.
    pub relay_rss: RssStats,
    /// RSS of control.
    pub control_rss: RssStats,
    /// The call churn and its voice.
    pub churn: ChurnReport,
    /// The conference.
    pub ovp: Traffic,
    /// Why the conference run failed, if it did.
    pub ovp_error: Option<String>,
    /// Messages.
    pub messages: MessagesReport,
    /// Processes that died during the run.
    pub process_failures: Vec<String>,
    /// Progress samples (one per interval).
    pub samples: Vec<Sample>,
    /// whelm-relay's ready line.
    pub relay_ready_line: String,
    /// whelm-control's ready line.
    pub control_ready_line: String,
    /// whelm-relay's final statistics (`stats kind=final` fields).
    pub relay_final_stats: BTreeMap<String, String>,
    /// Unix time at the start.
    pub unix_time_start: u64,
    /// Unix time at the end.
    pub unix_time_end: u64,
    /// The command line.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn validate(o: &SoakOptions) -> anyhow::Result<()> {
    if o.duration < Duration::from_secs(5) || o.duration > Duration::from_secs(7 * 86_400) {
        bail!("the run must last 5 s .. 7 days");
    }
    if o.warmup >= o.duration {
        bail!("the warm-up must end before the run does");
    }
    if o.calls == 0 || o.calls > MAX_CALLS {
        bail!("--calls must be 1..={MAX_CALLS}");
    }
    if o.pairs == 0 || o.pairs > MAX_PAIRS {
        bail!("--pairs must be 1..={MAX_PAIRS}");
    }
    if o.stations < 2 || o.stations > MAX_STATIONS {
        bail!("--stations must be 2..={MAX_STATIONS}");
    }
    for (v, what) in [
        (o.pps, "--pps"),
        (o.msg_rate, "--msg-rate"),
        (o.station_fps, "--station-fps"),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 100_000.0) {
            bail!("{what} must be in (0, 100000]");
        }
    }
    if o.hold < Duration::from_millis(500) {
        bail!("--hold must be at least 0.5 s");
    }
    if !(o.rss_tolerance > 0.0 && o.max_loss >= 0.0) {
        bail!("--rss-tolerance must be positive, --max-loss not negative");
    }
    Ok(())
}

/// What the worker threads returned.
struct Results {
    slots: Vec<SlotResult>,
    msgs: MsgResult,
    ovp: anyhow::Result<Outcome>,
    samples: Vec<Sample>,
    relay_rss: RssStats,
    control_rss: RssStats,
    process_failures: Vec<String>,
    elapsed: Duration,
}

/// Everything the worker threads share with this one.
struct Shared {
    voice: Live,
    ovp: Live,
    msgs: MsgLive,
    calls_done: AtomicU64,
}

impl Shared {
    fn stop_all(&self) {
        self.voice.stop.store(true, Ordering::Relaxed);
        self.ovp.stop.store(true, Ordering::Relaxed);
        self.msgs.stop.store(true, Ordering::Relaxed);
    }

    fn sample(&self, t_s: f64, relay: Option<u64>, control: Option<u64>) -> Sample {
        Sample {
            t_s,
            relay_rss_kib: relay,
            control_rss_kib: control,
            calls: self.calls_done.load(Ordering::Relaxed),
            voice: self.voice.snapshot(),
            ovp: self.ovp.snapshot(),
            msgs_sent: self.msgs.sent.load(Ordering::Relaxed),
            msgs_acked: self.msgs.acked.load(Ordering::Relaxed),
            msgs_delivered: self.msgs.delivered.load(Ordering::Relaxed),
        }
    }
}

fn pct(kib: Option<u64>, base: Option<u64>) -> String {
    match (kib, base) {
        (Some(k), Some(b)) if b > 0 => format!("{:+.1}%", (k as f64 - b as f64) * 100.0 / b as f64),
        (Some(_), _) => "warm-up".into(),
        (None, _) => "gone".into(),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// The progress line of `s`.
pub fn progress_line(
    s: &Sample,
    duration: Duration,
    relay_base: Option<u64>,
    control_base: Option<u64>,
) -> String {
    format!(
        "soak {:>5.0}s/{}s  rss relay {} MiB ({}) control {} MiB ({})  voice calls {} sent {} \
         recv {} lost {}  ovp sent {} recv {}/{} lost {}  msgs sent {} acked {} delivered {}",
        s.t_s,
        duration.as_secs(),
        mib(s.relay_rss_kib),
        pct(s.relay_rss_kib, relay_base),
        mib(s.control_rss_kib),
        pct(s.control_rss_kib, control_base),
        s.calls,
        s.voice.sent,
        s.voice.received,
        s.voice.lost,
        s.ovp.sent,
        s.ovp.received,
        s.ovp.expected,
        s.ovp.lost,
        s.msgs_sent,
        s.msgs_acked,
        s.msgs_delivered
    )
}

/// Runs the soak; prints progress, the table and the verdict; writes the
/// report. An error when setup fails or the verdict is FAIL (after the
/// report is written).
pub fn run(o: &SoakOptions) -> anyhow::Result<()> {
    validate(o)?;
    let machine = Machine::probe();
    let unix_time_start = unix_now();
    let mut users = Users::with_db(&o.control_bin, o.db.as_deref())?;
    users.ensure(2 * o.calls + 2 * o.pairs)?;
    let mut stack = start_stack_with(
        &o.relay_bin,
        &o.control_bin,
        &o.engine,
        &o.relay_cores,
        &users,
        o.calls,
        &StackExtras {
            relay_args: [
                vec!["--reply-to".into(), "source".into()],
                crate::calls::station_cap_args(&o.relay_bin, o.stations),
            ]
            .concat(),
            extra_connections: 2 * o.pairs,
        },
    )?;
    let ovp_addr = parse_ready(&stack.relay.ready_line, "ovp=")
        .with_context(|| format!("no ovp= in {:?}", stack.relay.ready_line))?;
    println!(
        "soak: {} s (warm-up {:.0} s), {} calls x {} pps each way ({} s per call), {} msg/s over \
         {} pairs, {} OVP stations x {} frames/s; relay {} ({}), control {}",
        o.duration.as_secs(),
        o.warmup.as_secs_f64(),
        o.calls,
        o.pps,
        o.hold.as_secs_f64(),
        o.msg_rate,
        o.pairs,
        o.stations,
        o.station_fps,
        stack.relay.ready_line,
        o.engine,
        stack.control.ready_line
    );
    let results = drive(o, &mut stack, &users.tokens, ovp_addr);
    // Control first: it drains and commits; then the relay.
    stack.control.stop();
    stack.relay.stop();
    let relay_final_stats = crate::report::key_values(&stack.relay.stderr(), "stats kind=final");
    let results = results?;

    let store_kind = stack
        .control
        .ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("store="))
        .unwrap_or("unknown")
        .to_string();
    let (store, store_note) = if store_kind.starts_with("sqlite:") {
        match store::check_sqlite(&users.db, &results.msgs.acked_list) {
            Ok(c) => {
                let note = format!(
                    "{}; also every acknowledged message must reach its online recipient",
                    c.method
                );
                (Some(c), note)
            }
            Err(e) => (None, format!("store check failed: {e:#}")),
        }
    } else {
        (
            None,
            format!(
                "store {store_kind} is not SQLite: not read; deliveries to the recipients are \
                 the only check"
            ),
        )
    };
    let report = build_report(
        o,
        results,
        MessagesStore { store, store_note },
        &stack,
        relay_final_stats,
        machine,
        unix_time_start,
    );
    let text = summary_text(&report);
    print!("{text}");
    write_report(&o.out, &report, &text)?;
    println!("report: {}", o.out.join("soak.json").display());
    if report.verdict != "PASS" {
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        bail!("soak verdict FAIL: {}", failed.join("; "));
    }
    Ok(())
}

/// Runs the load threads and the monitor until all are done.
fn drive(
    o: &SoakOptions,
    stack: &mut crate::calls::Stack,
    tokens: &[String],
    ovp_addr: std::net::SocketAddrV4,
) -> anyhow::Result<Results> {
    let shared = Shared {
        voice: Live::new(),
        ovp: Live::new(),
        msgs: MsgLive::default(),
        calls_done: AtomicU64::new(0),
    };
    let start = Instant::now();
    let deadline = start + o.duration;
    let churn_cfg = ChurnConfig {
        control: stack.control.ovp,
        voice: stack.voice,
        pps: o.pps,
        hold: o.hold,
        gap: o.gap,
        drain: o.drain,
        frame_len: o.frame_len,
        slots: o.calls,
        deadline,
        start,
    };
    let msg_cfg = MsgConfig {
        control: stack.control.ovp,
        pairs: o.pairs,
        rate: o.msg_rate,
        deadline,
        drain: MSG_DRAIN,
    };
    let (call_tokens, msg_tokens) = tokens.split_at(2 * o.calls);
    let msg_tokens = &msg_tokens[..2 * o.pairs];
    // The monitor waits at most this long for the workers, which are
    // bounded themselves (a call: ready timeout + hold + drain + replies).
    let overrun =
        voice_load::READY_TIMEOUT + o.hold + o.drain + MSG_DRAIN + Duration::from_secs(90);
    std::thread::scope(|s| {
        let sh = &shared;
        let mut slot_handles = Vec::with_capacity(o.calls);
        let mut spawn_error = None;
        for (i, pair) in call_tokens.chunks(2).enumerate() {
            let toks = [pair[0].as_str(), pair[1].as_str()];
            let cfg = &churn_cfg;
            match std::thread::Builder::new()
                .name(format!("soak-call-{i}"))
                .spawn_scoped(s, move || {
                    churn::run_slot(i, cfg, toks, &sh.voice, &sh.calls_done)
                }) {
                Ok(h) => slot_handles.push(h),
                Err(e) => {
                    spawn_error = Some(anyhow::Error::new(e).context("starting a call thread"));
                    break;
                }
            }
        }
        let msg_h = std::thread::Builder::new()
            .name("soak-msgs".into())
            .spawn_scoped(s, || messages::run(&msg_cfg, msg_tokens, &sh.msgs));
        let ovp_h = std::thread::Builder::new()
            .name("soak-ovp".into())
            .spawn_scoped(s, || run_ovp(o, ovp_addr, deadline, &sh.ovp));
        let (msg_h, ovp_h) = match (spawn_error, msg_h, ovp_h) {
            (None, Ok(m), Ok(v)) => (m, v),
            (e, m, v) => {
                sh.stop_all();
                return Err(e
                    .or(m.err().map(anyhow::Error::new))
                    .or(v.err().map(anyhow::Error::new))
                    .unwrap_or_else(|| anyhow::anyhow!("starting the load threads")));
            }
        };
        let mut mon = Monitor::new(o, start);
        let all_done = |slots: &[ScopedJoinHandle<'_, SlotResult>]| {
            slots.iter().all(ScopedJoinHandle::is_finished)
                && msg_h.is_finished()
                && ovp_h.is_finished()
        };
        // Bounded by the workers' bounds, and by `overrun` past the deadline.
        while !all_done(&slot_handles) {
            if Instant::now() > deadline + overrun {
                mon.failures.push(format!(
                    "the load threads ran {overrun:?} past the deadline"
                ));
                sh.stop_all();
                break;
            }
            mon.tick(stack, sh);
            std::thread::sleep(Duration::from_millis(100));
        }
        let elapsed = start.elapsed();
        mon.last(stack, sh);
        let slots = slot_handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| SlotResult {
                    errors: 1,
                    error_samples: vec![format!("slot {i}: its thread panicked")],
                    ..SlotResult::default()
                })
            })
            .collect();
        let msgs = msg_h.join().unwrap_or_else(|_| MsgResult {
            fatal: Some("the message thread panicked".into()),
            ..MsgResult::default()
        });
        let ovp = ovp_h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the conference thread panicked")));
        Ok(Results {
            slots,
            msgs,
            ovp,
            samples: mon.samples,
            relay_rss: mon.relay,
            control_rss: mon.control,
            process_failures: mon.failures,
            elapsed,
        })
    })
}

/// The conference: every station transmitting for the whole run.
fn run_ovp(
    o: &SoakOptions,
    server: std::net::SocketAddrV4,
    deadline: Instant,
    live: &Live,
) -> anyhow::Result<Outcome> {
    let socks = ovp_load::bind_stations(o.stations)?;
    let spec = LoadSpec {
        stations: o.stations,
        transmitting: o.stations,
        rate: o.stations as f64 * o.station_fps,
        warmup: Duration::ZERO,
        duration: deadline.saturating_duration_since(Instant::now()),
        drain: o.drain,
        batch: 16,
        gen_core: None,
        frame_len: ovp_load::DEFAULT_FRAME_LEN,
    };
    ovp_load::run_live(&spec, &socks, server, None, &|_| {}, Some(live))
}

/// RSS sampling, the baseline, progress lines, process liveness.
struct Monitor {
    start: Instant,
    warm_end: Instant,
    duration: Duration,
    interval: Duration,
    next_sample: Instant,
    next_print: Instant,
    baseline_taken: bool,
    relay: RssStats,
    control: RssStats,
    samples: Vec<Sample>,
    failures: Vec<String>,
}

impl Monitor {
    fn new(o: &SoakOptions, start: Instant) -> Monitor {
        Monitor {
            start,
            warm_end: start + o.warmup,
            duration: o.duration,
            interval: o.interval,
            next_sample: start + SAMPLE_EVERY,
            next_print: start + o.interval,
            baseline_taken: false,
            relay: RssStats::default(),
            control: RssStats::default(),
            samples: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn tick(&mut self, stack: &mut crate::calls::Stack, sh: &Shared) {
        let now = Instant::now();
        let baseline_due = !self.baseline_taken && now >= self.warm_end;
        if now < self.next_sample && !baseline_due {
            return;
        }
        while self.next_sample <= now {
            self.next_sample += SAMPLE_EVERY;
        }
        for (alive, who) in [
            (stack.relay.alive(), "whelm-relay"),
            (stack.control.alive(), "whelm-control"),
        ] {
            if !alive && !self.failures.iter().any(|f| f.starts_with(who)) {
                self.failures.push(format!(
                    "{who} exited during the run at {:.0} s",
                    self.start.elapsed().as_secs_f64()
                ));
                sh.stop_all();
            }
        }
        let t_s = now.duration_since(self.start).as_secs_f64();
        let relay = procstat::rss_kib(stack.relay.pid).ok();
        let control = procstat::rss_kib(stack.control.pid).ok();
        self.relay.sample(relay, t_s, baseline_due);
        self.control.sample(control, t_s, baseline_due);
        if baseline_due {
            self.baseline_taken = true;
            println!(
                "soak {t_s:>5.0}s/{}s  warm-up over: RSS baseline relay {} KiB, control {} KiB",
                self.duration.as_secs(),
                relay.map_or("-".into(), |k| k.to_string()),
                control.map_or("-".into(), |k| k.to_string())
            );
        }
        if now >= self.next_print {
            while self.next_print <= now {
                self.next_print += self.interval;
            }
            self.print(sh.sample(t_s, relay, control));
        }
    }

    /// The final progress line (after every worker finished).
    fn last(&mut self, stack: &mut crate::calls::Stack, sh: &Shared) {
        let t_s = self.start.elapsed().as_secs_f64();
        let relay = procstat::rss_kib(stack.relay.pid).ok();
        let control = procstat::rss_kib(stack.control.pid).ok();
        self.print(sh.sample(t_s, relay, control));
    }

    fn print(&mut self, s: Sample) {
        println!(
            "{}",
            progress_line(
                &s,
                self.duration,
                self.relay.baseline_kib,
                self.control.baseline_kib
            )
        );
        self.samples.push(s);
    }
}

struct MessagesStore {
    store: Option<StoreCheck>,
    store_note: String,
}

const VOICE_ACCOUNTING: &str = "per call and direction, by sequence number: lost = measured \
    datagrams sent - distinct ones received. Senders stop at the end of the hold time, the \
    receiver drains until everything sent arrived or --drain-ms passed, and only then is HANGUP \
    sent: no packet is in flight at a hangup, so none is excluded; one still missing after the \
    drain counts as lost. Not counted: the ready-check probes before the measured window \
    (sent until each direction forwards; the relay counts those it refuses before the HELLO \
    as drop_unknown_source or drop_partner_not_registered in relay_final_stats). bench_drops (the bench's own sockets overflowing) are \
    included in lost";
const OVP_ACCOUNTING: &str = "one run for the whole duration, every station transmitting; per \
    (sender, receiver) flow by sequence number: lost = frames sent x (stations - 1) - distinct \
    copies received, after a final drain of --drain-ms. Not counted: one join frame per station \
    at the start";

fn build_report(
    o: &SoakOptions,
    r: Results,
    m: MessagesStore,
    stack: &crate::calls::Stack,
    relay_final_stats: BTreeMap<String, String>,
    machine: Machine,
    unix_time_start: u64,
) -> SoakReport {
    let mut churn = ChurnReport::default();
    let mut setup = Latency::new();
    let mut v = Traffic {
        accounting: VOICE_ACCOUNTING.into(),
        ..Traffic::default()
    };
    for s in &r.slots {
        churn.calls_completed += s.calls;
        churn.errors += s.errors;
        churn.slots_gave_up += u64::from(s.gave_up);
        for e in &s.error_samples {
            if churn.error_samples.len() < 20 {
                churn.error_samples.push(e.clone());
            }
        }
        setup.merge(&s.setup);
        for l in &s.lossy_calls {
            if churn.lossy_calls.len() < 20 {
                churn.lossy_calls.push(l.clone());
            }
        }
        v.sent += s.sent;
        v.totals.expected += s.totals.expected;
        v.totals.received += s.totals.received;
        v.totals.lost += s.totals.lost;
        v.totals.reordered += s.totals.reordered;
        v.totals.duplicated += s.totals.duplicated;
        v.bench_drops += s.bench_drops;
        v.stray += s.stray;
    }
    v.loss_ratio = loss_ratio(v.totals.lost, v.totals.expected);
    churn.setup_ns = setup.percentiles();
    churn.voice = v;
    let (ovp, ovp_error) = match &r.ovp {
        Ok(out) => {
            let sent = out.sent_measured.iter().sum();
            (
                Traffic {
                    sent,
                    totals: out.totals,
                    loss_ratio: loss_ratio(out.totals.lost, out.totals.expected),
                    bench_drops: out.bench_drops,
                    stray: out.stray,
                    accounting: OVP_ACCOUNTING.into(),
                    lossy_flows: out.lossy_flows.clone(),
                },
                None,
            )
        }
        Err(e) => (
            Traffic {
                accounting: OVP_ACCOUNTING.into(),
                ..Traffic::default()
            },
            Some(format!("{e:#}")),
        ),
    };

    let mut checks = vec![
        rss_check("relay", &r.relay_rss, o.rss_tolerance),
        rss_check("control", &r.control_rss, o.rss_tolerance),
    ];
    let v = &churn.voice;
    checks.push(loss_check(
        "voice",
        v.totals.expected,
        v.totals.lost,
        o.max_loss,
        &format!(
            " over {} calls{}",
            churn.calls_completed,
            if v.bench_drops > 0 {
                format!(
                    ", {} of them dropped by the bench's own sockets",
                    v.bench_drops
                )
            } else {
                String::new()
            }
        ),
    ));
    checks.push(match &ovp_error {
        None => loss_check(
            "OVP",
            ovp.totals.expected,
            ovp.totals.lost,
            o.max_loss,
            &format!(" ({} stations, {} frames sent)", o.stations, ovp.sent),
        ),
        Some(e) => Check::new(
            format!("OVP loss under {}%", o.max_loss * 100.0),
            false,
            format!("the conference run failed: {e}"),
        ),
    });
    checks.push(Check::new(
        "call churn without errors",
        churn.errors == 0 && churn.calls_completed > 0,
        format!(
            "{} calls completed, {} errors{}",
            churn.calls_completed,
            churn.errors,
            churn
                .error_samples
                .first()
                .map_or(String::new(), |e| format!("; first: {e}"))
        ),
    ));
    let ml = &m_load(&r.msgs);
    checks.push(match &m.store {
        Some(c) => Check::new(
            "no acknowledged message missing from the store",
            c.missing == 0 && r.msgs.acked > 0,
            format!(
                "{} acknowledged, {} missing ({} rows of ours read){}",
                c.checked,
                c.missing,
                c.rows,
                c.missing_samples
                    .first()
                    .map_or(String::new(), |s| format!("; first: {s}"))
            ),
        ),
        None => Check::new(
            "no acknowledged message missing from the store",
            !m.store_note.starts_with("store check failed"),
            format!("not run: {}", m.store_note),
        ),
    });
    checks.push(Check::new(
        "no acknowledged message missing at its recipient",
        r.msgs.acked_not_delivered == 0 && r.msgs.acked > 0 && r.msgs.fatal.is_none(),
        ml.clone(),
    ));
    checks.push(Check::new(
        "every MSG answered OK MSG",
        r.msgs.errors == 0 && r.msgs.unanswered == 0 && r.msgs.sent > 0,
        format!(
            "{} sent, {} acknowledged, {} ERROR, {} unanswered{}",
            r.msgs.sent,
            r.msgs.acked,
            r.msgs.errors,
            r.msgs.unanswered,
            r.msgs
                .error_samples
                .first()
                .map_or(String::new(), |e| format!("; first: {e}"))
        ),
    ));
    checks.push(Check::new(
        "relay and control ran to the end",
        r.process_failures.is_empty(),
        if r.process_failures.is_empty() {
            "both alive until stopped".to_string()
        } else {
            r.process_failures.join("; ")
        },
    ));
    let pass = checks.iter().all(|c| c.pass);

    let mut options = BTreeMap::new();
    for (k, val) in [
        ("calls", o.calls.to_string()),
        ("pps", o.pps.to_string()),
        ("hold_s", o.hold.as_secs_f64().to_string()),
        ("gap_ms", o.gap.as_millis().to_string()),
        ("size", o.frame_len.to_string()),
        ("pairs", o.pairs.to_string()),
        ("msg_rate", o.msg_rate.to_string()),
        ("stations", o.stations.to_string()),
        ("station_fps", o.station_fps.to_string()),
        ("drain_ms", o.drain.as_millis().to_string()),
        ("rss_tolerance", o.rss_tolerance.to_string()),
        ("max_loss", o.max_loss.to_string()),
        ("engine", o.engine.clone()),
        ("relay_cores", o.relay_cores.clone()),
        ("interval_s", o.interval.as_secs_f64().to_string()),
        (
            "db",
            o.db.clone().unwrap_or_else(|| "temporary SQLite".into()),
        ),
    ] {
        options.insert(k.to_string(), val);
    }
    SoakReport {
        scenario: "soak".into(),
        verdict: word(pass).into(),
        checks,
        duration_s: o.duration.as_secs_f64(),
        warmup_s: o.warmup.as_secs_f64(),
        elapsed_s: r.elapsed.as_secs_f64(),
        options,
        relay_rss: r.relay_rss,
        control_rss: r.control_rss,
        churn,
        ovp,
        ovp_error,
        messages: MessagesReport {
            load: r.msgs,
            store: m.store,
            store_note: m.store_note,
        },
        process_failures: r.process_failures,
        samples: r.samples,
        relay_ready_line: stack.relay.ready_line.clone(),
        control_ready_line: stack.control.ready_line.clone(),
        relay_final_stats,
        unix_time_start,
        unix_time_end: unix_now(),
        command: o.command.clone(),
        machine,
    }
}

/// The delivery figures of the message load, one line.
fn m_load(m: &MsgResult) -> String {
    format!(
        "{} acknowledged, {} delivered, {} acknowledged but not delivered{}, {} delivered without \
         an ack, {} duplicates, {} reordered, {} unexpected{}",
        m.acked,
        m.delivered,
        m.acked_not_delivered,
        m.acked_not_delivered_samples
            .first()
            .map_or(String::new(), |s| format!(" (first: {s})")),
        m.delivered_not_acked,
        m.duplicates,
        m.reordered,
        m.unexpected,
        m.fatal
            .as_ref()
            .map_or(String::new(), |f| format!("; stopped early: {f}"))
    )
}

/// The summary table, the checks and the verdict.
pub fn summary_text(r: &SoakReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nwhelm-bench soak: {:.0} s (warm-up {:.0} s, ran {:.0} s), commit {}{} on {} ({} cpus, \
         kernel {})",
        r.duration_s,
        r.warmup_s,
        r.elapsed_s,
        r.machine.git_commit.as_deref().unwrap_or("unknown"),
        if r.machine.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        },
        r.machine.cpu_model,
        r.machine.nproc,
        r.machine.kernel
    );
    let _ = writeln!(
        t,
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "RSS KiB", "first", "baseline", "min after", "max after", "last", "max dev"
    );
    for (who, s) in [("relay", &r.relay_rss), ("control", &r.control_rss)] {
        let k = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let _ = writeln!(
            t,
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>+8.2}%",
            who,
            k(s.first_kib),
            k(s.baseline_kib),
            k(s.min_after_kib),
            k(s.max_after_kib),
            k(s.last_kib),
            s.max_deviation * 100.0
        );
    }
    let _ = writeln!(
        t,
        "{:<8} {:>10} {:>10} {:>10} {:>8} {:>9} {:>7} {:>7} {:>7}",
        "traffic", "sent", "expected", "received", "lost", "loss%", "reord", "dup", "bdrops"
    );
    for (what, x) in [("voice", &r.churn.voice), ("ovp", &r.ovp)] {
        let _ = writeln!(
            t,
            "{:<8} {:>10} {:>10} {:>10} {:>8} {:>9.4} {:>7} {:>7} {:>7}",
            what,
            x.sent,
            x.totals.expected,
            x.totals.received,
            x.totals.lost,
            x.loss_ratio * 100.0,
            x.totals.reordered,
            x.totals.duplicated,
            x.bench_drops
        );
    }
    let c = &r.churn;
    let _ = writeln!(
        t,
        "calls    {} completed, {} errors, set-up (CALL -> both START_CALL) p50 {:.2} ms p99 {:.2} \
         ms max {:.2} ms",
        c.calls_completed,
        c.errors,
        c.setup_ns.p50 as f64 / 1e6,
        c.setup_ns.p99 as f64 / 1e6,
        c.setup_ns.max as f64 / 1e6
    );
    for l in c.lossy_calls.iter().take(5) {
        let _ = writeln!(
            t,
            "  lossy call: slot {} call {} (users {} and {}) ended at {:.0} s: {} of {} lost; {}",
            l.slot,
            l.call,
            l.users[0],
            l.users[1],
            l.at_s,
            l.lost,
            l.expected,
            flows_text(&l.flows)
        );
    }
    if !r.ovp.lossy_flows.is_empty() {
        let _ = writeln!(t, "  lossy ovp flows: {}", flows_text(&r.ovp.lossy_flows));
    }
    let m = &r.messages.load;
    let _ = writeln!(
        t,
        "messages {} sent, {} acked, {} errors, {} unanswered, {} delivered, {} acked but not \
         delivered; store: {}",
        m.sent,
        m.acked,
        m.errors,
        m.unanswered,
        m.delivered,
        m.acked_not_delivered,
        match &r.messages.store {
            Some(s) => format!("{} of {} acked missing", s.missing, s.checked),
            None => "not read".into(),
        }
    );
    let _ = writeln!(t, "checks:");
    for ch in &r.checks {
        let _ = writeln!(t, "  {}  {}: {}", word(ch.pass), ch.name, ch.detail);
    }
    let _ = writeln!(t, "verdict: {}", r.verdict);
    t
}

/// `sender->receiver: received/sent, seen first..last, G gaps` per flow.
fn flows_text(flows: &[LossyFlow]) -> String {
    flows
        .iter()
        .map(|f| {
            format!(
                "{}->{}: {}/{} received, seq seen {}..{}, {} gaps",
                f.sender,
                f.receiver,
                f.received,
                f.sent,
                f.first_seen.map_or("-".into(), |v| v.to_string()),
                f.last_seen.map_or("-".into(), |v| v.to_string()),
                f.gaps
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn write_report(dir: &Path, r: &SoakReport, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join("soak.json");
    let json = serde_json::to_string_pretty(r).context("serialising the soak report")?;
    std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    let p = dir.join("summary.txt");
    std::fs::write(&p, text.trim_start()).with_context(|| format!("writing {}", p.display()))?;
    let p = dir.join("COMMAND");
    std::fs::write(&p, format!("{}\n", r.command))
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_default_names() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(20_513), (2026, 3, 1));
        assert_eq!(civil_date(20_512), (2026, 2, 28));
        let n = default_out(Duration::from_secs(1800));
        let name = n.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.contains("-soak-30m"), "{name}");
        let n = default_out(Duration::from_secs(20));
        assert!(n.to_string_lossy().contains("-soak-20s"), "{n:?}");
    }

    #[test]
    fn default_warmup_is_a_tenth_up_to_a_minute() {
        assert_eq!(
            default_warmup(Duration::from_secs(1800)),
            Duration::from_secs(60)
        );
        assert_eq!(
            default_warmup(Duration::from_secs(20)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn progress_line_shows_deviation_after_the_warm_up() {
        let s = Sample {
            t_s: 65.0,
            relay_rss_kib: Some(10_240),
            control_rss_kib: Some(8_192),
            calls: 12,
            voice: LiveSnapshot {
                sent: 100,
                expected: 100,
                received: 99,
                lost: 1,
            },
            ovp: LiveSnapshot::default(),
            msgs_sent: 5,
            msgs_acked: 5,
            msgs_delivered: 4,
        };
        let l = progress_line(&s, Duration::from_secs(1800), Some(10_000), None);
        assert!(l.contains("relay 10.0 MiB (+2.4%)"), "{l}");
        assert!(l.contains("control 8.0 MiB (warm-up)"), "{l}");
        assert!(l.contains("voice calls 12 sent 100 recv 99 lost 1"), "{l}");
    }
}
