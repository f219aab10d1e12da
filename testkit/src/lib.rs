//! Test support shared by the integration tests of `whelm-relay` and
//! `whelm-control` (a dev-dependency only): namespaces of their own for a
//! test, held by a `sleep` under `unshare(1)` ([`Unshared`]), and a network
//! namespace with IPv6 addresses on its loopback ([`NetNs`]), where the
//! real binary runs via `nsenter(1)` and the test's sockets are opened on a
//! thread that joined it.
//!
//! Creating namespaces needs CAP_SYS_ADMIN; a test that cannot have one
//! calls [`skip`], which skips it outside CI and fails it under `CI=true`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long [`Unshared::start`] waits for the setup and the ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A test that cannot run here (no namespace, a missing tool): prints
/// `TEST: SKIPPED, REASON` for the caller to return after, except when the
/// environment variable `CI` is `true` (CI runs as root and must run it),
/// where it panics with the reason.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run here, and CI=true does not allow skipping it: {reason}");
    }
    eprintln!("{test}: SKIPPED, {reason}");
}

/// A `sleep` under `unshare FLAGS` holding namespaces of its own, set up by
/// a shell command run in them first; killed on drop (the namespaces, and
/// what lives only in them, go with it).
pub struct Unshared {
    holder: Child,
    /// What the holder printed after `ready` (`info` expanded there).
    pub info: String,
}

impl Unshared {
    /// Runs `setup` in new namespaces (`flags`, e.g. `["-n"]`), then prints
    /// `ready` and the shell expansion of `info`. `Err(why)` when that is
    /// not allowed here or `setup` fails.
    pub fn start(flags: &[&str], setup: &str, info: &str) -> Result<Unshared, String> {
        let script = format!("{setup} || exit 1; echo ready {info}; exec sleep 120");
        let mut holder = Command::new("unshare")
            .args(flags)
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let stdout = holder.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut l = String::new();
            let _ = BufReader::new(stdout).read_line(&mut l);
            let _ = tx.send(l);
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(l) if l.starts_with("ready") => Ok(Unshared {
                holder,
                info: l["ready".len()..].trim().to_owned(),
            }),
            other => {
                let _ = holder.kill();
                let _ = holder.wait();
                let mut err = String::new();
                if let Some(mut e) = holder.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!(
                    "unshare {flags:?} with {setup:?} failed ({other:?}): {}",
                    err.trim()
                ))
            }
        }
    }

    /// The holder's pid, for `nsenter -t` and `/proc/PID/...`.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A network namespace of its own whose loopback is up and holds the given
/// IPv6 addresses (each with its /64, no duplicate address detection);
/// gone when dropped.
pub struct NetNs(Unshared);

impl NetNs {
    /// Creates the namespace with `addrs` (IPv6, without a prefix length)
    /// on `lo`. `Err(why)` when that is not allowed here or `ip(8)` fails.
    pub fn new(addrs: &[&str]) -> Result<NetNs, String> {
        let mut setup = String::from("ip link set lo up");
        for a in addrs {
            setup += &format!(" && ip -6 addr add {a}/64 dev lo nodad");
        }
        Unshared::start(&["-n"], &setup, "").map(NetNs)
    }

    /// The pid of the process holding the namespace.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// `nsenter -t PID -n -- PROGRAM`: a command running `program` in the
    /// namespace (nsenter execs it, so the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n", "--", program]);
        c
    }

    /// Runs `f` on a thread that has joined the namespace, so that the
    /// sockets it opens live there (they stay there, usable from any
    /// thread, when `f` returns them). Panics when joining fails or `f`
    /// panics.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.pid());
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let joined = std::thread::spawn(move || {
            join_net_ns(&ns).unwrap_or_else(|e| panic!("setns({path}): {e}"));
            f()
        })
        .join();
        match joined {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn join_net_ns(ns: &File) -> nix::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
}
