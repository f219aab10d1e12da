//! Whelm calls end to end through the real whelm-control and whelm-relay
//! (and the baseline forwarder) on a small, slow run where every count must
//! be exact; the client's voice stream between two clients; the capacity
//! search's output shape on a tiny budget. Performance is never asserted.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Proc, bench_bin, relay_bin};

fn control_bin() -> std::path::PathBuf {
    let p = bench_bin().parent().unwrap().join("whelm-control");
    assert!(
        p.exists(),
        "whelm-control is not built next to whelm-bench: run `cargo build -p whelm-control`"
    );
    p
}

fn relay() -> std::path::PathBuf {
    relay_bin().unwrap_or_else(|| {
        panic!("whelm-relay is not built next to whelm-bench: run `cargo build -p whelm-relay`")
    })
}

#[test]
fn calls_counts_are_exact_for_both_engines_and_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bench_bin())
        .args([
            "calls",
            "--calls",
            "4",
            "--duration",
            "2",
            "--warmup",
            "0.3",
        ])
        .args(["--repeat", "1", "--engine", "both", "--max-wait", "1"])
        .arg("--relay-bin")
        .arg(relay())
        .arg("--control-bin")
        .arg(control_bin())
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("offered/s"), "{stdout}");
    let runs: Vec<Value> = std::fs::read_to_string(dir.path().join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["baseline", "relay-uring", "relay-mmsg"]);
    assert_eq!(runs[1]["engine"], "uring");
    assert_eq!(runs[2]["engine"], "mmsg");
    for r in &runs {
        let t = &r["totals"];
        let sent = r["sent"].as_u64().unwrap();
        // 4 calls x 2 directions x 50/s x 2 s.
        assert!((760..=840).contains(&sent), "sent {sent}: {r}");
        assert_eq!(t["expected"].as_u64().unwrap(), sent, "{r}");
        assert_eq!(t["received"].as_u64().unwrap(), sent, "{r}");
        assert_eq!(t["lost"], 0, "{r}");
        assert_eq!(t["duplicated"], 0, "{r}");
        assert_eq!(t["reordered"], 0, "{r}");
        assert_eq!(r["stray"], 0, "{r}");
        assert_eq!(r["fanout"], 1, "{r}");
        assert_eq!(r["frame_len"], 160, "{r}");
        assert_eq!(r["latency_ns"]["count"], t["received"], "{r}");
        assert!(r["target_cpu_ns"].is_u64(), "{r}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert!(summary[1]["vs_baseline"].is_object(), "{summary}");
    assert!(
        std::fs::read_to_string(dir.path().join("report.svg"))
            .unwrap()
            .starts_with("<svg")
    );
}

fn add_user(db: &std::path::Path, name: &str) -> String {
    let out = Command::new(control_bin())
        .arg("--db")
        .arg(db)
        .args(["user", "add", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn addr_of(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap()
        .to_string()
}

/// `key=value` of a VOICE line as a number.
fn field(line: &str, key: &str) -> u64 {
    let v = addr_of(line, &format!("{key}="));
    v.parse().unwrap_or_else(|_| panic!("{key}={v} in {line}"))
}

#[test]
fn two_clients_stream_voice_through_relay_and_control() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("whelm.db");
    let sock = dir.path().join("relay.sock");
    let alice_token = add_user(&db, "alice");
    let bob_token = add_user(&db, "bob");
    let mut cmd = Command::new(relay());
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--voice-port", "0"])
        .args([
            "--engine",
            "mmsg",
            "--workers",
            "1",
            "--metrics-listen",
            "off",
        ])
        .arg("--control-socket")
        .arg(&sock);
    let relay = Proc::start(cmd);
    let voice = addr_of(&relay.wait_out(" ready: ", 15), "voice=");
    let mut cmd = Command::new(control_bin());
    cmd.arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--relay-socket")
        .arg(&sock);
    let control = Proc::start(cmd);
    let server = addr_of(&control.wait_out(" ready: ", 15), "listen=");

    let client = |token: &str| {
        let mut cmd = Command::new(bench_bin());
        cmd.args(["client", "--server", &server, "--token", token])
            .args([
                "--voice-server",
                &voice,
                "--voice",
                "2",
                "--linger-ms",
                "200",
            ]);
        let p = Proc::start(cmd);
        let auth = p.wait_out("OK AUTH ", 10);
        let id = auth.split_whitespace().nth(2).unwrap().to_string();
        (p, id)
    };
    let (mut alice, alice_id) = client(&alice_token);
    let (mut bob, bob_id) = client(&bob_token);
    alice.say(&format!("/call {bob_id}"));
    bob.wait_out(&format!("INCOMING {alice_id}"), 10);
    bob.say("/accept");
    bob.wait_out("START_CALL", 10);
    alice.wait_out("START_CALL", 10);
    let a = alice.wait_out("VOICE ", 20);
    let b = bob.wait_out("VOICE ", 20);
    for (line, partner_line) in [(&a, &b), (&b, &a)] {
        let sent_by_partner = field(partner_line, "sent");
        // 2 s at 50/s.
        assert!((95..=105).contains(&sent_by_partner), "{partner_line}");
        assert_eq!(field(line, "partner_sent"), sent_by_partner, "{line}");
        assert_eq!(field(line, "skipped"), 0, "{line}");
        assert_eq!(field(line, "received"), sent_by_partner, "{line}");
        assert_eq!(field(line, "lost"), 0, "{line}");
        assert_eq!(field(line, "duplicated"), 0, "{line}");
        assert!(line.contains("p99_us="), "{line}");
    }
    alice.finish(10);
    bob.finish(10);
    drop(control);
    drop(relay);
}

#[test]
fn capacity_with_a_tiny_budget_prints_config_lines() {
    let started = Instant::now();
    let out = Command::new(bench_bin())
        .args(["capacity", "--what", "calls", "--calls", "2", "--pps", "50"])
        .args(["--repeat", "1", "--duration", "0.5", "--warmup", "0.2"])
        .args(["--max-seconds", "12", "--engine", "mmsg"])
        .arg("--relay-bin")
        .arg(relay())
        .arg("--control-bin")
        .arg(control_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(stdout.starts_with("calls: "), "{stdout}");
    assert!(stdout.contains("config lines to paste:"), "{stdout}");
    assert!(stdout.contains("cores = [0]"), "{stdout}");
    if !stdout.contains("no passing load") {
        let line = stdout
            .lines()
            .find(|l| l.contains("max_calls_per_core = "))
            .unwrap();
        assert!(
            line.trim()
                .strip_prefix("max_calls_per_core = ")
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .is_ok(),
            "{line}"
        );
    }
}

/// The pids whose parent is `ppid` and whose command is `comm`, from /proc.
fn children_named(ppid: u32, comm: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let parent = stat[close + 1..].split_whitespace().nth(1);
        if &stat[open + 1..close] == comm && parent == Some(&ppid.to_string()) {
            v.push(pid);
        }
    }
    v
}

/// SIGTERM sent to the bench's pid alone (as `kill PID` or a service manager
/// sends it, unlike Ctrl-C, which reaches the whole process group): the
/// bench stops the relay and control it started, then exits with 143.
#[test]
fn sigterm_to_the_bench_alone_stops_its_relay_and_control() {
    let dir = tempfile::tempdir().unwrap();
    let mut bench = Proc::start({
        let mut c = Command::new(bench_bin());
        c.args([
            "calls",
            "--calls",
            "2",
            "--duration",
            "60",
            "--warmup",
            "0.3",
        ])
        .args(["--repeat", "1", "--engine", "mmsg", "--no-baseline"])
        .arg("--relay-bin")
        .arg(relay())
        .arg("--control-bin")
        .arg(control_bin())
        .arg("--out")
        .arg(dir.path());
        c
    });
    let pid = bench.child.id();
    // The relay is started after control: once it is there, both are.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (relays, controls) = loop {
        let r = children_named(pid, "whelm-relay");
        let c = children_named(pid, "whelm-control");
        if !r.is_empty() && !c.is_empty() {
            break (r, c);
        }
        assert!(
            Instant::now() < deadline,
            "no relay and control under the bench"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rc = send_signal(pid, "TERM");
    assert!(rc, "kill -TERM {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = bench.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the bench did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let left: Vec<u32> = relays
        .iter()
        .chain(&controls)
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    for p in &left {
        send_signal(*p, "KILL");
    }
    assert!(
        left.is_empty(),
        "still running after the bench exited: {left:?}"
    );
    assert_eq!(status.code(), Some(143), "{status}");
}

/// `kill -SIG PID`, through kill(1): no `unsafe` libc call in a test.
fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}
