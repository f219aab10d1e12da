//! One measured run of Whelm 1:1 calls against a server (the relay's voice
//! port or the baseline forwarder in `--pairs` mode): the same code drives
//! both, so they are comparable.
//!
//! Parties are UDP sockets on 127.0.0.1; party `2i` and `2i + 1` are in
//! call `i`. Every party sends `frame_len`-byte datagrams carrying a
//! [`Probe`] at offset 0 (Whelm voice has no header: the relay forwards the
//! bytes unchanged). One thread, pinned to the generator core, both sends
//! and receives:
//!
//! 1. register (relay only): every party sends `HELLO <user_id>`;
//! 2. ready check: every party sends unmeasured probes until its partner
//!    received one (HELLOs repeated for those not through yet), bounded by
//!    [`READY_TIMEOUT`]: afterwards every direction is known to forward;
//! 3. warm-up, 4. measured window, 5. drain, as in [`crate::ovp_load`].
//!
//! Pacing: party j's k-th datagram is due at `(k + j/P) / rate_j` after the
//! start (staggered); a late generator sends late (the probe carries the
//! real send time) and is flagged when under 99% of the offered rate.

use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::clock::{self, RealtimeOffset};
use crate::flows::FlowTable;
use crate::latency::Latency;
use crate::live::{Live, LiveSnapshot, Publisher};
use crate::ovp_load::{MAX_LOSSY_FLOWS, Outcome};
use crate::pin;
use crate::probe::{PROBE_LEN, Probe};
use crate::procstat;
use crate::udp::{self, LoadSocket, RecvBatch, SendHeaders};

/// Most `recvmmsg` calls per ready socket per loop.
const RECV_ROUNDS: usize = 4;
/// Longest wait until every direction of every call forwards.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How often unready parties repeat their HELLO and ready probe.
const READY_RETRY_NS: u64 = 200_000_000;
/// Most parties (2 x calls) a run drives.
pub const MAX_PARTIES: usize = 20_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Calls (parties = 2 x calls).
    pub calls: usize,
    /// Total datagrams/s into the server (all parties).
    pub rate: f64,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// Datagrams per `sendmmsg`.
    pub batch: usize,
    /// Core of the generator thread.
    pub gen_core: Option<usize>,
    /// Datagram length (160: an Opus packet).
    pub frame_len: usize,
}

/// The partner of party `p` (call `p / 2`).
pub fn partner(p: usize) -> usize {
    p ^ 1
}

/// Runs one load against `server` from `parties` (bound; 2 x calls).
/// `hello`: each party's user id, sent as `HELLO <id>` first (the relay);
/// `None` for the baseline. `target_pid` is sampled for CPU and RSS.
pub fn run(
    spec: &CallSpec,
    parties: &[LoadSocket],
    hello: Option<&[u64]>,
    server: SocketAddrV4,
    target_pid: Option<u32>,
    progress: &(dyn Fn(f64) + Sync),
) -> anyhow::Result<Outcome> {
    run_live(spec, parties, hello, server, target_pid, progress, None)
}

/// As [`run`], also publishing running totals into `live` (every 250 ms
/// and the exact totals after the drain) and ending the window early
/// when `live.stop` is set (the `soak` scenario).
pub fn run_live(
    spec: &CallSpec,
    parties: &[LoadSocket],
    hello: Option<&[u64]>,
    server: SocketAddrV4,
    target_pid: Option<u32>,
    progress: &(dyn Fn(f64) + Sync),
    live: Option<&Live>,
) -> anyhow::Result<Outcome> {
    let n = spec.calls * 2;
    if spec.calls == 0 || parties.len() != n || n > MAX_PARTIES {
        bail!(
            "calls must be 1..={} with two bound parties each",
            MAX_PARTIES / 2
        );
    }
    if hello.is_some_and(|h| h.len() != n) {
        bail!("one user id per party");
    }
    if spec.frame_len < PROBE_LEN || spec.frame_len > 1400 {
        bail!("datagram length must be {PROBE_LEN}..=1400");
    }
    if !(spec.rate > 0.0 && spec.rate.is_finite()) {
        bail!("the rate must be positive");
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = Gen::new(spec, parties, server)?;
            g.live = live.map(Publisher::new);
            g.run(hello, target_pid, progress)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })
}

struct Gen<'a> {
    spec: &'a CallSpec,
    parties: &'a [LoadSocket],
    server: SocketAddrV4,
    next_seq: Vec<u64>,
    sent_measured: Vec<u64>,
    sent_total: u64,
    flows: FlowTable,
    /// Party p's datagrams reached its partner (ready check).
    through: Vec<bool>,
    latency: Latency,
    kernel_stamped: u64,
    user_stamped: u64,
    drops_seen: Vec<u32>,
    stray: u64,
    offset: RealtimeOffset,
    sh: SendHeaders,
    rb: RecvBatch,
    bufs: Vec<Vec<u8>>,
    arrivals: u64,
    /// Running totals for a long scenario (None: not published).
    live: Option<Publisher<'a>>,
}

impl<'a> Gen<'a> {
    fn new(
        spec: &'a CallSpec,
        parties: &'a [LoadSocket],
        server: SocketAddrV4,
    ) -> anyhow::Result<Self> {
        let n = parties.len();
        Ok(Gen {
            spec,
            parties,
            server,
            next_seq: vec![0; n],
            sent_measured: vec![0; n],
            sent_total: 0,
            flows: FlowTable::new(n, 1),
            through: vec![false; n],
            latency: Latency::new(),
            kernel_stamped: 0,
            user_stamped: 0,
            drops_seen: vec![0; n],
            stray: 0,
            offset: RealtimeOffset::measure(),
            sh: SendHeaders::new(spec.batch.max(1)),
            rb: RecvBatch::new(64, 2048),
            bufs: vec![vec![0u8; spec.frame_len]; spec.batch.max(1)],
            arrivals: 0,
            live: None,
        })
    }

    /// Publishes the running totals (sequence gaps as the loss so far).
    fn publish_running(&mut self) {
        if let Some(p) = self.live.as_mut() {
            let sent: u64 = self.sent_measured.iter().sum();
            p.publish(LiveSnapshot {
                sent,
                expected: sent,
                received: self.flows.received(),
                lost: self.flows.gaps(),
            });
        }
    }

    /// Whether the scenario asked the run to end.
    fn stopping(&self) -> bool {
        self.live.as_ref().is_some_and(Publisher::stopping)
    }

    fn send_one(&mut self, p: usize, bytes: &[u8]) -> anyhow::Result<()> {
        let Some(s) = self.parties.get(p) else {
            return Ok(());
        };
        match s.sock.send_to(bytes, self.server) {
            Ok(_) => {
                self.sent_total += 1;
                Ok(())
            }
            // A full socket buffer: the ready loop retries.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e).with_context(|| format!("party {p}: sending to {}", self.server)),
        }
    }

    fn run(
        mut self,
        hello: Option<&[u64]>,
        target_pid: Option<u32>,
        progress: &dyn Fn(f64),
    ) -> anyhow::Result<Outcome> {
        let pin_error = match self.spec.gen_core {
            Some(c) => pin::pin_current_thread(c).err(),
            None => Some("no core given".into()),
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        for (i, s) in self.parties.iter().enumerate() {
            epoll
                .add(
                    s.sock.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
                )
                .context("epoll_ctl")?;
        }
        let mut events = vec![EpollEvent::empty(); 256];
        let server_drops_start = procstat::udp_socket_drops(self.server.port()).ok();
        let n = self.parties.len();

        // 1-2. Register and check every direction forwards.
        let ready_deadline = clock::mono_ns() + READY_TIMEOUT.as_nanos() as u64;
        let mut ready_probe = vec![0u8; self.spec.frame_len];
        loop {
            let missing: Vec<usize> = (0..n).filter(|&p| !self.through[p]).collect();
            if missing.is_empty() {
                break;
            }
            if clock::mono_ns() > ready_deadline {
                bail!(
                    "{} of {n} call directions did not forward within {READY_TIMEOUT:?} \
                     (HELLO refused or call not installed?)",
                    missing.len()
                );
            }
            for (k, &p) in missing.iter().enumerate() {
                if let Some(ids) = hello {
                    let h = format!("HELLO {}", ids[p]);
                    self.send_one(p, h.as_bytes())?;
                }
                Probe {
                    sender: p as u32,
                    seq: 0,
                    sent_ns: clock::mono_ns(),
                    measured: false,
                }
                .write(&mut ready_probe);
                let rp = ready_probe.clone();
                self.send_one(p, &rp)?;
                // The relay queues at most 256 HELLOs per worker batch.
                if k % 128 == 127 {
                    self.receive(&epoll, &mut events, 1)?;
                }
            }
            let retry = clock::mono_ns() + READY_RETRY_NS;
            while clock::mono_ns() < retry && self.through.iter().any(|t| !t) {
                self.receive(&epoll, &mut events, 5)?;
            }
        }

        // 3-4. Warm-up and the measured window.
        let per_party = self.spec.rate / n as f64;
        let start = clock::mono_ns();
        let warm_end = start + self.spec.warmup.as_nanos() as u64;
        let end = warm_end + self.spec.duration.as_nanos() as u64;
        let total_ns = (end - start).max(1);
        let mut sent_sched = vec![0u64; n];
        let mut cpu_start = None;
        let mut wait_start = None;
        let mut gen_cpu_start = 0;
        let mut gen_wait_start = 0;
        let mut max_lag_ns = 0u64;
        let mut last_progress = 0u64;
        let mut window_start = warm_end;
        let mut measured = false;
        loop {
            let now = clock::mono_ns();
            if now >= end {
                break;
            }
            if !measured && now >= warm_end {
                measured = true;
                window_start = now;
                cpu_start = target_pid.and_then(|p| procstat::cpu_ns(p).ok());
                wait_start = target_pid.and_then(|p| procstat::run_queue_wait_ns(p).ok());
                gen_cpu_start = procstat::thread_cpu_ns().unwrap_or(0);
                gen_wait_start = procstat::thread_run_queue_wait_ns().unwrap_or(0);
            }
            if now - last_progress > 250_000_000 {
                last_progress = now;
                progress((now - start) as f64 / total_ns as f64);
                self.publish_running();
                if self.stopping() {
                    break;
                }
            }
            let elapsed_s = (now - start) as f64 / 1e9;
            let mut behind = 0u64;
            for (j, sent_j) in sent_sched.iter_mut().enumerate() {
                let due = (elapsed_s * per_party + j as f64 / n as f64).floor() as u64;
                let lag = due.saturating_sub(*sent_j);
                if lag > 0 {
                    let k = self.send_party(j, lag, measured)?;
                    *sent_j += k;
                    behind += lag - k;
                }
            }
            if measured {
                max_lag_ns = max_lag_ns.max((behind as f64 / self.spec.rate * 1e9) as u64);
            }
            let next_due_ns = (1e9 / self.spec.rate) as u64;
            let wait_ms = if next_due_ns >= 2_000_000 { 1 } else { 0 };
            self.receive(&epoll, &mut events, wait_ms)?;
        }
        let window_end = clock::mono_ns();
        let target_cpu_ns = match (cpu_start, target_pid) {
            (Some(a), Some(p)) => procstat::cpu_ns(p).ok().map(|b| b.saturating_sub(a)),
            _ => None,
        };
        let target_rss_kib = target_pid.and_then(|p| procstat::rss_kib(p).ok());
        let target_wait_ns = match (wait_start, target_pid) {
            (Some(a), Some(p)) => procstat::run_queue_wait_ns(p)
                .ok()
                .map(|b| b.saturating_sub(a)),
            _ => None,
        };
        let gen_wait_ns = procstat::thread_run_queue_wait_ns()
            .unwrap_or(0)
            .saturating_sub(gen_wait_start);
        let gen_cpu_ns = procstat::thread_cpu_ns()
            .unwrap_or(0)
            .saturating_sub(gen_cpu_start);

        // 5. Drain.
        let expected: u64 = self.sent_measured.iter().sum();
        let drain_end = clock::mono_ns() + self.spec.drain.as_nanos() as u64;
        while clock::mono_ns() < drain_end {
            self.receive(&epoll, &mut events, 5)?;
            if self.arrivals >= expected {
                break;
            }
        }
        progress(1.0);
        let server_socket_drops = match (server_drops_start, target_pid) {
            (Some(a), Some(_)) => procstat::udp_socket_drops(self.server.port())
                .ok()
                .map(|b| b.saturating_sub(a)),
            _ => None,
        };
        let totals = self.flows.totals(&self.sent_measured, |_, _| true);
        let lossy_flows = self
            .flows
            .lossy(&self.sent_measured, |_, _| true, MAX_LOSSY_FLOWS);
        if let Some(p) = self.live.as_mut() {
            p.publish(LiveSnapshot {
                sent: totals.expected,
                expected: totals.expected,
                received: totals.received,
                lost: totals.lost,
            });
        }
        let drift = self.offset.drift_ns(RealtimeOffset::measure());
        Ok(Outcome {
            sent_measured: self.sent_measured,
            sent_total: self.sent_total,
            totals,
            latency: self.latency,
            kernel_stamped: self.kernel_stamped,
            user_stamped: self.user_stamped,
            bench_drops: self.drops_seen.iter().map(|&d| u64::from(d)).sum(),
            stray: self.stray,
            window_ns: window_end.saturating_sub(window_start),
            max_lag_ns,
            gen_cpu_ns,
            pin_error,
            target_cpu_ns,
            target_rss_kib,
            target_wait_ns,
            gen_wait_ns,
            server_socket_drops,
            clock_drift_ns: drift.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            lossy_flows,
        })
    }

    /// Sends up to `n` datagrams of party `j`; returns how many the kernel took.
    fn send_party(&mut self, j: usize, n: u64, measured: bool) -> anyhow::Result<u64> {
        let mut done = 0u64;
        let batch = self.bufs.len() as u64;
        while done < n {
            let k = (n - done).min(batch) as usize;
            let now = clock::mono_ns();
            // Sequence 0 was the ready probe.
            for (b, seq) in self.bufs[..k].iter_mut().zip(self.next_seq[j] + 1..) {
                Probe {
                    sender: j as u32,
                    seq,
                    sent_ns: now,
                    measured,
                }
                .write(b);
            }
            let msgs: Vec<(&[u8], SocketAddrV4)> = self.bufs[..k]
                .iter()
                .map(|b| (b.as_slice(), self.server))
                .collect();
            let sent = self
                .sh
                .send(udp::fd(&self.parties[j].sock), &msgs)
                .with_context(|| format!("party {j}: sendmmsg to {}", self.server))?
                as u64;
            self.next_seq[j] += sent;
            self.sent_total += sent;
            if measured {
                self.sent_measured[j] += sent;
            }
            done += sent;
            if sent < k as u64 {
                break;
            }
        }
        Ok(done)
    }

    fn receive(
        &mut self,
        epoll: &Epoll,
        events: &mut [EpollEvent],
        wait_ms: u16,
    ) -> anyhow::Result<()> {
        let got_events = match epoll.wait(events, wait_ms) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..got_events] {
            let r = ev.data() as usize;
            for _ in 0..RECV_ROUNDS {
                let Some(st) = self.parties.get(r) else {
                    break;
                };
                let got = self
                    .rb
                    .recv(udp::fd(&st.sock))
                    .with_context(|| format!("party {r}: recvmmsg"))?;
                let user_now = clock::mono_ns();
                for i in 0..got {
                    let Some((bytes, meta)) = self.rb.get(i) else {
                        continue;
                    };
                    if let Some(d) = meta.drops {
                        self.drops_seen[r] = self.drops_seen[r].max(d);
                    }
                    let Some(p) = Probe::read(bytes) else {
                        self.stray += 1;
                        continue;
                    };
                    let s = p.sender as usize;
                    if s >= self.parties.len() || partner(s) != r {
                        self.stray += 1;
                        continue;
                    }
                    self.through[s] = true;
                    if !p.measured {
                        continue;
                    }
                    self.flows.arrive(s, 0, p.seq);
                    self.arrivals += 1;
                    let recv_ns = match meta.kernel_real_ns {
                        Some(k) => {
                            self.kernel_stamped += 1;
                            self.offset.to_mono(k)
                        }
                        None => {
                            self.user_stamped += 1;
                            user_now
                        }
                    };
                    self.latency.record(p.sent_ns, recv_ns);
                }
                if got < 64 {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partners_pair_up() {
        assert_eq!(partner(0), 1);
        assert_eq!(partner(1), 0);
        assert_eq!(partner(6), 7);
        assert_eq!(partner(7), 6);
    }
}
