//! Command line (ARCHITECTURE.md, "Command line"): the server by default,
//! `user add NAME`, `user list` and `migrate` as subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Whelm Voice control plane: sessions, presence, calls, instant messages.
#[derive(Debug, Parser)]
#[command(name = "whelm-control", version, about)]
pub struct Cli {
    /// TOML config file (flags override it).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Address of the control line protocol [default: 0.0.0.0:5000].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// SQLite file, or a MariaDB DSN (`mysql://...` or Go form)
    /// [default: WHELM_DB_DSN if set, else whelm.db].
    #[arg(long, value_name = "PATH-or-URL", global = true)]
    pub db: Option<String>,
    /// The relay's command socket (its --control-socket). Control serves
    /// without it and keeps retrying; none: no relay.
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
    /// Concurrent calls, ringing or active [default: 400].
    #[arg(long, value_name = "N")]
    pub max_calls: Option<usize>,
    /// Open connections [default: 20000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open connections per peer IP, 0 for no limit [default: 256].
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
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Sub>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
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
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user; prints its new session token.
    Add {
        /// Username (no spaces).
        name: String,
    },
    /// List users: id, username, status, last seen.
    List,
}
