//! The paired units in `systemd/` pass `systemd-analyze verify`, with their
//! `ExecStart=` pointed at the binaries this build produced (verify checks
//! that the executable exists), and keep the properties the pairing relies on.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unit(name: &str) -> String {
    std::fs::read_to_string(repo().join("systemd").join(name)).unwrap()
}

#[test]
fn units_verify() {
    let relay_bin = PathBuf::from(env!("CARGO_BIN_EXE_whelm-relay"));
    let bin_dir = relay_bin.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["whelm-relay.service", "whelm-control.service"] {
        let text = unit(name).replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    // verify needs every ExecStart binary; control is built by the same
    // `cargo test --workspace`, but not by `cargo test -p whelm-relay`.
    let control = bin_dir.join("whelm-control");
    assert!(
        control.exists(),
        "{} missing: run `cargo build -p whelm-control` (cargo test --workspace builds it)",
        control.display()
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd) must be installed; .ci/run installs it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the missing `whelm` user or the absent network-online
    // target on a build host are not about our units; anything naming one of
    // our unit files is.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("whelm-")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn pairing_and_hardening() {
    let relay = unit("whelm-relay.service");
    let control = unit("whelm-control.service");
    // Control wants the relay and starts after it, but never stops it.
    assert!(control.contains("Wants=network-online.target whelm-relay.service"));
    assert!(control.contains("After=network-online.target whelm-relay.service"));
    let directive = |unit: &str, key: &str| unit.lines().any(|l| l.trim_start().starts_with(key));
    for binding in ["Requires=", "BindsTo=", "PartOf="] {
        assert!(
            !directive(&control, binding),
            "control must not {binding} the relay"
        );
        assert!(!directive(&relay, binding));
    }
    // The command socket's directory outlives relay restarts.
    assert!(relay.contains("RuntimeDirectory=whelm"));
    assert!(relay.contains("RuntimeDirectoryPreserve=yes"));
    // io_uring is not in @system-service: the relay's filter adds it.
    assert!(relay.contains(
        "SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register"
    ));
    for unit in [&relay, &control] {
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
            "RestrictRealtime=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "LimitNOFILE=",
            "Type=notify",
            "WatchdogSec=",
        ] {
            assert!(unit.contains(line), "missing {line}");
        }
    }
    assert!(
        relay.contains("ExecReload=/usr/bin/whelm-relay ctl --socket /run/whelm/relay.sock reload")
    );
    assert!(control.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // The control unit's --relay-socket is the relay's --control-socket.
    assert!(relay.contains("--control-socket /run/whelm/relay.sock"));
    assert!(control.contains("--relay-socket /run/whelm/relay.sock"));
}
