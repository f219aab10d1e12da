//! `whelm-control`: see the library crate for the module map.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use whelm_control::cli::{Cli, Sub, UserCmd};
use whelm_control::config::{Config, LOG_ENV, db_target};
use whelm_control::runtime::Options;
use whelm_control::store;
use whelm_daemon::logging::{self, LogHandle};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The filter of the environment or flags until the configuration is
    // read; then the configured one.
    let early = cli
        .log
        .clone()
        .or_else(|| std::env::var(LOG_ENV).ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let log = logging::init(&early);
    match run(&cli, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whelm-control: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A write past `RLIMIT_FSIZE` (a file size limit set by the operator or
/// systemd's `LimitFSIZE=`) raises SIGXFSZ, whose default action kills the
/// process. Caught (by signal-hook's flag handler, which only sets an
/// atomic), the write fails with `EFBIG` instead: the store reports it, MSG
/// gets `ERROR`, and presence and calls go on.
fn ignore_sigxfsz() {
    let raised = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, raised) {
        tracing::warn!(error = %e, "could not catch SIGXFSZ");
    }
}

#[allow(clippy::print_stdout)]
fn run(cli: &Cli, log: LogHandle) -> anyhow::Result<()> {
    let Some(cmd) = &cli.command else {
        let cfg = Config::from_cli(cli)?;
        if cli.check_config {
            if let Some(t) = &cfg.tls {
                whelm_control::tls::load(&t.cert, &t.key)?;
            }
            print!("{}", cfg.to_toml());
            return Ok(());
        }
        logging::set_filter(&log, &cfg.log)?;
        ignore_sigxfsz();
        let store = store::open(&cfg.db).with_context(|| format!("opening store {}", cfg.db))?;
        let opts = Options {
            cli: cli.clone(),
            log: Some(log),
        };
        return whelm_control::runtime::serve(&cfg, store, opts, |ready| {
            println!("{}", ready.line());
        });
    };
    let file_db = match &cli.config {
        Some(p) => whelm_control::config::FileConfig::load(p)?.db,
        None => None,
    };
    let target = db_target(cli.db.as_deref(), file_db.as_deref())?;
    let mut store = store::open(&target).with_context(|| format!("opening store {target}"))?;
    store
        .migrate()
        .with_context(|| format!("creating tables in {target}"))?;
    match cmd {
        Sub::Migrate => {
            eprintln!("whelm-control: tables ready in {target}");
        }
        Sub::User {
            command: UserCmd::Add { name },
        } => {
            anyhow::ensure!(
                valid_username(name),
                "invalid username {name:?}: 1 to 64 characters, no spaces"
            );
            let token = store::new_token()?;
            let id = store
                .add_user(name, &token)
                .with_context(|| format!("adding user {name:?} to {target}"))?;
            eprintln!("whelm-control: user {name} has id {id}");
            println!("{token}");
        }
        Sub::User {
            command: UserCmd::List,
        } => {
            let users = store
                .list_users()
                .with_context(|| format!("listing users in {target}"))?;
            println!("{:>6}  {:<24} {:<8} last_seen", "id", "username", "status");
            for u in users {
                println!(
                    "{:>6}  {:<24} {:<8} {}",
                    u.id,
                    u.username,
                    u.status,
                    u.last_seen.unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    Ok(())
}
