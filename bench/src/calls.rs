//! The `calls` scenario: Whelm 1:1 calls set up through the real
//! whelm-control (AUTH, CALL, ACCEPT, then HELLO on the relay's voice port),
//! then Opus-sized datagrams both ways for a duration; and, in the same
//! invocation, the same traffic through the baseline forwarder with a
//! static table of the same call pairs (`whelm-bench forwarder --pairs`).
//!
//! Per relay run: a fresh `whelm-relay` (bandwidth limit off:
//! `--bandwidth-mbps 0`, its own command socket) and a fresh
//! `whelm-control` on it (per-IP connection and command-rate limits off,
//! `--max-calls` raised to the calls asked for) on one SQLite file whose
//! users are made once per invocation. All parties are on 127.0.0.1: the
//! relay allows a user's HELLO from the IP of its TCP session, addresses
//! are per socket. A keeper thread sends HEARTBEATs while the load runs.
//! Load and accounting: [`crate::voice_load`]; report: the `ovp` tables
//! ([`crate::scenario::finish`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use whelm_shared::line::{Command as Line, Reply, UserId};

use crate::children::Target;
use crate::machine::Machine;
use crate::ovp_load::Outcome;
use crate::progress::Progress;
use crate::report::{GeneratorInfo, RunRecord};
use crate::scenario::{READY_TIMEOUT, TargetSpec, contended, finish};
use crate::udp::{self, LoadSocket};
use crate::voice_load::{self, CallSpec};

/// Heartbeat period of the bench's sessions (control's timeout: 30 s).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the session keeper sends due heartbeats and discards replies
/// (a round reads every session: hundreds of syscalls).
const KEEPER_ROUND: Duration = Duration::from_millis(250);
/// Longest wait for one expected control reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Options of the scenario.
#[derive(Debug, Clone)]
pub struct CallsScenario {
    /// Concurrent calls.
    pub calls: usize,
    /// Datagrams/s per direction of a call when no total rate is given.
    pub pps: f64,
    /// Total offered rates (datagrams/s into the server), one per load point.
    pub rates: Vec<f64>,
    /// Measured window.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Drain.
    pub drain: Duration,
    /// Repeats of every (load, target).
    pub repeat: usize,
    /// Targets in run order (`Baseline`, `Relay(engine)`).
    pub targets: Vec<TargetSpec>,
    /// whelm-relay.
    pub relay_bin: PathBuf,
    /// whelm-control.
    pub control_bin: PathBuf,
    /// Relay cores (`--cores`; the forwarder uses the first).
    pub server_cores: Vec<usize>,
    /// Generator core.
    pub gen_core: Option<usize>,
    /// Datagrams per sendmmsg.
    pub batch: usize,
    /// Datagram length.
    pub frame_len: usize,
    /// Report directory.
    pub out: PathBuf,
    /// Run-queue wait share beyond which a run is contended.
    pub max_wait: f64,
    /// More whelm-relay arguments for every relay run (e.g. `--coalesce-us 0`).
    pub relay_args: Vec<String>,
}

impl CallsScenario {
    /// The offered rates: `--rate` values, else calls x 2 x pps.
    pub fn load_rates(&self) -> Vec<f64> {
        if self.rates.is_empty() {
            vec![self.calls as f64 * 2.0 * self.pps]
        } else {
            self.rates.clone()
        }
    }
}

/// Users in a scratch SQLite file, made once with `whelm-control user add`
/// and reused by every run; the directory goes when dropped.
#[derive(Debug)]
pub struct Users {
    dir: PathBuf,
    /// The SQLite file.
    pub db: PathBuf,
    /// Tokens, in creation order.
    pub tokens: Vec<String>,
    control_bin: PathBuf,
    nonce: u64,
}

impl Users {
    /// An empty store in a new temporary directory.
    pub fn new(control_bin: &Path) -> anyhow::Result<Users> {
        Users::with_db(control_bin, None)
    }

    /// Users in `db` (a SQLite path or a MariaDB DSN, as whelm-control's
    /// `--db` takes it; None: a new SQLite file in the temporary
    /// directory). The temporary directory (relay command socket, and the
    /// SQLite file when none is given) goes when dropped; a given store
    /// stays.
    pub fn with_db(control_bin: &Path, db: Option<&str>) -> anyhow::Result<Users> {
        let nonce = crate::clock::real_ns();
        let dir = std::env::temp_dir().join(format!(
            "whelm-bench-calls-{}-{nonce:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Users {
            db: db.map_or_else(|| dir.join("whelm.db"), PathBuf::from),
            dir,
            tokens: Vec::new(),
            control_bin: control_bin.to_path_buf(),
            nonce,
        })
    }

    /// The scratch directory (also holds the relay's command socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes users until there are `n`.
    pub fn ensure(&mut self, n: usize) -> anyhow::Result<()> {
        if self.tokens.len() < n {
            eprintln!("making {} users ...", n - self.tokens.len());
        }
        while self.tokens.len() < n {
            let name = format!("wbc{:x}u{}", self.nonce & 0xffff_ffff, self.tokens.len());
            let out = Command::new(&self.control_bin)
                .arg("--db")
                .arg(&self.db)
                .args(["user", "add", &name])
                .output()
                .with_context(|| format!("running {}", self.control_bin.display()))?;
            if !out.status.success() {
                bail!(
                    "user add {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if token.is_empty() || token.contains(char::is_whitespace) {
                bail!("user add {name} printed no token");
            }
            self.tokens.push(token);
        }
        Ok(())
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The relay and control of one run; both stopped when dropped.
#[derive(Debug)]
pub struct Stack {
    /// whelm-relay.
    pub relay: Target,
    /// whelm-control.
    pub control: Target,
    /// The relay's voice address.
    pub voice: SocketAddrV4,
}

/// Whether `bin --help` mentions `flag` (flags added by other issues are
/// passed only to binaries that have them).
pub fn has_flag(bin: &Path, flag: &str) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// `--max-stations N --max-stations-per-ip N` when the relay has those
/// flags: the bench's OVP stations all send from 127.0.0.1, which the
/// relay's per-IP cap (16 by default) would otherwise refuse beyond 16.
pub fn station_cap_args(bin: &Path, stations: usize) -> Vec<String> {
    if !has_flag(bin, "--max-stations-per-ip") {
        return Vec::new();
    }
    let n = stations.max(1000).to_string();
    vec![
        "--max-stations".into(),
        n.clone(),
        "--max-stations-per-ip".into(),
        n,
    ]
}

/// What a scenario adds to the stack [`start_stack_with`] starts.
#[derive(Debug, Clone, Default)]
pub struct StackExtras {
    /// More whelm-relay arguments (e.g. `--reply-to source` for OVP
    /// stations sharing one host).
    pub relay_args: Vec<String>,
    /// Control connections beyond the calls' two each (its
    /// `--max-connections`).
    pub extra_connections: usize,
}

/// Starts whelm-relay (`engine`, `cores`, no bandwidth limit, plus the
/// scenario's `extras`) and whelm-control on it, limits sized for `calls`.
pub fn start_stack_with(
    relay_bin: &Path,
    control_bin: &Path,
    engine: &str,
    cores: &str,
    users: &Users,
    calls: usize,
    extras: &StackExtras,
) -> anyhow::Result<Stack> {
    let sock = users
        .dir()
        .join(format!("relay-{}.sock", crate::clock::mono_ns()));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(relay_bin);
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--voice-port", "0"])
        .args(["--engine", engine, "--cores", cores])
        .args(["--bandwidth-mbps", "0", "--stats-interval", "3600"])
        .arg("--control-socket")
        .arg(&sock)
        .args(&extras.relay_args);
    if has_flag(relay_bin, "--metrics-listen") {
        cmd.args(["--metrics-listen", "off"]);
    }
    let relay = Target::start_with_key(
        cmd,
        &format!("whelm-relay ({})", relay_bin.display()),
        "",
        "voice=",
        READY_TIMEOUT,
    )?;
    let voice = relay.ovp;
    let mut cmd = Command::new(control_bin);
    cmd.arg("--db")
        .arg(&users.db)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--relay-socket")
        .arg(&sock)
        .args(["--max-conns-per-ip", "0", "--rate-limit", "0"])
        .args(["--max-calls", &(calls + 16).to_string()])
        .args([
            "--max-connections",
            &(2 * calls + 64 + extras.extra_connections).to_string(),
        ]);
    if has_flag(control_bin, "--metrics-listen") {
        cmd.args(["--metrics-listen", "off"]);
    }
    let control =
        Target::start_with_key(cmd, "whelm-control", "", "listen=", Duration::from_secs(30))?;
    // The control plane is not what is measured: keep it off the relay's
    // cores, as an operator's CPUAffinity would (its wake-ups would preempt
    // a worker; the baseline forwarder has no control plane beside it).
    let relay_cores = crate::pin::parse_core_list(cores).map_err(anyhow::Error::msg)?;
    if let Err(e) = crate::pin::keep_process_off(control.pid, &relay_cores) {
        eprintln!("note: whelm-control stays on every core: {e}");
    }
    Ok(Stack {
        relay,
        control,
        voice,
    })
}

/// One control session: a buffered reader and the stream to write to.
pub(crate) struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The user id from `OK AUTH` (0 until [`Session::auth`]).
    pub(crate) user: u64,
}

impl Session {
    /// Connects to `control` and sends `AUTH token` (the reply is read by
    /// [`Session::auth`]).
    pub(crate) fn connect(control: SocketAddrV4, token: &str) -> anyhow::Result<Session> {
        let s = TcpStream::connect_timeout(&control.into(), Duration::from_secs(5))
            .with_context(|| format!("connecting to {control}"))?;
        s.set_nodelay(true).context("TCP_NODELAY")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .context("read timeout")?;
        let writer = s.try_clone().context("cloning a session")?;
        let mut sess = Session {
            reader: BufReader::new(s),
            writer,
            user: 0,
        };
        sess.send(
            &Line::Auth {
                token: token.to_string(),
            }
            .to_line(),
        )?;
        Ok(sess)
    }

    /// Waits for `OK AUTH`; keeps and returns the user id.
    pub(crate) fn auth(&mut self) -> anyhow::Result<u64> {
        self.user = self.expect("OK AUTH", |r| match r {
            Reply::OkAuth { user, .. } => Some(user.get()),
            _ => None,
        })?;
        Ok(self.user)
    }

    pub(crate) fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .context("writing to control")
    }

    /// Reads lines until `want` picks one (others are skipped; an `ERROR`
    /// line that `want` does not pick fails).
    pub(crate) fn expect<T>(
        &mut self,
        what: &str,
        want: impl Fn(&Reply) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut line = String::new();
        loop {
            if Instant::now() > deadline {
                bail!("user {}: no {what} within {REPLY_TIMEOUT:?}", self.user);
            }
            match self.reader.read_line(&mut line) {
                Ok(0) => bail!(
                    "user {}: control closed the session waiting for {what}",
                    self.user
                ),
                Ok(_) => {
                    let text = line.trim_end_matches(['\n', '\r']);
                    match Reply::parse(text) {
                        Ok(r) => {
                            if let Some(v) = want(&r) {
                                return Ok(v);
                            }
                            if text.starts_with("ERROR") {
                                bail!("user {}: {text:?} waiting for {what}", self.user);
                            }
                        }
                        Err(_) => bail!("user {}: unparsable reply {text:?}", self.user),
                    }
                    line.clear();
                }
                // A timeout may leave part of a line in `line`: kept, and
                // the next read completes it.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading from control"),
            }
        }
    }
}

/// Sessions kept alive (HEARTBEAT, replies drained) until dropped.
pub struct Calls {
    /// User id of every party (party 2i calls party 2i + 1).
    pub user_ids: Vec<u64>,
    stop: Arc<AtomicBool>,
    keeper: Option<JoinHandle<()>>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

/// Authenticates `2 x calls` sessions with `tokens` and sets up the calls
/// (party 2i CALLs 2i + 1, which ACCEPTs; both get START_CALL).
pub fn set_up_calls(
    control: SocketAddrV4,
    tokens: &[String],
    calls: usize,
    relay_cores: &[usize],
) -> anyhow::Result<Calls> {
    let n = 2 * calls;
    if tokens.len() < n {
        bail!("{n} users needed, {} made", tokens.len());
    }
    let mut sessions = Vec::with_capacity(n);
    for (i, t) in tokens[..n].iter().enumerate() {
        sessions.push(Session::connect(control, t).with_context(|| format!("session {i}"))?);
    }
    for s in &mut sessions {
        s.auth()?;
    }
    let ids: Vec<u64> = sessions.iter().map(|s| s.user).collect();
    let uid = |v: u64| UserId::new(v).with_context(|| format!("user id {v}"));
    for c in 0..calls {
        let callee = uid(ids[2 * c + 1])?;
        sessions[2 * c].send(&Line::Call { callee }.to_line())?;
    }
    for c in 0..calls {
        let caller = ids[2 * c];
        let s = &mut sessions[2 * c + 1];
        s.expect("INCOMING", |r| match r {
            Reply::Incoming { caller: from, .. } if from.get() == caller => Some(()),
            _ => None,
        })?;
        s.send(
            &Line::Accept {
                caller: uid(caller)?,
            }
            .to_line(),
        )?;
    }
    for (p, s) in sessions.iter_mut().enumerate() {
        let want = ids[voice_load::partner(p)];
        s.expect("START_CALL", |r| match r {
            Reply::StartCall { partner, .. } if partner.get() == want => Some(()),
            _ => None,
        })?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let stop = Arc::clone(&stop);
        let relay_cores = relay_cores.to_vec();
        std::thread::Builder::new()
            .name("calls-keeper".into())
            .spawn(move || {
                // Off the relay's cores: its rounds over every session
                // would preempt a worker.
                let _ = crate::pin::keep_off(&relay_cores);
                keep_alive(sessions, &stop)
            })
            .context("starting the session keeper")?
    };
    Ok(Calls {
        user_ids: ids,
        stop,
        keeper: Some(keeper),
    })
}

/// Sends HEARTBEAT on every session every [`HEARTBEAT`] and discards
/// replies, until `stop`.
fn keep_alive(mut sessions: Vec<Session>, stop: &AtomicBool) {
    for s in &sessions {
        let _ = s.writer.set_nonblocking(true);
    }
    let mut next = Instant::now() + HEARTBEAT;
    let mut scratch = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += HEARTBEAT;
            for s in &mut sessions {
                let _ = s.writer.write_all(b"HEARTBEAT\n");
            }
        }
        for s in &mut sessions {
            // Reader and writer share the socket; it is non-blocking now.
            while let Ok(k) = s.reader.get_mut().read(&mut scratch) {
                if k == 0 {
                    break;
                }
            }
        }
        std::thread::sleep(KEEPER_ROUND);
    }
}

/// Binds `n` party sockets on 127.0.0.1.
pub fn bind_parties(n: usize) -> anyhow::Result<Vec<LoadSocket>> {
    (0..n)
        .map(|i| {
            udp::load_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
                .with_context(|| format!("binding party socket {i}"))
        })
        .collect()
}

/// Starts the baseline forwarder with the call pairs of `parties`.
fn start_baseline(sc: &CallsScenario, parties: &[LoadSocket]) -> anyhow::Result<Target> {
    let exe = std::env::current_exe().context("finding the whelm-bench executable")?;
    let bound = sc.warmup + sc.duration + sc.drain + Duration::from_secs(90);
    let mut cmd = Command::new(exe);
    cmd.args(["forwarder", "--pairs", "--bind", "127.0.0.1:0"])
        .args(["--max-seconds", &bound.as_secs().to_string()]);
    if let Some(c) = sc.server_cores.first() {
        cmd.args(["--core", &c.to_string()]);
    }
    let mut table: String = parties
        .chunks(2)
        .filter_map(|p| match p {
            [a, b] => Some(format!("{} {}\n", a.addr, b.addr)),
            _ => None,
        })
        .collect();
    table.push('\n');
    Target::start(cmd, "the baseline forwarder", &table, READY_TIMEOUT)
}

/// One run of one target at one rate: what [`run`] and the capacity
/// search share.
pub fn one_run(
    sc: &CallsScenario,
    target: &TargetSpec,
    users: &mut Users,
    spec: &CallSpec,
    progress: &(dyn Fn(f64) + Sync),
) -> anyhow::Result<(Outcome, String, BTreeMap<String, String>)> {
    let parties = bind_parties(2 * spec.calls)?;
    let cores = sc
        .server_cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match target {
        TargetSpec::Baseline => {
            let mut fwd = start_baseline(sc, &parties)?;
            let o = voice_load::run(spec, &parties, None, fwd.ovp, Some(fwd.pid), progress);
            fwd.stop();
            Ok((o?, fwd.ready_line.clone(), BTreeMap::new()))
        }
        TargetSpec::Relay(engine) => {
            users.ensure(2 * spec.calls)?;
            let extras = StackExtras {
                relay_args: sc.relay_args.clone(),
                ..StackExtras::default()
            };
            let mut stack = start_stack_with(
                &sc.relay_bin,
                &sc.control_bin,
                engine,
                &cores,
                users,
                spec.calls,
                &extras,
            )?;
            let calls = set_up_calls(
                stack.control.ovp,
                &users.tokens,
                spec.calls,
                &sc.server_cores,
            )
            .with_context(|| format!("setting up {} calls", spec.calls))?;
            let o = voice_load::run(
                spec,
                &parties,
                Some(&calls.user_ids),
                stack.voice,
                Some(stack.relay.pid),
                progress,
            );
            drop(calls);
            stack.control.stop();
            stack.relay.stop();
            let stats = crate::report::key_values(&stack.relay.stderr(), "stats kind=final");
            let o = o.with_context(|| format!("relay stderr:\n{}", stack.relay.stderr()))?;
            Ok((o, stack.relay.ready_line.clone(), stats))
        }
        TargetSpec::External(_) => bail!("calls measures the relay it starts"),
    }
}

/// Runs the scenario and writes its report.
pub fn run(sc: &CallsScenario) -> anyhow::Result<()> {
    if sc.calls == 0 || sc.calls > voice_load::MAX_PARTIES / 2 {
        bail!("--calls must be 1..={}", voice_load::MAX_PARTIES / 2);
    }
    if sc.repeat == 0 || sc.targets.is_empty() {
        bail!("nothing to run");
    }
    let machine = Machine::probe();
    let rates = sc.load_rates();
    let mut users = Users::new(&sc.control_bin)?;
    let run_secs = (sc.warmup + sc.duration).as_secs_f64() + 1.0;
    let total_runs = rates.len() * sc.repeat * sc.targets.len();
    eprintln!(
        "calls: {} calls, {}-byte datagrams, loads {:?} datagrams/s into the server, {} x {:?} + \
         {:?} warm-up, server cores {:?}, generator core {:?}; {} runs, ~{:.0} s",
        sc.calls,
        sc.frame_len,
        rates,
        sc.repeat,
        sc.duration,
        sc.warmup,
        sc.server_cores,
        sc.gen_core,
        total_runs,
        total_runs as f64 * (run_secs + 1.0)
    );
    let progress = Progress::new(total_runs, run_secs);
    let mut runs = Vec::new();
    let mut index = 0;
    for (li, &rate) in rates.iter().enumerate() {
        for rep in 0..sc.repeat {
            for target in &sc.targets {
                progress.start_run(
                    index,
                    &format!("{} {rate:.0}/s #{rep}", target_label(target)),
                );
                index += 1;
                let spec = spec_of(sc, rate);
                let (o, ready, stats) =
                    one_run(sc, target, &mut users, &spec, &|f| progress.update(f))
                        .with_context(|| format!("run of {}", target_label(target)))?;
                runs.push(record(
                    sc, target, li, rep, &spec, o, ready, stats, &machine,
                ));
            }
        }
    }
    progress.finish();
    let mut title = format!(
        "whelm-bench calls: {} calls, {} B, {} ({})",
        sc.calls,
        sc.frame_len,
        machine.git_commit.as_deref().unwrap_or("unknown commit"),
        machine.cpu_model
    );
    if !sc.relay_args.is_empty() {
        title.push_str(&format!("; relay args: {}", sc.relay_args.join(" ")));
    }
    finish("calls", &title, &runs, &sc.out, &machine)
}

/// The run spec of `sc` at `rate`.
pub fn spec_of(sc: &CallsScenario, rate: f64) -> CallSpec {
    CallSpec {
        calls: sc.calls,
        rate,
        warmup: sc.warmup,
        duration: sc.duration,
        drain: sc.drain,
        batch: sc.batch,
        gen_core: sc.gen_core,
        frame_len: sc.frame_len,
    }
}

fn target_label(t: &TargetSpec) -> String {
    match t {
        TargetSpec::Baseline => crate::report::BASELINE.into(),
        TargetSpec::Relay(e) => format!("relay-{e}"),
        TargetSpec::External(_) => "external".into(),
    }
}

/// The run's record (the `ovp` layout: parties as stations, fan-out 1).
#[allow(clippy::too_many_arguments)]
pub fn record(
    sc: &CallsScenario,
    target: &TargetSpec,
    load_index: usize,
    repeat: usize,
    spec: &CallSpec,
    o: Outcome,
    ready_line: String,
    server_stats: BTreeMap<String, String>,
    machine: &Machine,
) -> RunRecord {
    let window_s = o.window_ns as f64 / 1e9;
    let generator_bound = o.generator_bound(spec.rate);
    let engine = ready_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("engine="))
        .unwrap_or("unknown")
        .to_string();
    let timestamps = match (o.kernel_stamped, o.user_stamped) {
        (_, 0) => "kernel",
        (0, _) => "userspace",
        _ => "mixed",
    }
    .to_string();
    let is_contended = contended(&o, sc.max_wait);
    RunRecord {
        scenario: "calls".into(),
        target: target_label(target),
        engine,
        load_index,
        repeat,
        stations: 2 * spec.calls,
        transmitting: 2 * spec.calls,
        fanout: 1,
        frame_len: spec.frame_len,
        offered_rate: spec.rate,
        offered_forward_rate: spec.rate,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        sent: o.sent_measured.iter().sum(),
        totals: o.totals,
        loss_ratio: if o.totals.expected == 0 {
            0.0
        } else {
            o.totals.lost as f64 / o.totals.expected as f64
        },
        latency_ns: o.latency.percentiles(),
        timestamps,
        achieved_send_rate: o.achieved_send_rate(),
        forwarded_rate: o.received_rate(),
        target_cpu_ns: o.target_cpu_ns,
        cpu_ns_per_forwarded: o
            .target_cpu_ns
            .filter(|_| o.totals.received > 0)
            .map(|c| c as f64 / o.totals.received as f64),
        target_cpu_util: o
            .target_cpu_ns
            .filter(|_| o.window_ns > 0)
            .map(|c| c as f64 / o.window_ns as f64),
        target_rss_kib: o.target_rss_kib,
        target_cpu_wait_ratio: o
            .target_wait_ns
            .filter(|_| o.window_ns > 0)
            .map(|w| w as f64 / o.window_ns as f64),
        generator: GeneratorInfo {
            core: spec.gen_core,
            pin_error: o.pin_error.clone(),
            bound: generator_bound,
            max_lag_ms: o.max_lag_ns as f64 / 1e6,
            cpu_util: if window_s > 0.0 {
                o.gen_cpu_ns as f64 / 1e9 / window_s
            } else {
                0.0
            },
            cpu_wait_ratio: if o.window_ns > 0 {
                o.gen_wait_ns as f64 / o.window_ns as f64
            } else {
                0.0
            },
        },
        bench_drops: o.bench_drops,
        server_socket_drops: o.server_socket_drops,
        stray: o.stray,
        contended: is_contended,
        valid: !generator_bound && o.bench_drops == 0 && !is_contended,
        server_cores: sc.server_cores.clone(),
        ready_line,
        server_stats,
        clock_drift_ns: o.clock_drift_ns,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine.clone(),
        histogram: Some(o.latency),
    }
}
