//! The real `whelm-bench client` against the real whelm-control (SQLite in
//! a temporary directory): AUTH, CALL, ACCEPT, MSG in a call, HANGUP.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod support;

use std::process::Command;

use support::{Proc, bench_bin};

fn control_bin() -> std::path::PathBuf {
    let p = bench_bin().parent().unwrap().join("whelm-control");
    assert!(
        p.exists(),
        "whelm-control is not built next to whelm-bench: run `cargo build -p whelm-control`"
    );
    p
}

fn add_user(db: &str, name: &str) -> String {
    let out = Command::new(control_bin())
        .args(["--db", db, "user", "add", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn client(server: &str, token: &str) -> (Proc, String) {
    let mut cmd = Command::new(bench_bin());
    cmd.args([
        "client",
        "--server",
        server,
        "--token",
        token,
        "--linger-ms",
        "200",
    ]);
    let p = Proc::start(cmd);
    let auth = p.wait_out("OK AUTH ", 10);
    let id = auth.split_whitespace().nth(2).unwrap().to_string();
    (p, id)
}

#[test]
fn two_clients_call_message_and_hang_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("whelm.db");
    let db = db.to_str().unwrap();
    let alice_token = add_user(db, "alice");
    let bob_token = add_user(db, "bob");
    let mut cmd = Command::new(control_bin());
    cmd.args([
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
    ]);
    let control = Proc::start(cmd);
    let ready = control.wait_out(" ready: ", 15);
    let server = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .to_string();

    let (mut alice, alice_id) = client(&server, &alice_token);
    let (mut bob, bob_id) = client(&server, &bob_token);
    alice.say(&format!("/call {bob_id}"));
    assert_eq!(alice.next_out(5), format!("OK CALLING {bob_id}"));
    assert_eq!(bob.next_out(5), format!("INCOMING {alice_id} alice"));
    bob.say("/accept");
    assert_eq!(bob.next_out(5), format!("START_CALL {alice_id} alice"));
    assert_eq!(alice.next_out(5), format!("START_CALL {bob_id} bob"));
    alice.say("hi bob, 73");
    assert_eq!(alice.next_out(5), "OK MSG");
    let msg = bob.next_out(5);
    let json: serde_json::Value = serde_json::from_str(msg.strip_prefix("MSG ").unwrap()).unwrap();
    assert_eq!(json["content"], "hi bob, 73");
    assert_eq!(json["sender_id"].to_string(), alice_id);
    bob.say("/hangup");
    assert_eq!(bob.next_out(5), "OK HANGUP");
    assert_eq!(alice.next_out(5), format!("HANGUP {bob_id}"));
    alice.finish(10);
    bob.finish(10);
}

#[test]
fn im_counts_are_exact_on_a_small_run() {
    let control = control_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bench_bin())
        .args(["im", "--pairs", "3", "--rate", "60", "--duration", "1"])
        .args(["--warmup", "0.2", "--repeat", "1", "--control-bin"])
        .arg(&control)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("im-runs.jsonl")).unwrap();
    let run: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let sent = run["sent"].as_u64().unwrap();
    assert!((50..=70).contains(&sent), "{run}");
    assert_eq!(run["acked"].as_u64().unwrap(), sent, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert_eq!(run["totals"]["expected"].as_u64().unwrap(), sent, "{run}");
    assert_eq!(run["totals"]["received"].as_u64().unwrap(), sent, "{run}");
    assert_eq!(run["totals"]["lost"], 0, "{run}");
    assert_eq!(run["totals"]["duplicated"], 0, "{run}");
    assert!(
        run["store"].as_str().unwrap().starts_with("sqlite"),
        "{run}"
    );
}
