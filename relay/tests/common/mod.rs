//! Helpers for the loopback tests: start the real binary on port 0, read its
//! ready line, stop it with SIGTERM and parse the final stats; OVP stations
//! on their own UDP sockets.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whelm_shared::ovp::{HEADER_LEN, StationId, write_header};

/// Engines every scenario runs on.
pub const ENGINES: [&str; 2] = ["uring", "mmsg"];

/// A running relay; killed on drop.
pub struct Relay {
    child: Option<Child>,
    pub ovp: SocketAddr,
    pub voice: SocketAddr,
    pub ready_line: String,
    /// The command socket.
    pub socket: std::path::PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

/// Outcome of a start attempt.
pub enum Start {
    Ok(Relay),
    /// The binary exited before ready (exit status, stderr).
    Failed(Option<i32>, String),
}

fn spawn_stderr_reader(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    });
    buf
}

/// The relay binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_whelm-relay");

/// Starts `whelm-relay` with `args` and waits (bounded) for its ready line.
pub fn try_start(args: &[&str]) -> Start {
    try_start_command(Command::new(BIN), args)
}

/// Like [`try_start`], with the binary run by `cmd` (plain, or behind a
/// prefix such as `nsenter -t PID -n --` that execs it), to which `args`
/// are added.
pub fn try_start_command(mut cmd: Command, args: &[&str]) -> Start {
    // Every relay gets its own command socket (unless the test names one),
    // so parallel tests never meet at the default path.
    let (dir, socket) = match args.iter().position(|a| *a == "--control-socket") {
        Some(i) => (None, std::path::PathBuf::from(args[i + 1])),
        None => {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("relay.sock");
            (Some(d), p)
        }
    };
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if dir.is_some() {
        full.push("--control-socket".into());
        full.push(socket.display().to_string());
    }
    let mut child = cmd
        .args(&full)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn whelm-relay");
    let stderr = spawn_stderr_reader(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
        // Keep reading so the child never blocks on stdout.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => {
            let field = |k: &str| -> SocketAddr {
                let start = line.find(k).unwrap_or_else(|| panic!("{k} in {line}")) + k.len();
                line[start..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            Start::Ok(Relay {
                ovp: field("ovp="),
                voice: field("voice="),
                ready_line: line.clone(),
                child: Some(child),
                socket,
                stderr,
                _dir: dir,
            })
        }
        Err(_) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Ok(Some(s)) = child.try_wait() {
                    break s.code();
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            std::thread::sleep(Duration::from_millis(100));
            let err = stderr.lock().unwrap().clone();
            Start::Failed(status, err)
        }
    }
}

/// Starts the relay for `engine` (on 127.0.0.1, ports 0) with extra args.
/// Returns None (after a notice) when io_uring is unavailable and the
/// environment does not require it.
pub fn start(engine: &str, extra: &[&str]) -> Option<Relay> {
    start_command(Command::new(BIN), "127.0.0.1", engine, extra)
}

/// Like [`start`], binding `bind`, with the binary run by `cmd` (see
/// [`try_start_command`]).
pub fn start_command(cmd: Command, bind: &str, engine: &str, extra: &[&str]) -> Option<Relay> {
    let mut args = vec![
        "--bind",
        bind,
        "-p",
        "0",
        "--voice-port",
        "0",
        "--engine",
        engine,
    ];
    args.extend_from_slice(extra);
    match try_start_command(cmd, &args) {
        Start::Ok(r) => {
            assert!(
                r.ready_line.contains(&format!("engine={engine}")),
                "{}",
                r.ready_line
            );
            Some(r)
        }
        Start::Failed(_, err) if engine == "uring" && err.contains("io_uring setup failed") => {
            if std::env::var("WHELM_TEST_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("io_uring required (WHELM_TEST_REQUIRE_URING=1) but setup failed:\n{err}");
            }
            eprintln!("NOTICE: io_uring unavailable here, skipping the uring variant:\n{err}");
            None
        }
        Start::Failed(code, err) => panic!("relay failed to start ({code:?}):\n{err}"),
    }
}

impl Relay {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, wait (bounded) for a clean exit, return stderr.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not exit on SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader thread take the last bytes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains("stats kind=final") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let err = self.stderr();
        assert!(status.success(), "relay exit {status:?}:\n{err}");
        err
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `key=value` fields of the line containing `marker`.
pub fn fields(stderr: &str, marker: &str) -> HashMap<String, u64> {
    let line = stderr
        .lines()
        .rfind(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} line in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// The final stats fields.
pub fn final_stats(stderr: &str) -> HashMap<String, u64> {
    fields(stderr, "stats kind=final")
}

/// A test station.
pub struct Station {
    pub callsign: String,
    pub id: StationId,
    pub sock: UdpSocket,
}

impl Station {
    /// A station bound to `bind` (e.g. "127.0.0.2:4000" or "127.0.0.1:0").
    pub fn bind(callsign: &str, bind: &str) -> Station {
        let addr: SocketAddr = bind.parse().unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            None,
        )
        .unwrap();
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&addr.into())
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Station {
            callsign: callsign.into(),
            id: StationId::encode(callsign).unwrap(),
            sock,
        }
    }

    /// A frame from this station with `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; HEADER_LEN];
        write_header(self.id, &mut h);
        let mut f = h.to_vec();
        f.extend_from_slice(payload);
        f
    }

    pub fn send(&self, relay: SocketAddr, frame: &[u8]) {
        self.sock.send_to(frame, relay).unwrap();
    }

    /// Receives one datagram within `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// Reads and discards everything pending.
    pub fn drain(&self) {
        while self.recv(Duration::from_millis(100)).is_some() {}
    }
}

/// True for the registration probes `sync` sends.
pub fn is_sync(frame: &[u8]) -> bool {
    frame.get(HEADER_LEN..HEADER_LEN + 4) == Some(b"SYNC")
}

/// Makes every station known to every worker's table: rounds of probe frames
/// until, in one round, every station receives every other's probe. Bounded.
pub fn sync(stations: &[&Station], relay: SocketAddr) {
    // Register everyone first, so that round 0 usually succeeds.
    for s in stations {
        s.send(relay, &s.frame(b"SYNC-REG"));
    }
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..40u32 {
        let tag = format!("SYNC{round}");
        for s in stations {
            s.send(relay, &s.frame(tag.as_bytes()));
        }
        let mut all = true;
        for s in stations {
            let mut from: Vec<[u8; 6]> = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(700);
            while from.len() < stations.len() - 1 && Instant::now() < deadline {
                if let Some(f) = s.recv(Duration::from_millis(100))
                    && f.len() >= HEADER_LEN
                    && &f[HEADER_LEN..] == tag.as_bytes()
                {
                    let id: [u8; 6] = f[..6].try_into().unwrap();
                    if !from.contains(&id) {
                        from.push(id);
                    }
                }
            }
            all &= from.len() == stations.len() - 1;
        }
        if all {
            for s in stations {
                s.drain();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("stations never all saw each other");
}

/// The reference frames, grouped by callsign, in file order.
pub fn vector_frames() -> Vec<(String, Vec<Vec<u8>>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/tests/vectors/ovp-frames.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for f in v["frames"].as_array().unwrap() {
        let cs = f["callsign"].as_str().unwrap().to_string();
        let hex = f["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        match out.iter_mut().find(|(c, _)| *c == cs) {
            Some((_, v)) => v.push(bytes),
            None => out.push((cs, vec![bytes])),
        }
    }
    out
}

/// A command channel client for the tests (a fake control, or an operator).
pub struct Control {
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    next_id: u64,
    /// Events received while waiting for replies, oldest first.
    pub events: std::collections::VecDeque<whelm_shared::channel::Event>,
}

impl Control {
    /// Connects without a handshake.
    pub fn connect_raw(path: &std::path::Path) -> Control {
        let s = std::os::unix::net::UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Control {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next_id: 1,
            events: Default::default(),
        }
    }

    /// Connects and completes the handshake.
    pub fn connect(path: &std::path::Path, role: whelm_shared::channel::Role) -> Control {
        let mut c = Control::connect_raw(path);
        c.send(&whelm_shared::channel::ClientMsg::Hello {
            version: whelm_shared::channel::PROTOCOL_VERSION,
            role,
            agent: "relay test".into(),
        });
        match c.read_msg() {
            Some(whelm_shared::channel::RelayMsg::Welcome { version, .. }) => {
                assert_eq!(version, whelm_shared::channel::PROTOCOL_VERSION)
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    pub fn send(&mut self, msg: &whelm_shared::channel::ClientMsg) {
        self.raw(&whelm_shared::channel::encode(msg));
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.writer.write_all(bytes).unwrap();
    }

    /// The next message; None at EOF. Panics after the 30 s read timeout.
    pub fn read_msg(&mut self) -> Option<whelm_shared::channel::RelayMsg> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from relay");
        if n == 0 {
            return None;
        }
        Some(whelm_shared::channel::decode(line.as_bytes()).unwrap())
    }

    /// The reply to request `id`, keeping events for later.
    pub fn reply(&mut self, id: u64) -> whelm_shared::channel::Outcome {
        use whelm_shared::channel::RelayMsg;
        for _ in 0..100_000 {
            match self.read_msg() {
                Some(RelayMsg::Reply { id: got, outcome }) => {
                    assert_eq!(got, id, "replies in order");
                    return outcome;
                }
                Some(RelayMsg::Event(e)) => self.events.push_back(e),
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no reply to {id}");
    }

    /// Sends a command and returns its outcome.
    pub fn request(
        &mut self,
        command: whelm_shared::channel::Command,
    ) -> whelm_shared::channel::Outcome {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&whelm_shared::channel::ClientMsg::Request { id, command });
        self.reply(id)
    }

    /// Sends a command that must succeed.
    pub fn ok(&mut self, command: whelm_shared::channel::Command) {
        let c = format!("{command:?}");
        let o = self.request(command);
        assert_eq!(o, whelm_shared::channel::Outcome::Ok, "{c}");
    }

    pub fn snapshot(&mut self) -> whelm_shared::channel::State {
        match self.request(whelm_shared::channel::Command::Snapshot) {
            whelm_shared::channel::Outcome::Snapshot(s) => s,
            o => panic!("{o:?}"),
        }
    }

    pub fn counters(&mut self) -> whelm_shared::channel::Counters {
        match self.request(whelm_shared::channel::Command::Counters) {
            whelm_shared::channel::Outcome::Counters(c) => c,
            o => panic!("{o:?}"),
        }
    }

    /// Waits (bounded) for an event matching `pred`, consuming events before
    /// it.
    pub fn wait_event(
        &mut self,
        mut pred: impl FnMut(&whelm_shared::channel::Event) -> bool,
    ) -> whelm_shared::channel::Event {
        use whelm_shared::channel::RelayMsg;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            while let Some(e) = self.events.pop_front() {
                if pred(&e) {
                    return e;
                }
            }
            assert!(Instant::now() < deadline, "event not seen in 30 s");
            match self.read_msg() {
                Some(RelayMsg::Event(e)) => self.events.push_back(e),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Sum of one drop counter over the workers.
pub fn drops(c: &whelm_shared::channel::Counters, key: &str) -> u64 {
    c.workers
        .iter()
        .map(|w| w.drops.get(key).copied().unwrap_or(0))
        .sum()
}
