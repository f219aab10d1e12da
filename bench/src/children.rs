//! The process under test: the real `whelm-relay`, or the bench's baseline
//! forwarder (`whelm-bench forwarder`). Started with a piped stdin (the
//! forwarder stops when it closes), waited for until it prints its ready
//! line (`... ready: ovp=ADDR ...`), stopped with SIGTERM (then SIGKILL)
//! when dropped.
//!
//! A signal that ends the bench itself (SIGTERM, SIGINT, SIGHUP) would skip
//! those drops and leave the processes under test running when it is sent
//! to the bench's pid alone (Ctrl-C reaches the whole process group, `kill`
//! and service managers often do not). So the first [`Target`] installs a
//! handler thread that stops every live target the same way, then exits
//! with 128 + the signal number.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Lines of the child's stderr kept for error messages.
const STDERR_TAIL: usize = 30;
/// How long a child gets to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Pids of the targets started and not yet stopped, for the signal thread.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Installs the signal thread once.
static SIGNALS: Once = Once::new();
/// The signal thread is stopping the targets and will exit the process.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Called by `main` before it returns: while the signal thread is stopping
/// the targets, the run may fail because a target died under it, and that
/// error is not the outcome. Waits for the signal thread's exit instead.
pub fn wait_if_signalled() {
    while SIGNALLED.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On the first call: a thread that, on SIGTERM, SIGINT or SIGHUP, stops
/// every live target and exits. A failure to install it is reported and
/// the bench goes on (the targets then stop only through their drops).
fn stop_targets_on_signals() {
    SIGNALS.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("whelm-bench: no signal handler ({e}); a kill may leave targets running");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    SIGNALLED.store(true, Ordering::Release);
                    let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
                    // Not eprintln!: a closed stderr must not stop this thread.
                    let _ = writeln!(
                        std::io::stderr(),
                        "whelm-bench: signal {sig}: stopping {} process(es) under test",
                        pids.len()
                    );
                    terminate_all(&pids);
                    std::process::exit(128 + sig);
                }
            });
        if let Err(e) = spawned {
            eprintln!("whelm-bench: no signal thread ({e}); a kill may leave targets running");
        }
    });
}

/// SIGTERM to every pid, then SIGKILL to those that have not exited within
/// [`TERM_GRACE`]. The pids are our children, so a `waitpid` tells when one
/// has exited (and reaps it; the process exits right after).
fn terminate_all(pids: &[u32]) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut left: Vec<Pid> = pids
        .iter()
        .filter_map(|&p| i32::try_from(p).ok().map(Pid::from_raw))
        .collect();
    for &pid in &left {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + TERM_GRACE;
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| {
            matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in left {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
}

/// A running process under test.
#[derive(Debug)]
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its pid (for /proc sampling).
    pub pid: u32,
    /// The address from its ready line (`ovp=` of a relay or the
    /// forwarder, `listen=` of whelm-control).
    pub ovp: SocketAddrV4,
    /// The ready line as printed.
    pub ready_line: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    what: String,
}

impl Target {
    /// Starts `cmd`, writes `input` to its stdin (kept open), and waits up
    /// to `timeout` for its ready line (with an `ovp=ADDR`).
    pub fn start(
        cmd: Command,
        what: &str,
        input: &str,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        Target::start_with_key(cmd, what, input, "ovp=", timeout)
    }

    /// As [`Target::start`], the address read from `key` (e.g. `listen=`).
    pub fn start_with_key(
        mut cmd: Command,
        what: &str,
        input: &str,
        key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        stop_targets_on_signals();
        // Registered before the spawn returns (the lock is held across it),
        // so a signal never finds a child missing from the list.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {what} ({cmd:?})"))?;
        let pid = child.id();
        live.push(pid);
        drop(live);
        let stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            });
        }
        let (tx, rx) = crossbeam_channel::bounded::<String>(16);
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                // Keep draining stdout after the ready line so the child
                // never blocks on a full pipe.
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.try_send(line);
                }
            });
        }
        let mut target = Target {
            child,
            stdin,
            pid,
            ovp: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            ready_line: String::new(),
            stderr_tail: tail,
            what: what.to_string(),
        };
        // From here on, `target`'s Drop stops the child on every error.
        if let Some(w) = target.stdin.as_mut().filter(|_| !input.is_empty()) {
            w.write_all(input.as_bytes())
                .and_then(|()| w.flush())
                .with_context(|| format!("writing to the stdin of {what}"))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{what} printed no ready line within {timeout:?}; stderr:\n{}",
                    target.stderr()
                );
            }
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(addr) = parse_ready(&line, key) {
                        target.ovp = addr;
                        target.ready_line = line;
                        return Ok(target);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = target.child.try_wait() {
                        bail!("{what} exited with {status}; stderr:\n{}", target.stderr());
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    // stdout closed: wait for the exit status.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = target.child.try_wait().ok().flatten();
                    bail!(
                        "{what} closed stdout without a ready line (exit {status:?}); stderr:\n{}",
                        target.stderr()
                    );
                }
            }
        }
    }

    /// The child's stdin (the forwarder reads its table there).
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// The last lines of the child's stderr.
    pub fn stderr(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Whether the child is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the child (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        self.stop_child();
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&p| p != self.pid);
        }
    }

    fn stop_child(&mut self) {
        drop(self.stdin.take());
        if !self.alive() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `<key>ADDR` of a ready line (`... ready: ovp=127.0.0.1:40123 ...`).
pub fn parse_ready(line: &str, key: &str) -> Option<SocketAddrV4> {
    if !line.contains(" ready: ") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .and_then(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        assert_eq!(
            parse_ready(
                "whelm-relay ready: ovp=127.0.0.1:40123 voice=127.0.0.1:5 engine=uring",
                "ovp="
            ),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            parse_ready("whelm-control ready: listen=127.0.0.1:9 store=x", "listen="),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(parse_ready("ovp=127.0.0.1:1", "ovp="), None);
        assert_eq!(parse_ready("x ready: voice=1.2.3.4:5", "ovp="), None);
    }
}
