//! Command line: parses arguments and hands each subcommand to its module.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use whelm_shared::ovp::StationId;

use crate::station::{self, StationOptions};
use crate::station_tx::InnerAddressing;

/// Load harness, capacity search, and station/client tools of Whelm Voice.
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
    match run(cli) {
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
    }
}
