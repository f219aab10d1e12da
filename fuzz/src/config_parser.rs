//! Target `config_parser`: the relay's and control's `--config` TOML files.
//!
//! Both crates load a file through `Config::load(&Cli)` /
//! `Config::from_cli(&Cli)`, which merge defaults, the file, the
//! environment and flags and validate every key. Neither has an entry that
//! takes the merged text, so the input is written to a temporary file (one
//! per process, rewritten each run) and loaded through the real functions.
//!
//! Properties, for UTF-8 input:
//! - an `Ok` relay config has the documented invariants (timeout >= 60 s
//!   unless `allow_short_timeout`, then >= 1 s; buffers a power of two in
//!   8..=32768; sizes in range; burst and stats interval >= 1; cores not
//!   empty) and the values the file named (ports, timeout, callsign lists);
//! - an `Ok` control config has durations of at least 1 ms, rate >= 0,
//!   burst >= 1, batch_max >= 1, and the file's listen address;
//! - `Config::to_toml` (the `--check-config` output) written back as a file
//!   loads to the same config (what the operator reads is what runs).
//!
//! Control resolves `listen`, `metrics_listen` and `tls_listen` with
//! `to_socket_addrs`, which may ask DNS for a name: inputs where one of them
//! is not an `IP:PORT` literal (or empty / `off`) are parsed into
//! `FileConfig` only, never resolved.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use whelm_control::config as ccfg;
use whelm_control::dsn::DbTarget;

use whelm_relay::config as rcfg;
use whelm_shared::ovp::StationId;

struct Files {
    _dir: tempfile::TempDir,
    relay: PathBuf,
    control: PathBuf,
}

thread_local! {
    /// Per thread: the replay tests run targets on several threads.
    static FILES: Files = {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Files {
            relay: dir.path().join("relay.toml"),
            control: dir.path().join("control.toml"),
            _dir: dir,
        }
    };
}

fn relay_path() -> PathBuf {
    FILES.with(|f| f.relay.clone())
}

fn control_path() -> PathBuf {
    FILES.with(|f| f.control.clone())
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

/// `Result` with the error as text (the crates return `anyhow::Error`).
type Loaded<T> = Result<T, String>;

fn load_relay(text: &str) -> Loaded<rcfg::Config> {
    let path = relay_path();
    write(&path, text);
    let cli = rcfg::Cli {
        config: Some(path),
        ..rcfg::Cli::default()
    };
    rcfg::Config::load(&cli).map_err(|e| format!("{e:#}"))
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
    assert!(secs <= rcfg::MAX_TIMEOUT_SECS);
    let s = c.sizes;
    assert!(s.buffers.is_power_of_two() && (8..=32768).contains(&s.buffers));
    assert!((8..=32768).contains(&s.ring_entries));
    assert!((16..=65_535).contains(&s.send_slots));
    assert!((1..=1024).contains(&s.batch));
    assert_eq!(s.buffer_size, rcfg::BUFFER_SIZE);
    assert!(c.station_burst >= 1);
    assert!(c.stats_interval >= Duration::from_secs(1));
    assert!(c.bandwidth_mbps <= rcfg::MAX_BANDWIDTH_MBPS);
    assert!(!c.cores.is_empty(), "no cores");
    if let Some(a) = &c.allow {
        assert!(!a.is_empty(), "an empty allow list means none");
    }

    // The values the file named.
    let want_port = int(&t, "port").unwrap_or(i64::from(whelm_shared::ovp::DEFAULT_PORT));
    assert_eq!(i64::from(c.port), want_port);
    let want_voice = int(&t, "voice_port").unwrap_or(i64::from(rcfg::DEFAULT_VOICE_PORT));
    assert_eq!(i64::from(c.voice_port), want_voice);
    let want_timeout = int(&t, "timeout").unwrap_or(rcfg::DEFAULT_TIMEOUT_SECS as i64);
    assert_eq!(secs as i64, want_timeout);
    if let Some(b) = t.get("bind").and_then(Value::as_str) {
        assert_eq!(Ok(c.bind), b.trim().parse());
    }
    if let (Some(list), None) = (t.get("cores").and_then(Value::as_str), int(&t, "workers")) {
        assert_eq!(c.cores, rcfg::parse_cores(list).expect("cores parsed once"));
    }
    for (key, set) in [("allow", c.allow.clone()), ("deny", Some(c.deny.clone()))] {
        let Some(list) = calls(&t, key) else { continue };
        if list.is_empty() {
            continue;
        }
        let set = set.expect("a non-empty allow list is kept");
        assert!(set.len() <= list.len());
        for cs in &list {
            let id = StationId::encode(cs.trim()).expect("accepted callsign encodes");
            assert!(set.contains(&id), "{key} lost {cs:?}");
        }
    }

    // --check-config output, loaded again.
    let printed = c.to_toml();
    let again = load_relay(&printed)
        .unwrap_or_else(|e| panic!("--check-config output does not load: {e}\n{printed}"));
    same_relay(&c, &again, &printed);
}

fn same_relay(a: &rcfg::Config, b: &rcfg::Config, printed: &str) {
    let ctx = || format!("--check-config output:\n{printed}");
    assert_eq!(a.port, b.port, "{}", ctx());
    assert_eq!(a.voice_port, b.voice_port, "{}", ctx());
    assert_eq!(a.bind, b.bind, "{}", ctx());
    assert_eq!(a.timeout, b.timeout, "{}", ctx());
    assert_eq!(a.log, b.log, "{}", ctx());
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
    assert_eq!(a.metrics_listen, b.metrics_listen, "{}", ctx());
    let values = |c: &rcfg::Config| -> Vec<(String, Value)> {
        c.effective
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(values(a), values(b), "{}", ctx());
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

fn load_control(text: &str) -> Loaded<ccfg::Config> {
    let path = control_path();
    write(&path, text);
    ccfg::Config::from_cli(&control_cli(&path)).map_err(|e| format!("{e:#}"))
}

/// An address key control would resolve without DNS: absent, a literal
/// `IP:PORT`, or (`optional`) empty / `off`.
fn literal(t: &Table, key: &str, optional: bool) -> bool {
    match t.get(key) {
        None => true,
        Some(Value::String(s)) => {
            let s = s.trim();
            s.parse::<SocketAddr>().is_ok()
                || (optional && (s.is_empty() || s.eq_ignore_ascii_case("off")))
        }
        Some(_) => true, // refused before any lookup: not a string
    }
}

fn control(text: &str) {
    let Ok(t) = toml::from_str::<Table>(text) else {
        return;
    };
    if ccfg::FileConfig::parse(text).is_err() {
        return;
    }
    // No DNS from a fuzzer; no environment that overrides the file.
    if !literal(&t, "listen", false)
        || !literal(&t, "metrics_listen", true)
        || !literal(&t, "tls_listen", true)
        || std::env::var_os(ccfg::DSN_ENV).is_some()
    {
        return;
    }
    let Ok(c) = load_control(text) else { return };
    let m = &c.machine;
    for (name, d) in [
        ("heartbeat_timeout", m.heartbeat_timeout),
        ("heartbeat_check", m.heartbeat_check),
        ("ring_timeout", m.ring_timeout),
        ("auth_timeout", m.auth_timeout),
    ] {
        assert!(d >= Duration::from_millis(1), "{name} = {d:?} accepted");
        assert!(d < Duration::from_secs(1_000_000_000), "{name} = {d:?}");
        if let Some(v) = t
            .get(name)
            .and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)))
        {
            assert_eq!(d, Duration::from_secs_f64(v), "{name}");
        }
    }
    assert!(
        m.rate_per_sec.is_finite() && m.rate_per_sec >= 0.0,
        "rate {}",
        m.rate_per_sec
    );
    assert!(
        m.rate_burst.is_finite() && m.rate_burst >= 1.0,
        "burst {}",
        m.rate_burst
    );
    assert!(c.batch_max >= 1);
    if let Some(s) = c.summary_interval {
        assert!(s >= Duration::from_secs(1), "summary_interval {s:?}");
    }
    if let Some(Value::String(l)) = t.get("listen") {
        assert_eq!(Ok(c.listen), l.trim().parse::<SocketAddr>());
    }

    // --check-config output, loaded again.
    let mut printed = c.to_toml();
    // A MariaDB `db` is printed masked (password `***`, no parameters) by
    // design. Reload without it.
    let masked =
        matches!(&c.db, DbTarget::Mysql(d) if d.password.is_some() || !d.params.is_empty());
    if masked {
        printed = printed
            .lines()
            .filter(|l| !l.starts_with("db = "))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let again = load_control(&printed)
        .unwrap_or_else(|e| panic!("--check-config output does not load: {e}\n{printed}"));
    let ctx = || format!("--check-config output:\n{printed}");
    assert_eq!(
        format!("{:?}", c.machine),
        format!("{:?}", again.machine),
        "{}",
        ctx()
    );
    assert_eq!(
        format!("{:?}", c.net),
        format!("{:?}", again.net),
        "{}",
        ctx()
    );
    assert_eq!(c.listen, again.listen, "{}", ctx());
    assert_eq!(c.relay_socket, again.relay_socket, "{}", ctx());
    assert_eq!(c.batch_max, again.batch_max, "{}", ctx());
    assert_eq!(c.log, again.log, "{}", ctx());
    assert_eq!(c.metrics_listen, again.metrics_listen, "{}", ctx());
    assert_eq!(c.summary_interval, again.summary_interval, "{}", ctx());
    assert_eq!(
        format!("{:?}", c.tls),
        format!("{:?}", again.tls),
        "{}",
        ctx()
    );
    if printed.contains("\ndb = ") {
        assert_eq!(c.db, again.db, "{}", ctx());
    }
}
