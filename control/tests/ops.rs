//! Operations (issue 7) against the real binary on loopback, port 0:
//! `--check-config` and precedence, the Prometheus endpoint, systemd
//! notification (READY, WATCHDOG, STOPPING), SIGHUP reload and the TLS
//! listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, add_user, bin, temp_db};

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

fn sighup(s: &Server) {
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

// ------------------------------------------------------------ check-config

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("--check-config");
    for k in [
        "WHELM_DB_DSN",
        "WHELM_CONTROL_LISTEN",
        "WHELM_RELAY_SOCKET",
        "WHELM_METRICS_LISTEN",
        "WHELM_LOG",
        "RUST_LOG",
    ] {
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
fn check_config_precedence_and_masking() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\nmax_calls = 5\nring_timeout = 20\n\
         relay_socket = \"/run/file.sock\"\nlog = \"debug\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let env = [
        ("WHELM_DB_DSN", "whelm:s3cret@tcp(db.example:3306)/whelm"),
        ("WHELM_CONTROL_LISTEN", "127.0.0.1:7001"),
        ("WHELM_RELAY_SOCKET", "/run/env.sock"),
        ("WHELM_METRICS_LISTEN", "off"),
    ];
    let (ok, out, err) = check_config(&["--config", f, "--max-calls", "9"], &env);
    assert!(ok, "{err}");
    assert!(!out.contains("s3cret"), "{out}");
    // The output is valid TOML and a valid configuration file itself.
    let t: toml::Table = toml::from_str(&out).unwrap();
    whelm_control::config::FileConfig::parse(&out).unwrap();
    let s = |k: &str| t[k].as_str().unwrap().to_owned();
    assert_eq!(s("listen"), "127.0.0.1:7001"); // env over file
    assert_eq!(t["max_calls"].as_integer(), Some(9)); // flag over file
    assert_eq!(t["ring_timeout"].as_float(), Some(20.0)); // file over default
    assert_eq!(t["heartbeat_timeout"].as_float(), Some(30.0)); // default
    assert_eq!(s("relay_socket"), "/run/env.sock");
    assert_eq!(s("metrics_listen"), "off");
    assert_eq!(s("log"), "debug");
    assert_eq!(s("db"), "mysql://whelm:***@db.example:3306/whelm");
    assert!(
        out.contains("listen = \"127.0.0.1:7001\"  # environment WHELM_CONTROL_LISTEN"),
        "{out}"
    );
    assert!(out.contains("max_calls = 9  # flag"), "{out}");
    assert!(
        out.contains(&format!("ring_timeout = 20.0  # file {f}")),
        "{out}"
    );

    // A flag beats the environment.
    let (ok, out, _) = check_config(&["--config", f, "--listen", "127.0.0.1:7002"], &env);
    assert!(ok);
    assert!(out.contains("listen = \"127.0.0.1:7002\"  # flag"), "{out}");
}

#[test]
fn check_config_refuses_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "max_calls = 5\nmax_call = 3\n").unwrap();
    let (ok, _, err) = check_config(&["--config", f], &[]);
    assert!(!ok);
    assert!(
        err.contains("max_call") && err.contains("unknown field"),
        "{err}"
    );

    std::fs::write(&file, "heartbeat_timeout = -3\n").unwrap();
    let (ok, _, err) = check_config(&["--config", f], &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{f}: key \"heartbeat_timeout\": value -3: must be a positive number of seconds"
        )),
        "{err}"
    );
    let (ok, _, err) = check_config(&[], &[("WHELM_CONTROL_LISTEN", "no-port")]);
    assert!(!ok);
    assert!(
        err.contains("environment WHELM_CONTROL_LISTEN: key \"listen\": value \"no-port\""),
        "{err}"
    );
    // An empty --db would be an SQLite database that is gone at exit.
    let (ok, _, err) = check_config(&["--db", ""], &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid --db \"\": empty: give an SQLite file or a MariaDB DSN"),
        "{err}"
    );
}

#[test]
fn shipped_example_config_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/control.toml");
    let (ok, out, err) = check_config(&["--config", example], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("max_calls = 400"), "{out}");
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
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"));
    assert!(head.contains("text/plain"), "{head}");
    let mut m = HashMap::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
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

#[test]
fn metrics_endpoint_counts_sessions_messages_and_calls() {
    let (_dir, path) = temp_db();
    let db = path.to_str().unwrap();
    let ta = add_user(db, "alice");
    let tb = add_user(db, "bob");
    let s = Server::start(db, &["--metrics-listen", "127.0.0.1:0"]);
    assert!(s.ready_line.contains(" relay="), "{}", s.ready_line);
    let maddr = field(&s.ready_line, "metrics=");
    assert_ne!(maddr.port(), 0);
    let m0 = scrape(maddr);
    assert_eq!(metric(&m0, "whelm_control_sessions"), 0.0);
    assert_eq!(metric(&m0, "whelm_control_relay_link_up"), 0.0);
    assert_eq!(metric(&m0, "whelm_control_call_limit"), 400.0);

    let mut a = s.client();
    let mut b = s.client();
    let _ida = a.auth(&ta, "alice");
    let idb = b.auth(&tb, "bob");
    a.send(&format!("MSG {idb} hello"));
    a.expect("OK MSG");
    assert!(b.line().starts_with("MSG {"));
    a.send(&format!("CALL {idb}"));
    a.expect(&format!("OK CALLING {idb}"));
    assert!(b.line().starts_with("INCOMING "));

    wait_for("metrics to move", || {
        let m = scrape(maddr);
        metric(&m, "whelm_control_users_authenticated") == 2.0
            && metric(&m, "whelm_control_calls{state=\"ringing\"}") == 1.0
            && metric(&m, "whelm_control_messages_delivered_total") == 1.0
    });
    let m = scrape(maddr);
    assert_eq!(metric(&m, "whelm_control_sessions"), 2.0);
    assert_eq!(metric(&m, "whelm_control_calls{state=\"active\"}"), 0.0);
    assert_eq!(metric(&m, "whelm_control_calls_offered_total"), 1.0);
    assert_eq!(metric(&m, "whelm_control_messages_stored_total"), 1.0);
    assert_eq!(
        metric(
            &m,
            "whelm_control_connections_accepted_total{transport=\"tcp\"}"
        ),
        2.0
    );
    assert!(metric(&m, "whelm_control_store_transaction_seconds_count") >= 2.0);
    assert_eq!(
        metric(
            &m,
            "whelm_control_store_transaction_seconds_bucket{le=\"+Inf\"}"
        ),
        metric(&m, "whelm_control_store_transaction_seconds_count")
    );
    assert_eq!(metric(&m, "whelm_control_store_errors_total"), 0.0);
}

// ------------------------------------------------------------ sd_notify

#[test]
fn notify_ready_after_bind_watchdog_and_stopping() {
    let (dir, path) = temp_db();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--db", path.to_str().unwrap()])
        .env_remove("WHELM_DB_DSN")
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
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
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
        let n = sock.recv(&mut buf).expect("no notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let mut before = Vec::new();
    loop {
        let msg = recv();
        if msg.lines().any(|l| l == "READY=1") {
            break;
        }
        assert!(!msg.contains("WATCHDOG=1"), "watchdog before READY");
        before.push(msg);
    }
    // READY=1 came after the listener was bound: it accepts right away.
    let ready = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let addr = field(&ready, "listen=");
    let mut c = common::Client::connect(addr);
    c.send("HEARTBEAT");
    c.expect("ERROR Not authenticated");

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

#[test]
fn sighup_reloads_limits_and_keeps_calls() {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap();
    let names = ["alice", "bob", "carol", "dave"];
    let tokens: Vec<String> = names.iter().map(|n| add_user(db, n)).collect();
    let file = dir.path().join("control.toml");
    std::fs::write(&file, "max_calls = 10\n").unwrap();
    let s = Server::start(
        db,
        &[
            "--config",
            file.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let maddr = field(&s.ready_line, "metrics=");
    let mut cl: Vec<_> = (0..4).map(|_| s.client()).collect();
    let ids: Vec<u64> = (0..4).map(|i| cl[i].auth(&tokens[i], names[i])).collect();
    cl[0].send(&format!("CALL {}", ids[1]));
    cl[0].expect(&format!("OK CALLING {}", ids[1]));
    assert!(cl[1].line().starts_with("INCOMING "));
    cl[1].send(&format!("ACCEPT {}", ids[0]));
    cl[1].expect(&format!("START_CALL {} alice", ids[0]));
    cl[0].expect(&format!("START_CALL {} bob", ids[1]));

    // A reload with an error is refused whole.
    std::fs::write(&file, "max_calls = 1\nheartbeat_timeout = -1\n").unwrap();
    sighup(&s);
    wait_for("the refused reload", || {
        metric(
            &scrape(maddr),
            "whelm_control_config_reloads_total{result=\"error\"}",
        ) == 1.0
    });
    assert_eq!(metric(&scrape(maddr), "whelm_control_call_limit"), 10.0);

    std::fs::write(&file, "max_calls = 1\n").unwrap();
    sighup(&s);
    wait_for("the new call limit", || {
        metric(&scrape(maddr), "whelm_control_call_limit") == 1.0
    });
    cl[2].send(&format!("CALL {}", ids[3]));
    cl[2].expect("ERROR Server at capacity, try again later");
    // The call in progress is untouched.
    cl[0].send("HEARTBEAT");
    cl[0].expect("OK HEARTBEAT");
    cl[0].send("HANGUP");
    cl[0].expect("OK HANGUP");
    cl[1].expect(&format!("HANGUP {}", ids[0]));
    // Now there is room again under the new limit.
    cl[2].send(&format!("CALL {}", ids[3]));
    cl[2].expect(&format!("OK CALLING {}", ids[3]));
}

// ------------------------------------------------------------ TLS

struct TlsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, ca_pem: &str) -> TlsClient {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        TlsClient {
            s: rustls::StreamOwned::new(conn, sock),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        self.s.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.s.flush().unwrap();
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8(l).unwrap().trim_end().to_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("TLS read");
            assert!(n > 0, "TLS connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn tls_listener_walks_auth_and_msg_with_a_plain_client() {
    let (dir, path) = temp_db();
    let db = path.to_str().unwrap();
    let ta = add_user(db, "alice");
    let tb = add_user(db, "bob");
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let s = Server::start(
        db,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let taddr = field(&s.ready_line, "tls=");
    assert_ne!(taddr.port(), 0);
    assert!(s.ready_line.starts_with("whelm-control ready: listen="));

    let mut t = TlsClient::connect(taddr, &ck.cert.pem());
    t.send("HEARTBEAT");
    assert_eq!(t.line(), "ERROR Not authenticated");
    t.send(&format!("AUTH {ta}"));
    let ok = t.line();
    assert!(ok.starts_with("OK AUTH ") && ok.ends_with(" alice"), "{ok}");
    let ida: u64 = ok.split(' ').nth(2).unwrap().parse().unwrap();
    let mut p = s.client();
    let idb = p.auth(&tb, "bob");

    t.send(&format!("MSG {idb} over tls"));
    assert_eq!(t.line(), "OK MSG");
    let m = p.line();
    let json: serde_json::Value = serde_json::from_str(m.strip_prefix("MSG ").unwrap()).unwrap();
    assert_eq!(json["sender_id"], ida);
    assert_eq!(json["recipient_id"], idb);
    assert_eq!(json["content"], "over tls");

    p.send(&format!("MSG {ida} back in plain"));
    p.expect("OK MSG");
    let m = t.line();
    let json: serde_json::Value = serde_json::from_str(m.strip_prefix("MSG ").unwrap()).unwrap();
    assert_eq!(json["sender_id"], idb);
    assert_eq!(json["content"], "back in plain");

    // A client that does not trust the certificate is refused, and the
    // listener keeps serving.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let mut bad = TlsClient::connect(taddr, &other.cert.pem());
    bad.s.write_all(b"HEARTBEAT\n").unwrap_err();
    let mut t2 = TlsClient::connect(taddr, &ck.cert.pem());
    t2.send("HEARTBEAT");
    assert_eq!(t2.line(), "ERROR Not authenticated");
    let maddr = field(&s.ready_line, "metrics=");
    wait_for("TLS counters", || {
        let m = scrape(maddr);
        metric(
            &m,
            "whelm_control_connections_accepted_total{transport=\"tls\"}",
        ) == 3.0
            && metric(&m, "whelm_control_tls_errors_total") >= 1.0
    });
}

// ------------------------------------------------------ descriptors

/// `prlimit ARGS`; the test's own failure when the tool is missing.
fn prlimit(args: &[&str]) {
    let out = Command::new("prlimit")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("prlimit (util-linux) {args:?}: {e}"));
    assert!(
        out.status.success(),
        "prlimit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Under an open-file limit of 80, sessions are capped at 80 less the 64
/// descriptors kept for the store, the relay link and the listeners: the
/// 17th connection gets the capacity error, and the sessions in place can
/// still store and deliver messages.
#[test]
fn open_file_limit_caps_sessions_below_it() {
    let (_dir, path) = temp_db();
    let db = path.to_str().unwrap();
    let ta = add_user(db, "alice");
    let tb = add_user(db, "bob");
    let file = _dir.path().join("control.toml");
    std::fs::write(&file, "max_connections = 10000\n").unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=80:80", "--", bin()])
        .args(["--listen", "127.0.0.1:0", "--db", db])
        .args(["--config", file.to_str().unwrap()])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    let mut s = Server::start_command(cmd);
    let maddr = field(&s.ready_line, "metrics=");
    let mut a = s.client();
    let mut b = s.client();
    a.auth(&ta, "alice");
    let idb = b.auth(&tb, "bob");
    let mut held = Vec::new();
    for _ in 0..14 {
        let mut c = s.client();
        c.send("HEARTBEAT");
        c.expect("ERROR Not authenticated");
        held.push(c);
    }
    for _ in 0..3 {
        let mut c = s.client();
        assert_eq!(
            c.until_closed(),
            vec!["ERROR Server at capacity, try again later"]
        );
    }
    a.send(&format!("MSG {idb} still room for the store"));
    a.expect("OK MSG");
    assert!(b.line().contains("still room for the store"));
    // A freed slot is usable again.
    drop(held.pop());
    wait_for("the freed slot", || {
        let mut c = s.client();
        c.send("HEARTBEAT");
        c.line() == "ERROR Not authenticated"
    });
    // A reload that raises max_connections past the cap warns again, and
    // the cap holds.
    std::fs::write(&file, "max_connections = 20000\n").unwrap();
    sighup(&s);
    wait_for("the reload", || {
        metric(
            &scrape(maddr),
            "whelm_control_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    });
    wait_for("a session in the freed slot", || {
        let mut c = s.client();
        c.send("HEARTBEAT");
        let ok = c.line() == "ERROR Not authenticated";
        if ok {
            held.push(c);
        }
        ok
    });
    let mut c = s.client();
    assert_eq!(
        c.until_closed(),
        vec!["ERROR Server at capacity, try again later"]
    );
    s.terminate();
    let err = s.stderr();
    assert_eq!(err.matches("sessions are capped").count(), 2, "{err}");
}

/// Accept fails while the process is out of descriptors (its limit lowered
/// from outside); the connection waiting in the backlog is taken once the
/// limit is back, without a new connection to wake the listener.
#[test]
fn listener_retries_after_running_out_of_descriptors() {
    let (_dir, path) = temp_db();
    let db = path.to_str().unwrap();
    let s = Server::start(db, &["--metrics-listen", "127.0.0.1:0"]);
    let maddr = field(&s.ready_line, "metrics=");
    let pid = s.child.id().to_string();
    let mut first = s.client();
    first.send("HEARTBEAT");
    first.expect("ERROR Not authenticated");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .to_owned();
    // Descriptors 0, 1 and 2 are open: no new one fits under 3.
    prlimit(&["--pid", &pid, &format!("--nofile=3:{hard}")]);
    let mut waiting = s.client();
    waiting.send("HEARTBEAT");
    waiting
        .w
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut l = String::new();
    match waiting.r.read_line(&mut l) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("answered while out of descriptors: {other:?} {l:?}"),
    }
    prlimit(&["--pid", &pid, &format!("--nofile={hard}:{hard}")]);
    waiting
        .w
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    waiting.expect("ERROR Not authenticated");
    first.send("HEARTBEAT");
    first.expect("ERROR Not authenticated");
    assert!(metric(&scrape(maddr), "whelm_control_accept_errors_total") >= 1.0);
}
