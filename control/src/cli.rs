//! Command line (ARCHITECTURE.md, "Command line"): the server by default,
//! `user add NAME`, `user list` and `migrate` as subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Whelm Voice control plane: sessions, presence, calls, instant messages.
#[derive(Clone, Debug, Parser)]
#[command(name = "whelm-control", version, about)]
pub struct Cli {
    /// TOML config file (the environment overrides it, and flags override
    /// both).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Address of the control line protocol [default: 0.0.0.0:5000].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// SQLite file, or a MariaDB DSN (`mysql://...` or Go form)
    /// [default: WHELM_DB_DSN if set, else whelm.db].
    #[arg(long, value_name = "PATH-or-URL", global = true)]
    pub db: Option<String>,
    /// The relay's command socket (its --control-socket; env
    /// WHELM_RELAY_SOCKET). Control serves while the relay is away and keeps
    /// retrying [default: none, control runs without a relay].
    #[arg(long, value_name = "PATH")]
    pub relay_socket: Option<PathBuf>,
    /// Close a session without HEARTBEAT for this long [default: 30].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_timeout: Option<f64>,
    /// How often heartbeats are checked [default: 10].
    #[arg(long, value_name = "SECS")]
    pub heartbeat_check: Option<f64>,
    /// A ringing call expires after this long [default: 60].
    #[arg(long, value_name = "SECS")]
    pub ring_timeout: Option<f64>,
    /// A new connection must AUTH within this long [default: 10].
    #[arg(long, value_name = "SECS")]
    pub auth_timeout: Option<f64>,
    /// Concurrent calls, ringing or active [default: 400]. Used when
    /// --max-calls-per-core is 0 or the relay's worker count is unknown.
    #[arg(long, value_name = "N")]
    pub max_calls: Option<usize>,
    /// Calls per relay worker (core): the limit becomes the relay's worker
    /// count times this; 0 uses --max-calls [default: 0].
    #[arg(long, value_name = "N")]
    pub max_calls_per_core: Option<usize>,
    /// Open connections [default: 20000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open connections per peer IP (IPv6: per /64), 0 for no limit
    /// [default: 256].
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<usize>,
    /// Commands per second per session, 0 for no limit [default: 1000].
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<f64>,
    /// Commands a session may send at once [default: 2000].
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<f64>,
    /// Store jobs per transaction at most (group commit) [default: 512].
    #[arg(long, value_name = "N")]
    pub batch_max: Option<usize>,
    /// Unwritten reply bytes before a client is dropped [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_outbuf: Option<usize>,
    /// Log filter, e.g. `info` or `whelm_control=debug` [default: info;
    /// env WHELM_LOG, else RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// More logging: -v debug, -vv trace (unless --log is given).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Prometheus endpoint, `off` to disable [default: 127.0.0.1:9501;
    /// env WHELM_METRICS_LISTEN].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Seconds between summary lines in the log, 0 for none [default: 60].
    #[arg(long, value_name = "SECS")]
    pub summary_interval: Option<f64>,
    /// Second listener speaking the line protocol over TLS [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Option<String>,
    /// PEM certificate chain for --tls-listen (re-read on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-listen (re-read on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Validate the configuration, print it (secrets masked) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Sub>,
}

/// Subcommands.
#[derive(Clone, Debug, Subcommand)]
pub enum Sub {
    /// Manage users.
    User {
        /// What to do.
        #[command(subcommand)]
        command: UserCmd,
    },
    /// Create the tables that are missing, then exit.
    Migrate,
}

/// `user ...`
#[derive(Clone, Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; prints its new session token.
    Add {
        /// Username (no spaces).
        name: String,
    },
    /// List users: id, username, status, last seen.
    List,
}
