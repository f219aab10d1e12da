//! `whelm-relay` binary: parse flags, load and validate the configuration
//! (`--check-config` prints it and exits), set up logging (stderr; compact
//! under journald) and signals (SIGINT/SIGTERM stop, SIGHUP reloads), run
//! [`whelm_relay::relay::run`], print the one ready line to stdout.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use whelm_daemon::logging::{self, LogHandle};
use whelm_relay::config::{Cli, Config};
use whelm_relay::relay::Options;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        return ctl();
    }
    // `whelm-relay help` as `whelm-relay --help` (ctl is not a clap
    // subcommand, so clap does not provide it).
    let cli = if std::env::args_os().nth(1).is_some_and(|a| a == "help") {
        Cli::parse_from(["whelm-relay", "--help"])
    } else {
        Cli::parse()
    };
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("whelm-relay: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.check_config {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{}", cfg.to_toml());
        let _ = out.flush();
        return std::process::ExitCode::SUCCESS;
    }
    let log = logging::init(&cfg.log);
    match run(&cli, &cfg, log) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("whelm-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `whelm-relay ctl ...`: the table (or JSON) on stdout, errors on stderr,
/// exit 1 when the relay is not running, refuses, or refuses a reload.
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

fn run(cli: &Cli, cfg: &Config, log: LogHandle) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing handler for signal {sig}"))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;
    let opts = Options {
        cli: Some(cli.clone()),
        log: Some(log),
        reload,
    };
    whelm_relay::relay::run(cfg, stop, opts, |ready| {
        let mut out = std::io::stdout().lock();
        // If stdout is closed nobody waits for the line; keep running.
        let _ = writeln!(out, "{}", ready.line());
        let _ = out.flush();
    })
}
