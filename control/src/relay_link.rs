//! The link to the relay's command socket (`whelm_shared::channel`): one
//! thread that owns the Unix-socket connection and does I/O only. What the
//! messages mean (adopt a snapshot, re-install, hold replies) is decided by
//! the machine (`machine/relay.rs`).
//!
//! ```text
//!  machine ──(id, Command)──▶ link thread ──Request──▶ relay socket
//!     ▲                         reader thread ◀──Reply/Event──┘
//!     └──── Input::Relay(Connected | Reply | VoiceRegistered | Counters | Disconnected)
//! ```
//!
//! - Connects, says Hello, waits for Welcome (bounded), then reports
//!   `Connected`. While the relay is absent or restarting it retries with a
//!   backoff from 100 ms doubling to 2 s, logging each change of state once.
//! - After every connect, commands are dropped until the machine's sync
//!   request (`Snapshot` or `ReplaceAll`, its answer to `Connected`) arrives:
//!   anything queued before it was decided without knowing about this
//!   connection and is superseded by the sync. Commands that arrive while
//!   the link is down are dropped for the same reason.
//! - `Disconnected` is reported after the last reply read from the
//!   connection, so the machine never sees a reply of a connection it
//!   already considers gone.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use whelm_shared::channel::{self, ClientMsg, Event, LineReader, PROTOCOL_VERSION, RelayMsg, Role};

use crate::jobs::{Input, RelayCommand, RelayInput};

/// First retry delay after a failed connect.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the relay may take to answer Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A write blocked this long means the relay is stuck: reconnect.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The reader wakes this often to see whether it should stop.
const READ_POLL: Duration = Duration::from_millis(500);

/// Where relay commands go: a running link thread, or nowhere when no
/// socket is configured.
#[derive(Debug)]
pub struct RelayLink {
    socket: Option<PathBuf>,
    tx: Option<Sender<(u64, RelayCommand)>>,
    thread: Option<JoinHandle<()>>,
}

impl RelayLink {
    /// Starts the link thread for `socket` (none: no relay, commands are
    /// never emitted because the machine never hears `Connected`).
    pub fn start(socket: Option<PathBuf>, inputs: Sender<Input>) -> anyhow::Result<RelayLink> {
        let Some(path) = socket.clone() else {
            return Ok(RelayLink {
                socket,
                tx: None,
                thread: None,
            });
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("relay-link".into())
            .spawn(move || run(&path, &rx, &inputs))
            .map_err(|e| anyhow::anyhow!("spawning the relay link thread: {e}"))?;
        Ok(RelayLink {
            socket,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// `none` or the socket path, for the ready line.
    pub fn describe(&self) -> String {
        match &self.socket {
            Some(p) => p.display().to_string(),
            None => "none".into(),
        }
    }

    /// Hands over one request.
    pub fn send(&mut self, id: u64, cmd: RelayCommand) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((id, cmd));
        }
    }

    /// Closes the connection (the relay keeps its state) and joins the thread.
    pub fn stop(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("relay link thread panicked");
        }
    }
}

/// Why a connection ended.
enum End {
    /// The machine is gone (shutdown).
    Stop,
    /// The connection failed; reconnect.
    Lost(String),
}

fn agent() -> String {
    format!(
        "whelm-control {} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

fn run(path: &Path, rx: &Receiver<(u64, RelayCommand)>, inputs: &Sender<Input>) {
    let mut backoff = MIN_BACKOFF;
    // The last failure logged, so a relay that stays away is logged once.
    let mut last_error: Option<String> = None;
    loop {
        match handshake(path) {
            Ok((stream, reader, relay_agent)) => {
                tracing::info!(socket = %path.display(), relay = %relay_agent, "relay link up");
                backoff = MIN_BACKOFF;
                last_error = None;
                if inputs.send(Input::Relay(RelayInput::Connected)).is_err() {
                    return;
                }
                let end = serve(stream, reader, rx, inputs);
                let _ = inputs.send(Input::Relay(RelayInput::Disconnected));
                match end {
                    End::Stop => return,
                    End::Lost(why) => {
                        tracing::warn!(socket = %path.display(), %why, "relay link down; reconnecting");
                    }
                }
            }
            Err(e) => {
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        socket = %path.display(),
                        error = %e,
                        "relay not reachable; retrying (up to every {} s)",
                        MAX_BACKOFF.as_secs()
                    );
                    last_error = Some(e);
                }
            }
        }
        // Wait, dropping what the machine sends meanwhile: the resync after
        // the next connect supersedes it.
        let until = Instant::now() + backoff;
        loop {
            match rx.recv_deadline(until) {
                Ok((id, _)) => tracing::debug!(id, "relay command dropped: link down"),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects and exchanges Hello/Welcome. Returns the stream, the reader
/// with whatever followed the Welcome, and the relay's agent text.
fn handshake(path: &Path) -> Result<(UnixStream, LineReader, String), String> {
    let mut stream = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let hello = ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
        agent: agent(),
    };
    stream
        .write_all(&channel::encode(&hello))
        .map_err(|e| format!("sending hello: {e}"))?;
    let mut reader = LineReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some(line) = reader.next_line() {
            let line = line.map_err(|e| format!("handshake: {e}"))?;
            return match channel::decode::<RelayMsg>(&line) {
                Ok(RelayMsg::Welcome { version, agent }) if version == PROTOCOL_VERSION => {
                    Ok((stream, reader, agent))
                }
                Ok(RelayMsg::Refused { reason }) => Err(format!("relay refused us: {reason}")),
                Ok(other) => Err(format!("unexpected handshake answer: {other:?}")),
                Err(e) => Err(format!("handshake: {e}")),
            };
        }
        if Instant::now() >= deadline {
            return Err("no handshake answer in time".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("closed during the handshake".into()),
            Ok(n) => reader.extend(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the handshake: {e}")),
        }
    }
}

/// Runs one connection until it fails or the machine stops.
fn serve(
    mut stream: UnixStream,
    reader: LineReader,
    rx: &Receiver<(u64, RelayCommand)>,
    inputs: &Sender<Input>,
) -> End {
    let read_half = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return End::Lost(format!("cloning the socket: {e}")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<String>(1);
    let reader_thread = {
        let stop = Arc::clone(&stop);
        let inputs = inputs.clone();
        thread::Builder::new()
            .name("relay-read".into())
            .spawn(move || {
                let why = read_loop(read_half, reader, &inputs, &stop);
                let _ = done_tx.send(why);
            })
    };
    let reader_thread = match reader_thread {
        Ok(t) => t,
        Err(e) => return End::Lost(format!("spawning the reader: {e}")),
    };
    let mut synced = false;
    let end = loop {
        crossbeam_channel::select! {
            recv(rx) -> msg => {
                let Ok((id, command)) = msg else { break End::Stop };
                if !synced {
                    if matches!(command, RelayCommand::Snapshot | RelayCommand::ReplaceAll(_)) {
                        synced = true;
                    } else {
                        tracing::debug!(id, "relay command dropped: before the resync");
                        continue;
                    }
                }
                let line = channel::encode(&ClientMsg::Request { id, command });
                if let Err(e) = stream.write_all(&line) {
                    break End::Lost(format!("write: {e}"));
                }
            }
            recv(done_rx) -> why => {
                break End::Lost(why.unwrap_or_else(|_| "reader ended".into()));
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    if reader_thread.join().is_err() {
        tracing::error!("relay reader thread panicked");
    }
    end
}

/// Reads replies and events until EOF, an error or `stop`.
fn read_loop(
    mut stream: UnixStream,
    mut reader: LineReader,
    inputs: &Sender<Input>,
    stop: &AtomicBool,
) -> String {
    if let Err(e) = stream.set_read_timeout(Some(READ_POLL)) {
        return format!("socket options: {e}");
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(line) = reader.next_line() {
            match line
                .map_err(|e| e.to_string())
                .and_then(|l| channel::decode::<RelayMsg>(&l).map_err(|e| e.to_string()))
            {
                Ok(msg) => {
                    if let Some(input) = to_input(msg)
                        && inputs.send(Input::Relay(input)).is_err()
                    {
                        return "machine gone".into();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable line from the relay, skipped"),
            }
        }
        if stop.load(Ordering::Relaxed) {
            return "stopped".into();
        }
        match stream.read(&mut buf) {
            Ok(0) => return "closed by the relay".into(),
            Ok(n) => reader.extend(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return format!("read: {e}"),
        }
    }
}

/// What the machine needs to hear of one relay message.
fn to_input(msg: RelayMsg) -> Option<RelayInput> {
    match msg {
        RelayMsg::Reply { id, outcome } => Some(RelayInput::Reply { id, outcome }),
        RelayMsg::Event(Event::VoiceRegistered { user, addr }) => {
            Some(RelayInput::VoiceRegistered { user, addr })
        }
        RelayMsg::Event(Event::Counters(c)) => Some(RelayInput::Counters {
            bps_in: c.bps_in,
            bps_out: c.bps_out,
            bps_limit: c.bps_limit,
            workers: c.workers.len(),
        }),
        RelayMsg::Event(ev @ (Event::StationSeen { .. } | Event::StationTimedOut { .. })) => {
            tracing::debug!(?ev, "relay station event");
            None
        }
        other => {
            tracing::warn!(
                ?other,
                "unexpected message from the relay after the handshake"
            );
            None
        }
    }
}
