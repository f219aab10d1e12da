//! Command line and config file, merged: flags override the TOML file, which
//! overrides the defaults (ARCHITECTURE.md, "Command line").

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use whelm_shared::ovp::{self, StationId};

use crate::core::ReplyTo;

/// Default Whelm voice port (PROTOCOLS.md section 2).
pub const DEFAULT_VOICE_PORT: u16 = 5001;
/// Default station inactivity timeout (PROTOCOLS.md section 3).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Smallest timeout an operator may configure (PROTOCOLS.md section 3).
pub const MIN_TIMEOUT_SECS: u64 = 60;
/// Default per-source OVP rate: generous above the 25 frames/s a station
/// sends (PROTOCOLS.md section 3).
pub const DEFAULT_STATION_RATE: u32 = 100;
/// Default statistics interval.
pub const DEFAULT_STATS_SECS: u64 = 60;

/// Which I/O engine the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// io_uring when the probe succeeds, recvmmsg/sendmmsg otherwise.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// recvmmsg/sendmmsg.
    Mmsg,
}

/// `--reply-to` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyToArg {
    /// Station IP at the server's OVP port (default, reference behaviour).
    ListenPort,
    /// The station's source address.
    Source,
}

/// `whelm-relay` command line.
#[derive(Debug, Parser, Default)]
#[command(
    name = "whelm-relay",
    version,
    about = "Whelm Voice data plane: UDP relay for Whelm voice and the Opulent Voice conference"
)]
pub struct Cli {
    /// TOML config file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OVP conference port (57372; 0 = any free port).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Whelm voice port (5001; 0 = any free port).
    #[arg(long)]
    pub voice_port: Option<u16>,
    /// Address to bind (0.0.0.0; `::` is dual-stack).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// OVP station inactivity timeout in seconds (3600, minimum 60).
    #[arg(short = 't', long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// FOR TESTS ONLY: accept a station timeout below the 60 s minimum.
    #[arg(long)]
    pub allow_short_timeout: bool,
    /// Verbose logging (debug level).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Where OVP frames go: the station's IP at our port, or its source address.
    #[arg(long, value_enum)]
    pub reply_to: Option<ReplyToArg>,
    /// I/O engine.
    #[arg(long, value_enum)]
    pub engine: Option<EngineChoice>,
    /// Cores to run one pinned worker on each, e.g. `0,1` or `0-3`.
    #[arg(long, value_name = "LIST", conflicts_with = "workers")]
    pub cores: Option<String>,
    /// Number of workers (pinned to the first N allowed cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Unix socket of the command channel (default
    /// `$RUNTIME_DIRECTORY/relay.sock`, else `/run/whelm/relay.sock`).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Voice bandwidth limit each way in Mbit/s (100; 0 = none), shared
    /// fairly by the workers; datagrams over it are dropped and counted.
    #[arg(long, value_name = "N")]
    pub bandwidth_mbps: Option<u64>,
    /// OVP frames/s per source before drops (100; 0 = none).
    #[arg(long, value_name = "N")]
    pub station_rate: Option<u32>,
    /// Burst of the per-source rate limit, in frames (default: the rate).
    #[arg(long, value_name = "N")]
    pub station_burst: Option<u32>,
    /// Only forward these callsigns (repeatable or comma-separated).
    #[arg(long, value_name = "CALLS", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Never forward these callsigns (repeatable or comma-separated).
    #[arg(long, value_name = "CALLS", value_delimiter = ',')]
    pub deny: Vec<String>,
    /// Seconds between statistics lines (60).
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// io_uring submission queue entries per worker (1024).
    #[arg(long, value_name = "N")]
    pub ring_entries: Option<u32>,
    /// Receive buffers per worker (io_uring buffer ring; 4096).
    #[arg(long, value_name = "N")]
    pub buffers: Option<u32>,
    /// io_uring send slots per worker (4096).
    #[arg(long, value_name = "N")]
    pub send_slots: Option<u32>,
    /// Receive batch size (datagrams handled per batch; 64).
    #[arg(long, value_name = "N")]
    pub batch: Option<u32>,
}

/// The `[relay]`-less flat TOML file; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    port: Option<u16>,
    voice_port: Option<u16>,
    bind: Option<IpAddr>,
    timeout: Option<u64>,
    /// For tests only, like the flag.
    allow_short_timeout: Option<bool>,
    verbose: Option<bool>,
    reply_to: Option<ReplyToArg>,
    engine: Option<EngineChoice>,
    cores: Option<String>,
    workers: Option<usize>,
    control_socket: Option<PathBuf>,
    /// Group (name or number) given to the command socket file.
    control_socket_group: Option<String>,
    /// Further uids allowed on the command socket.
    control_uids: Option<Vec<u32>>,
    /// Further gids allowed on the command socket.
    control_gids: Option<Vec<u32>>,
    bandwidth_mbps: Option<u64>,
    station_rate: Option<u32>,
    station_burst: Option<u32>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    stats_interval: Option<u64>,
    ring_entries: Option<u32>,
    buffers: Option<u32>,
    send_slots: Option<u32>,
    batch: Option<u32>,
}

/// Sizes of the per-worker I/O structures.
#[derive(Debug, Clone, Copy)]
pub struct EngineSizes {
    /// io_uring SQ entries (CQ is 4x).
    pub ring_entries: u32,
    /// Receive buffers (a power of two for the buffer ring).
    pub buffers: u32,
    /// Bytes per receive buffer (header + name + payload).
    pub buffer_size: u32,
    /// io_uring send slots.
    pub send_slots: u32,
    /// Datagrams per receive batch.
    pub batch: u32,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// OVP port (0 = any).
    pub port: u16,
    /// Voice port (0 = any).
    pub voice_port: u16,
    /// Bind address.
    pub bind: IpAddr,
    /// Station timeout.
    pub timeout: Duration,
    /// Debug logging.
    pub verbose: bool,
    /// Destination rule.
    pub reply_to: ReplyTo,
    /// Engine choice.
    pub engine: EngineChoice,
    /// One worker per entry, pinned to that CPU.
    pub cores: Vec<usize>,
    /// Command channel socket path.
    pub control_socket: PathBuf,
    /// The path was configured (flag, file or `RUNTIME_DIRECTORY`) rather
    /// than the built-in default.
    pub control_socket_explicit: bool,
    /// Group id given to the socket file (config `control_socket_group`).
    pub control_socket_group: Option<u32>,
    /// Further uids allowed to connect (config `control_uids`).
    pub control_uids: Vec<u32>,
    /// Further gids allowed to connect (config `control_gids`).
    pub control_gids: Vec<u32>,
    /// Voice bandwidth limit each way, Mbit/s (0 = none).
    pub bandwidth_mbps: u64,
    /// Per-source rate.
    pub station_rate: u32,
    /// Per-source burst.
    pub station_burst: u32,
    /// Allow list.
    pub allow: Option<HashSet<StationId>>,
    /// Deny list.
    pub deny: HashSet<StationId>,
    /// Stats interval.
    pub stats_interval: Duration,
    /// Engine sizes.
    pub sizes: EngineSizes,
}

/// Bytes per receive buffer: room for the io_uring recvmsg header, a
/// sockaddr_in6 and a datagram of up to 2000 bytes (frames up to at least
/// 1500 bytes are forwarded unchanged).
pub const BUFFER_SIZE: u32 = 2048;

impl Config {
    /// Merges flags, the file `--config` names, and defaults.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let file: FileConfig = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let timeout = cli.timeout.or(file.timeout).unwrap_or(DEFAULT_TIMEOUT_SECS);
        let short_ok = cli.allow_short_timeout || file.allow_short_timeout.unwrap_or(false);
        if timeout < MIN_TIMEOUT_SECS && !(short_ok && timeout >= 1) {
            bail!(
                "station timeout {timeout} s is below the minimum of {MIN_TIMEOUT_SECS} s \
                 (--allow-short-timeout exists for tests only)"
            );
        }
        let cores = match (cli.cores.as_ref().or(file.cores.as_ref()), cli.workers) {
            (Some(list), None) => parse_cores(list)?,
            (_, Some(n)) => first_cores(n)?,
            (None, None) => match file.workers {
                Some(n) => first_cores(n)?,
                None => allowed_cpus(),
            },
        };
        let station_rate = cli
            .station_rate
            .or(file.station_rate)
            .unwrap_or(DEFAULT_STATION_RATE);
        let allow = if !cli.allow.is_empty() {
            Some(parse_calls(&cli.allow)?)
        } else {
            match &file.allow {
                Some(v) => Some(parse_calls(v)?),
                None => None,
            }
        };
        let deny = if !cli.deny.is_empty() {
            parse_calls(&cli.deny)?
        } else {
            parse_calls(file.deny.as_deref().unwrap_or(&[]))?
        };
        let buffers = cli.buffers.or(file.buffers).unwrap_or(4096);
        if !buffers.is_power_of_two() || !(8..=32768).contains(&buffers) {
            bail!("--buffers {buffers}: must be a power of two between 8 and 32768");
        }
        let sizes = EngineSizes {
            ring_entries: cli
                .ring_entries
                .or(file.ring_entries)
                .unwrap_or(1024)
                .max(8),
            buffers,
            buffer_size: BUFFER_SIZE,
            send_slots: cli
                .send_slots
                .or(file.send_slots)
                .unwrap_or(4096)
                .clamp(16, 65_535),
            batch: cli.batch.or(file.batch).unwrap_or(64).clamp(1, 1024),
        };
        let configured = cli.control_socket.clone().or(file.control_socket.clone());
        let control_socket_explicit =
            configured.is_some() || std::env::var_os("RUNTIME_DIRECTORY").is_some();
        let control_socket = configured.unwrap_or_else(crate::cmdsock::default_path);
        let control_socket_group = match &file.control_socket_group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => nix::unistd::Group::from_name(g)
                    .with_context(|| format!("looking up control_socket_group {g:?}"))?
                    .with_context(|| format!("control_socket_group {g:?}: no such group"))?
                    .gid
                    .as_raw(),
            }),
        };
        Ok(Config {
            port: cli.port.or(file.port).unwrap_or(ovp::DEFAULT_PORT),
            voice_port: cli
                .voice_port
                .or(file.voice_port)
                .unwrap_or(DEFAULT_VOICE_PORT),
            bind: cli
                .bind
                .or(file.bind)
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            timeout: Duration::from_secs(timeout),
            verbose: cli.verbose || file.verbose.unwrap_or(false),
            reply_to: match cli.reply_to.or(file.reply_to) {
                Some(ReplyToArg::Source) => ReplyTo::Source,
                Some(ReplyToArg::ListenPort) | None => ReplyTo::ListenPort,
            },
            engine: cli.engine.or(file.engine).unwrap_or_default(),
            cores,
            control_socket,
            control_socket_explicit,
            control_socket_group,
            control_uids: file.control_uids.clone().unwrap_or_default(),
            control_gids: file.control_gids.clone().unwrap_or_default(),
            bandwidth_mbps: cli.bandwidth_mbps.or(file.bandwidth_mbps).unwrap_or(100),
            station_rate,
            station_burst: cli
                .station_burst
                .or(file.station_burst)
                .unwrap_or(station_rate)
                .max(1),
            allow,
            deny,
            stats_interval: Duration::from_secs(
                cli.stats_interval
                    .or(file.stats_interval)
                    .unwrap_or(DEFAULT_STATS_SECS)
                    .max(1),
            ),
            sizes,
        })
    }
}

fn parse_calls<S: AsRef<str>>(list: &[S]) -> anyhow::Result<HashSet<StationId>> {
    list.iter()
        .map(|s| {
            let s = s.as_ref().trim();
            StationId::encode(s).with_context(|| format!("callsign {s:?}"))
        })
        .collect()
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => vec![0],
    }
}

fn first_cores(n: usize) -> anyhow::Result<Vec<usize>> {
    if n == 0 || n > 256 {
        bail!("--workers {n}: must be between 1 and 256");
    }
    let cpus = allowed_cpus();
    let cpus = if cpus.is_empty() { vec![0] } else { cpus };
    Ok((0..n).map(|i| cpus[i % cpus.len()]).collect())
}

/// Parses `0,1` and `0-3,6`.
pub fn parse_cores(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cores {list:?}: {part:?} is not a core number or range");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().with_context(bad)?;
                let b: usize = b.trim().parse().with_context(bad)?;
                if a > b || b - a > 1024 {
                    bail!(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().with_context(bad)?),
        }
    }
    if out.is_empty() {
        bail!("--cores {list:?}: no cores");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0-2, 5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("").is_err());
    }

    #[test]
    fn timeout_minimum() {
        let cli = Cli {
            timeout: Some(10),
            ..Cli::default()
        };
        let e = Config::load(&cli).unwrap_err().to_string();
        assert!(e.contains("minimum of 60"), "{e}");
        let cli = Cli {
            timeout: Some(2),
            allow_short_timeout: true,
            ..Cli::default()
        };
        assert_eq!(Config::load(&cli).unwrap().timeout, Duration::from_secs(2));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(
            &p,
            "port = 1234\nreply_to = \"source\"\ndeny = [\"K0K\"]\nworkers = 1\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(p.clone()),
            port: Some(999),
            ..Cli::default()
        };
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.port, 999);
        assert_eq!(c.reply_to, ReplyTo::Source);
        assert_eq!(c.deny.len(), 1);
        assert_eq!(c.cores.len(), 1);
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = format!("{:#}", Config::load(&cli).unwrap_err());
        assert!(e.contains("relay.toml"), "{e}");
    }
}
