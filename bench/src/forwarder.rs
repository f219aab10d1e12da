//! The baseline: a minimal OVP forwarder built into the bench, so every
//! report can state the relay's figures as a ratio to it, measured in the
//! same invocation on the same machine.
//!
//! One thread, pinned like the relay's worker; one socket; `recvmmsg` up to
//! 64 datagrams, header validation (as the relay does), one lookup in a
//! static table from source address to destinations, and every copy of the
//! batch submitted in `sendmmsg` calls. Nothing else: no registry, no
//! timeouts, no rate limits, no counters beyond three totals.
//!
//! Run as `whelm-bench forwarder` (hidden): the table arrives on stdin, one
//! station address per line, ended by an empty line; every station forwards
//! to every other one (the conference fan-out). With `--pairs` each line is
//! `A B`, a Whelm call: A's datagrams go to B and B's to A, unvalidated
//! (Whelm voice has no header), as the relay's voice path forwards them. It prints
//! `whelm-bench forwarder ready: ovp=ADDR engine=mmsg workers=1`, then
//! forwards until stdin closes or `max_run` elapses.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use whelm_shared::ovp;

use crate::pin;
use crate::udp::{self, RecvBatch, SendHeaders};

/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Datagrams per `sendmmsg`.
const SEND_BATCH: usize = 1024;
/// How often the loop checks for shutdown when idle.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// The static table: source -> destinations.
pub type Table = HashMap<SocketAddrV4, Vec<SocketAddrV4>>;

/// Every station forwards to every other one.
pub fn conference_table(stations: &[SocketAddrV4]) -> Table {
    stations
        .iter()
        .map(|&s| (s, stations.iter().copied().filter(|&d| d != s).collect()))
        .collect()
}

/// Every pair forwards both ways (Whelm 1:1 calls).
pub fn pairs_table(pairs: &[(SocketAddrV4, SocketAddrV4)]) -> Table {
    pairs
        .iter()
        .flat_map(|&(a, b)| [(a, vec![b]), (b, vec![a])])
        .collect()
}

/// Totals of a forwarder run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForwardStats {
    /// Datagrams received.
    pub received: u64,
    /// Copies sent.
    pub forwarded: u64,
    /// Datagrams dropped: invalid header or unknown source.
    pub dropped: u64,
    /// Copies the kernel refused (socket buffer full).
    pub send_failed: u64,
}

/// Runs the forwarder on `bind` (pinned to `core` if given) until stdin
/// closes or `max_run` elapses.
pub fn main(
    bind: SocketAddrV4,
    core: Option<usize>,
    max_run: Duration,
    pairs: bool,
) -> anyhow::Result<()> {
    let mut stations = Vec::new();
    let mut calls = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the table from stdin")?;
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        let addr = |s: &str| {
            s.parse::<SocketAddrV4>()
                .with_context(|| format!("table entry {line:?}"))
        };
        if pairs {
            let (a, b) = line
                .split_once(' ')
                .with_context(|| format!("table entry {line:?}: want `A B`"))?;
            calls.push((addr(a)?, addr(b.trim())?));
        } else {
            stations.push(addr(line)?);
        }
    }
    let table = if pairs {
        pairs_table(&calls)
    } else {
        conference_table(&stations)
    };
    if let Some(c) = core {
        pin::pin_current_thread(c).map_err(|e| anyhow::anyhow!("pinning the forwarder: {e}"))?;
    }
    let sock = udp::forwarder_socket(bind, IDLE_WAKE).with_context(|| format!("binding {bind}"))?;
    let local = sock.local_addr().context("reading the bound address")?;
    println!("whelm-bench forwarder ready: ovp={local} engine=mmsg workers=1");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Stop when the parent closes stdin (or dies).
            for _ in std::io::stdin().lines() {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    let stats = forward(&sock, &table, !pairs, &stop, Instant::now() + max_run)?;
    eprintln!(
        "forwarder: received {} forwarded {} dropped {} send_failed {}",
        stats.received, stats.forwarded, stats.dropped, stats.send_failed
    );
    Ok(())
}

/// The forwarding loop; `validate`: drop datagrams without a valid OVP
/// header (the conference), else forward whatever a known source sends.
pub fn forward(
    sock: &std::net::UdpSocket,
    table: &Table,
    validate: bool,
    stop: &AtomicBool,
    deadline: Instant,
) -> anyhow::Result<ForwardStats> {
    let fd = udp::fd(sock);
    let mut rb = RecvBatch::new(RECV_BATCH, 2048);
    let mut sh = SendHeaders::new(SEND_BATCH);
    let mut st = ForwardStats::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = rb.recv_wait(fd).context("recvmmsg")?;
        st.received += n as u64;
        let mut out: Vec<(&[u8], SocketAddrV4)> = Vec::with_capacity(SEND_BATCH);
        for i in 0..n {
            let Some((bytes, meta)) = rb.get(i) else {
                continue;
            };
            let valid = !validate || ovp::validate(bytes).is_ok();
            let dests = match (valid, meta.from.and_then(|f| table.get(&f))) {
                (true, Some(d)) => d,
                _ => {
                    st.dropped += 1;
                    continue;
                }
            };
            for &d in dests {
                out.push((bytes, d));
            }
        }
        let mut at = 0;
        while at < out.len() {
            let end = (at + sh.capacity()).min(out.len());
            let sent = sh.send(fd, &out[at..end]).context("sendmmsg")?;
            if sent == 0 {
                // Buffer full: drop the rest of this chunk, like a relay would.
                st.send_failed += (end - at) as u64;
                at = end;
            } else {
                st.forwarded += sent as u64;
                at += sent;
            }
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_everyone_but_self() {
        let a: Vec<SocketAddrV4> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let t = conference_table(&a);
        assert_eq!(t[&a[0]], [a[1], a[2]]);
        assert_eq!(t[&a[2]], [a[0], a[1]]);
        let p = pairs_table(&[(a[0], a[1])]);
        assert_eq!(p[&a[0]], [a[1]]);
        assert_eq!(p[&a[1]], [a[0]]);
        assert_eq!(p.len(), 2);
    }
}
