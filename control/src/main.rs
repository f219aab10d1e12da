//! `whelm-control`: see the library crate for the module map.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use whelm_control::cli::{Cli, Sub, UserCmd};
use whelm_control::config::{Config, db_target};
use whelm_control::store;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(&cli) {
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

#[allow(clippy::print_stdout)]
fn run(cli: &Cli) -> anyhow::Result<()> {
    let Some(cmd) = &cli.command else {
        let cfg = Config::from_cli(cli)?;
        let store = store::open(&cfg.db).with_context(|| format!("opening store {}", cfg.db))?;
        return whelm_control::runtime::serve(&cfg, store, |addr, store, relay| {
            println!("whelm-control ready: listen={addr} store={store} relay={relay}");
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
