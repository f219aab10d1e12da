#![allow(clippy::unwrap_used)]
//! Operations (issue 7) against the real binary on loopback, port 0:
//! `--check-config` and precedence, the Prometheus endpoint, systemd
//! notification (READY, WATCHDOG, STOPPING), reload by SIGHUP and by
//! `whelm-relay ctl reload`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ENGINES, Relay, Station, start, sync};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_whelm-relay")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn field(ready: &str, key: &str) -> SocketAddr {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {ready:?}"))
        .parse()
        .unwrap()
}

const ENV_KEYS: [&str; 6] = [
    "WHELM_RELAY_BIND",
    "WHELM_RELAY_CONTROL_SOCKET",
    "WHELM_METRICS_LISTEN",
    "WHELM_LOG",
    "RUST_LOG",
    "RUNTIME_DIRECTORY",
];

// ------------------------------------------------------------ check-config

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--check-config");
    for k in ENV_KEYS {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "bind = \"127.0.0.2\"\nstation_rate = 5\nbatch = 32\ndeny = [\"K0K\"]\n\
         control_socket = \"/run/file.sock\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let env = [
        ("WHELM_RELAY_BIND", "127.0.0.3"),
        ("WHELM_RELAY_CONTROL_SOCKET", "/run/env.sock"),
        ("WHELM_METRICS_LISTEN", "off"),
        ("WHELM_LOG", "debug"),
    ];
    let (ok, out, err) = check_config(&["--config", f, "--batch", "16"], &env);
    assert!(ok, "{err}");
    // Valid TOML, and a valid configuration file itself.
    let t: toml::Table = toml::from_str(&out).unwrap();
    whelm_relay::config::FileConfig::parse(&out).unwrap();
    let s = |k: &str| t[k].as_str().unwrap().to_owned();
    assert_eq!(s("bind"), "127.0.0.3"); // env over file
    assert_eq!(t["batch"].as_integer(), Some(16)); // flag over file
    assert_eq!(t["station_rate"].as_integer(), Some(5)); // file over default
    assert_eq!(t["buffers"].as_integer(), Some(4096)); // default
    assert_eq!(s("control_socket"), "/run/env.sock");
    assert_eq!(s("metrics_listen"), "off");
    assert_eq!(s("log"), "debug");
    assert!(
        out.contains("bind = \"127.0.0.3\"  # environment WHELM_RELAY_BIND"),
        "{out}"
    );
    assert!(out.contains("batch = 16  # flag"), "{out}");
    assert!(
        out.contains(&format!("station_rate = 5  # file {f}")),
        "{out}"
    );
    assert!(out.contains("buffers = 4096  # default"), "{out}");
    assert!(
        out.contains("log = \"debug\"  # environment WHELM_LOG"),
        "{out}"
    );

    // A flag beats the environment; -v sets log.
    let (ok, out, _) = check_config(&["--config", f, "--bind", "127.0.0.4", "-v"], &env);
    assert!(ok);
    assert!(out.contains("bind = \"127.0.0.4\"  # flag"), "{out}");
    assert!(out.contains("log = \"debug\"  # flag"), "{out}");
    // RUST_LOG is read when WHELM_LOG is unset.
    let (ok, out, _) = check_config(&[], &[("RUST_LOG", "warn")]);
    assert!(ok);
    assert!(
        out.contains("log = \"warn\"  # environment RUST_LOG"),
        "{out}"
    );
}

#[test]
fn check_config_refuses_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "station_rate = 5\nstation_rat = 3\n").unwrap();
    let (ok, out, err) = check_config(&["--config", f], &[]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("station_rat") && err.contains("unknown field"),
        "{err}"
    );

    std::fs::write(&file, "station_rate = -1\n").unwrap();
    let (ok, _, err) = check_config(&["--config", f], &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{f}: key \"station_rate\": value -1: must be between 0 and 1000000"
        )),
        "{err}"
    );
    std::fs::write(&file, "deny = [\"not a callsign!\"]\n").unwrap();
    let (ok, _, err) = check_config(&["--config", f], &[]);
    assert!(!ok);
    assert!(err.contains("key \"deny\""), "{err}");
    let (ok, _, err) = check_config(&[], &[("WHELM_METRICS_LISTEN", "no-port")]);
    assert!(!ok);
    assert!(
        err.contains("environment WHELM_METRICS_LISTEN: key \"metrics_listen\": value \"no-port\""),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--buffers", "1000"], &[]);
    assert!(!ok);
    assert!(
        err.contains("flag --buffers: key \"buffers\": value 1000: must be a power of two"),
        "{err}"
    );
}

#[test]
fn shipped_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/relay.toml");
    let (ok, out, err) = check_config(&["--config", example], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("station_rate = 100  # file"), "{out}");
}

// ------------------------------------------------------------ metrics

/// GET /metrics, parsed: every line is a comment or `name{labels} value`.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain"), "{head}");
    let mut m = HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.starts_with("whelm_relay_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(v.starts_with('"') && v.ends_with('"'), "{line:?}");
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            m.insert(series.to_owned(), v).is_none(),
            "duplicate {line:?}"
        );
    }
    m
}

fn metric(m: &HashMap<String, f64>, k: &str) -> f64 {
    *m.get(k).unwrap_or_else(|| panic!("no {k} in scrape"))
}

/// Sum over workers of the series `name{worker="..",<rest>}`.
fn sum(m: &HashMap<String, f64>, name: &str, rest: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{worker=")) && (rest.is_empty() || k.ends_with(rest))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_endpoint_counts_traffic_and_drops() {
    for engine in ENGINES {
        let Some(relay) = start(
            engine,
            &[
                "--reply-to",
                "source",
                "--workers",
                "1",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        ) else {
            continue;
        };
        // Existing fields unchanged; metrics appended.
        assert!(
            relay.ready_line.starts_with("whelm-relay ready: ovp="),
            "{}",
            relay.ready_line
        );
        assert!(relay.ready_line.contains(" workers=1 metrics="));
        let maddr = field(&relay.ready_line, "metrics=");
        assert_ne!(maddr.port(), 0);
        let m0 = scrape(maddr);
        assert_eq!(metric(&m0, "whelm_relay_workers"), 1.0);
        assert_eq!(
            metric(
                &m0,
                &format!(
                    "whelm_relay_worker_info{{worker=\"0\",core=\"{}\",engine=\"{engine}\"}}",
                    relay_core(&m0)
                )
            ),
            1.0
        );
        assert_eq!(
            metric(&m0, "whelm_relay_bandwidth_limit_bits_per_second"),
            100e6
        );
        assert_eq!(metric(&m0, "whelm_relay_active_stations"), 0.0);
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("KB5MU-11", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        for k in 0..10u8 {
            a.send(relay.ovp, &a.frame(&[0xEE, k]));
        }
        let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            junk.send_to(b"hello", relay.ovp).unwrap();
        }
        wait_for("metrics to move", || {
            let m = scrape(maddr);
            sum(&m, "whelm_relay_drops_total", "reason=\"too_short\"}") == 3.0
                && metric(&m, "whelm_relay_active_stations") == 2.0
                && sum(&m, "whelm_relay_forwarded_total", "kind=\"ovp\"}") >= 10.0
        });
        let m = scrape(maddr);
        let pin = metric(
            &m,
            "whelm_relay_packets_total{worker=\"0\",direction=\"in\"}",
        );
        let pout = metric(
            &m,
            "whelm_relay_packets_total{worker=\"0\",direction=\"out\"}",
        );
        assert!(pin >= 13.0, "{engine}: packets in {pin}");
        assert!(pout >= 10.0, "{engine}: packets out {pout}");
        assert!(metric(&m, "whelm_relay_bytes_total{worker=\"0\",direction=\"in\"}") > 0.0);
        assert!(metric(&m, "whelm_relay_worker_loops_total{worker=\"0\"}") > 0.0);
        assert!(metric(&m, "whelm_relay_batch_size_count{worker=\"0\"}") > 0.0);
        assert!(
            metric(&m, "whelm_relay_batch_size_sum{worker=\"0\"}")
                >= metric(&m, "whelm_relay_batch_size_count{worker=\"0\"}")
        );
        assert_eq!(
            metric(
                &m,
                "whelm_relay_drops_total{worker=\"0\",reason=\"denied\"}"
            ),
            0.0
        );
        let slots = metric(&m, "whelm_relay_send_slots{worker=\"0\"}");
        assert_eq!(
            slots > 0.0,
            engine == "uring",
            "{engine}: send slots {slots}"
        );
        assert!(metric(&m, "whelm_relay_send_slots_in_use{worker=\"0\"}") <= slots);
        relay.stop();
    }
}

fn relay_core(m: &HashMap<String, f64>) -> String {
    let k = m
        .keys()
        .find(|k| k.starts_with("whelm_relay_worker_info{worker=\"0\""))
        .unwrap();
    k.split("core=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

// ------------------------------------------------------------ sd_notify

#[test]
fn notify_ready_after_bind_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = Command::new(bin());
    for k in ENV_KEYS {
        cmd.env_remove(k);
    }
    let child = cmd
        .args(["--bind", "127.0.0.1", "-p", "0", "--voice-port", "0"])
        .args(["--engine", "mmsg", "--workers", "2", "--reply-to", "source"])
        .args(["--metrics-listen", "off", "--control-socket"])
        .arg(dir.path().join("relay.sock"))
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "500000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut l = String::new();
        let _ = r.read_line(&mut l);
        let _ = tx.send(l);
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let mut buf = [0u8; 4096];
    let mut recv = || {
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    loop {
        let msg = recv();
        assert!(!msg.contains("WATCHDOG=1"), "watchdog before READY");
        if msg.lines().any(|l| l == "READY=1") {
            assert!(msg.contains("STATUS=whelm-relay ready: ovp="), "{msg}");
            break;
        }
    }
    // READY=1 came after the sockets were bound: the OVP port forwards at once.
    let ready = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let ovp = field(&ready, "ovp=");
    let a = Station::bind("W1AW", "127.0.0.1:0");
    let b = Station::bind("K0K", "127.0.0.1:0");
    sync(&[&a, &b], ovp);

    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1600) {
        if recv().lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        pings >= 3,
        "only {pings} WATCHDOG=1 in 1.6 s (period 0.5 s)"
    );

    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no STOPPING=1");
        if recv().lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
    let st = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{st:?}");
}

// ------------------------------------------------------------ reload

fn sighup(r: &Relay) {
    let pid = nix::unistd::Pid::from_raw(r.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

fn ctl_reload(r: &Relay) -> std::process::Output {
    Command::new(bin())
        .arg("ctl")
        .arg("--socket")
        .arg(&r.socket)
        .arg("reload")
        .output()
        .unwrap()
}

/// True when `to` receives `from`'s next frame within a short wait.
fn flows(from: &Station, to: &Station, relay: SocketAddr, tag: u8) -> bool {
    let f = from.frame(&[0xAB, tag]);
    from.send(relay, &f);
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        match to.recv(Duration::from_millis(100)) {
            Some(g) if g == f => return true,
            _ => {}
        }
    }
    false
}

#[test]
fn reload_by_sighup_and_ctl_applies_lists_and_refuses_bad_files() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "stats_interval = 60\n").unwrap();
        let Some(relay) = start(
            engine,
            &[
                "--config",
                file.to_str().unwrap(),
                "--reply-to",
                "source",
                "--workers",
                "1",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        ) else {
            continue;
        };
        let maddr = field(&relay.ready_line, "metrics=");
        let reloads = |r: &str| {
            metric(
                &scrape(maddr),
                &format!("whelm_relay_config_reloads_total{{result=\"{r}\"}}"),
            )
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("KB5MU-11", "127.0.0.1:0");
        let c = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b, &c], relay.ovp);
        assert!(flows(&c, &a, relay.ovp, 1), "{engine}: before the reload");

        // SIGHUP with K0K on the deny list: its frames are dropped, the
        // others still flow.
        std::fs::write(&file, "stats_interval = 60\ndeny = [\"K0K\"]\n").unwrap();
        sighup(&relay);
        wait_for("the reload", || reloads("ok") == 1.0);
        assert!(
            !flows(&c, &a, relay.ovp, 2),
            "{engine}: denied frame forwarded"
        );
        assert!(flows(&a, &b, relay.ovp, 3), "{engine}: others stopped");
        assert!(relay.stderr().contains("configuration reloaded"));
        let m = scrape(maddr);
        assert!(
            metric(
                &m,
                "whelm_relay_drops_total{worker=\"0\",reason=\"denied\"}"
            ) >= 1.0
        );
        assert_eq!(metric(&m, "whelm_relay_active_stations"), 3.0);

        // A bad file is refused whole: the deny list stays.
        std::fs::write(&file, "deny = []\nstation_rate = -1\n").unwrap();
        sighup(&relay);
        wait_for("the refused reload", || reloads("error") == 1.0);
        assert!(!flows(&c, &a, relay.ovp, 4), "{engine}: bad reload applied");
        let err = relay.stderr();
        assert!(
            err.contains("configuration reload refused")
                && err.contains("key \"station_rate\": value -1"),
            "{err}"
        );

        // ctl reload: a bad file -> non-zero exit with the error.
        let o = ctl_reload(&relay);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("key \"station_rate\": value -1"), "{e}");
        assert_eq!(reloads("error"), 2.0);
        assert!(!flows(&c, &a, relay.ovp, 5));

        // ctl reload: a good file -> prints what changed (and the key that
        // needs a restart), K0K flows again.
        std::fs::write(&file, "stats_interval = 30\ndeny = []\nbatch = 8\n").unwrap();
        let o = ctl_reload(&relay);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("deny: [\"K0K\"] -> []"), "{out}");
        assert!(out.contains("stats_interval: 60 -> 30"), "{out}");
        assert!(
            out.contains("needing a restart") && out.contains("batch: 64 -> 8"),
            "{out}"
        );
        assert!(flows(&c, &a, relay.ovp, 6), "{engine}: not allowed again");
        assert_eq!(reloads("ok"), 2.0);
        // Stations were untouched throughout.
        assert_eq!(metric(&scrape(maddr), "whelm_relay_active_stations"), 3.0);
        let err = relay.stop();
        assert!(!err.contains("STATION TIMED OUT"), "{err}");
    }
}

/// `comm` and `Cpus_allowed_list` of every thread of `pid`.
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), cpus));
    }
    out
}

/// With a spare core, the coordinator, the command channel and the main
/// thread run off the worker's core (`taskset -p` on each thread shows
/// it), the worker stays on its own, and a reload still accepts the
/// worker core it was started with.
#[test]
fn housekeeping_threads_leave_the_worker_cores() {
    let cpus = whelm_relay::config::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!("NOTICE: one allowed CPU, nothing to move housekeeping to; skipped");
        return;
    }
    let worker = cpus[0].to_string();
    let rest = cpus[1..]
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--cores", &worker]) else {
            continue;
        };
        let threads = thread_cpus(relay.pid());
        let of = |name: &str| {
            threads
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, cpus)| cpus.clone())
                .unwrap_or_else(|| panic!("{engine}: no thread {name}: {threads:?}"))
        };
        assert_eq!(of("relay-w0"), worker, "{engine}: {threads:?}");
        // The kernel prints ranges ("1-3"); compare as sets.
        let set = |list: String| {
            let mut v = whelm_relay::config::parse_cores(&list).unwrap();
            v.sort_unstable();
            v
        };
        let expected = set(rest.clone());
        for name in ["whelm-relay", "relay-coord", "relay-cmd"] {
            assert_eq!(set(of(name)), expected, "{engine} {name}: {threads:?}");
        }
        let out = ctl_reload(&relay);
        assert!(
            out.status.success(),
            "{engine}: reload refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        relay.stop();
    }
}

/// A second relay on the ports of a running one does not start (the
/// workers' `SO_REUSEPORT` would otherwise have let it join the first
/// one's sockets and take part of their traffic), and the first one keeps
/// forwarding.
#[test]
fn a_second_relay_on_the_same_port_is_refused() {
    let Some(first) = start("mmsg", &["--reply-to", "source"]) else {
        return;
    };
    for (flag, port) in [
        ("-p", first.ovp.port()),
        ("--voice-port", first.voice.port()),
    ] {
        let other = if flag == "-p" { "--voice-port" } else { "-p" };
        let args = [
            "--bind",
            "127.0.0.1",
            flag,
            &port.to_string(),
            other,
            "0",
            "--engine",
            "mmsg",
        ];
        match common::try_start(&args) {
            common::Start::Ok(r) => panic!("second relay started: {}", r.ready_line),
            common::Start::Failed(code, err) => {
                assert_ne!(code, Some(0), "{err}");
                assert!(
                    err.contains(&format!(
                        "UDP 127.0.0.1:{port} is in use by another socket (another whelm-relay running?)"
                    )),
                    "{err}"
                );
            }
        }
    }
    let a = Station::bind("W1AW", "127.0.0.1:0");
    let b = Station::bind("K0K", "127.0.0.1:0");
    sync(&[&a, &b], first.ovp);
}
