//! The soak scenario end to end against the real whelm-relay and
//! whelm-control: a 20-second run with small numbers passes its verdict and
//! writes a report with its fields. Performance is not asserted beyond the
//! soak's own checks.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod support;

use std::process::Command;

use serde_json::Value;
use support::{bench_bin, relay_bin};

fn sibling(name: &str) -> std::path::PathBuf {
    let p = bench_bin().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{name} is not built next to whelm-bench: run `cargo build -p {name}`"
    );
    p
}

#[test]
fn a_short_soak_passes_and_reports() {
    let relay = relay_bin().unwrap_or_else(|| sibling("whelm-relay"));
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("soak");
    let out = Command::new(bench_bin())
        .args([
            "soak",
            "--seconds",
            "20",
            "--warmup",
            "4",
            "--interval",
            "4",
        ])
        .args(["--calls", "3", "--hold", "3", "--gap-ms", "100"])
        .args(["--pairs", "2", "--msg-rate", "10", "--stations", "3"])
        .args(["--drain-ms", "2000"])
        .arg("--relay-bin")
        .arg(relay)
        .arg("--control-bin")
        .arg(sibling("whelm-control"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("soak ") && l.contains("rss relay"))
        .collect();
    assert!(progress.len() >= 4, "{stdout}");
    assert!(progress[0].contains("msgs sent"), "{}", progress[0]);

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("soak.json")).unwrap()).unwrap();
    assert_eq!(r["scenario"], "soak");
    assert_eq!(r["verdict"], "PASS", "{r}");
    assert_eq!(r["duration_s"], 20.0);
    assert_eq!(r["warmup_s"], 4.0);
    let checks = r["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{r}");
    assert!(checks.iter().all(|c| c["pass"] == true), "{r}");
    for name in [
        "relay RSS",
        "control RSS",
        "voice loss",
        "OVP loss",
        "store",
    ] {
        assert!(
            checks
                .iter()
                .any(|c| c["name"].as_str().unwrap().contains(name)),
            "no check on {name}: {r}"
        );
    }
    for who in ["relay_rss", "control_rss"] {
        let s = &r[who];
        assert!(s["baseline_kib"].as_u64().unwrap() > 0, "{s}");
        assert!(s["samples_after"].as_u64().unwrap() >= 10, "{s}");
        assert!(s["max_deviation"].as_f64().unwrap().abs() <= 0.05, "{s}");
    }

    let churn = &r["churn"];
    assert!(churn["calls_completed"].as_u64().unwrap() >= 6, "{churn}");
    assert_eq!(churn["errors"], 0, "{churn}");
    let voice = &churn["voice"];
    assert!(voice["sent"].as_u64().unwrap() > 1000, "{voice}");
    assert_eq!(voice["totals"]["expected"], voice["sent"], "{voice}");
    assert!(voice["loss_ratio"].as_f64().unwrap() < 0.001, "{voice}");
    assert!(voice["accounting"].as_str().unwrap().contains("HANGUP"));

    let ovp = &r["ovp"];
    let sent = ovp["sent"].as_u64().unwrap();
    // 3 stations x 25 frames/s x 20 s, each frame to the 2 others.
    assert!((1400..=1600).contains(&sent), "{ovp}");
    assert_eq!(ovp["totals"]["expected"].as_u64().unwrap(), 2 * sent);
    assert!(ovp["loss_ratio"].as_f64().unwrap() < 0.001, "{ovp}");

    let m = &r["messages"];
    let acked = m["load"]["acked"].as_u64().unwrap();
    // 10 messages/s for 20 s.
    assert!((180..=210).contains(&acked), "{m}");
    assert_eq!(m["load"]["sent"], acked, "{m}");
    assert_eq!(m["load"]["delivered"], acked, "{m}");
    assert_eq!(m["load"]["acked_not_delivered"], 0, "{m}");
    assert_eq!(m["store"]["checked"], acked, "{m}");
    assert_eq!(m["store"]["missing"], 0, "{m}");
    assert!(
        m["store_note"].as_str().unwrap().contains("read-only"),
        "{m}"
    );

    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 4, "{r}");
    assert!(samples.last().unwrap()["voice"]["sent"].as_u64().unwrap() > 0);
    assert!(r["relay_ready_line"].as_str().unwrap().contains(" ready: "));
    assert!(r["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(
        std::fs::read_to_string(out_dir.join("summary.txt"))
            .unwrap()
            .contains("verdict: PASS")
    );
    assert!(
        std::fs::read_to_string(out_dir.join("COMMAND"))
            .unwrap()
            .contains("soak --seconds 20")
    );
}

#[test]
fn minutes_and_seconds_exclude_each_other() {
    let out = Command::new(bench_bin())
        .args(["soak", "--minutes", "1", "--seconds", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
