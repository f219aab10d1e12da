//! Helpers shared by the integration tests: processes killed on drop, line
//! readers with timeouts, the relay binary next to ours.

#![allow(dead_code)] // each test file uses a subset

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};

/// The whelm-bench binary under test.
pub(crate) fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_whelm-bench"))
}

/// whelm-relay built next to whelm-bench (`cargo test --workspace` builds
/// it; `cargo build -p whelm-relay` otherwise).
pub(crate) fn relay_bin() -> Option<PathBuf> {
    let p = bench_bin().parent()?.join("whelm-relay");
    p.exists().then_some(p)
}

/// A child process with its stdout and stderr as line channels; killed on
/// drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) out: Receiver<String>,
    pub(crate) err: Receiver<String>,
}

impl Proc {
    pub(crate) fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Proc {
            child,
            stdin,
            out,
            err,
        }
    }

    /// Writes one line to stdin.
    pub(crate) fn say(&mut self, line: &str) {
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "{line}").unwrap();
        w.flush().unwrap();
    }

    /// The next stdout line, or panics after `secs`.
    pub(crate) fn next_out(&self, secs: u64) -> String {
        self.out
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("no stdout line within {secs} s"))
    }

    /// Waits for a stdout line containing `what`; returns it.
    pub(crate) fn wait_out(&self, what: &str, secs: u64) -> String {
        wait_line(&self.out, what, secs)
    }

    /// Waits for a stderr line containing `what`; returns it.
    pub(crate) fn wait_err(&self, what: &str, secs: u64) -> String {
        wait_line(&self.err, what, secs)
    }

    /// Stdout lines that arrive within `ms`.
    pub(crate) fn drain_out(&self, ms: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut v = Vec::new();
        while let Ok(l) = self
            .out
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            v.push(l);
        }
        v
    }

    /// Closes stdin and waits (bounded) for a successful exit.
    pub(crate) fn finish(mut self, secs: u64) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "exit status {st}");
                return;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &Receiver<String>, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line containing {what:?} within {secs} s"),
        }
    }
}

/// Starts whelm-relay on 127.0.0.1 with a free port; returns it and its
/// OVP port.
pub(crate) fn start_relay(bin: &PathBuf, engine: &str, reply_to: &str) -> (Proc, u16) {
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--voice-port", "0"])
        .args(["--reply-to", reply_to, "--engine", engine, "--workers", "1"]);
    let p = Proc::start(cmd);
    let ready = p.wait_out(" ready: ", 15);
    let port = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ovp="))
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no ovp port in {ready:?}"));
    (p, port)
}

/// Starts a station process.
pub(crate) fn start_station(callsign: &str, server: &str, bind: &str) -> Proc {
    let mut cmd = Command::new(bench_bin());
    cmd.args(["station", callsign, "--server", server, "--bind", bind])
        .args(["--linger-ms", "200"]);
    let p = Proc::start(cmd);
    p.wait_err(&format!("station {callsign} on "), 10);
    p
}
