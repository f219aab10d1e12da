//! Command line: parses arguments and hands each subcommand to its module.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use whelm_shared::ovp::StationId;

use crate::pin;
use crate::scenario::{OvpScenario, TargetSpec};
use crate::station::{self, StationOptions};
use crate::{calls, capacity, client, forwarder, im, scenario, soak};
use whelm_shared::station::InnerAddressing;

/// Load harness (real relay and control processes over loopback, ratios to a
/// built-in baseline) and station/client tools of Whelm Voice.
#[derive(Debug, Parser)]
#[command(name = "whelm-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Interactive OVP text station: type lines to send them, `/ptt` for a
    /// voice burst; received messages print as `[CALL]: text`.
    Station(StationArgs),
    /// Interactive Whelm client for the control line protocol: /call ID,
    /// /accept, /hangup, /msg ID text; server lines print unchanged.
    Client(ClientArgs),
    /// The baseline alone: OVP conference load through the bench's built-in
    /// one-thread recvmmsg/sendmmsg forwarder (static table).
    Baseline(LoadArgs),
    /// OVP conference load through the real whelm-relay (each engine asked
    /// for) and, in the same invocation, the baseline forwarder.
    Ovp(OvpArgs),
    /// Whelm 1:1 calls set up through the real whelm-control (AUTH, CALL,
    /// ACCEPT, HELLO), Opus-sized datagrams both ways through the real
    /// whelm-relay (each engine asked for) and, in the same invocation, the
    /// baseline forwarder with a static table of the same call pairs.
    Calls(CallsArgs),
    /// Searches the highest load per relay core (calls; conference
    /// stations) within the loss and p99 bounds; prints config lines.
    Capacity(CapacityArgs),
    /// Instant messages through the real whelm-control with the chosen store.
    Im(ImArgs),
    /// Long run (30 min by default) of whelm-relay and whelm-control under
    /// a steady mixed load, with a pass/fail verdict.
    ///
    /// Starts both (SQLite store in a temporary directory unless --db) and,
    /// until the end, runs concurrently: call churn (each pair of users:
    /// CALL, ACCEPT, HELLO, sequence-numbered voice both ways for --hold
    /// seconds, HANGUP, again), MSG at a steady rate between online users,
    /// and an OVP conference. Prints a progress line every --interval
    /// seconds (RSS of both, packets sent/received/lost, messages acked),
    /// then a summary table and the verdict. Checks: after the warm-up each
    /// process's RSS stays within --rss-tolerance of its value at the end
    /// of the warm-up; every acknowledged message is in the store (SQLite
    /// read back after control stops) and reached its recipient; every MSG
    /// got OK MSG; voice and OVP loss each under --max-loss; no call error;
    /// both processes alive to the end. Writes soak.json, summary.txt and
    /// COMMAND to --out and exits non-zero when a check fails.
    ///
    /// Example: `whelm-bench soak --minutes 30`; `whelm-bench soak
    /// --seconds 20 --calls 3` for a quick check.
    Soak(SoakArgs),
    /// The baseline forwarder process (started by `baseline` and `ovp`).
    #[command(hide = true)]
    Forwarder(ForwarderArgs),
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Session token (`whelm-control --db PATH user add NAME` prints one).
    #[arg(long, env = "WHELM_TOKEN")]
    token: String,
    /// Control server, HOST[:PORT] (port 5000 by default).
    #[arg(long, short = 's', default_value = "127.0.0.1:5000")]
    server: String,
    /// Seconds between HEARTBEATs (the server drops silent sessions after 30 s).
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// After stdin ends, keep reading this long before exiting.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// The relay's voice port, HOST:PORT (default: the server's host, 5001).
    #[arg(long)]
    voice_server: Option<SocketAddr>,
    /// Stream synthetic voice for this many seconds on every START_CALL
    /// (also `/voice [SECONDS]` in a call); prints a `VOICE ...` line.
    #[arg(long)]
    voice: Option<f64>,
    /// Voice datagrams/s (Opus 20 ms frames: 50).
    #[arg(long, default_value_t = 50.0)]
    voice_pps: f64,
    /// Voice datagram length in bytes.
    #[arg(long, default_value_t = 160)]
    voice_size: usize,
}

#[derive(Debug, Args)]
struct ImArgs {
    /// Sender/recipient pairs (two sessions each).
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Total messages/s over all senders.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Measured window per run, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up per run (excluded), seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Wait for stragglers, ms.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// Repeats.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The whelm-control binary (default: next to this executable).
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Store: SQLite path or MariaDB DSN (default: a temporary SQLite file).
    /// Users named wbim... are added to it.
    #[arg(long)]
    db: Option<String>,
    /// Directory for im-runs.jsonl.
    #[arg(long, default_value = "whelm-bench-report")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Run length in minutes [default: 30].
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<u64>,
    /// Run length in seconds, for short checks (instead of --minutes).
    #[arg(long)]
    seconds: Option<u64>,
    /// RSS warm-up, seconds; the baseline is the RSS at its end
    /// [default: 10% of the run, at most 60].
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds between progress lines (RSS is sampled every second).
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Concurrent calls of the churn (two users and one thread each).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Voice datagrams/s per direction of a call (Opus 20 ms frames: 50).
    #[arg(long, default_value_t = 50.0)]
    pps: f64,
    /// Seconds of voice per call before HANGUP.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Pause between two calls of the same two users, ms.
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    /// Voice datagram length in bytes.
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Message sender/recipient pairs (two sessions each, always online).
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Messages/s over all senders.
    #[arg(long, default_value_t = 10.0)]
    msg_rate: f64,
    /// OVP conference stations, all transmitting.
    #[arg(long, default_value_t = 5)]
    stations: usize,
    /// OVP frames/s per station (PROTOCOLS.md: 25).
    #[arg(long, default_value_t = 25.0)]
    station_fps: f64,
    /// Longest wait for a call's last datagrams before its HANGUP (and for
    /// the conference's at the end), ms; what is still missing is lost.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// Largest allowed |RSS - baseline| / baseline after the warm-up.
    #[arg(long, default_value_t = 0.05)]
    rss_tolerance: f64,
    /// Largest allowed loss ratio, voice and OVP each.
    #[arg(long, default_value_t = 0.001)]
    max_loss: f64,
    /// Relay engine.
    #[arg(long, default_value = "auto", value_parser = ["auto", "uring", "mmsg"])]
    engine: String,
    /// Relay cores (--cores).
    #[arg(long, default_value = "0")]
    relay_cores: String,
    /// The whelm-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The whelm-control binary (default: next to this executable).
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Store: SQLite path or MariaDB DSN (default: a temporary SQLite
    /// file). Users named wbc... are added to it. Only a SQLite store is
    /// read back for the message check.
    #[arg(long)]
    db: Option<String>,
    /// Report directory for soak.json, summary.txt and COMMAND [default:
    /// bench/reports/<UTC date>-soak-<length>, e.g. 2026-11-21-soak-30m].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Stations in the conference (distinct callsigns, one socket each).
    #[arg(long, default_value_t = 10)]
    stations: usize,
    /// Share of the stations transmitting, (0, 1].
    #[arg(long, default_value_t = 1.0)]
    transmitting: f64,
    /// Frames/s per transmitting station (OVP: 25) when --rate is not given.
    #[arg(long, default_value_t = 25.0)]
    rate_per_station: f64,
    /// Total offered frames/s into the server, overriding stations x rate;
    /// a comma-separated list gives several load points.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Measured window per run, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up per run (excluded), seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Wait for stragglers after the last send, ms.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// Repeats of every (load, target); the report gives medians and spread.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Cores of the server under test (relay --cores; the forwarder uses the first).
    #[arg(long, default_value = "0")]
    relay_cores: String,
    /// Core of the load generator (default: the first allowed core the
    /// server does not use).
    #[arg(long)]
    gen_core: Option<usize>,
    /// Frames per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Frame length in bytes (header + payload; 134 is a normal OVP frame).
    #[arg(long, default_value_t = 134)]
    frame_len: usize,
    /// Directory for runs.jsonl, summary.json and report.svg.
    #[arg(long, default_value = "whelm-bench-report")]
    out: PathBuf,
    /// A run where the server or the generator waited for its core more than
    /// this share of the window (other processes) is excluded as contended.
    #[arg(long, default_value_t = 0.05)]
    max_wait: f64,
}

#[derive(Debug, Args)]
struct OvpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Relay engine(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    engine: EngineArg,
    /// The whelm-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Measure a server already running at this address instead of starting
    /// whelm-relay (no CPU or memory figures; it must reply to the source
    /// address).
    #[arg(long)]
    server: Option<SocketAddrV4>,
    /// Skip the baseline (the report then has no ratios).
    #[arg(long)]
    no_baseline: bool,
}

#[derive(Debug, Args)]
struct CallsArgs {
    /// Concurrent calls (two control sessions and two UDP sockets each).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Datagrams/s per direction of a call (Opus 20 ms frames: 50) when
    /// --rate is not given.
    #[arg(long, default_value_t = 50.0)]
    pps: f64,
    /// Total offered datagrams/s into the relay (both directions of all
    /// calls), overriding calls x 2 x pps; a comma-separated list gives
    /// several load points.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Datagram length in bytes (an Opus packet with its framing: 160).
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Measured window per run, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up per run (excluded), seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Wait for stragglers after the last send, ms.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// Repeats of every (load, target).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Relay cores (--cores; the forwarder uses the first).
    #[arg(long, default_value = "0")]
    relay_cores: String,
    /// Generator core (default: the first allowed core the relay does not use).
    #[arg(long)]
    gen_core: Option<usize>,
    /// Datagrams per sendmmsg.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Relay engine(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    engine: EngineArg,
    /// Skip the baseline (the report then has no ratios).
    #[arg(long)]
    no_baseline: bool,
    /// The whelm-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The whelm-control binary (default: next to this executable).
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Directory for runs.jsonl, summary.json and report.svg.
    #[arg(long, default_value = "whelm-bench-report")]
    out: PathBuf,
    /// Largest share of the window the relay or generator may wait for its
    /// core before the run is excluded as contended.
    #[arg(long, default_value_t = 0.05)]
    max_wait: f64,
    /// One more whelm-relay argument for every relay run, repeatable, e.g.
    /// `--relay-arg=--coalesce-us=0` (the baseline is unaffected).
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    relay_args: Vec<String>,
}

#[derive(Debug, Args)]
struct CapacityArgs {
    /// What to search: calls, stations, or both.
    #[arg(long, value_enum, default_value = "both")]
    what: CapacityWhat,
    /// Relay engine (auto: what the relay picks).
    #[arg(long, default_value = "auto")]
    engine: String,
    /// Relay cores.
    #[arg(long, default_value = "0")]
    relay_cores: String,
    /// Generator core (default: the first allowed core the relay does not use).
    #[arg(long)]
    gen_core: Option<usize>,
    /// Largest loss ratio of a passing step (median over repeats).
    #[arg(long, default_value_t = 0.001)]
    max_loss: f64,
    /// Largest p99 one-way added latency of a passing step, microseconds.
    #[arg(long, default_value_t = 1000.0)]
    p99_us: f64,
    /// Runs per step (medians).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Measured window per run, seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Warm-up per run, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Total time budget of the search, seconds (split between the kinds).
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// Calls whose sockets carry the load (the load per call is 2 x --pps;
    /// the offered rate is searched, calls = rate / (2 x pps)).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Datagrams/s per direction of a call.
    #[arg(long, default_value_t = 50.0)]
    pps: f64,
    /// The whelm-relay binary (default: next to this executable).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The whelm-control binary (default: next to this executable).
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// Largest share of the window the relay or generator may wait for its
    /// core (a contended run is repeated once, then counted).
    #[arg(long, default_value_t = 0.05)]
    max_wait: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CapacityWhat {
    Calls,
    Stations,
    Both,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Uring,
    Mmsg,
    Both,
}

#[derive(Debug, Args)]
struct ForwarderArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddrV4,
    /// Core to pin to.
    #[arg(long)]
    core: Option<usize>,
    /// Stop after this many seconds even if stdin stays open.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// The table is Whelm call pairs (`A B` lines), no OVP validation.
    #[arg(long)]
    pairs: bool,
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
        anyhow::bail!("{what} must be 0..=86400 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn scenario(
    name: &str,
    a: &LoadArgs,
    targets: Vec<TargetSpec>,
    relay_bin: PathBuf,
) -> anyhow::Result<OvpScenario> {
    let server_cores = pin::parse_core_list(&a.relay_cores).map_err(anyhow::Error::msg)?;
    if a.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        anyhow::bail!("--rate values must be positive");
    }
    Ok(OvpScenario {
        name: name.into(),
        stations: a.stations,
        transmitting: a.transmitting,
        rate_per_station: a.rate_per_station,
        rates: a.rate.clone(),
        duration: secs(a.duration, "--duration")?,
        warmup: secs(a.warmup, "--warmup")?,
        drain: Duration::from_millis(a.drain_ms.min(60_000)),
        repeat: a.repeat,
        targets,
        relay_bin,
        gen_core: a.gen_core.or_else(|| pin::generator_core(&server_cores)),
        server_cores,
        batch: a.batch.clamp(1, 1024),
        frame_len: a.frame_len,
        out: a.out.clone(),
        max_wait: a.max_wait,
    })
}

fn engines(e: EngineArg) -> Vec<TargetSpec> {
    match e {
        EngineArg::Uring => vec![TargetSpec::Relay("uring".into())],
        EngineArg::Mmsg => vec![TargetSpec::Relay("mmsg".into())],
        EngineArg::Both => vec![
            TargetSpec::Relay("uring".into()),
            TargetSpec::Relay("mmsg".into()),
        ],
    }
}

/// `given`, else `name` next to this executable; it must exist.
fn bin(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let p = match given {
        Some(p) => p,
        None => sibling(name)?,
    };
    if !p.exists() {
        anyhow::bail!(
            "no {name} at {} (build it with `cargo build -p {name}` or pass --{}-bin)",
            p.display(),
            name.trim_start_matches("whelm-")
        );
    }
    Ok(p)
}

/// A binary next to this executable (target/<profile>/).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the whelm-bench executable")?;
    let dir = exe
        .parent()
        .context("the whelm-bench executable has no directory")?;
    Ok(dir.join(name))
}

#[derive(Debug, Args)]
struct StationArgs {
    /// Our callsign (base-40: A-Z 0-9 - / ., at most 10 characters).
    callsign: String,
    /// Conference server, HOST[:PORT] (port 57372 by default).
    #[arg(long, short = 's')]
    server: String,
    /// Local address to bind. With a relay in `--reply-to listen-port` mode
    /// the station must listen on the relay's port (e.g. 127.0.0.2:57372 on
    /// one host); with `--reply-to source` any port works.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// After stdin ends, keep receiving this long before exiting.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// Inner UDP source port of our packets (default: derived from the
    /// callsign); with --inner-ident, reproduces a reference capture.
    #[arg(long)]
    inner_src_port: Option<u16>,
    /// Inner IPv4 id of our first packet, decimal or 0x-hex (default:
    /// derived from the callsign); incremented per packet.
    #[arg(long, value_parser = parse_u16_any)]
    inner_ident: Option<u16>,
    /// Also report invalid frames on stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn parse_u16_any(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse::<u16>(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    crate::children::wait_if_signalled();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whelm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Station(a) => {
            let callsign = StationId::encode(&a.callsign)
                .with_context(|| format!("callsign {:?}", a.callsign))?;
            let mut inner = InnerAddressing::from_seed(callsign.raw() as u32);
            if let Some(p) = a.inner_src_port {
                inner.src_port = p;
            }
            if let Some(i) = a.inner_ident {
                inner.first_ident = i;
            }
            station::run(&StationOptions {
                callsign,
                server: station::resolve_server(&a.server)?,
                bind: a.bind,
                linger: Duration::from_millis(a.linger_ms),
                inner,
                verbose: a.verbose,
            })
        }
        Command::Client(a) => client::run(&client::ClientOptions {
            server: client::resolve_server(&a.server)?,
            token: a.token,
            heartbeat: Duration::from_secs(a.heartbeat_secs.clamp(1, 3600)),
            linger: Duration::from_millis(a.linger_ms),
            voice_server: a.voice_server,
            voice_auto: a.voice.filter(|s| s.is_finite() && *s > 0.0),
            voice_pps: a.voice_pps,
            voice_size: a.voice_size,
        }),
        Command::Baseline(a) => scenario::run(&scenario(
            "baseline",
            &a,
            vec![TargetSpec::Baseline],
            PathBuf::new(),
        )?),
        Command::Ovp(a) => {
            let mut targets = Vec::new();
            if !a.no_baseline {
                targets.push(TargetSpec::Baseline);
            }
            match a.server {
                Some(addr) => targets.push(TargetSpec::External(addr)),
                None => match a.engine {
                    EngineArg::Uring => targets.push(TargetSpec::Relay("uring".into())),
                    EngineArg::Mmsg => targets.push(TargetSpec::Relay("mmsg".into())),
                    EngineArg::Both => {
                        targets.push(TargetSpec::Relay("uring".into()));
                        targets.push(TargetSpec::Relay("mmsg".into()));
                    }
                },
            }
            let relay_bin = match a.relay_bin {
                Some(p) => p,
                None => sibling("whelm-relay")?,
            };
            if a.server.is_none() && !relay_bin.exists() {
                anyhow::bail!(
                    "no whelm-relay at {} (build it with `cargo build -p whelm-relay` or pass --relay-bin)",
                    relay_bin.display()
                );
            }
            scenario::run(&scenario("ovp", &a.load, targets, relay_bin)?)
        }
        Command::Calls(a) => {
            let server_cores = pin::parse_core_list(&a.relay_cores).map_err(anyhow::Error::msg)?;
            if a.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) || a.pps.is_nan() || a.pps <= 0.0
            {
                anyhow::bail!("--rate and --pps must be positive");
            }
            let mut targets = Vec::new();
            if !a.no_baseline {
                targets.push(TargetSpec::Baseline);
            }
            targets.extend(engines(a.engine));
            calls::run(&calls::CallsScenario {
                calls: a.calls,
                pps: a.pps,
                rates: a.rate,
                duration: secs(a.duration, "--duration")?,
                warmup: secs(a.warmup, "--warmup")?,
                drain: Duration::from_millis(a.drain_ms.min(60_000)),
                repeat: a.repeat,
                targets,
                relay_bin: bin(a.relay_bin, "whelm-relay")?,
                control_bin: bin(a.control_bin, "whelm-control")?,
                gen_core: a.gen_core.or_else(|| pin::generator_core(&server_cores)),
                server_cores,
                batch: a.batch.clamp(1, 1024),
                frame_len: a.size,
                out: a.out,
                max_wait: a.max_wait,
                relay_args: a.relay_args,
            })
        }
        Command::Capacity(a) => {
            let server_cores = pin::parse_core_list(&a.relay_cores).map_err(anyhow::Error::msg)?;
            if !(a.pps > 0.0 && a.max_loss >= 0.0 && a.p99_us > 0.0) {
                anyhow::bail!("--pps and --p99-us must be positive, --max-loss not negative");
            }
            capacity::run(&capacity::CapacityOptions {
                calls: a.what != CapacityWhat::Stations,
                stations: a.what != CapacityWhat::Calls,
                engine: a.engine,
                gen_core: a.gen_core.or_else(|| pin::generator_core(&server_cores)),
                server_cores,
                max_loss: a.max_loss,
                max_p99_ns: a.p99_us * 1000.0,
                repeat: a.repeat.max(1),
                duration: secs(a.duration, "--duration")?,
                warmup: secs(a.warmup, "--warmup")?,
                budget: secs(a.max_seconds, "--max-seconds")?,
                calls_sockets: a.calls,
                pps: a.pps,
                relay_bin: bin(a.relay_bin, "whelm-relay")?,
                control_bin: bin(a.control_bin, "whelm-control")?,
                max_wait: a.max_wait,
            })
        }
        Command::Im(a) => {
            let control_bin = match a.control_bin {
                Some(p) => p,
                None => sibling("whelm-control")?,
            };
            if !control_bin.exists() {
                anyhow::bail!(
                    "no whelm-control at {} (build it with `cargo build -p whelm-control` or pass --control-bin)",
                    control_bin.display()
                );
            }
            im::run(&im::ImScenario {
                pairs: a.pairs,
                rate: a.rate,
                duration: secs(a.duration, "--duration")?,
                warmup: secs(a.warmup, "--warmup")?,
                drain: Duration::from_millis(a.drain_ms.min(60_000)),
                repeat: a.repeat,
                control_bin,
                db: a.db,
                out: a.out,
            })
        }
        Command::Soak(a) => {
            let duration = match (a.minutes, a.seconds) {
                (_, Some(s)) => Duration::from_secs(s),
                (Some(m), None) => Duration::from_secs(m.saturating_mul(60)),
                (None, None) => Duration::from_secs(30 * 60),
            };
            let warmup = match a.warmup {
                Some(w) => secs(w, "--warmup")?,
                None => soak::default_warmup(duration),
            };
            soak::run(&soak::SoakOptions {
                duration,
                warmup,
                interval: secs(a.interval, "--interval")?.max(Duration::from_secs(1)),
                calls: a.calls,
                pps: a.pps,
                hold: secs(a.hold, "--hold")?,
                gap: Duration::from_millis(a.gap_ms.min(60_000)),
                frame_len: a.size,
                pairs: a.pairs,
                msg_rate: a.msg_rate,
                stations: a.stations,
                station_fps: a.station_fps,
                drain: Duration::from_millis(a.drain_ms.min(60_000)),
                rss_tolerance: a.rss_tolerance,
                max_loss: a.max_loss,
                engine: a.engine,
                relay_cores: a.relay_cores,
                relay_bin: bin(a.relay_bin, "whelm-relay")?,
                control_bin: bin(a.control_bin, "whelm-control")?,
                db: a.db,
                out: a.out.unwrap_or_else(|| soak::default_out(duration)),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            })
        }
        Command::Forwarder(a) => {
            forwarder::main(a.bind, a.core, Duration::from_secs(a.max_seconds), a.pairs)
        }
    }
}
