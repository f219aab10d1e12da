//! `whelm-relay ctl [--socket PATH] users|calls|stations|counters|reload [--json]`:
//! the operator's view through the command socket. Connects with role
//! `operator` (read-only), sends one request, renders the reply as a table
//! (or the reply's JSON with `--json`). Events are not sent to operators;
//! any other line before the reply is skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use whelm_shared::channel::{
    ClientMsg, Command, Counters, Outcome, PROTOCOL_VERSION, RelayMsg, Role, State, StationInfo,
    decode, encode,
};

/// How long ctl waits for the relay.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// Allowed users, their IPs and registered voice addresses.
    Users,
    /// Installed calls.
    Calls,
    /// OVP conference stations.
    Stations,
    /// Per-worker counters and bandwidth.
    Counters,
    /// Re-read the relay's configuration file (like SIGHUP); prints what
    /// changed, or the error (exit 1, nothing applied).
    Reload,
}

/// `whelm-relay ctl` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "whelm-relay ctl",
    bin_name = "whelm-relay ctl",
    about = "Show the relay's users, calls, stations or counters; reload its configuration"
)]
pub struct CtlCli {
    /// Command socket (default: `$RUNTIME_DIRECTORY/relay.sock`, else
    /// `/run/whelm/relay.sock`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// What to show.
    #[arg(value_enum)]
    pub what: What,
    /// Print the relay's JSON reply instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the request; returns the text to print.
pub fn run(cli: &CtlCli) -> anyhow::Result<String> {
    let path = cli
        .socket
        .clone()
        .unwrap_or_else(crate::cmdsock::default_path);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to the relay's command socket {} (is whelm-relay running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let hello = ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Operator,
        agent: format!("whelm-relay ctl pid {}", std::process::id()),
    };
    let command = match cli.what {
        What::Users | What::Calls => Command::Snapshot,
        What::Stations => Command::Stations,
        What::Counters => Command::Counters,
        What::Reload => Command::Reload,
    };
    let mut req = encode(&hello);
    req.extend(encode(&ClientMsg::Request { id: 1, command }));
    // A refused peer may find the connection closed before it wrote: the
    // relay's `refused` line is then still there to read, and says why.
    let write_err = stream.write_all(&req).err();
    let mut reader = BufReader::new(stream);
    if let Some(e) = write_err {
        let mut line = String::new();
        if reader.read_line(&mut line).is_ok()
            && let Ok(RelayMsg::Refused { reason }) = decode::<RelayMsg>(line.as_bytes())
        {
            bail!("the relay refused the connection: {reason}");
        }
        return Err(e).with_context(|| format!("writing to {}", path.display()));
    }
    let mut line = String::new();
    // Welcome (or Refused), then the reply; bounded.
    for _ in 0..1000 {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("reading from {}", path.display()))?;
        if n == 0 {
            bail!("the relay closed the connection without answering");
        }
        let msg: RelayMsg = decode(line.as_bytes()).context("the relay sent an unreadable line")?;
        match msg {
            RelayMsg::Refused { reason } => bail!("the relay refused the connection: {reason}"),
            RelayMsg::Reply { id: 1, outcome } => {
                if cli.json && !matches!(outcome, Outcome::Error { .. }) {
                    return Ok(line.trim_end().to_string());
                }
                return render(cli.what, outcome);
            }
            _ => {}
        }
    }
    bail!("no reply from the relay")
}

fn render(what: What, outcome: Outcome) -> anyhow::Result<String> {
    match (what, outcome) {
        (_, Outcome::Error { code, message }) => bail!("the relay answered {code:?}: {message}"),
        (What::Users, Outcome::Snapshot(s)) => Ok(users(&s)),
        (What::Calls, Outcome::Snapshot(s)) => Ok(calls(&s)),
        (What::Stations, Outcome::Stations { stations: s }) => Ok(stations(&s)),
        (What::Counters, Outcome::Counters(c)) => Ok(counters(&c)),
        (
            What::Reload,
            Outcome::Reloaded {
                changed,
                restart_needed,
            },
        ) => Ok(reloaded(&changed, &restart_needed)),
        (_, other) => bail!("unexpected reply: {other:?}"),
    }
}

fn reloaded(changed: &[String], restart_needed: &[String]) -> String {
    let mut out = if changed.is_empty() {
        "configuration reloaded: nothing changed\n".to_owned()
    } else {
        let mut s = "configuration reloaded; applied:\n".to_owned();
        for c in changed {
            s.push_str(&format!("  {c}\n"));
        }
        s
    };
    if !restart_needed.is_empty() {
        out.push_str("changed in the file but needing a restart (running values kept):\n");
        for c in restart_needed {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn users(s: &State) -> String {
    let mut out = format!(
        "{:<12} {:<40} {:<47} {:<6} {}\n",
        "USER", "IP", "VOICE", "TOKEN", "IN CALL WITH"
    );
    for u in &s.users {
        let partner = s.calls.iter().find_map(|c| {
            if c.a == u.user {
                Some(c.b)
            } else if c.b == u.user {
                Some(c.a)
            } else {
                None
            }
        });
        out.push_str(&format!(
            "{:<12} {:<40} {:<47} {:<6} {}\n",
            u.user,
            u.ip,
            opt(u.voice),
            if u.token.is_some() { "yes" } else { "no" },
            opt(partner)
        ));
    }
    out.push_str(&format!("{} users\n", s.users.len()));
    out
}

fn calls(s: &State) -> String {
    let voice = |u| opt(s.users.iter().find(|e| e.user == u).and_then(|e| e.voice));
    let mut out = format!("{:<12} {:<12} {:<47} {}\n", "A", "B", "A VOICE", "B VOICE");
    for c in &s.calls {
        out.push_str(&format!(
            "{:<12} {:<12} {:<47} {}\n",
            c.a,
            c.b,
            voice(c.a),
            voice(c.b)
        ));
    }
    out.push_str(&format!("{} calls\n", s.calls.len()));
    out
}

fn stations(s: &[StationInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<47} {:>11} {:>12}\n",
        "CALLSIGN", "ADDR", "LAST SEEN s", "FRAMES"
    );
    for st in s {
        out.push_str(&format!(
            "{:<10} {:<47} {:>11} {:>12}\n",
            st.callsign, st.addr, st.last_seen_secs, st.frames
        ));
    }
    out.push_str(&format!("{} stations\n", s.len()));
    out
}

fn counters(c: &Counters) -> String {
    let mut out = format!(
        "{:<6} {:>4} {:<6} {:>14} {:>14} {:>16} {:>16}\n",
        "WORKER", "CPU", "ENGINE", "PACKETS IN", "PACKETS OUT", "BYTES IN", "BYTES OUT"
    );
    for w in &c.workers {
        out.push_str(&format!(
            "{:<6} {:>4} {:<6} {:>14} {:>14} {:>16} {:>16}\n",
            w.worker,
            opt(w.cpu),
            w.engine,
            w.packets_in,
            w.packets_out,
            w.bytes_in,
            w.bytes_out
        ));
    }
    for w in &c.workers {
        let drops: Vec<String> = w
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "worker {} drops: {}\n",
            w.worker,
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(" ")
            }
        ));
    }
    out.push_str(&format!(
        "bps_in={} bps_out={} bps_limit={} calls={} stations={}\n",
        c.bps_in, c.bps_out, c.bps_limit, c.calls, c.stations
    ));
    out
}
