//! `whelm-relay` binary: parse flags, set up logging (stderr) and signals,
//! run [`whelm_relay::relay::run`], print the one ready line to stdout.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use whelm_relay::config::{Cli, Config};

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return ctl();
    }
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("whelm-relay: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let default = if cfg.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .init();
    match run(&cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("whelm-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `whelm-relay ctl ...`: the table (or JSON) on stdout, errors on stderr,
/// exit 1 when the relay is not running or refuses.
fn ctl() -> std::process::ExitCode {
    let cli = whelm_relay::ctl::CtlCli::parse_from(std::env::args_os().skip(1));
    match whelm_relay::ctl::run(&cli) {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", text.trim_end());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("whelm-relay ctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing handler for signal {sig}"))?;
    }
    whelm_relay::relay::run(cfg, stop, |ready| {
        let mut out = std::io::stdout().lock();
        // If stdout is closed nobody waits for the line; keep running.
        let _ = writeln!(out, "{}", ready.line());
        let _ = out.flush();
    })
}
