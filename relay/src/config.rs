//! Settings. Precedence: command-line flags > environment > the `--config`
//! TOML file > defaults (ARCHITECTURE.md, "Command line"; issue 7), the same
//! rules as `whelm-control`. Every key is documented in `config/relay.toml`,
//! which a test parses.
//!
//! The sources are read into one shape ([`FileConfig`], every key optional),
//! merged key by key remembering where each value came from ([`Origin`]),
//! and validated once: an error names the source, the key, the value and
//! the reason (`relay.toml: key "station_rate": value -1: must be between 0
//! and 1000000`). Unknown keys are refused by serde.
//!
//! Environment: `WHELM_RELAY_BIND`, `WHELM_RELAY_CONTROL_SOCKET`,
//! `WHELM_METRICS_LISTEN`, `WHELM_LOG` (else `RUST_LOG`).
//!
//! [`RELOADABLE`] keys are applied by a reload (SIGHUP, `ctl reload`); the
//! others need a restart.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use whelm_daemon::config as layers;
pub use whelm_daemon::config::{BadValue, Origin};
use whelm_shared::ovp::{self, StationId};

use crate::core::ReplyTo;

/// Default Whelm voice port (PROTOCOLS.md section 2).
pub const DEFAULT_VOICE_PORT: u16 = 5001;
/// Default station inactivity timeout (PROTOCOLS.md section 3).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Smallest timeout an operator may configure (PROTOCOLS.md section 3).
pub const MIN_TIMEOUT_SECS: u64 = 60;
/// Largest station timeout accepted (a year).
pub const MAX_TIMEOUT_SECS: u64 = 31_536_000;
/// Default per-source OVP rate: generous above the 25 frames/s a station
/// sends (PROTOCOLS.md section 3).
pub const DEFAULT_STATION_RATE: u32 = 100;
/// Default cap on OVP stations in total: far above a real conference (each
/// frame is sent to every other station), low enough that a flood of
/// made-up callsigns cannot grow the registry and the fan-out without bound.
pub const DEFAULT_MAX_STATIONS: u32 = 1000;
/// Default cap on OVP stations per source IP: several stations may sit
/// behind one NAT address, or share ip:57372 in listen-port mode, but one
/// address cannot claim the conference (or, spoofed, aim its fan-out at a
/// victim).
pub const DEFAULT_MAX_STATIONS_PER_IP: u32 = 16;
/// Largest value of either station cap.
pub const MAX_STATION_CAP: i64 = 1_000_000;
/// Default statistics interval.
pub const DEFAULT_STATS_SECS: u64 = 60;
/// Default of `metrics_listen` (loopback only; control uses 9501).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9502";
/// Default shortest interval between a worker's wake-ups under load (µs).
/// A wake-up costs 10 to 17 µs of CPU on the VMs measured (bench/reports/
/// 2026-11-22-coalesce-deadline): 250 µs keeps that under 7% of a core
/// and adds at most a quarter of a millisecond, nothing beside a voice
/// packet's 20 ms.
pub const DEFAULT_COALESCE_US: u32 = 250;
/// Default per-worker receive rate above which wake-ups coalesce (1/s).
pub const DEFAULT_COALESCE_ABOVE: u32 = 50_000;
/// Highest bandwidth limit accepted, Mbit/s.
pub const MAX_BANDWIDTH_MBPS: u64 = 1_000_000;

/// Environment override of `bind`.
pub const BIND_ENV: &str = "WHELM_RELAY_BIND";
/// Environment override of `control_socket`.
pub const CONTROL_SOCKET_ENV: &str = "WHELM_RELAY_CONTROL_SOCKET";
/// Environment override of `metrics_listen`.
pub const METRICS_ENV: &str = "WHELM_METRICS_LISTEN";
/// Environment override of `log` (`RUST_LOG` is read when it is unset).
pub const LOG_ENV: &str = "WHELM_LOG";

/// Keys a reload applies (the rest need a restart).
pub const RELOADABLE: [&str; 9] = [
    "bandwidth_mbps",
    "station_rate",
    "station_burst",
    "max_stations",
    "max_stations_per_ip",
    "allow",
    "deny",
    "log",
    "stats_interval",
];

/// Which I/O engine the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplyToArg {
    /// Station IP at the server's OVP port (default, reference behaviour).
    ListenPort,
    /// The station's source address.
    Source,
}

/// `whelm-relay` command line.
#[derive(Debug, Parser, Default, Clone)]
#[command(
    name = "whelm-relay",
    version,
    about = "Whelm Voice data plane: UDP relay for Whelm voice and the Opulent Voice conference",
    override_usage = "whelm-relay [OPTIONS]\n       whelm-relay ctl [--socket PATH] users|calls|stations|counters|reload [--json]",
    after_help = "Operator commands: whelm-relay ctl users|calls|stations|counters|reload (see whelm-relay ctl --help)"
)]
pub struct Cli {
    /// TOML config file (environment and flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OVP conference port (57372; 0 = any free port).
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// Whelm voice port (5001; 0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub voice_port: Option<u16>,
    /// Address to bind (0.0.0.0; `::` is dual-stack; env WHELM_RELAY_BIND).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// OVP station inactivity timeout in seconds (3600, minimum 60).
    #[arg(short = 't', long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// FOR TESTS ONLY: accept a station timeout below the 60 s minimum.
    #[arg(long)]
    pub allow_short_timeout: bool,
    /// Log filter, e.g. `info` or `whelm_relay=debug` (info; env WHELM_LOG,
    /// else RUST_LOG).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// More logging: -v debug, -vv trace (unless --log is given).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Where OVP frames go: the station's IP at our port (listen-port, the
    /// default and the reference's behaviour), or its source address
    /// (source: NAT, several stations per host, stations on this host).
    #[arg(
        long,
        value_enum,
        value_name = "listen-port|source",
        hide_possible_values = true
    )]
    pub reply_to: Option<ReplyToArg>,
    /// I/O engine (auto: io_uring where the kernel allows it, else
    /// recvmmsg/sendmmsg, said at start).
    #[arg(
        long,
        value_enum,
        value_name = "auto|uring|mmsg",
        hide_possible_values = true
    )]
    pub engine: Option<EngineChoice>,
    /// Cores to run one pinned worker on each, e.g. `0,1` or `0-3` (default:
    /// one worker on every core the process may run on).
    #[arg(long, value_name = "LIST", conflicts_with = "workers")]
    pub cores: Option<String>,
    /// Number of workers (pinned to the first N allowed cores).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Unix socket of the command channel (default
    /// `$RUNTIME_DIRECTORY/relay.sock`, else `/run/whelm/relay.sock`; env
    /// WHELM_RELAY_CONTROL_SOCKET).
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
    /// OVP stations in total at most (1000); frames from new callsigns
    /// beyond it are dropped and counted (station_limit).
    #[arg(long, value_name = "N")]
    pub max_stations: Option<u32>,
    /// OVP stations per source IP at most (16; IPv6: per /64).
    #[arg(long, value_name = "N")]
    pub max_stations_per_ip: Option<u32>,
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
    /// Under load, a worker wakes at most once per this many microseconds,
    /// so that one wake-up handles a batch (250; 0 turns it off). Adds at
    /// most this much latency, only above --coalesce-above.
    #[arg(long, value_name = "USECS")]
    pub coalesce_us: Option<u32>,
    /// Datagrams per second received by one worker above which it
    /// coalesces wake-ups (50000).
    #[arg(long, value_name = "PPS")]
    pub coalesce_above: Option<u32>,
    /// Prometheus endpoint, `off` to disable (127.0.0.1:9502; env
    /// WHELM_METRICS_LISTEN).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Validate the configuration, print it with where each value came
    /// from, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The `--config` file: flat TOML, every key optional, names as the long
/// flags with `_` for `-`. Counts are read as signed integers so that a
/// negative one gets a clear error.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--port`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// `--voice-port`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_port: Option<i64>,
    /// `--bind`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `--timeout` (seconds)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// `--allow-short-timeout` (tests only)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_short_timeout: Option<bool>,
    /// `--log`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `--reply-to`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `--engine`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// `--cores`: `"0,1"`, `"0-3"` or `[0, 1]`; empty: every allowed CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<toml::Value>,
    /// `--workers` (0: one per entry of `cores`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
    /// `--control-socket` ("" for the default path)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    /// Group (name or number) given to the command socket file ("" none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket_group: Option<String>,
    /// Further uids allowed on the command socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_uids: Option<Vec<i64>>,
    /// Further gids allowed on the command socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_gids: Option<Vec<i64>>,
    /// `--bandwidth-mbps`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<i64>,
    /// `--station-rate`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station_rate: Option<i64>,
    /// `--station-burst` (0: the rate)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station_burst: Option<i64>,
    /// `--max-stations`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stations: Option<i64>,
    /// `--max-stations-per-ip`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_stations_per_ip: Option<i64>,
    /// `--allow` (empty: no allow list)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// `--deny`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// `--stats-interval` (seconds)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_interval: Option<i64>,
    /// `--ring-entries`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_entries: Option<i64>,
    /// `--buffers`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers: Option<i64>,
    /// `--send-slots`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_slots: Option<i64>,
    /// `--batch`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
    /// `--coalesce-us`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_us: Option<i64>,
    /// `--coalesce-above`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_above: Option<i64>,
    /// `--metrics-listen` ("" or "off" disables)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

impl FileConfig {
    /// Reads and parses a TOML file (unknown keys refused).
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        layers::load_file(path)
    }

    /// Parses TOML text (unknown keys refused).
    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        layers::parse(text)
    }

    /// The keys set, as a TOML table.
    fn table(&self) -> anyhow::Result<toml::Table> {
        layers::table(self)
    }

    /// The environment layer.
    fn from_env() -> FileConfig {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        FileConfig {
            bind: var(BIND_ENV),
            control_socket: var(CONTROL_SOCKET_ENV),
            metrics_listen: std::env::var(METRICS_ENV).ok(),
            log: var(LOG_ENV).or_else(|| var("RUST_LOG")),
            ..FileConfig::default()
        }
    }

    /// The command-line layer.
    fn from_cli(cli: &Cli) -> FileConfig {
        let n = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let log = cli.log.clone().or(match cli.verbose {
            0 => None,
            1 => Some("debug".to_owned()),
            _ => Some("trace".to_owned()),
        });
        let list = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
        FileConfig {
            port: cli.port.map(i64::from),
            voice_port: cli.voice_port.map(i64::from),
            bind: cli.bind.clone(),
            timeout: n(cli.timeout),
            allow_short_timeout: cli.allow_short_timeout.then_some(true),
            log,
            reply_to: cli.reply_to.map(|r| {
                match r {
                    ReplyToArg::ListenPort => "listen-port",
                    ReplyToArg::Source => "source",
                }
                .to_owned()
            }),
            engine: cli.engine.map(|e| engine_name(e).to_owned()),
            cores: cli.cores.clone().map(toml::Value::String),
            workers: n(cli.workers.map(|w| w as u64)),
            control_socket: cli
                .control_socket
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            control_socket_group: None,
            control_uids: None,
            control_gids: None,
            bandwidth_mbps: n(cli.bandwidth_mbps),
            station_rate: cli.station_rate.map(i64::from),
            station_burst: cli.station_burst.map(i64::from),
            max_stations: cli.max_stations.map(i64::from),
            max_stations_per_ip: cli.max_stations_per_ip.map(i64::from),
            allow: list(&cli.allow),
            deny: list(&cli.deny),
            stats_interval: n(cli.stats_interval),
            ring_entries: cli.ring_entries.map(i64::from),
            buffers: cli.buffers.map(i64::from),
            send_slots: cli.send_slots.map(i64::from),
            batch: cli.batch.map(i64::from),
            coalesce_us: cli.coalesce_us.map(i64::from),
            coalesce_above: cli.coalesce_above.map(i64::from),
            metrics_listen: cli.metrics_listen.clone(),
        }
    }
}

fn engine_name(e: EngineChoice) -> &'static str {
    match e {
        EngineChoice::Auto => "auto",
        EngineChoice::Uring => "uring",
        EngineChoice::Mmsg => "mmsg",
    }
}

/// The built-in defaults of every key (`config/relay.toml` says the same).
pub fn defaults() -> FileConfig {
    FileConfig {
        port: Some(i64::from(ovp::DEFAULT_PORT)),
        voice_port: Some(i64::from(DEFAULT_VOICE_PORT)),
        bind: Some("0.0.0.0".into()),
        timeout: Some(DEFAULT_TIMEOUT_SECS as i64),
        allow_short_timeout: Some(false),
        log: Some("info".into()),
        reply_to: Some("listen-port".into()),
        engine: Some("auto".into()),
        cores: Some(toml::Value::Array(Vec::new())),
        workers: Some(0),
        control_socket: Some(String::new()),
        control_socket_group: Some(String::new()),
        control_uids: Some(Vec::new()),
        control_gids: Some(Vec::new()),
        bandwidth_mbps: Some(100),
        station_rate: Some(i64::from(DEFAULT_STATION_RATE)),
        station_burst: Some(0),
        max_stations: Some(i64::from(DEFAULT_MAX_STATIONS)),
        max_stations_per_ip: Some(i64::from(DEFAULT_MAX_STATIONS_PER_IP)),
        allow: Some(Vec::new()),
        deny: Some(Vec::new()),
        stats_interval: Some(DEFAULT_STATS_SECS as i64),
        ring_entries: Some(1024),
        buffers: Some(4096),
        send_slots: Some(4096),
        batch: Some(64),
        coalesce_us: Some(i64::from(DEFAULT_COALESCE_US)),
        coalesce_above: Some(i64::from(DEFAULT_COALESCE_ABOVE)),
        metrics_listen: Some(DEFAULT_METRICS.into()),
    }
}

/// Merged values; each getter names key, value and reason on error.
struct Merged {
    table: toml::Table,
    origins: BTreeMap<String, Origin>,
}

impl Merged {
    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    fn bad(&self, key: &str, reason: impl Into<String>) -> BadValue {
        BadValue {
            origin: self.origin(key).describe(key),
            key: key.to_owned(),
            value: self
                .table
                .get(key)
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn str(&self, key: &str) -> Result<String, BadValue> {
        match self.table.get(key) {
            Some(toml::Value::String(s)) => Ok(s.clone()),
            _ => Err(self.bad(key, "must be a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, BadValue> {
        match self.table.get(key) {
            Some(toml::Value::Boolean(b)) => Ok(*b),
            _ => Err(self.bad(key, "must be true or false")),
        }
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<u64, BadValue> {
        let v = match self.table.get(key) {
            Some(toml::Value::Integer(i)) => *i,
            _ => return Err(self.bad(key, "must be an integer")),
        };
        if v < min || v > max {
            return Err(self.bad(key, format!("must be between {min} and {max}")));
        }
        u64::try_from(v).map_err(|_| self.bad(key, "out of range"))
    }

    fn ids(&self, key: &str) -> Result<Vec<u32>, BadValue> {
        let Some(toml::Value::Array(a)) = self.table.get(key) else {
            return Err(self.bad(key, "must be a list of numbers"));
        };
        a.iter()
            .map(|v| match v {
                toml::Value::Integer(i) => u32::try_from(*i)
                    .map_err(|_| self.bad(key, format!("{i} is not a uid/gid (0..4294967295)"))),
                _ => Err(self.bad(key, "must be a list of numbers")),
            })
            .collect()
    }

    fn calls(&self, key: &str) -> Result<HashSet<StationId>, BadValue> {
        let Some(toml::Value::Array(a)) = self.table.get(key) else {
            return Err(self.bad(key, "must be a list of callsigns"));
        };
        let mut out = HashSet::new();
        for v in a {
            let toml::Value::String(s) = v else {
                return Err(self.bad(key, "must be a list of callsigns"));
            };
            let s = s.trim();
            match StationId::encode(s) {
                Ok(id) => {
                    out.insert(id);
                }
                Err(e) => {
                    return Err(self.bad(key, format!("{s:?} is not a callsign ({e})")));
                }
            }
        }
        Ok(out)
    }

    /// An address, or None for "" / "off".
    fn addr(&self, key: &str) -> Result<Option<SocketAddr>, BadValue> {
        let s = self.str(key)?;
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        use std::net::ToSocketAddrs;
        match t.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Ok(Some(a)),
            Ok(None) => Err(self.bad(key, "resolves to nothing")),
            Err(e) => Err(self.bad(key, format!("not an ADDR:PORT address ({e})"))),
        }
    }

    fn cores(&self) -> Result<Vec<usize>, BadValue> {
        let key = "cores";
        let list = self.core_list()?;
        if list.len() > MAX_WORKERS {
            return Err(self.bad(
                key,
                format!(
                    "{} cores listed: at most {MAX_WORKERS} (one worker each)",
                    list.len()
                ),
            ));
        }
        check_cores(&list, &allowed_cpus()).map_err(|e| self.bad(key, e))?;
        Ok(list)
    }

    fn core_list(&self) -> Result<Vec<usize>, BadValue> {
        let key = "cores";
        match self.table.get(key) {
            Some(toml::Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
            Some(toml::Value::String(s)) => parse_cores(s).map_err(|e| self.bad(key, e)),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    toml::Value::Integer(i) if (0..=4095).contains(i) => Ok(*i as usize),
                    _ => Err(self.bad(key, "must be core numbers 0..4095")),
                })
                .collect(),
            _ => Err(self.bad(key, "must be a list like [0, 1] or a string like \"0-3\"")),
        }
    }
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
    /// Longest a loaded worker lets datagrams gather before it wakes
    /// (zero: never).
    pub coalesce: Duration,
    /// Received datagrams per second (per worker) above which it coalesces.
    pub coalesce_above: u32,
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
    /// The tracing filter.
    pub log: String,
    /// Destination rule.
    pub reply_to: ReplyTo,
    /// Engine choice.
    pub engine: EngineChoice,
    /// One worker per entry, pinned to that CPU.
    pub cores: Vec<usize>,
    /// Command channel socket path.
    pub control_socket: PathBuf,
    /// The path was configured (flag, env, file or `RUNTIME_DIRECTORY`)
    /// rather than the built-in default.
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
    /// OVP stations in total at most.
    pub max_stations: usize,
    /// OVP stations per source IP at most.
    pub max_stations_per_ip: usize,
    /// Allow list (None: no allow list).
    pub allow: Option<HashSet<StationId>>,
    /// Deny list.
    pub deny: HashSet<StationId>,
    /// Stats interval.
    pub stats_interval: Duration,
    /// Engine sizes.
    pub sizes: EngineSizes,
    /// The Prometheus endpoint (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Every key with its effective value and where it came from, for
    /// `--check-config` and reload diffs.
    pub effective: BTreeMap<String, (toml::Value, Origin)>,
}

/// Bytes per receive buffer: room for the io_uring recvmsg header, a
/// sockaddr_in6 and a datagram of up to 2000 bytes (frames up to at least
/// 1500 bytes are forwarded unchanged).
pub const BUFFER_SIZE: u32 = 2048;

impl Config {
    /// Merges flags, environment, the file `--config` names, and defaults,
    /// and validates every value.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let env = FileConfig::from_env();
        let flags = FileConfig::from_cli(cli);
        let (table, origins) = layers::merge(
            defaults().table()?,
            [
                (
                    file.table()?,
                    Origin::File(cli.config.clone().unwrap_or_default()),
                ),
                (env.table()?, Origin::Env("")),
                (flags.table()?, Origin::Flag),
            ],
            env_name,
        );
        let m = Merged { table, origins };
        Config::from_merged(&m)
    }

    fn from_merged(m: &Merged) -> anyhow::Result<Config> {
        let port = |k: &str| -> Result<u16, BadValue> { Ok(m.int(k, 0, 65_535)? as u16) };
        let short_ok = m.bool("allow_short_timeout")?;
        let min_timeout = if short_ok { 1 } else { MIN_TIMEOUT_SECS as i64 };
        let timeout = m.int("timeout", 1, MAX_TIMEOUT_SECS as i64)?;
        if (timeout as i64) < min_timeout {
            return Err(m
                .bad(
                    "timeout",
                    format!(
                        "below the minimum of {MIN_TIMEOUT_SECS} s \
                         (allow_short_timeout exists for tests only)"
                    ),
                )
                .into());
        }
        let bind_s = m.str("bind")?;
        let bind: IpAddr = bind_s
            .trim()
            .parse()
            .map_err(|_| m.bad("bind", "not an IP address (e.g. 0.0.0.0 or ::)"))?;
        let log = m.str("log")?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(m.bad("log", format!("not a log filter ({e})")).into());
        }
        let reply_to = match m.str("reply_to")?.trim() {
            "listen-port" | "listen_port" => ReplyTo::ListenPort,
            "source" => ReplyTo::Source,
            _ => {
                return Err(m
                    .bad("reply_to", "must be \"listen-port\" or \"source\"")
                    .into());
            }
        };
        let engine = match m.str("engine")?.trim() {
            "auto" => EngineChoice::Auto,
            "uring" => EngineChoice::Uring,
            "mmsg" => EngineChoice::Mmsg,
            _ => {
                return Err(m
                    .bad("engine", "must be \"auto\", \"uring\" or \"mmsg\"")
                    .into());
            }
        };
        let list = m.cores()?;
        let workers = m.int("workers", 0, MAX_WORKERS as i64)? as usize;
        let cores = match (list.is_empty(), workers) {
            (true, 0) => {
                let c = allowed_cpus();
                if c.is_empty() { vec![0] } else { c }
            }
            (true, n) => first_cores(n),
            (false, 0) => list,
            (false, n) => {
                let (oc, ow) = (m.origin("cores"), m.origin("workers"));
                if oc.rank() > ow.rank() {
                    list
                } else if ow.rank() > oc.rank() {
                    first_cores(n)
                } else {
                    return Err(m
                        .bad("workers", "set either cores or workers, not both")
                        .into());
                }
            }
        };
        let station_rate = m.int("station_rate", 0, 1_000_000)? as u32;
        let station_burst = match m.int("station_burst", 0, 1_000_000)? as u32 {
            0 => station_rate.max(1),
            b => b,
        };
        let max_stations = m.int("max_stations", 1, MAX_STATION_CAP)? as usize;
        let max_stations_per_ip = m.int("max_stations_per_ip", 1, MAX_STATION_CAP)? as usize;
        let allow = m.calls("allow")?;
        let buffers = m.int("buffers", 8, 32_768)? as u32;
        if !buffers.is_power_of_two() {
            return Err(m.bad("buffers", "must be a power of two").into());
        }
        let sizes = EngineSizes {
            ring_entries: m.int("ring_entries", 8, 32_768)? as u32,
            buffers,
            buffer_size: BUFFER_SIZE,
            send_slots: m.int("send_slots", 16, 65_535)? as u32,
            batch: m.int("batch", 1, 1024)? as u32,
            coalesce: Duration::from_micros(m.int("coalesce_us", 0, 1000)?),
            coalesce_above: m.int("coalesce_above", 1, 100_000_000)? as u32,
        };
        let socket = m.str("control_socket")?;
        let control_socket_explicit =
            !socket.trim().is_empty() || std::env::var_os("RUNTIME_DIRECTORY").is_some();
        let control_socket = if socket.trim().is_empty() {
            crate::cmdsock::default_path()
        } else {
            PathBuf::from(socket)
        };
        let group = m.str("control_socket_group")?;
        let control_socket_group = match group.trim() {
            "" => None,
            g => Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => match nix::unistd::Group::from_name(g) {
                    Ok(Some(gr)) => gr.gid.as_raw(),
                    Ok(None) => return Err(m.bad("control_socket_group", "no such group").into()),
                    Err(e) => {
                        return Err(m
                            .bad("control_socket_group", format!("group lookup failed ({e})"))
                            .into());
                    }
                },
            }),
        };
        let (ovp_port, voice_port) = (port("port")?, port("voice_port")?);
        if ovp_port == voice_port && ovp_port != 0 {
            return Err(m
                .bad(
                    "voice_port",
                    "is the OVP port too: conference and voice need a port each",
                )
                .into());
        }
        let effective = m
            .table
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), m.origin(k))))
            .collect();
        Ok(Config {
            port: ovp_port,
            voice_port,
            bind,
            timeout: Duration::from_secs(timeout),
            log,
            reply_to,
            engine,
            cores,
            control_socket,
            control_socket_explicit,
            control_socket_group,
            control_uids: m.ids("control_uids")?,
            control_gids: m.ids("control_gids")?,
            bandwidth_mbps: m.int("bandwidth_mbps", 0, MAX_BANDWIDTH_MBPS as i64)?,
            station_rate,
            station_burst,
            max_stations,
            max_stations_per_ip,
            allow: (!allow.is_empty()).then_some(allow),
            deny: m.calls("deny")?,
            stats_interval: Duration::from_secs(m.int("stats_interval", 1, 86_400)?),
            sizes,
            metrics_listen: m.addr("metrics_listen")?,
            effective,
        })
    }

    /// The effective configuration as TOML, each key commented with its
    /// source (the relay has no secret keys to mask).
    pub fn to_toml(&self) -> String {
        layers::effective_toml("whelm-relay", &self.effective)
    }

    /// `metrics_listen` was configured (flag, environment or file) rather
    /// than left at the built-in default.
    pub fn metrics_explicit(&self) -> bool {
        self.effective
            .get("metrics_listen")
            .is_some_and(|(_, o)| *o != Origin::Default)
    }

    /// Compares with a newly loaded configuration: (reloadable keys that
    /// changed, restart-only keys that changed), each as `key: old -> new`.
    pub fn diff(&self, new: &Config) -> (Vec<String>, Vec<String>) {
        let (mut apply, mut restart) = (Vec::new(), Vec::new());
        for (k, (v, _)) in &new.effective {
            let old = self.effective.get(k).map(|x| &x.0);
            if old == Some(v) {
                continue;
            }
            let old = old.map(ToString::to_string).unwrap_or_default();
            let line = format!("{k}: {old} -> {v}");
            if RELOADABLE.contains(&k.as_str()) {
                apply.push(line);
            } else {
                restart.push(line);
            }
        }
        (apply, restart)
    }
}

fn env_name(key: &str) -> &'static str {
    match key {
        "bind" => BIND_ENV,
        "control_socket" => CONTROL_SOCKET_ENV,
        "metrics_listen" => METRICS_ENV,
        "log" => {
            if std::env::var(LOG_ENV).is_ok_and(|v| !v.trim().is_empty()) {
                LOG_ENV
            } else {
                "RUST_LOG"
            }
        }
        _ => "environment",
    }
}

/// CPUs this process may run on, as it was started (the first call's
/// answer: the relay later moves its housekeeping threads off the worker
/// cores, and a reload must still see every core it was given).
pub fn allowed_cpus() -> Vec<usize> {
    static ALLOWED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ALLOWED
        .get_or_init(
            || match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
                Ok(set) => (0..nix::sched::CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap_or(false))
                    .collect(),
                Err(_) => vec![0],
            },
        )
        .clone()
}

/// The first `n` allowed CPUs (round robin when there are fewer).
fn first_cores(n: usize) -> Vec<usize> {
    let cpus = allowed_cpus();
    let cpus = if cpus.is_empty() { vec![0] } else { cpus };
    (0..n).map(|i| cpus[i % cpus.len()]).collect()
}

/// Most workers (cores listed, or `workers`): each has two sockets, a ring
/// and its buffers.
pub const MAX_WORKERS: usize = 256;

/// A worker per listed core: each core once, and one this process may run
/// on (its CPU affinity, e.g. systemd's `CPUAffinity=`), or the worker
/// would run unpinned wherever the scheduler puts it.
fn check_cores(list: &[usize], allowed: &[usize]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for &c in list {
        if !seen.insert(c) {
            return Err(format!("core {c} is listed twice (one worker per core)"));
        }
        if !allowed.is_empty() && !allowed.contains(&c) {
            return Err(format!(
                "core {c} is not one this process may run on (allowed: {})",
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    Ok(())
}

/// Parses `0,1` and `0-3,6`.
pub fn parse_cores(list: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a core number or range");
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b > 4095 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                let c = num(part)?;
                if c > 4095 {
                    return Err(bad());
                }
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        return Err("no cores".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relay.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn load(args: &[&str]) -> anyhow::Result<Config> {
        let mut v = vec!["whelm-relay"];
        v.extend_from_slice(args);
        Config::load(&Cli::parse_from(v))
    }

    fn err_of(text: &str) -> String {
        let (_d, p) = with_file(text);
        format!(
            "{:#}",
            load(&["--config", p.to_str().unwrap()]).unwrap_err()
        )
    }

    #[test]
    fn cores() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0-2, 5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cores("x").is_err());
        assert!(parse_cores("").is_err());
        let (_d, p) = with_file("cores = [0, 1]\n");
        assert_eq!(
            load(&["--config", p.to_str().unwrap()]).unwrap().cores,
            vec![0, 1]
        );
        let (_d, p) = with_file("cores = \"0-1\"\nworkers = 3\n");
        let e = format!(
            "{:#}",
            load(&["--config", p.to_str().unwrap()]).unwrap_err()
        );
        assert!(
            e.contains("key \"workers\": value 3: set either cores or workers"),
            "{e}"
        );
        // A flag wins over the file's other key.
        let c = load(&["--config", p.to_str().unwrap(), "--workers", "1"]).unwrap();
        assert_eq!(c.cores.len(), 1);
    }

    #[test]
    fn timeout_minimum() {
        let e = format!("{:#}", load(&["-t", "10"]).unwrap_err());
        assert!(
            e.contains("flag --timeout: key \"timeout\": value 10: below the minimum of 60"),
            "{e}"
        );
        let c = load(&["-t", "2", "--allow-short-timeout"]).unwrap();
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn file_then_flags() {
        let (_d, p) = with_file(
            "port = 1234\nreply_to = \"source\"\ndeny = [\"K0K\"]\nworkers = 1\nstation_rate = 7\n",
        );
        let c = load(&["--config", p.to_str().unwrap(), "-p", "999"]).unwrap();
        assert_eq!(c.port, 999);
        assert_eq!(c.reply_to, ReplyTo::Source);
        assert_eq!(c.deny.len(), 1);
        assert_eq!(c.cores.len(), 1);
        assert_eq!((c.station_rate, c.station_burst), (7, 7));
        assert!(c.allow.is_none());
        assert_eq!(c.effective["port"].1, Origin::Flag);
        assert_eq!(c.effective["workers"].1, Origin::File(p.clone()));
        assert_eq!(c.effective["batch"].1, Origin::Default);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = err_of("port = 1\nstation_rat = 3\n");
        assert!(
            e.contains("station_rat") && e.contains("unknown field"),
            "{e}"
        );
        assert!(e.contains("relay.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_reason() {
        let e = err_of("station_rate = -1\n");
        assert!(
            e.contains("relay.toml: key \"station_rate\": value -1: must be between 0 and 1000000"),
            "{e}"
        );
        let e = err_of("buffers = 1000\n");
        assert!(
            e.contains("key \"buffers\": value 1000: must be a power of two"),
            "{e}"
        );
        let e = err_of("deny = [\"not a call!\"]\n");
        assert!(
            e.contains("key \"deny\"") && e.contains("is not a callsign"),
            "{e}"
        );
        let e = err_of("engine = \"fast\"\n");
        assert!(e.contains("key \"engine\": value \"fast\": must be"), "{e}");
        let e = err_of("bind = \"localhost\"\n");
        assert!(
            e.contains("key \"bind\": value \"localhost\": not an IP"),
            "{e}"
        );
        let e = err_of("metrics_listen = \"nowhere\"\n");
        assert!(
            e.contains("key \"metrics_listen\": value \"nowhere\""),
            "{e}"
        );
        let e = err_of("log = \"[[[\"\n");
        assert!(e.contains("key \"log\""), "{e}");
        let e = err_of("stats_interval = 0\n");
        assert!(
            e.contains("key \"stats_interval\": value 0: must be between 1"),
            "{e}"
        );
        let e = err_of("port = \"57372\"\n");
        assert!(
            e.contains("port = \"57372\"") && e.contains("invalid type"),
            "{e}"
        );
        let e = err_of("control_socket_group = \"no-such-group-here\"\n");
        assert!(e.contains("no such group"), "{e}");
    }

    #[test]
    fn station_caps() {
        let c = load(&[]).unwrap();
        assert_eq!((c.max_stations, c.max_stations_per_ip), (1000, 16));
        let c = load(&["--max-stations", "5", "--max-stations-per-ip", "2"]).unwrap();
        assert_eq!((c.max_stations, c.max_stations_per_ip), (5, 2));
        let e = err_of("max_stations_per_ip = 0\n");
        assert!(
            e.contains("key \"max_stations_per_ip\": value 0: must be between 1 and 1000000"),
            "{e}"
        );
        let (apply, restart) = load(&[]).unwrap().diff(&c);
        assert_eq!(apply.len(), 2, "{apply:?}");
        assert!(restart.is_empty(), "{restart:?}");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let e = format!("{:#}", load(&["--batch", "0"]).unwrap_err());
        assert_eq!(
            e,
            "flag --batch: key \"batch\": value 0: must be between 1 and 1024"
        );
    }

    #[test]
    fn one_port_for_conference_and_voice_is_refused() {
        let e = format!(
            "{:#}",
            load(&["-p", "6000", "--voice-port", "6000"]).unwrap_err()
        );
        assert_eq!(
            e,
            "flag --voice-port: key \"voice_port\": value 6000: is the OVP port too: \
             conference and voice need a port each"
        );
        assert!(load(&["-p", "0", "--voice-port", "0"]).is_ok());
    }

    #[test]
    fn a_core_list_beyond_the_worker_cap_is_refused() {
        let e = format!("{:#}", load(&["--cores", "0-4095"]).unwrap_err());
        assert_eq!(
            e,
            "flag --cores: key \"cores\": value \"0-4095\": 4096 cores listed: at most 256 (one worker each)"
        );
    }

    #[test]
    fn listed_cores_must_be_allowed_and_distinct() {
        assert_eq!(check_cores(&[0, 1], &[0, 1]), Ok(()));
        assert_eq!(
            check_cores(&[0, 0], &[0, 1]),
            Err("core 0 is listed twice (one worker per core)".into())
        );
        assert_eq!(
            check_cores(&[1, 9], &[0, 1, 2]),
            Err("core 9 is not one this process may run on (allowed: 0,1,2)".into())
        );
        let allowed = allowed_cpus();
        let outside = allowed.iter().max().map_or(0, |m| m + 1);
        let e = format!(
            "{:#}",
            load(&["--cores", &outside.to_string()]).unwrap_err()
        );
        assert!(
            e.contains(&format!(
                "core {outside} is not one this process may run on"
            )),
            "{e}"
        );
        let first = allowed.first().copied().unwrap_or(0).to_string();
        assert_eq!(load(&["--cores", &first]).unwrap().cores.len(), 1);
    }

    #[test]
    fn example_file_parses_and_matches_the_defaults() {
        let text = include_str!("../../config/relay.toml");
        let f = FileConfig::parse(text).unwrap();
        let (ft, dt) = (f.table().unwrap(), defaults().table().unwrap());
        for (k, v) in &ft {
            assert_eq!(Some(v), dt.get(k), "key {k} differs from the default");
        }
        for k in dt.keys() {
            assert!(
                text.contains(&format!("\n{k} =")) || text.contains(&format!("\n# {k} =")),
                "config/relay.toml does not document {k}"
            );
        }
        for k in RELOADABLE {
            assert!(dt.contains_key(k), "{k}");
        }
    }

    #[test]
    fn diff_splits_reloadable_and_restart_keys() {
        let a = load(&[]).unwrap();
        let b = load(&["--deny", "K0K", "-p", "1"]).unwrap();
        let (apply, restart) = a.diff(&b);
        assert_eq!(apply, vec!["deny: [] -> [\"K0K\"]".to_owned()]);
        assert_eq!(restart, vec!["port: 57372 -> 1".to_owned()]);
        let t = b.to_toml();
        assert!(t.contains("deny = [\"K0K\"]  # flag"), "{t}");
        FileConfig::parse(&t).unwrap();
    }
}
