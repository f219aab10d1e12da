//! Whelm voice load program: acts as control over the command socket and as
//! the call parties on loopback.
//!
//! Starts the relay binary pinned to `--relay-cores` (bandwidth limit off,
//! its own command socket), pins itself to `--cpu`, binds 2 x `--calls`
//! sockets on 127.0.0.1, installs them as users with registered voice
//! addresses and the calls between pairs (one `replace_all`, acknowledged
//! after every worker applied it), then sends `--size`-byte packets
//! round-robin from every socket at `--rate` packets/s in total. Each packet
//! carries its CLOCK_MONOTONIC send time; the receiver computes latency.
//! Per run: relayed packets/s (as received), loss, relay CPU per relayed
//! packet (/proc/<pid>/stat utime+stime over the window), latency p50/p99.
//! `--direct` sends to the partner without the relay (the generator's and
//! the kernel's own share of the latency). Several runs; medians at the end.
//!
//! ```text
//! cargo build --release -p whelm-relay --examples
//! target/release/examples/voice_load --relay-bin target/release/whelm-relay \
//!     --engine uring --calls 100 --rate 250000 --seconds 5 --runs 3
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use whelm_shared::channel::{
    CallEntry, ClientMsg, Command as Cmd, Outcome, PROTOCOL_VERSION, RelayMsg, Role, State,
    UserEntry, decode, encode,
};
use whelm_shared::line::UserId;

struct Args {
    relay_bin: String,
    engine: String,
    relay_cores: String,
    cpu: usize,
    calls: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    runs: usize,
    direct: bool,
    extra: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        relay_bin: "target/release/whelm-relay".into(),
        engine: "uring".into(),
        relay_cores: "0".into(),
        cpu: 1,
        calls: 100,
        rate: 250_000,
        seconds: 5,
        size: 160,
        runs: 3,
        direct: false,
        extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--direct" {
            a.direct = true;
            continue;
        }
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--relay-bin" => a.relay_bin = v(),
            "--engine" => a.engine = v(),
            "--relay-cores" => a.relay_cores = v(),
            "--cpu" => a.cpu = v().parse().unwrap(),
            "--calls" => a.calls = v().parse().unwrap(),
            "--rate" => a.rate = v().parse().unwrap(),
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--size" => a.size = v().parse().unwrap(),
            "--runs" => a.runs = v().parse().unwrap(),
            "--relay-arg" => a.extra.push(v()),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.seconds <= 120 && a.runs <= 20 && a.calls >= 1 && a.calls <= 5000);
    assert!(a.size >= 24 && a.size <= 1400);
    a
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CLOCK_MONOTONIC (what `Instant` reads on Linux) in ns since the first
/// call; sender and receiver are this one process.
fn mono_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct RunResult {
    relayed_per_s: f64,
    loss: f64,
    us_per_pkt: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Receives everything pending on `sock`; counts (and pushes the latency
/// in ns of) the packets whose sequence number lies in `window` (packets
/// sent during the measured window, wherever they arrive).
fn drain(
    sock: &UdpSocket,
    bufs: &mut [u8],
    size: usize,
    window: std::ops::Range<u64>,
    lat: &mut Vec<u32>,
) -> u64 {
    const BATCH: usize = 64;
    let mut total = 0u64;
    loop {
        let mut iovs: Vec<libc::iovec> = (0..BATCH)
            .map(|i| libc::iovec {
                iov_base: bufs[i * size..].as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY: all-zero mmsghdr is valid; each then points at its own iovec.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: hdrs/iovs/bufs are valid for the call; BATCH fits them.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return total;
        }
        let now = mono_ns();
        for i in 0..n as usize {
            let b = &bufs[i * size..i * size + 16];
            let sent = u64::from_be_bytes(b[..8].try_into().unwrap());
            let seq = u64::from_be_bytes(b[8..16].try_into().unwrap());
            if window.contains(&seq) {
                total += 1;
                lat.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
            }
        }
        if (n as usize) < BATCH {
            return total;
        }
    }
}

struct Relay {
    child: std::process::Child,
    voice: SocketAddr,
    _dir: tempfile::TempDir,
    ctl: BufReader<UnixStream>,
    ctl_w: UnixStream,
}

fn start_relay(a: &Args) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("relay.sock");
    let mut child = Command::new(&a.relay_bin)
        .args([
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--voice-port",
            "0",
            "--bandwidth-mbps",
            "0",
            "--engine",
            &a.engine,
            "--cores",
            &a.relay_cores,
            "--control-socket",
            sock.to_str().unwrap(),
        ])
        .args(&a.extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let start = line.find("voice=").expect("ready line") + 6;
    let voice: SocketAddr = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = Relay {
        child,
        voice,
        _dir: dir,
        ctl: BufReader::new(s.try_clone().unwrap()),
        ctl_w: s,
    };
    r.send(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
        agent: "voice_load".into(),
    });
    assert!(matches!(r.read(), RelayMsg::Welcome { .. }));
    r
}

impl Relay {
    fn send(&mut self, m: &ClientMsg) {
        self.ctl_w.write_all(&encode(m)).unwrap();
    }
    fn read(&mut self) -> RelayMsg {
        let mut l = String::new();
        self.ctl.read_line(&mut l).unwrap();
        decode(l.as_bytes()).unwrap()
    }
    fn request(&mut self, id: u64, command: Cmd) -> Outcome {
        self.send(&ClientMsg::Request { id, command });
        loop {
            if let RelayMsg::Reply { id: got, outcome } = self.read() {
                assert_eq!(got, id);
                return outcome;
            }
        }
    }
    fn stop(self) {
        // Drop does it.
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn one_run(a: &Args) -> RunResult {
    let socks: Vec<UdpSocket> = (0..a.calls * 2)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
            s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s.into()
        })
        .collect();
    let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let relay = if a.direct {
        None
    } else {
        let mut r = start_relay(a);
        let uid = |i: usize| UserId::new(i as u64 + 1).unwrap();
        let state = State {
            users: addrs
                .iter()
                .enumerate()
                .map(|(i, ad)| UserEntry {
                    user: uid(i),
                    ip: ad.ip(),
                    token: None,
                    voice: Some(*ad),
                })
                .collect(),
            calls: (0..a.calls)
                .map(|c| CallEntry {
                    a: uid(2 * c),
                    b: uid(2 * c + 1),
                })
                .collect(),
        };
        let t = Instant::now();
        assert_eq!(r.request(1, Cmd::ReplaceAll(state)), Outcome::Ok);
        eprintln!(
            "installed {} calls, acknowledged in {:?}",
            a.calls,
            t.elapsed()
        );
        Some(r)
    };
    let dest: Vec<SocketAddr> = (0..socks.len())
        .map(|i| match &relay {
            Some(r) => r.voice,
            None => addrs[i ^ 1],
        })
        .collect();
    let pid = relay.as_ref().map(|r| r.child.id());
    let bsize = 2048;
    let mut bufs = vec![0u8; 64 * bsize];
    let mut pkt = vec![0x5Au8; a.size];
    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs(a.seconds);
    let t0 = Instant::now();
    let (mut sent, mut recv_window) = (0u64, 0u64);
    // Sequence numbers sent during the window: [first, last).
    let mut window_seqs = u64::MAX..u64::MAX;
    let mut cpu0 = 0;
    let mut in_window = false;
    let mut window_start = t0;
    let end = t0 + warmup + window;
    let mut lat: Vec<u32> = Vec::with_capacity((a.rate * (a.seconds + 1)) as usize);
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if !in_window && now >= t0 + warmup {
            in_window = true;
            window_start = now;
            cpu0 = pid.map_or(0, cpu_ticks);
            window_seqs = sent..u64::MAX;
        }
        if now >= end {
            break;
        }
        let due = (now.duration_since(t0).as_secs_f64() * a.rate as f64) as u64;
        while sent < due {
            pkt[..8].copy_from_slice(&mono_ns().to_be_bytes());
            pkt[8..16].copy_from_slice(&sent.to_be_bytes());
            if socks[next].send_to(&pkt, dest[next]).is_ok() {
                sent += 1;
                next = (next + 1) % socks.len();
            } else {
                break;
            }
        }
        // One poll over every socket, then drain only the readable ones.
        let mut fds: Vec<PollFd> = socks
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) > 0 {
            let ready: Vec<usize> = fds
                .iter()
                .enumerate()
                .filter(|(_, f)| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
                .map(|(i, _)| i)
                .collect();
            drop(fds);
            for i in ready {
                recv_window += drain(&socks[i], &mut bufs, bsize, window_seqs.clone(), &mut lat);
            }
        }
    }
    window_seqs.end = sent;
    let sent_window = window_seqs.end - window_seqs.start;
    let window_end = Instant::now();
    let cpu1 = pid.map_or(0, cpu_ticks);
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        for s in &socks {
            recv_window += drain(s, &mut bufs, bsize, window_seqs.clone(), &mut lat);
        }
    }
    if let Some(r) = relay {
        r.stop();
    }
    let secs = window_end.duration_since(window_start).as_secs_f64();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = (cpu1 - cpu0) as f64 / hz;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |&v| f64::from(v) / 1000.0)
    };
    RunResult {
        relayed_per_s: recv_window as f64 / secs,
        loss: 1.0 - (recv_window as f64 / sent_window.max(1) as f64),
        us_per_pkt: cpu_s * 1e6 / recv_window.max(1) as f64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let a = parse_args();
    let mut set = nix::sched::CpuSet::new();
    set.set(a.cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    let label = if a.direct {
        "direct"
    } else {
        a.engine.as_str()
    };
    let mut res = Vec::new();
    for run in 0..a.runs {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let r = one_run(&a);
        println!(
            "run {run}: engine={label} calls={} rate={}/s relayed={:.0}/s loss={:.4}% relay_cpu={:.3}us/pkt p50={:.1}us p99={:.1}us loadavg_before={}",
            a.calls,
            a.rate,
            r.relayed_per_s,
            r.loss * 100.0,
            r.us_per_pkt,
            r.p50_us,
            r.p99_us,
            load.split_whitespace().next().unwrap_or("?")
        );
        res.push(r);
    }
    let (f, fl, fh) = median(res.iter().map(|r| r.relayed_per_s).collect());
    let (l, ll, lh) = median(res.iter().map(|r| r.loss * 100.0).collect());
    let (c, cl, ch) = median(res.iter().map(|r| r.us_per_pkt).collect());
    let (p, pl, ph) = median(res.iter().map(|r| r.p99_us).collect());
    println!(
        "median: engine={label} rate={}/s relayed={f:.0}/s [{fl:.0}..{fh:.0}] loss={l:.4}% [{ll:.4}..{lh:.4}] relay_cpu={c:.3}us/pkt [{cl:.3}..{ch:.3}] p99={p:.1}us [{pl:.1}..{ph:.1}]",
        a.rate
    );
}
