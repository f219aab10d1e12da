//! Settings. Precedence: command-line flags > environment > the `--config`
//! TOML file > defaults (ARCHITECTURE.md, command line; issue 7). Every key
//! is documented in `config/control.toml`, which a test parses.
//!
//! The three sources are read into the same [`FileConfig`] shape (every key
//! optional), merged key by key remembering where each value came from, and
//! validated once: an error names the source, the key, the value and the
//! reason (`control.toml: key "heartbeat_timeout": value -3: must be a
//! positive number of seconds`). Unknown keys are refused by serde.
//!
//! Environment: `WHELM_DB_DSN` (a MariaDB DSN), `WHELM_CONTROL_LISTEN`,
//! `WHELM_RELAY_SOCKET`, `WHELM_METRICS_LISTEN`, `WHELM_LOG` (else
//! `RUST_LOG`). The store is chosen by `--db`, else `WHELM_DB_DSN`, else the
//! file's `db`, else `whelm.db`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use whelm_daemon::config as layers;
pub use whelm_daemon::config::{BadValue, Origin};
use whelm_shared::line::DEFAULT_PORT;

use crate::cli::Cli;
use crate::dsn::{DbTarget, MysqlDsn};
use crate::machine::MachineConfig;
use crate::net::NetConfig;

/// The environment variable naming a MariaDB DSN (reference server's name).
pub const DSN_ENV: &str = "WHELM_DB_DSN";
/// Environment override of `listen`.
pub const LISTEN_ENV: &str = "WHELM_CONTROL_LISTEN";
/// Environment override of `relay_socket`.
pub const RELAY_SOCKET_ENV: &str = "WHELM_RELAY_SOCKET";
/// Environment override of `metrics_listen`.
pub const METRICS_ENV: &str = "WHELM_METRICS_LISTEN";
/// Environment override of `log` (`RUST_LOG` is read when it is unset).
pub const LOG_ENV: &str = "WHELM_LOG";

/// Default of `metrics_listen` (loopback only).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9501";

/// The `--config` file. Every key optional; names match the long flags with
/// `_` for `-`. Durations are seconds (fractions allowed). Counts are read
/// as signed integers so that a negative one gets a clear error.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--db`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    /// `--relay-socket` ("" for none)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_socket: Option<String>,
    /// `--heartbeat-timeout`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout: Option<f64>,
    /// `--heartbeat-check`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_check: Option<f64>,
    /// `--ring-timeout`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_timeout: Option<f64>,
    /// `--auth-timeout`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_timeout: Option<f64>,
    /// `--max-calls`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<i64>,
    /// `--max-calls-per-core` (0: use max_calls)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_calls_per_core: Option<i64>,
    /// `--max-connections`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// `--max-conns-per-ip`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conns_per_ip: Option<i64>,
    /// `--rate-limit`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// `--rate-burst`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<f64>,
    /// `--batch-max`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<i64>,
    /// `--max-outbuf`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_outbuf: Option<i64>,
    /// `--log` (a tracing filter such as `info` or `whelm_control=debug`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// `--metrics-listen` ("" or "off" disables)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// `--summary-interval` (0 disables the periodic line)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_interval: Option<f64>,
    /// `--tls-listen` ("" or "off" disables)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<String>,
    /// `--tls-cert` (PEM chain)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// `--tls-key` (PEM private key)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
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
            listen: var(LISTEN_ENV),
            relay_socket: var(RELAY_SOCKET_ENV),
            metrics_listen: std::env::var(METRICS_ENV).ok(),
            log: var(LOG_ENV).or_else(|| var("RUST_LOG")),
            ..FileConfig::default()
        }
    }

    /// The command-line layer.
    fn from_cli(cli: &Cli) -> FileConfig {
        let n = |v: Option<usize>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let log = cli.log.clone().or(match cli.verbose {
            0 => None,
            1 => Some("debug".to_owned()),
            _ => Some("trace".to_owned()),
        });
        FileConfig {
            listen: cli.listen.clone(),
            db: cli.db.clone(),
            relay_socket: cli
                .relay_socket
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            heartbeat_timeout: cli.heartbeat_timeout,
            heartbeat_check: cli.heartbeat_check,
            ring_timeout: cli.ring_timeout,
            auth_timeout: cli.auth_timeout,
            max_calls: n(cli.max_calls),
            max_calls_per_core: n(cli.max_calls_per_core),
            max_connections: n(cli.max_connections),
            max_conns_per_ip: n(cli.max_conns_per_ip),
            rate_limit: cli.rate_limit,
            rate_burst: cli.rate_burst,
            batch_max: n(cli.batch_max),
            max_outbuf: n(cli.max_outbuf),
            log,
            metrics_listen: cli.metrics_listen.clone(),
            summary_interval: cli.summary_interval,
            tls_listen: cli.tls_listen.clone(),
            tls_cert: cli
                .tls_cert
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            tls_key: cli
                .tls_key
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        }
    }
}

/// The TLS listener's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// PEM certificate chain (re-read on SIGHUP).
    pub cert: PathBuf,
    /// PEM private key (re-read on SIGHUP).
    pub key: PathBuf,
}

/// Everything the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (resolved).
    pub listen: SocketAddr,
    /// The store.
    pub db: DbTarget,
    /// The relay's command socket (relay_link.rs connects to it).
    pub relay_socket: Option<PathBuf>,
    /// State machine limits and timers.
    pub machine: MachineConfig,
    /// Network limits.
    pub net: NetConfig,
    /// Jobs per store transaction at most.
    pub batch_max: usize,
    /// The tracing filter.
    pub log: String,
    /// The Prometheus endpoint (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// The periodic summary line (None: off).
    pub summary_interval: Option<Duration>,
    /// The TLS listener (None: off).
    pub tls: Option<TlsSettings>,
    /// Every key with its effective value (the DSN password masked) and
    /// where it came from, for `--check-config` and reload diffs.
    pub effective: BTreeMap<String, (toml::Value, Origin)>,
}

/// Resolves `ADDR:PORT` (names allowed).
pub fn resolve_listen(s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("invalid address {s:?} (want ADDR:PORT)"))?
        .next()
        .with_context(|| format!("address {s:?} resolves to nothing"))
}

/// The store target from flag, environment and file.
pub fn db_target(flag: Option<&str>, file: Option<&str>) -> anyhow::Result<DbTarget> {
    Ok(db_choice(flag, file)?.0)
}

fn db_choice(flag: Option<&str>, file: Option<&str>) -> anyhow::Result<(DbTarget, Origin)> {
    if let Some(db) = flag {
        let t = DbTarget::from_db_arg(db).with_context(|| format!("invalid --db {db:?}"))?;
        return Ok((t, Origin::Flag));
    }
    if let Ok(dsn) = std::env::var(DSN_ENV)
        && !dsn.trim().is_empty()
    {
        let d = MysqlDsn::parse(&dsn).with_context(|| format!("invalid {DSN_ENV}"))?;
        return Ok((DbTarget::Mysql(d), Origin::Env(DSN_ENV)));
    }
    match file {
        Some(db) => {
            let t = DbTarget::from_db_arg(db)
                .with_context(|| format!("invalid db {db:?} in config file"))?;
            Ok((t, Origin::Default))
        }
        None => Ok((DbTarget::Sqlite("whelm.db".into()), Origin::Default)),
    }
}

/// The built-in defaults of every key (`config/control.toml` says the same).
pub fn defaults() -> FileConfig {
    let d = MachineConfig::default();
    FileConfig {
        listen: Some(format!("0.0.0.0:{DEFAULT_PORT}")),
        db: Some("whelm.db".into()),
        relay_socket: Some(String::new()),
        heartbeat_timeout: Some(d.heartbeat_timeout.as_secs_f64()),
        heartbeat_check: Some(d.heartbeat_check.as_secs_f64()),
        ring_timeout: Some(d.ring_timeout.as_secs_f64()),
        auth_timeout: Some(d.auth_timeout.as_secs_f64()),
        max_calls: Some(400),
        max_calls_per_core: Some(0),
        max_connections: Some(20_000),
        max_conns_per_ip: Some(256),
        rate_limit: Some(d.rate_per_sec),
        rate_burst: Some(d.rate_burst),
        batch_max: Some(512),
        max_outbuf: Some(1 << 20),
        log: Some("info".into()),
        metrics_listen: Some(DEFAULT_METRICS.into()),
        summary_interval: Some(60.0),
        tls_listen: Some(String::new()),
        tls_cert: Some(String::new()),
        tls_key: Some(String::new()),
    }
}

/// Validation of merged values; each getter names key, value and reason.
struct Merged {
    table: toml::Table,
    origins: BTreeMap<String, Origin>,
}

impl Merged {
    fn bad(&self, key: &str, reason: impl Into<String>) -> BadValue {
        let value = self.table.get(key).map(show).unwrap_or_default();
        let origin = self
            .origins
            .get(key)
            .map(|o| o.describe(key))
            .unwrap_or_else(|| "default".into());
        BadValue {
            origin,
            key: key.to_owned(),
            value,
            reason: reason.into(),
        }
    }

    fn str(&self, key: &str) -> Result<String, BadValue> {
        match self.table.get(key) {
            Some(toml::Value::String(s)) => Ok(s.clone()),
            _ => Err(self.bad(key, "must be a string")),
        }
    }

    fn float(&self, key: &str) -> Result<f64, BadValue> {
        match self.table.get(key) {
            Some(toml::Value::Float(f)) => Ok(*f),
            Some(toml::Value::Integer(i)) => Ok(*i as f64),
            _ => Err(self.bad(key, "must be a number")),
        }
    }

    fn secs(&self, key: &str) -> Result<Duration, BadValue> {
        let v = self.float(key)?;
        // At least a millisecond: a smaller value would become a zero (or
        // nonsensical) Duration (fuzz/artifacts/config_parser/heartbeat-1e-10).
        if v.is_finite() && v > 0.0 && v < 1e9 {
            if v < 0.001 {
                return Err(self.bad(key, "must be a positive number of seconds (at least 0.001)"));
            }
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(self.bad(key, "must be a positive number of seconds"))
        }
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<usize, BadValue> {
        let v = match self.table.get(key) {
            Some(toml::Value::Integer(i)) => *i,
            _ => return Err(self.bad(key, "must be an integer")),
        };
        if v < min || v > max {
            return Err(self.bad(key, format!("must be between {min} and {max}")));
        }
        usize::try_from(v).map_err(|_| self.bad(key, "out of range"))
    }

    /// An address, or None for "" / "off".
    fn addr(&self, key: &str, optional: bool) -> Result<Option<SocketAddr>, BadValue> {
        let s = self.str(key)?;
        let t = s.trim();
        if optional && (t.is_empty() || t.eq_ignore_ascii_case("off")) {
            return Ok(None);
        }
        match resolve_listen(t) {
            Ok(a) => Ok(Some(a)),
            Err(e) => Err(self.bad(key, format!("not an ADDR:PORT address ({e:#})"))),
        }
    }
}

impl Config {
    /// Merges flags, environment, file and defaults, and validates.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Config> {
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

        let (db, db_origin) = db_choice(cli.db.as_deref(), file.db.as_deref())?;
        let machine = MachineConfig {
            heartbeat_timeout: m.secs("heartbeat_timeout")?,
            heartbeat_check: m.secs("heartbeat_check")?,
            ring_timeout: m.secs("ring_timeout")?,
            auth_timeout: m.secs("auth_timeout")?,
            max_calls: m.int("max_calls", 0, 10_000_000)?,
            max_calls_per_core: match m.int("max_calls_per_core", 0, 1_000_000)? {
                0 => None,
                n => Some(n),
            },
            rate_per_sec: {
                let v = m.float("rate_limit")?;
                if !(v.is_finite() && (0.0..1e9).contains(&v)) {
                    return Err(m.bad("rate_limit", "must be >= 0 (0: no limit)").into());
                }
                v
            },
            rate_burst: {
                let v = m.float("rate_burst")?;
                if !(v.is_finite() && (1.0..1e9).contains(&v)) {
                    return Err(m.bad("rate_burst", "must be >= 1").into());
                }
                v
            },
            max_queued_before_auth: MachineConfig::default().max_queued_before_auth,
        };
        let log = m.str("log")?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(m.bad("log", format!("not a log filter ({e})")).into());
        }
        let summary = m.float("summary_interval")?;
        if !(summary.is_finite() && (summary == 0.0 || (1.0..1e9).contains(&summary))) {
            return Err(m
                .bad("summary_interval", "must be 0 (off) or at least 1 second")
                .into());
        }
        let tls = match m.addr("tls_listen", true)? {
            None => None,
            Some(listen) => {
                let path = |k: &str| -> Result<PathBuf, BadValue> {
                    let s = m.str(k)?;
                    if s.trim().is_empty() {
                        Err(m.bad(k, "required when tls_listen is set"))
                    } else {
                        Ok(PathBuf::from(s))
                    }
                };
                Some(TlsSettings {
                    listen,
                    cert: path("tls_cert")?,
                    key: path("tls_key")?,
                })
            }
        };
        let relay_socket = m.str("relay_socket")?;
        let mut effective: BTreeMap<String, (toml::Value, Origin)> = m
            .table
            .iter()
            .map(|(k, v)| {
                let o = m.origins.get(k).cloned().unwrap_or(Origin::Default);
                (k.clone(), (v.clone(), o))
            })
            .collect();
        let db_shown = match &db {
            DbTarget::Sqlite(p) => p.display().to_string(),
            DbTarget::Mysql(d) => d.to_string(),
        };
        let db_origin = match db_origin {
            Origin::Default if file.db.is_some() => {
                m.origins.get("db").cloned().unwrap_or(Origin::Default)
            }
            o => o,
        };
        effective.insert("db".into(), (toml::Value::String(db_shown), db_origin));
        Ok(Config {
            listen: m.addr("listen", false)?.context("listen is required")?,
            db,
            relay_socket: (!relay_socket.trim().is_empty()).then(|| relay_socket.into()),
            net: NetConfig {
                max_connections: m.int("max_connections", 1, 10_000_000)?,
                max_per_ip: m.int("max_conns_per_ip", 0, 10_000_000)?,
                max_outbuf: m.int("max_outbuf", 1024, 1 << 32)?,
            },
            batch_max: m.int("batch_max", 1, 1_000_000)?,
            machine,
            log,
            metrics_listen: m.addr("metrics_listen", true)?,
            summary_interval: (summary > 0.0).then(|| Duration::from_secs_f64(summary)),
            tls,
            effective,
        })
    }

    /// The effective configuration as TOML, each key commented with its
    /// source; the DSN password is masked.
    pub fn to_toml(&self) -> String {
        layers::effective_toml("whelm-control", &self.effective)
    }
}

/// A value as an operator wrote it: `-3`, not `-3.0`, for a whole number.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        v => v.to_string(),
    }
}

fn env_name(key: &str) -> &'static str {
    match key {
        "listen" => LISTEN_ENV,
        "relay_socket" => RELAY_SOCKET_ENV,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:6000\"\nring_timeout = 5\nmax_calls = 3\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "whelm-control",
            "--config",
            p.to_str().unwrap(),
            "--max-calls",
            "7",
            "--db",
            "/tmp/x.db",
        ]);
        let c = Config::from_cli(&cli).unwrap();
        assert_eq!(c.listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(c.machine.ring_timeout, Duration::from_secs(5));
        assert_eq!(c.machine.max_calls, 7);
        assert_eq!(c.machine.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(c.db, DbTarget::Sqlite("/tmp/x.db".into()));
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(Config::from_cli(&cli).is_err());
        let cli = Cli::parse_from(["whelm-control", "--heartbeat-timeout", "0", "--db", "x"]);
        assert!(Config::from_cli(&cli).is_err());
    }

    fn with_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn err_of(text: &str) -> String {
        let (_d, p) = with_file(text);
        let cli = Cli::parse_from(["whelm-control", "--config", p.to_str().unwrap()]);
        format!("{:#}", Config::from_cli(&cli).unwrap_err())
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = err_of("listen = \"127.0.0.1:1\"\nmax_callz = 3\n");
        assert!(e.contains("max_callz"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_reason() {
        let e = err_of("heartbeat_timeout = -3\n");
        assert!(
            e.contains(
                "control.toml: key \"heartbeat_timeout\": value -3: must be a positive number of seconds"
            ),
            "{e}"
        );
        let e = err_of("heartbeat_timeout = 1e-10\n");
        assert!(
            e.contains("key \"heartbeat_timeout\": value 0.0000000001: must be a positive number of seconds (at least 0.001)"),
            "{e}"
        );
        let e = err_of("max_calls = -1\n");
        assert!(
            e.contains("key \"max_calls\": value -1: must be between 0 and"),
            "{e}"
        );
        let e = err_of("listen = \"nonsense\"\n");
        assert!(
            e.contains("key \"listen\": value \"nonsense\": not an ADDR:PORT"),
            "{e}"
        );
        let e = err_of("tls_listen = \"127.0.0.1:0\"\n");
        assert!(
            e.contains("key \"tls_cert\": value \"\": required when tls_listen is set"),
            "{e}"
        );
        let e = err_of("log = \"[[[\"\n");
        assert!(e.contains("key \"log\""), "{e}");
        let e = err_of("ring_timeout = \"soon\"\n");
        assert!(e.contains("ring_timeout") && e.contains("soon"), "{e}");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let cli = Cli::parse_from(["whelm-control", "--rate-burst", "0", "--db", "x"]);
        let e = format!("{:#}", Config::from_cli(&cli).unwrap_err());
        assert_eq!(
            e,
            "flag --rate-burst: key \"rate_burst\": value 0: must be >= 1"
        );
    }

    #[test]
    fn example_file_parses_and_matches_the_defaults() {
        let text = include_str!("../../config/control.toml");
        let f = FileConfig::parse(text).unwrap();
        // Every key the example sets is at its default, so that the file
        // documents the defaults truthfully.
        let d = defaults();
        let (ft, dt) = (f.table().unwrap(), d.table().unwrap());
        for (k, v) in &ft {
            assert_eq!(Some(v), dt.get(k), "key {k} differs from the default");
        }
        // And the example mentions every key (commented or not).
        for k in dt.keys() {
            assert!(
                text.contains(&format!("\n{k} =")) || text.contains(&format!("\n# {k} =")),
                "config/control.toml does not document {k}"
            );
        }
    }

    #[test]
    fn effective_config_masks_the_password() {
        let cli = Cli::parse_from([
            "whelm-control",
            "--db",
            "mysql://whelm:s3cret@db.example:3306/whelm",
        ]);
        let c = Config::from_cli(&cli).unwrap();
        let t = c.to_toml();
        assert!(!t.contains("s3cret"), "{t}");
        assert!(t.contains("***"), "{t}");
        assert!(t.contains("db = \"mysql://whelm:***@db.example:3306/whelm\"  # flag"));
    }
}
