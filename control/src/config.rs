//! Settings: flags override the `--config` TOML file, which overrides the
//! defaults (ARCHITECTURE.md, command line). The store is chosen by `--db`,
//! else `WHELM_DB_DSN` (MariaDB), else the file's `db`, else `whelm.db`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use whelm_shared::line::DEFAULT_PORT;

use crate::cli::Cli;
use crate::dsn::{DbTarget, MysqlDsn};
use crate::machine::MachineConfig;
use crate::net::NetConfig;

/// The environment variable naming a MariaDB DSN (reference server's name).
pub const DSN_ENV: &str = "WHELM_DB_DSN";

/// The `--config` file. Every key optional; names match the long flags with
/// `_` for `-`. Durations are seconds (fractions allowed).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `--listen`
    pub listen: Option<String>,
    /// `--db`
    pub db: Option<String>,
    /// `--relay-socket`
    pub relay_socket: Option<PathBuf>,
    /// `--heartbeat-timeout`
    pub heartbeat_timeout: Option<f64>,
    /// `--heartbeat-check`
    pub heartbeat_check: Option<f64>,
    /// `--ring-timeout`
    pub ring_timeout: Option<f64>,
    /// `--auth-timeout`
    pub auth_timeout: Option<f64>,
    /// `--max-calls`
    pub max_calls: Option<usize>,
    /// `--max-connections`
    pub max_connections: Option<usize>,
    /// `--max-conns-per-ip`
    pub max_conns_per_ip: Option<usize>,
    /// `--rate-limit`
    pub rate_limit: Option<f64>,
    /// `--rate-burst`
    pub rate_burst: Option<f64>,
    /// `--batch-max`
    pub batch_max: Option<usize>,
    /// `--max-outbuf`
    pub max_outbuf: Option<usize>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
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
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && v > 0.0 && v < 1e9,
        "{name} must be a positive number of seconds, got {v}"
    );
    Ok(Duration::from_secs_f64(v))
}

/// Resolves `ADDR:PORT` (names allowed).
pub fn resolve_listen(s: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("invalid --listen address {s:?} (want ADDR:PORT)"))?
        .next()
        .with_context(|| format!("--listen address {s:?} resolves to nothing"))
}

/// The store target from flag, environment and file.
pub fn db_target(flag: Option<&str>, file: Option<&str>) -> anyhow::Result<DbTarget> {
    if let Some(db) = flag {
        return DbTarget::from_db_arg(db).with_context(|| format!("invalid --db {db:?}"));
    }
    if let Ok(dsn) = std::env::var(DSN_ENV) {
        if !dsn.trim().is_empty() {
            let d = MysqlDsn::parse(&dsn).with_context(|| format!("invalid {DSN_ENV}"))?;
            return Ok(DbTarget::Mysql(d));
        }
    }
    let db = file.unwrap_or("whelm.db");
    DbTarget::from_db_arg(db).with_context(|| format!("invalid db {db:?} in config file"))
}

impl Config {
    /// Merges flags, file and defaults.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let d = MachineConfig::default();
        let listen = cli
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let pick = |flag: Option<f64>, f: Option<f64>, def: Duration, name: &str| match flag.or(f) {
            Some(v) => secs(name, v),
            None => Ok(def),
        };
        let machine = MachineConfig {
            heartbeat_timeout: pick(
                cli.heartbeat_timeout,
                file.heartbeat_timeout,
                d.heartbeat_timeout,
                "heartbeat timeout",
            )?,
            heartbeat_check: pick(
                cli.heartbeat_check,
                file.heartbeat_check,
                d.heartbeat_check,
                "heartbeat check",
            )?,
            ring_timeout: pick(
                cli.ring_timeout,
                file.ring_timeout,
                d.ring_timeout,
                "ring timeout",
            )?,
            auth_timeout: pick(
                cli.auth_timeout,
                file.auth_timeout,
                d.auth_timeout,
                "auth timeout",
            )?,
            max_calls: cli.max_calls.or(file.max_calls).unwrap_or(d.max_calls),
            rate_per_sec: cli.rate_limit.or(file.rate_limit).unwrap_or(d.rate_per_sec),
            rate_burst: cli.rate_burst.or(file.rate_burst).unwrap_or(d.rate_burst),
            max_queued_before_auth: d.max_queued_before_auth,
        };
        anyhow::ensure!(
            machine.rate_per_sec >= 0.0 && machine.rate_burst >= 1.0,
            "rate limit must be >= 0 and burst >= 1"
        );
        Ok(Config {
            listen: resolve_listen(&listen)?,
            db: db_target(cli.db.as_deref(), file.db.as_deref())?,
            relay_socket: cli.relay_socket.clone().or(file.relay_socket),
            machine,
            net: NetConfig {
                max_connections: cli
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(20_000),
                max_per_ip: cli
                    .max_conns_per_ip
                    .or(file.max_conns_per_ip)
                    .unwrap_or(256),
                max_outbuf: cli.max_outbuf.or(file.max_outbuf).unwrap_or(1 << 20),
            },
            batch_max: cli.batch_max.or(file.batch_max).unwrap_or(512).max(1),
        })
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
}
