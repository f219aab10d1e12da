//! OVP conference load program (a stand-in until whelm-bench grows one).
//!
//! Starts the relay binary pinned to one core (`--relay-cores`), pins itself
//! to another (`--cpu`), runs `--stations` stations on loopback sockets
//! (reply-to source), each sending `--size`-byte frames so that the relay
//! receives `--rate` frames/s in total, and receives everything the relay
//! forwards. Per run it reports frames forwarded per second (as received by
//! the stations), loss against the expected fan-out (rate x (stations-1)),
//! and relay CPU per forwarded frame from /proc/<pid>/stat utime+stime over
//! the measured window. Several runs; medians at the end.
//!
//! ```text
//! cargo build --release -p whelm-relay --examples
//! target/release/examples/ovp_load --relay-bin target/release/whelm-relay \
//!     --engine uring --rate 34000 --seconds 5 --runs 3
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use whelm_shared::ovp::{HEADER_LEN, StationId, write_header};

struct Args {
    relay_bin: String,
    engine: String,
    relay_cores: String,
    cpu: usize,
    stations: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    runs: usize,
    extra: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        relay_bin: "target/release/whelm-relay".into(),
        engine: "uring".into(),
        relay_cores: "0".into(),
        cpu: 1,
        stations: 10,
        rate: 34_000,
        seconds: 5,
        size: 134,
        runs: 3,
        extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--relay-bin" => a.relay_bin = v(),
            "--engine" => a.engine = v(),
            "--relay-cores" => a.relay_cores = v(),
            "--cpu" => a.cpu = v().parse().unwrap(),
            "--stations" => a.stations = v().parse().unwrap(),
            "--rate" => a.rate = v().parse().unwrap(),
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--size" => a.size = v().parse().unwrap(),
            "--runs" => a.runs = v().parse().unwrap(),
            "--relay-arg" => a.extra.push(v()),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.seconds <= 120 && a.runs <= 20 && a.stations >= 2 && a.stations <= 200);
    a
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14, 15.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// UDP RcvbufErrors from /proc/net/snmp (all sockets on the host).
fn udp_rcvbuf_errors() -> u64 {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

struct RunResult {
    rcvbuf_errors: u64,
    fwd_per_s: f64,
    loss: f64,
    us_per_frame: f64,
}

/// Receives everything pending on `sock` with recvmmsg; returns the count.
fn drain(sock: &UdpSocket, bufs: &mut [u8], batch: usize, size: usize) -> u64 {
    let mut total = 0u64;
    loop {
        let mut iovs: Vec<libc::iovec> = (0..batch)
            .map(|i| libc::iovec {
                iov_base: bufs[i * size..].as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY: all-zero mmsghdr is valid; each then points at its own iovec.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: hdrs/iovs/bufs are valid for the call; batch <= their lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                batch as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return total;
        }
        total += n as u64;
        if (n as usize) < batch {
            return total;
        }
    }
}

fn one_run(a: &Args) -> RunResult {
    let mut cmd = Command::new(&a.relay_bin);
    cmd.args([
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--voice-port",
        "0",
        "--reply-to",
        "source",
        "--station-rate",
        "0",
        "--engine",
        &a.engine,
        "--cores",
        &a.relay_cores,
    ])
    .args(&a.extra)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start relay");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let start = line.find("ovp=").expect("ready line") + 4;
    let relay: SocketAddr = line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let stations: Vec<(UdpSocket, Vec<u8>)> = (0..a.stations)
        .map(|i| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            let _ = s.set_recv_buffer_size(4 << 20);
            s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            s.set_nonblocking(true).unwrap();
            let mut f = vec![0x55u8; a.size.max(HEADER_LEN)];
            let mut h = [0u8; HEADER_LEN];
            write_header(StationId::encode(&format!("L{i}AD")).unwrap(), &mut h);
            f[..HEADER_LEN].copy_from_slice(&h);
            (s.into(), f)
        })
        .collect();
    for (s, f) in &stations {
        s.send_to(f, relay).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let batch = 64;
    let bsize = 2048;
    let mut bufs = vec![0u8; batch * bsize];
    for (s, _) in &stations {
        drain(s, &mut bufs, batch, bsize);
    }

    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs(a.seconds);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut sent_window = 0u64;
    let mut recv_window = 0u64;
    let mut cpu0 = 0u64;
    let mut rb0 = 0u64;
    let mut in_window = false;
    let mut window_start = t0;
    let end = t0 + warmup + window;
    let max_frames = a.rate * (a.seconds + 2);
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if !in_window && now >= t0 + warmup {
            // Let in-flight frames land, then start counting.
            in_window = true;
            window_start = now;
            cpu0 = cpu_ticks(pid);
            rb0 = udp_rcvbuf_errors();
            sent_window = 0;
            recv_window = 0;
        }
        if now >= end || sent >= max_frames {
            break;
        }
        let due = (now.duration_since(t0).as_secs_f64() * a.rate as f64) as u64;
        while sent < due.min(max_frames) {
            let (s, f) = &stations[next];
            next = (next + 1) % stations.len();
            if s.send_to(f, relay).is_ok() {
                sent += 1;
                sent_window += 1;
            } else {
                break;
            }
        }
        for (s, _) in &stations {
            recv_window += drain(s, &mut bufs, batch, bsize);
        }
    }
    let window_end = Instant::now();
    let cpu1 = cpu_ticks(pid);
    let rb1 = udp_rcvbuf_errors();
    // Frames still in flight at the end belong to the window.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        for (s, _) in &stations {
            recv_window += drain(s, &mut bufs, batch, bsize);
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let secs = window_end.duration_since(window_start).as_secs_f64();
    let expected = sent_window * (a.stations as u64 - 1);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = (cpu1 - cpu0) as f64 / hz;
    RunResult {
        rcvbuf_errors: rb1 - rb0,
        fwd_per_s: recv_window as f64 / secs,
        loss: 1.0 - (recv_window as f64 / expected.max(1) as f64),
        us_per_frame: cpu_s * 1e6 / recv_window.max(1) as f64,
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
    let mut res = Vec::new();
    for run in 0..a.runs {
        let r = one_run(&a);
        println!(
            "run {run}: engine={} stations={} in_rate={}/s forwarded={:.0}/s loss={:.4}% relay_cpu={:.3}us/frame udp_rcvbuf_errors={}",
            a.engine,
            a.stations,
            a.rate,
            r.fwd_per_s,
            r.loss * 100.0,
            r.us_per_frame,
            r.rcvbuf_errors
        );
        res.push(r);
    }
    let (f, fl, fh) = median(res.iter().map(|r| r.fwd_per_s).collect());
    let (l, ll, lh) = median(res.iter().map(|r| r.loss * 100.0).collect());
    let (c, cl, ch) = median(res.iter().map(|r| r.us_per_frame).collect());
    println!(
        "median: engine={} forwarded={f:.0}/s [{fl:.0}..{fh:.0}] loss={l:.4}% [{ll:.4}..{lh:.4}] relay_cpu={c:.3}us/frame [{cl:.3}..{ch:.3}]",
        a.engine
    );
}
