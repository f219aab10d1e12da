//! The `im` scenario: instant messages through the real whelm-control with
//! the chosen store (a temporary SQLite file by default, `--db` for any
//! other, e.g. a MariaDB DSN).
//!
//! Setup: `2 x pairs` users made with `whelm-control --db DB user add`,
//! whelm-control started on 127.0.0.1 (port 0; per-IP connection and
//! command-rate limits off), every client connected and authenticated.
//! Then, paced like the OVP generator: sender i of pair i sends
//! `MSG <partner> wb <seq> <sent_ns> <measured>`; the reader accounts the
//! sender's `OK MSG` (ack latency: the store committed) and the partner's
//! `MSG {json}` (delivery latency, loss, reordering, duplicates). One
//! thread, non-blocking sockets, epoll. Control's CPU per message comes
//! from /proc over the measured window.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use whelm_shared::line::{MessageJson, Reply};

use crate::children::Target;
use crate::clock;
use crate::flows::{FlowTable, Totals};
use crate::latency::{Latency, Percentiles};
use crate::machine::Machine;
use crate::procstat;
use crate::stats::Spread;

/// Heartbeat interval of the bench's sessions (the server's timeout is 30 s).
const HEARTBEAT_NS: u64 = 10_000_000_000;
/// Largest number of pairs (2 connections each).
pub const MAX_PAIRS: usize = 2000;

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct ImScenario {
    /// Sender/recipient pairs.
    pub pairs: usize,
    /// Total messages/s (all senders).
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// Repeats.
    pub repeat: usize,
    /// whelm-control binary.
    pub control_bin: PathBuf,
    /// Store: SQLite path or DSN; None = a temporary SQLite file.
    pub db: Option<String>,
    /// Report directory.
    pub out: PathBuf,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImRecord {
    /// `im`.
    pub scenario: String,
    /// Store kind from the ready line (`store=`).
    pub store: String,
    /// Repeat number.
    pub repeat: usize,
    /// Pairs.
    pub pairs: usize,
    /// Offered messages/s.
    pub offered_rate: f64,
    /// Measured messages sent.
    pub sent: u64,
    /// `OK MSG` received for measured messages.
    pub acked: u64,
    /// `ERROR ...` replies in the window.
    pub errors: u64,
    /// Delivery accounting.
    pub totals: Totals,
    /// Send -> delivery to the recipient, ns.
    pub delivery_ns: Percentiles,
    /// Send -> `OK MSG` (store commit), ns.
    pub ack_ns: Percentiles,
    /// Messages/s sent in the window.
    pub achieved_rate: f64,
    /// Control CPU per delivered message, ns.
    pub cpu_ns_per_message: Option<f64>,
    /// Control RSS at the end, KiB.
    pub rss_kib: Option<u64>,
    /// The ready line of whelm-control.
    pub ready_line: String,
    /// Unix time at the end.
    pub unix_time: u64,
    /// Where it ran.
    pub machine: Machine,
}

/// A non-blocking control connection with its own buffers (also the
/// `soak` scenario's message sessions).
pub(crate) struct Conn {
    /// The connection (non-blocking).
    pub(crate) stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// From `OK AUTH`.
    pub(crate) user_id: u64,
    /// Send times of messages awaiting `OK MSG`, in order.
    pending_acks: VecDeque<(u64, bool)>,
}

/// Connects to `addr` and authenticates one connection per token
/// (blocking, with timeouts); the connections are non-blocking after.
pub(crate) fn connect_all(addr: SocketAddrV4, tokens: &[String]) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .with_context(|| format!("connection {i} to {addr}"))?;
        s.set_nodelay(true).context("TCP_NODELAY")?;
        let mut c = Conn {
            stream: s,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            user_id: 0,
            pending_acks: VecDeque::new(),
        };
        c.queue(&format!("AUTH {t}"));
        c.stream.set_nonblocking(true).context("non-blocking")?;
        c.flush()?;
        conns.push(c);
    }
    let deadline = clock::mono_ns() + 10_000_000_000;
    for (i, c) in conns.iter_mut().enumerate() {
        while c.user_id == 0 {
            if clock::mono_ns() > deadline {
                bail!("connection {i}: no OK AUTH within 10 s");
            }
            for l in c.read_lines()? {
                match Reply::parse(&l) {
                    Ok(Reply::OkAuth { user, .. }) => c.user_id = user.get(),
                    _ => bail!("connection {i}: {l:?} instead of OK AUTH"),
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(conns)
}

impl Conn {
    /// Appends `line` and a newline to the output buffer.
    pub(crate) fn queue(&mut self, line: &str) {
        self.outbuf.extend_from_slice(line.as_bytes());
        self.outbuf.push(b'\n');
    }

    /// Writes what the socket takes of the output buffer.
    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => bail!("control closed a connection"),
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("writing to control"),
            }
        }
        Ok(())
    }

    /// Reads what is there; returns complete lines.
    pub(crate) fn read_lines(&mut self) -> anyhow::Result<Vec<String>> {
        let mut buf = [0u8; 16384];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => bail!("control closed a connection"),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from control"),
            }
        }
        let mut lines = Vec::new();
        while let Some(i) = self.inbuf.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = self.inbuf.drain(..=i).collect();
            lines.push(
                String::from_utf8_lossy(&l)
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            );
        }
        Ok(lines)
    }
}

fn users(sc: &ImScenario, db: &str, nonce: u64) -> anyhow::Result<Vec<String>> {
    (0..2 * sc.pairs)
        .map(|i| {
            let name = format!("wbim{nonce:x}u{i}");
            let out = Command::new(&sc.control_bin)
                .args(["--db", db, "user", "add", &name])
                .output()
                .with_context(|| format!("running {}", sc.control_bin.display()))?;
            if !out.status.success() {
                bail!(
                    "user add {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .collect()
}

/// Runs the scenario and writes its report.
pub fn run(sc: &ImScenario) -> anyhow::Result<()> {
    if sc.pairs == 0 || sc.pairs > MAX_PAIRS {
        bail!("--pairs must be 1..={MAX_PAIRS}");
    }
    if !(sc.rate > 0.0 && sc.rate.is_finite()) || sc.repeat == 0 {
        bail!("--rate must be positive and --repeat at least 1");
    }
    let machine = Machine::probe();
    let nonce = clock::real_ns();
    let tmp = std::env::temp_dir().join(format!("whelm-bench-im-{}-{nonce:x}", std::process::id()));
    let db = match &sc.db {
        Some(d) => d.clone(),
        None => {
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            tmp.join("whelm.db").to_string_lossy().into_owned()
        }
    };
    eprintln!(
        "im: {} pairs, {} msg/s, {} x {:?} + {:?} warm-up, store {db}",
        sc.pairs, sc.rate, sc.repeat, sc.duration, sc.warmup
    );
    let result = (|| -> anyhow::Result<Vec<ImRecord>> {
        let tokens = users(sc, &db, nonce)?;
        let mut runs = Vec::new();
        for rep in 0..sc.repeat {
            eprintln!("run {}/{}", rep + 1, sc.repeat);
            runs.push(one_run(sc, &db, &tokens, rep, &machine)?);
        }
        Ok(runs)
    })();
    if sc.db.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let runs = result?;
    println!(
        "whelm-bench im: commit {} ({} cpus, kernel {})",
        machine.git_commit.as_deref().unwrap_or("unknown"),
        machine.nproc,
        machine.kernel
    );
    println!(
        "{:<7} {:>4} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "store",
        "rep",
        "offered/s",
        "deliv/s",
        "loss%",
        "errors",
        "ack p50ms",
        "ack p99ms",
        "del p50ms",
        "del p99ms",
        "cpu us/msg"
    );
    for r in &runs {
        println!(
            "{:<7} {:>4} {:>9.0} {:>9.0} {:>8.4} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10}",
            r.store.split(':').next().unwrap_or("?"),
            r.repeat,
            r.offered_rate,
            r.totals.received as f64 / sc.duration.as_secs_f64().max(1e-9),
            if r.totals.expected == 0 {
                0.0
            } else {
                r.totals.lost as f64 * 100.0 / r.totals.expected as f64
            },
            r.errors,
            r.ack_ns.p50 as f64 / 1e6,
            r.ack_ns.p99 as f64 / 1e6,
            r.delivery_ns.p50 as f64 / 1e6,
            r.delivery_ns.p99 as f64 / 1e6,
            r.cpu_ns_per_message
                .map_or("-".into(), |c| format!("{:.1}", c / 1000.0))
        );
    }
    if runs.len() > 1 {
        let p99 = Spread::of(
            &runs
                .iter()
                .map(|r| r.delivery_ns.p99 as f64 / 1e6)
                .collect::<Vec<_>>(),
        );
        let cpu = Spread::of(
            &runs
                .iter()
                .map(|r| r.cpu_ns_per_message.unwrap_or(f64::NAN) / 1000.0)
                .collect::<Vec<_>>(),
        );
        println!(
            "median delivery p99 {:.2} ms ({:.2}..{:.2}); cpu {:.1} us/msg ({:.1}..{:.1})",
            p99.median, p99.min, p99.max, cpu.median, cpu.min, cpu.max
        );
    }
    std::fs::create_dir_all(&sc.out).with_context(|| format!("creating {}", sc.out.display()))?;
    let mut jsonl = String::new();
    for r in &runs {
        jsonl.push_str(&serde_json::to_string(r).context("serialising a run")?);
        jsonl.push('\n');
    }
    let p = sc.out.join("im-runs.jsonl");
    std::fs::write(&p, jsonl).with_context(|| format!("writing {}", p.display()))?;
    println!("report: {}", p.display());
    Ok(())
}

fn one_run(
    sc: &ImScenario,
    db: &str,
    tokens: &[String],
    repeat: usize,
    machine: &Machine,
) -> anyhow::Result<ImRecord> {
    let mut cmd = Command::new(&sc.control_bin);
    cmd.args(["--db", db, "--listen", "127.0.0.1:0"]).args([
        "--max-conns-per-ip",
        "0",
        "--rate-limit",
        "0",
    ]);
    if crate::calls::has_flag(&sc.control_bin, "--metrics-listen") {
        cmd.args(["--metrics-listen", "off"]);
    }
    let mut control =
        Target::start_with_key(cmd, "whelm-control", "", "listen=", Duration::from_secs(30))?;
    let addr: SocketAddrV4 = control.ovp;
    let store = control
        .ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("store="))
        .unwrap_or("unknown")
        .to_string();

    let mut conns = connect_all(addr, tokens)?;

    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    for (i, c) in conns.iter().enumerate() {
        epoll
            .add(
                c.stream.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
            )
            .context("epoll_ctl")?;
    }
    let mut events = vec![EpollEvent::empty(); 256];
    let pairs = sc.pairs;
    let per_sender = sc.rate / pairs as f64;
    let mut next_seq = vec![0u64; pairs];
    let mut sent_measured = vec![0u64; pairs];
    let mut flows = FlowTable::new(pairs, 1);
    let mut delivery = Latency::new();
    let mut ack = Latency::new();
    let mut acked = 0u64;
    let mut errors = 0u64;
    let mut arrivals = 0u64;
    let start = clock::mono_ns();
    let warm_end = start + sc.warmup.as_nanos() as u64;
    let end = warm_end + sc.duration.as_nanos() as u64;
    let mut next_heartbeat = start + HEARTBEAT_NS;
    let mut window_start = None;
    let mut cpu_start = None;
    let pid = control.pid;

    let handle = |conns: &mut Vec<Conn>,
                  i: usize,
                  flows: &mut FlowTable,
                  delivery: &mut Latency,
                  ack: &mut Latency,
                  acked: &mut u64,
                  errors: &mut u64,
                  arrivals: &mut u64|
     -> anyhow::Result<()> {
        let now = clock::mono_ns();
        for l in conns[i].read_lines()? {
            match Reply::parse(&l) {
                Ok(Reply::OkMsg) => {
                    if let Some((t, true)) = conns[i].pending_acks.pop_front() {
                        *acked += 1;
                        ack.record(t, now);
                    }
                }
                Ok(Reply::Msg(MessageJson { content, .. })) => {
                    let f: Vec<&str> = content.split(' ').collect();
                    if let (Some(&"wb"), Some(seq), Some(t), Some(&"1")) = (
                        f.first(),
                        f.get(1).and_then(|s| s.parse::<u64>().ok()),
                        f.get(2).and_then(|s| s.parse::<u64>().ok()),
                        f.get(3),
                    ) {
                        // Recipient of pair p is connection pairs + p.
                        if i >= pairs && flows.arrive(i - pairs, 0, seq) {
                            *arrivals += 1;
                            delivery.record(t, now);
                        }
                    }
                }
                Ok(Reply::Error(_)) => {
                    *errors += 1;
                    // An error answers a MSG too: drop its pending ack.
                    conns[i].pending_acks.pop_front();
                }
                _ => {}
            }
        }
        Ok(())
    };

    loop {
        let now = clock::mono_ns();
        if now >= end {
            break;
        }
        if window_start.is_none() && now >= warm_end {
            window_start = Some(now);
            cpu_start = procstat::cpu_ns(pid).ok();
        }
        let measured = window_start.is_some();
        let elapsed_s = (now - start) as f64 / 1e9;
        for p in 0..pairs {
            let due = (elapsed_s * per_sender + p as f64 / pairs as f64).floor() as u64;
            while next_seq[p] < due {
                let seq = next_seq[p];
                next_seq[p] += 1;
                let to = conns[pairs + p].user_id;
                let t = clock::mono_ns();
                conns[p].queue(&format!("MSG {to} wb {seq} {t} {}", u8::from(measured)));
                conns[p].pending_acks.push_back((t, measured));
                if measured {
                    sent_measured[p] += 1;
                }
            }
            conns[p].flush()?;
        }
        if now >= next_heartbeat {
            next_heartbeat += HEARTBEAT_NS;
            for c in conns.iter_mut() {
                c.queue("HEARTBEAT");
                c.flush()?;
            }
        }
        let n = match epoll.wait(&mut events, 1u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            handle(
                &mut conns,
                i,
                &mut flows,
                &mut delivery,
                &mut ack,
                &mut acked,
                &mut errors,
                &mut arrivals,
            )?;
        }
    }
    let window_end = clock::mono_ns();
    let cpu = match cpu_start {
        Some(a) => procstat::cpu_ns(pid).ok().map(|b| b.saturating_sub(a)),
        None => None,
    };
    let rss_kib = procstat::rss_kib(pid).ok();
    let expected: u64 = sent_measured.iter().sum();
    let drain_end = clock::mono_ns() + sc.drain.as_nanos() as u64;
    while clock::mono_ns() < drain_end && arrivals < expected {
        for c in conns.iter_mut() {
            c.flush()?;
        }
        let n = match epoll.wait(&mut events, 5u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            handle(
                &mut conns,
                i,
                &mut flows,
                &mut delivery,
                &mut ack,
                &mut acked,
                &mut errors,
                &mut arrivals,
            )?;
        }
    }
    drop(conns);
    control.stop();
    let totals = flows.totals(&sent_measured, |_, _| true);
    let window_ns = window_end.saturating_sub(window_start.unwrap_or(window_end));
    Ok(ImRecord {
        scenario: "im".into(),
        store,
        repeat,
        pairs,
        offered_rate: sc.rate,
        sent: expected,
        acked,
        errors,
        totals,
        delivery_ns: delivery.percentiles(),
        ack_ns: ack.percentiles(),
        achieved_rate: if window_ns == 0 {
            0.0
        } else {
            expected as f64 * 1e9 / window_ns as f64
        },
        cpu_ns_per_message: cpu
            .filter(|_| totals.received > 0)
            .map(|c| c as f64 / totals.received as f64),
        rss_kib,
        ready_line: control.ready_line.clone(),
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine.clone(),
    })
}
