//! Target `config_parser`: the relay's and control's `--config` TOML files.
//!
//! Neither crate has an entry point that takes the TOML text: the relay's
//! `FileConfig` is private and `Config::load` reads the path in `Cli`, and
//! control's `Config::from_cli` does the same. So the input is written to a
//! temporary file (one per process, rewritten each run) and loaded through
//! the real functions. Control's `FileConfig` is public, so it is also
//! parsed from the string directly.
//!
//! Properties, for UTF-8 input:
//! - an `Ok` relay config has the documented invariants (timeout >= 60 s
//!   unless `allow_short_timeout`, then >= 1 s; buffers a power of two in
//!   8..=32768; sizes clamped; burst and stats interval >= 1; cores not
//!   empty) and the values the file named (ports, timeout, callsign lists);
//! - an `Ok` control config has positive finite durations equal to the
//!   file's seconds, rate >= 0, burst >= 1, batch_max >= 1, and the file's
//!   listen address and store;
//! - printing either resolved config back as TOML and loading that gives
//!   the same config (idempotence: what the operator reads is what runs).
//!
//! Control's `listen` is resolved with `to_socket_addrs`, which may ask DNS
//! for a name: inputs whose `listen` is not an `IP:PORT` literal are only
//! parsed into `FileConfig`, never resolved.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use toml::{Table, Value};

use crate::known::{self, Bug};
use whelm_control::config as ccfg;
use whelm_relay::config as rcfg;
use whelm_relay::core::ReplyTo;
use whelm_shared::ovp::StationId;

struct Files {
    _dir: tempfile::TempDir,
    relay: PathBuf,
    control: PathBuf,
}

fn files() -> &'static Files {
    static F: OnceLock<Files> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Files {
            relay: dir.path().join("relay.toml"),
            control: dir.path().join("control.toml"),
            _dir: dir,
        }
    })
}

fn write(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create the config file");
    f.write_all(text.as_bytes()).expect("write the config file");
}

/// The target body.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    relay(text);
    control(text);
}

// ---------------------------------------------------------------- relay

fn load_relay(text: &str) -> anyhow_like::Result<rcfg::Config> {
    let path = &files().relay;
    write(path, text);
    let cli = rcfg::Cli {
        config: Some(path.clone()),
        ..rcfg::Cli::default()
    };
    rcfg::Config::load(&cli).map_err(|e| format!("{e:#}"))
}

/// `Result` with the error as text (the crates return `anyhow::Error`).
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, String>;
}

fn int(t: &Table, key: &str) -> Option<i64> {
    t.get(key).and_then(Value::as_integer)
}

fn calls(t: &Table, key: &str) -> Option<Vec<String>> {
    t.get(key).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

fn relay(text: &str) {
    let Ok(c) = load_relay(text) else { return };
    let t: Table = toml::from_str(text).expect("a file the relay loaded is TOML");

    // Documented invariants.
    let short_ok = t
        .get("allow_short_timeout")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let secs = c.timeout.as_secs();
    assert_eq!(c.timeout, Duration::from_secs(secs));
    assert!(
        secs >= rcfg::MIN_TIMEOUT_SECS || (short_ok && secs >= 1),
        "timeout {secs} accepted (allow_short_timeout {short_ok})"
    );
    let s = c.sizes;
    assert!(s.buffers.is_power_of_two() && (8..=32768).contains(&s.buffers));
    assert!(s.ring_entries >= 8);
    assert!((16..=65_535).contains(&s.send_slots));
    assert!((1..=1024).contains(&s.batch));
    assert_eq!(s.buffer_size, rcfg::BUFFER_SIZE);
    assert!(c.station_burst >= 1);
    assert!(c.stats_interval >= Duration::from_secs(1));
    assert!(!c.cores.is_empty(), "no cores");

    // The values the file named.
    let want_port = int(&t, "port").unwrap_or(i64::from(whelm_shared::ovp::DEFAULT_PORT));
    assert_eq!(i64::from(c.port), want_port);
    let want_voice = int(&t, "voice_port").unwrap_or(i64::from(rcfg::DEFAULT_VOICE_PORT));
    assert_eq!(i64::from(c.voice_port), want_voice);
    let want_timeout = int(&t, "timeout").unwrap_or(rcfg::DEFAULT_TIMEOUT_SECS as i64);
    assert_eq!(secs as i64, want_timeout);
    if let Some(b) = t.get("bind").and_then(Value::as_str) {
        assert_eq!(Ok(c.bind), b.parse());
    }
    if let Some(list) = t.get("cores").and_then(Value::as_str) {
        assert_eq!(c.cores, rcfg::parse_cores(list).expect("cores parsed once"));
    }
    for (key, set) in [("allow", c.allow.clone()), ("deny", Some(c.deny.clone()))] {
        if let Some(list) = calls(&t, key) {
            let set = set.expect("allow given");
            assert!(set.len() <= list.len());
            for cs in &list {
                let id = StationId::encode(cs.trim()).expect("accepted callsign encodes");
                assert!(set.contains(&id), "{key} lost {cs:?}");
            }
        }
    }
    if t.get("allow").is_none() {
        assert!(c.allow.is_none());
    }

    // Print, reload, compare.
    let printed = print_relay(&c);
    let again = load_relay(&printed)
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    same_relay(&c, &again, &printed);
}

fn ids(set: &HashSet<StationId>) -> Value {
    let mut v: Vec<String> = set.iter().map(|id| id.to_string()).collect();
    v.sort();
    Value::Array(v.into_iter().map(Value::String).collect())
}

fn i(v: impl TryInto<i64>) -> Value {
    Value::Integer(v.try_into().unwrap_or_else(|_| panic!("value over i64")))
}

/// The resolved relay config as a TOML file.
pub fn print_relay(c: &rcfg::Config) -> String {
    let mut t = Table::new();
    t.insert("port".into(), i(c.port));
    t.insert("voice_port".into(), i(c.voice_port));
    t.insert("bind".into(), Value::String(c.bind.to_string()));
    t.insert("timeout".into(), i(c.timeout.as_secs()));
    if c.timeout.as_secs() < rcfg::MIN_TIMEOUT_SECS {
        t.insert("allow_short_timeout".into(), Value::Boolean(true));
    }
    t.insert("verbose".into(), Value::Boolean(c.verbose));
    let reply_to = match c.reply_to {
        ReplyTo::ListenPort => "listen-port",
        ReplyTo::Source => "source",
    };
    t.insert("reply_to".into(), Value::String(reply_to.into()));
    let engine = match c.engine {
        rcfg::EngineChoice::Auto => "auto",
        rcfg::EngineChoice::Uring => "uring",
        rcfg::EngineChoice::Mmsg => "mmsg",
    };
    t.insert("engine".into(), Value::String(engine.into()));
    let cores: Vec<String> = c.cores.iter().map(usize::to_string).collect();
    t.insert("cores".into(), Value::String(cores.join(",")));
    if c.control_socket_explicit {
        let p = c
            .control_socket
            .to_str()
            .expect("UTF-8 path from UTF-8 input");
        t.insert("control_socket".into(), Value::String(p.into()));
    }
    if let Some(g) = c.control_socket_group {
        t.insert("control_socket_group".into(), Value::String(g.to_string()));
    }
    t.insert(
        "control_uids".into(),
        Value::Array(c.control_uids.iter().map(|&u| i(u)).collect()),
    );
    t.insert(
        "control_gids".into(),
        Value::Array(c.control_gids.iter().map(|&u| i(u)).collect()),
    );
    t.insert("bandwidth_mbps".into(), i(c.bandwidth_mbps));
    t.insert("station_rate".into(), i(c.station_rate));
    t.insert("station_burst".into(), i(c.station_burst));
    if let Some(a) = &c.allow {
        t.insert("allow".into(), ids(a));
    }
    t.insert("deny".into(), ids(&c.deny));
    t.insert("stats_interval".into(), i(c.stats_interval.as_secs()));
    t.insert("ring_entries".into(), i(c.sizes.ring_entries));
    t.insert("buffers".into(), i(c.sizes.buffers));
    t.insert("send_slots".into(), i(c.sizes.send_slots));
    t.insert("batch".into(), i(c.sizes.batch));
    toml::to_string(&t).expect("a table of strings and integers prints")
}

fn same_relay(a: &rcfg::Config, b: &rcfg::Config, printed: &str) {
    let ctx = || format!("printed:\n{printed}");
    assert_eq!(a.port, b.port, "{}", ctx());
    assert_eq!(a.voice_port, b.voice_port, "{}", ctx());
    assert_eq!(a.bind, b.bind, "{}", ctx());
    assert_eq!(a.timeout, b.timeout, "{}", ctx());
    assert_eq!(a.verbose, b.verbose, "{}", ctx());
    assert_eq!(a.reply_to, b.reply_to, "{}", ctx());
    assert_eq!(a.engine, b.engine, "{}", ctx());
    assert_eq!(a.cores, b.cores, "{}", ctx());
    assert_eq!(a.control_socket, b.control_socket, "{}", ctx());
    assert_eq!(
        a.control_socket_explicit,
        b.control_socket_explicit,
        "{}",
        ctx()
    );
    assert_eq!(a.control_socket_group, b.control_socket_group, "{}", ctx());
    assert_eq!(a.control_uids, b.control_uids, "{}", ctx());
    assert_eq!(a.control_gids, b.control_gids, "{}", ctx());
    assert_eq!(a.bandwidth_mbps, b.bandwidth_mbps, "{}", ctx());
    assert_eq!(a.station_rate, b.station_rate, "{}", ctx());
    assert_eq!(a.station_burst, b.station_burst, "{}", ctx());
    assert_eq!(a.allow, b.allow, "{}", ctx());
    assert_eq!(a.deny, b.deny, "{}", ctx());
    assert_eq!(a.stats_interval, b.stats_interval, "{}", ctx());
    assert_eq!(a.sizes.ring_entries, b.sizes.ring_entries, "{}", ctx());
    assert_eq!(a.sizes.buffers, b.sizes.buffers, "{}", ctx());
    assert_eq!(a.sizes.send_slots, b.sizes.send_slots, "{}", ctx());
    assert_eq!(a.sizes.batch, b.sizes.batch, "{}", ctx());
}

// -------------------------------------------------------------- control

fn control_cli(path: &Path) -> whelm_control::cli::Cli {
    // Through clap rather than a struct literal, so new flags do not break
    // this crate.
    use clap::Parser;
    whelm_control::cli::Cli::try_parse_from([
        std::ffi::OsStr::new("whelm-control"),
        std::ffi::OsStr::new("--config"),
        path.as_os_str(),
    ])
    .expect("--config FILE parses")
}

fn load_control(text: &str) -> anyhow_like::Result<ccfg::Config> {
    let path = &files().control;
    write(path, text);
    ccfg::Config::from_cli(&control_cli(path)).map_err(|e| format!("{e:#}"))
}

/// Durations equal up to the rounding of seconds as `f64`.
fn close(a: Duration, b: Duration) -> bool {
    let (x, y) = (a.as_secs_f64(), b.as_secs_f64());
    (x - y).abs() <= 1e-9 + x.abs() * 4.0 * f64::EPSILON
}

fn control(text: &str) {
    let Ok(file) = toml::from_str::<ccfg::FileConfig>(text) else {
        return;
    };
    // Resolve only literal addresses (no DNS from a fuzzer), and only
    // without a DSN in the environment (it overrides the file's db).
    let listen_literal = match &file.listen {
        None => true,
        Some(l) => l.parse::<SocketAddr>().is_ok(),
    };
    if !listen_literal || std::env::var_os(ccfg::DSN_ENV).is_some() {
        return;
    }
    let Ok(c) = load_control(text) else { return };
    let d = whelm_control::machine::MachineConfig::default();
    let m = &c.machine;
    let durations = [
        m.heartbeat_timeout,
        m.heartbeat_check,
        m.ring_timeout,
        m.auth_timeout,
    ];
    if durations.contains(&Duration::ZERO) && known::skip(Bug::SubNanosecond) {
        return;
    }
    for (name, got, file_v, def) in [
        (
            "heartbeat_timeout",
            m.heartbeat_timeout,
            file.heartbeat_timeout,
            d.heartbeat_timeout,
        ),
        (
            "heartbeat_check",
            m.heartbeat_check,
            file.heartbeat_check,
            d.heartbeat_check,
        ),
        (
            "ring_timeout",
            m.ring_timeout,
            file.ring_timeout,
            d.ring_timeout,
        ),
        (
            "auth_timeout",
            m.auth_timeout,
            file.auth_timeout,
            d.auth_timeout,
        ),
    ] {
        assert!(got > Duration::ZERO, "{name} is zero");
        match file_v {
            Some(v) => {
                assert!(v.is_finite() && v > 0.0, "{name} = {v} accepted");
                assert!(
                    close(got, Duration::from_secs_f64(v)),
                    "{name}: {got:?} vs {v}"
                );
            }
            None => assert_eq!(got, def, "{name} default"),
        }
    }
    assert!(m.rate_per_sec >= 0.0, "rate {}", m.rate_per_sec);
    assert!(m.rate_burst >= 1.0, "burst {}", m.rate_burst);
    assert!(c.batch_max >= 1);
    assert_eq!(c.batch_max, file.batch_max.unwrap_or(512).max(1));
    assert_eq!(m.max_calls, file.max_calls.unwrap_or(d.max_calls));
    assert_eq!(
        c.net.max_connections,
        file.max_connections.unwrap_or(20_000)
    );
    assert_eq!(c.net.max_per_ip, file.max_conns_per_ip.unwrap_or(256));
    assert_eq!(c.net.max_outbuf, file.max_outbuf.unwrap_or(1 << 20));
    let want_listen: SocketAddr = file
        .listen
        .as_deref()
        .unwrap_or("0.0.0.0:5000")
        .parse()
        .expect("checked above");
    assert_eq!(c.listen, want_listen);
    let db = file.db.as_deref().unwrap_or("whelm.db");
    assert_eq!(
        Ok(c.db.clone()),
        whelm_control::dsn::DbTarget::from_db_arg(db),
        "db {db:?}"
    );
    assert_eq!(c.relay_socket, file.relay_socket);

    // Print, reload, compare.
    let printed = print_control(&c, file.db.as_deref());
    let again = load_control(&printed)
        .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
    let (a, b) = (&c.machine, &again.machine);
    assert!(close(a.heartbeat_timeout, b.heartbeat_timeout), "{printed}");
    assert!(close(a.heartbeat_check, b.heartbeat_check), "{printed}");
    assert!(close(a.ring_timeout, b.ring_timeout), "{printed}");
    assert!(close(a.auth_timeout, b.auth_timeout), "{printed}");
    assert_eq!(a.max_calls, b.max_calls);
    assert_eq!(
        a.rate_per_sec.to_bits(),
        b.rate_per_sec.to_bits(),
        "{printed}"
    );
    assert_eq!(a.rate_burst.to_bits(), b.rate_burst.to_bits(), "{printed}");
    assert_eq!(c.listen, again.listen);
    assert_eq!(c.db, again.db);
    assert_eq!(c.relay_socket, again.relay_socket);
    assert_eq!(c.net.max_connections, again.net.max_connections);
    assert_eq!(c.net.max_per_ip, again.net.max_per_ip);
    assert_eq!(c.net.max_outbuf, again.net.max_outbuf);
    assert_eq!(c.batch_max, again.batch_max);
}

/// The resolved control config as a TOML file (`db` as the file gave it:
/// the resolved form masks the password).
pub fn print_control(c: &ccfg::Config, db: Option<&str>) -> String {
    let m = &c.machine;
    let mut t = Table::new();
    t.insert("listen".into(), Value::String(c.listen.to_string()));
    if let Some(db) = db {
        t.insert("db".into(), Value::String(db.into()));
    }
    if let Some(p) = &c.relay_socket {
        let p = p.to_str().expect("UTF-8 path from UTF-8 input");
        t.insert("relay_socket".into(), Value::String(p.into()));
    }
    let f = |d: Duration| Value::Float(d.as_secs_f64());
    t.insert("heartbeat_timeout".into(), f(m.heartbeat_timeout));
    t.insert("heartbeat_check".into(), f(m.heartbeat_check));
    t.insert("ring_timeout".into(), f(m.ring_timeout));
    t.insert("auth_timeout".into(), f(m.auth_timeout));
    t.insert("max_calls".into(), i(m.max_calls));
    t.insert("max_connections".into(), i(c.net.max_connections));
    t.insert("max_conns_per_ip".into(), i(c.net.max_per_ip));
    t.insert("rate_limit".into(), Value::Float(m.rate_per_sec));
    t.insert("rate_burst".into(), Value::Float(m.rate_burst));
    t.insert("batch_max".into(), i(c.batch_max));
    t.insert("max_outbuf".into(), i(c.net.max_outbuf));
    toml::to_string(&t).expect("a table of strings and numbers prints")
}
