//! The load scenarios end to end on a small, slow run, where every count
//! must be exact: nothing lost, duplicated or reordered on loopback, the
//! expected copies = measured frames sent x (stations - 1). Performance is
//! never asserted here.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod support;

use std::process::Command;

use serde_json::Value;
use support::{bench_bin, relay_bin};

fn run_scenario(args: &[&str]) -> (Vec<Value>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bench_bin())
        .args(args)
        .args(["--out", dir.path().to_str().unwrap()])
        // Other processes on a shared test machine must not exclude runs
        // here: this test is about counting, not performance.
        .args(["--max-wait", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("offered/s"), "no table in {stdout}");
    let runs: Vec<Value> = std::fs::read_to_string(dir.path().join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert!(summary.as_array().is_some_and(|a| !a.is_empty()));
    (runs, dir)
}

fn assert_exact(run: &Value, stations: u64, rate: f64, secs: f64) {
    let t = &run["totals"];
    let sent = run["sent"].as_u64().unwrap();
    let want = rate * secs;
    assert!(
        (sent as f64 - want).abs() <= want * 0.1 + 2.0,
        "sent {sent}, wanted about {want}: {run}"
    );
    assert_eq!(
        t["expected"].as_u64().unwrap(),
        sent * (stations - 1),
        "{run}"
    );
    assert_eq!(t["received"], t["expected"], "{run}");
    assert_eq!(t["lost"], 0, "{run}");
    assert_eq!(t["duplicated"], 0, "{run}");
    assert_eq!(t["reordered"], 0, "{run}");
    assert_eq!(run["latency_ns"]["count"], t["received"], "{run}");
    assert_eq!(run["stray"], 0, "{run}");
    // `valid` labels measurement quality (generator kept up, neither side
    // waited long for its core), which depends on the host at that moment:
    // a stall of the shared VM marks a 1-second run invalid while every
    // count above stays exact. So it is reported, not asserted.
    assert!(run["valid"].is_boolean(), "{run}");
    if run["valid"] != true {
        eprintln!("note: run marked invalid (host contention): {run}");
    }
    assert!(run["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(run["target_cpu_ns"].is_u64(), "{run}");
    assert!(run["target_rss_kib"].as_u64().unwrap() > 0, "{run}");
}

#[test]
fn baseline_counts_are_exact() {
    let (runs, _dir) = run_scenario(&[
        "baseline",
        "--stations",
        "3",
        "--rate",
        "60",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--repeat",
        "2",
    ]);
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r["target"], "baseline");
        assert_exact(r, 3, 60.0, 1.0);
    }
}

#[test]
fn ovp_counts_are_exact_for_both_engines_and_the_baseline() {
    let Some(relay) = relay_bin() else {
        panic!("whelm-relay is not built next to whelm-bench: run `cargo build -p whelm-relay`");
    };
    let (runs, _dir) = run_scenario(&[
        "ovp",
        "--stations",
        "4",
        "--transmitting",
        "0.5",
        "--rate",
        "50",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--repeat",
        "1",
        "--engine",
        "both",
        "--relay-bin",
        relay.to_str().unwrap(),
    ]);
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["baseline", "relay-uring", "relay-mmsg"]);
    for r in &runs {
        assert_eq!(r["transmitting"], 2);
        assert_exact(r, 4, 50.0, 1.0);
    }
    assert_eq!(runs[1]["engine"], "uring");
    assert_eq!(runs[2]["engine"], "mmsg");
}
