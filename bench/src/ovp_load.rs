//! One measured run of an OVP conference against a server (the relay or the
//! baseline forwarder): the same code drives both, so they are comparable.
//!
//! Stations are UDP sockets on 127.0.0.1, each with a distinct callsign and
//! a real OVP header; the first `transmitting` of them send frames whose
//! payload area carries a [`Probe`]. One thread, pinned to the generator
//! core, both sends and receives:
//!
//! 1. join: every station sends one unmeasured frame so the server knows it
//!    (a relay forwards only to stations it has heard), then a short pause;
//! 2. warm-up: paced load, not measured;
//! 3. measured window: paced load, frames flagged `measured`; the server's
//!    CPU time is sampled at both ends;
//! 4. drain: no more sends; receive until everything expected arrived or
//!    the drain time is over.
//!
//! Pacing: station j's k-th frame is due at `(k + j/T) / rate_j` after the
//! start (stations staggered); each loop sends every station's due frames
//! in `sendmmsg` batches, then drains ready sockets (epoll) with
//! `recvmmsg`. A generator that falls behind sends late (the probe carries
//! the real send time, so latency stays honest) and is flagged if its
//! achieved rate is under 99% of the offered one. Packets the bench's own
//! sockets dropped (`SO_RXQ_OVFL`) are counted apart and flag the run too.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use whelm_shared::ovp::{self, FRAME_LEN, HEADER_LEN, StationId};

use crate::clock::{self, RealtimeOffset};
use crate::flows::{FlowTable, LossyFlow, Totals};
use crate::latency::Latency;
use crate::live::{Live, LiveSnapshot, Publisher};
use crate::pin;
use crate::probe::Probe;
use crate::procstat;
use crate::udp::{self, LoadSocket, RecvBatch, SendHeaders};

/// Most `recvmmsg` calls per ready socket per loop (fairness between
/// sockets and the send schedule).
const RECV_ROUNDS: usize = 4;
/// Pause after the join frames.
const JOIN_PAUSE: Duration = Duration::from_millis(200);
/// Largest number of flows (senders x receivers) a run accounts.
pub const MAX_FLOWS: usize = 1 << 22;
/// Achieved send rate below this share of the offered rate flags the run.
const GENERATOR_OK: f64 = 0.99;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Stations in the conference.
    pub stations: usize,
    /// How many of them transmit (the first ones).
    pub transmitting: usize,
    /// Total frames/s sent into the server (all transmitting stations).
    pub rate: f64,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Longest wait for stragglers after the last send.
    pub drain: Duration,
    /// Frames per `sendmmsg`.
    pub batch: usize,
    /// Core to pin the generator thread to.
    pub gen_core: Option<usize>,
    /// Frame length (134 normally; at least header + probe).
    pub frame_len: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Measured frames each transmitting station sent.
    pub sent_measured: Vec<u64>,
    /// All frames sent, including join and warm-up.
    pub sent_total: u64,
    /// Expected/received/lost/reordered/duplicated of measured frames.
    pub totals: Totals,
    /// One-way latency of measured frames.
    pub latency: Latency,
    /// Measured frames whose receive time came from the kernel.
    pub kernel_stamped: u64,
    /// Measured frames stamped in user space (no kernel timestamp).
    pub user_stamped: u64,
    /// Datagrams the bench's own sockets dropped (`SO_RXQ_OVFL`).
    pub bench_drops: u64,
    /// Datagrams that were not probes of this run.
    pub stray: u64,
    /// Length of the measured window as it happened, ns.
    pub window_ns: u64,
    /// Largest backlog of the generator in the window, as time, ns.
    pub max_lag_ns: u64,
    /// Generator thread CPU time in the window, ns.
    pub gen_cpu_ns: u64,
    /// Why the generator is not pinned, if it is not.
    pub pin_error: Option<String>,
    /// CPU time of the server process in the window, ns (if a pid was given).
    pub target_cpu_ns: Option<u64>,
    /// RSS of the server at the end of the window, KiB.
    pub target_rss_kib: Option<u64>,
    /// Time the server's threads waited for a CPU in the window, ns
    /// (another process on its core).
    pub target_wait_ns: Option<u64>,
    /// Time the generator thread waited for a CPU in the window, ns.
    pub gen_wait_ns: u64,
    /// Drops of the server's receiving socket(s) over the run
    /// (`/proc/net/udp`), if the server is on this host.
    pub server_socket_drops: Option<u64>,
    /// Realtime clock moved against monotonic during the run, ns.
    pub clock_drift_ns: i64,
    /// The first flows that lost packets (at most [`MAX_LOSSY_FLOWS`]),
    /// to tell a gap from a lost head or tail.
    pub lossy_flows: Vec<LossyFlow>,
}

/// Lossy flows an [`Outcome`] lists at most.
pub const MAX_LOSSY_FLOWS: usize = 16;

impl Outcome {
    /// Frames/s the generator achieved in the window.
    pub fn achieved_send_rate(&self) -> f64 {
        per_second(self.sent_measured.iter().sum(), self.window_ns)
    }

    /// Copies/s received (forwarded by the server and not lost).
    pub fn received_rate(&self) -> f64 {
        per_second(self.totals.received, self.window_ns)
    }

    /// The generator could not keep the offered rate.
    pub fn generator_bound(&self, offered: f64) -> bool {
        self.achieved_send_rate() < offered * GENERATOR_OK
    }
}

fn per_second(n: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        n as f64 * 1e9 / ns as f64
    }
}

/// A callsign for station `i`: `WB` + base-36 digits, distinct per index.
pub fn callsign(i: usize) -> String {
    const DIGITS: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::from("WB");
    let mut v = i;
    loop {
        s.push(char::from(DIGITS[v % 36]));
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s
}

/// Binds `n` station sockets on 127.0.0.1.
pub fn bind_stations(n: usize) -> anyhow::Result<Vec<LoadSocket>> {
    (0..n)
        .map(|i| {
            udp::load_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
                .with_context(|| format!("binding station socket {i}"))
        })
        .collect()
}

/// Runs one load against `server` from `stations` (already bound; the
/// baseline's table was built from their addresses). `target_pid` is
/// sampled for CPU time and RSS. `progress` gets the elapsed fraction.
pub fn run(
    spec: &LoadSpec,
    stations: &[LoadSocket],
    server: SocketAddrV4,
    target_pid: Option<u32>,
    progress: &(dyn Fn(f64) + Sync),
) -> anyhow::Result<Outcome> {
    run_live(spec, stations, server, target_pid, progress, None)
}

/// As [`run`], also publishing running totals into `live` (every 250 ms
/// and the exact totals after the drain) and ending the window early
/// when `live.stop` is set (the `soak` scenario).
pub fn run_live(
    spec: &LoadSpec,
    stations: &[LoadSocket],
    server: SocketAddrV4,
    target_pid: Option<u32>,
    progress: &(dyn Fn(f64) + Sync),
    live: Option<&Live>,
) -> anyhow::Result<Outcome> {
    if stations.len() != spec.stations || spec.stations < 2 {
        bail!("a conference needs at least 2 stations, bound and counted alike");
    }
    if spec.transmitting == 0 || spec.transmitting > spec.stations {
        bail!("transmitting stations must be 1..={}", spec.stations);
    }
    if spec.transmitting * spec.stations > MAX_FLOWS {
        bail!(
            "too many flows to account ({} x {})",
            spec.transmitting,
            spec.stations
        );
    }
    if spec.frame_len < HEADER_LEN + crate::probe::PROBE_LEN || spec.frame_len > 1400 {
        bail!(
            "frame length must be {}..=1400",
            HEADER_LEN + crate::probe::PROBE_LEN
        );
    }
    if !(spec.rate > 0.0 && spec.rate.is_finite()) {
        bail!("the rate must be positive");
    }
    let spec = spec.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut g = Generator::new(&spec, stations, server)?;
            g.live = live.map(Publisher::new);
            g.run(target_pid, progress)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })
}

struct Generator<'a> {
    spec: &'a LoadSpec,
    stations: &'a [LoadSocket],
    server: SocketAddrV4,
    templates: Vec<Vec<u8>>,
    next_seq: Vec<u64>,
    sent_measured: Vec<u64>,
    sent_total: u64,
    flows: FlowTable,
    latency: Latency,
    kernel_stamped: u64,
    user_stamped: u64,
    drops_seen: Vec<u32>,
    stray: u64,
    offset: RealtimeOffset,
    sh: SendHeaders,
    rb: RecvBatch,
    bufs: Vec<Vec<u8>>,
    /// Measured arrivals, duplicates included (ends the drain early).
    arrivals: u64,
    /// Running totals for a long scenario (None: not published).
    live: Option<Publisher<'a>>,
}

/// Where the run is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measured,
}

impl<'a> Generator<'a> {
    fn new(
        spec: &'a LoadSpec,
        stations: &'a [LoadSocket],
        server: SocketAddrV4,
    ) -> anyhow::Result<Self> {
        let templates = (0..spec.stations)
            .map(|i| {
                let call = callsign(i);
                let id = StationId::encode(&call).with_context(|| format!("callsign {call}"))?;
                let mut f = vec![0u8; spec.frame_len];
                let mut h = [0u8; HEADER_LEN];
                ovp::write_header(id, &mut h);
                f[..HEADER_LEN].copy_from_slice(&h);
                Ok(f)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Generator {
            spec,
            stations,
            server,
            templates,
            next_seq: vec![0; spec.transmitting],
            sent_measured: vec![0; spec.transmitting],
            sent_total: 0,
            flows: FlowTable::new(spec.transmitting, spec.stations),
            latency: Latency::new(),
            kernel_stamped: 0,
            user_stamped: 0,
            drops_seen: vec![0; spec.stations],
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
                expected: sent * (self.spec.stations as u64 - 1),
                received: self.flows.received(),
                lost: self.flows.gaps(),
            });
        }
    }

    /// Whether the scenario asked the run to end.
    fn stopping(&self) -> bool {
        self.live.as_ref().is_some_and(Publisher::stopping)
    }

    fn run(mut self, target_pid: Option<u32>, progress: &dyn Fn(f64)) -> anyhow::Result<Outcome> {
        let pin_error = match self.spec.gen_core {
            Some(c) => pin::pin_current_thread(c).err(),
            None => Some("no core given".into()),
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        for (i, s) in self.stations.iter().enumerate() {
            epoll
                .add(
                    s.sock.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
                )
                .context("epoll_ctl")?;
        }
        let mut events = vec![EpollEvent::empty(); 256];

        let server_drops_start = procstat::udp_socket_drops(self.server.port()).ok();
        // 1. Join: one unmeasured frame per station.
        for i in 0..self.spec.stations {
            let mut f = self.templates[i].clone();
            Probe {
                sender: u32::MAX,
                seq: 0,
                sent_ns: clock::mono_ns(),
                measured: false,
            }
            .write(&mut f[HEADER_LEN..]);
            self.stations[i]
                .sock
                .send_to(&f, self.server)
                .with_context(|| format!("station {i}: sending the join frame"))?;
            self.sent_total += 1;
        }
        let join_end = clock::mono_ns() + JOIN_PAUSE.as_nanos() as u64;
        while clock::mono_ns() < join_end {
            self.receive(&epoll, &mut events, 10)?;
        }

        // 2-3. Warm-up and the measured window.
        let t = self.spec.transmitting;
        let per_station = self.spec.rate / t as f64;
        let start = clock::mono_ns();
        let warm_end = start + self.spec.warmup.as_nanos() as u64;
        let end = warm_end + self.spec.duration.as_nanos() as u64;
        let total_ns = (end - start).max(1);
        let mut sent_sched = vec![0u64; t];
        let mut cpu_start = None;
        let mut wait_start = None;
        let mut gen_cpu_start = 0;
        let mut gen_wait_start = 0;
        let mut max_lag_ns = 0u64;
        let mut last_progress = 0u64;
        let mut window_start = warm_end;
        let mut phase = Phase::Warmup;
        loop {
            let now = clock::mono_ns();
            if now >= end {
                break;
            }
            if phase == Phase::Warmup && now >= warm_end {
                phase = Phase::Measured;
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
                let due = (elapsed_s * per_station + j as f64 / t as f64).floor() as u64;
                let lag = due.saturating_sub(*sent_j);
                if lag > 0 {
                    let n = self.send_station(j, lag, phase == Phase::Measured)?;
                    *sent_j += n;
                    // What is still due after sending: the backlog.
                    behind += lag - n;
                }
            }
            if phase == Phase::Measured {
                max_lag_ns = max_lag_ns.max((behind as f64 / self.spec.rate * 1e9) as u64);
            }
            // Wait for packets until the next frame is due (at most 1 ms).
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

        // 4. Drain.
        let expected: u64 =
            self.sent_measured.iter().sum::<u64>() * (self.spec.stations as u64 - 1);
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
        let totals = self.flows.totals(&self.sent_measured, |s, r| s != r);
        let lossy_flows = self
            .flows
            .lossy(&self.sent_measured, |s, r| s != r, MAX_LOSSY_FLOWS);
        if let Some(p) = self.live.as_mut() {
            p.publish(LiveSnapshot {
                sent: self.sent_measured.iter().sum(),
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

    /// Sends up to `n` frames of transmitting station `j`; returns how many
    /// the kernel took.
    fn send_station(&mut self, j: usize, n: u64, measured: bool) -> anyhow::Result<u64> {
        let mut done = 0u64;
        let batch = self.bufs.len() as u64;
        while done < n {
            let k = (n - done).min(batch) as usize;
            let now = clock::mono_ns();
            for (b, seq) in self.bufs[..k].iter_mut().zip(self.next_seq[j]..) {
                b.copy_from_slice(&self.templates[j]);
                Probe {
                    sender: j as u32,
                    seq,
                    sent_ns: now,
                    measured,
                }
                .write(&mut b[HEADER_LEN..]);
            }
            let msgs: Vec<(&[u8], SocketAddrV4)> = self.bufs[..k]
                .iter()
                .map(|b| (b.as_slice(), self.server))
                .collect();
            let sent = self
                .sh
                .send(udp::fd(&self.stations[j].sock), &msgs)
                .with_context(|| format!("station {j}: sendmmsg to {}", self.server))?
                as u64;
            self.next_seq[j] += sent;
            self.sent_total += sent;
            if measured {
                self.sent_measured[j] += sent;
            }
            done += sent;
            if sent < k as u64 {
                break; // socket buffer full: the rest stays due
            }
        }
        Ok(done)
    }

    /// Waits up to `wait_ms` for readable stations and drains them.
    fn receive(
        &mut self,
        epoll: &Epoll,
        events: &mut [EpollEvent],
        wait_ms: u16,
    ) -> anyhow::Result<()> {
        let n = match epoll.wait(events, wait_ms) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            let r = ev.data() as usize;
            for _ in 0..RECV_ROUNDS {
                let Some(st) = self.stations.get(r) else {
                    break;
                };
                let got = self
                    .rb
                    .recv(udp::fd(&st.sock))
                    .with_context(|| format!("station {r}: recvmmsg"))?;
                let user_now = clock::mono_ns();
                for i in 0..got {
                    let Some((bytes, meta)) = self.rb.get(i) else {
                        continue;
                    };
                    if let Some(d) = meta.drops {
                        self.drops_seen[r] = self.drops_seen[r].max(d);
                    }
                    let probe = bytes.get(HEADER_LEN..).and_then(Probe::read);
                    let Some(p) = probe else {
                        self.stray += 1;
                        continue;
                    };
                    if !p.measured {
                        continue;
                    }
                    if !self.flows.arrive(p.sender as usize, r, p.seq) {
                        self.stray += 1;
                        continue;
                    }
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

/// Frames of every station use this length unless told otherwise.
pub const DEFAULT_FRAME_LEN: usize = FRAME_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callsigns_are_distinct_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            let c = callsign(i);
            let id = StationId::encode(&c).unwrap();
            assert!(seen.insert(id), "{c}");
            assert_eq!(id.to_string(), c);
        }
    }
}
