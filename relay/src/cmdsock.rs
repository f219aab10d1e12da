//! The command channel's socket server (ARCHITECTURE.md, "command channel";
//! messages in `whelm_shared::channel`).
//!
//! - [`bind`]: the Unix stream socket, mode 0660 (group optionally set by
//!   config), a stale socket file replaced only when nothing answers on it,
//!   start refused when another relay listens there.
//! - [`spawn_acceptor`]: one thread accepting connections; each peer's
//!   `SO_PEERCRED` is checked against the [`PeerPolicy`] (the relay's own
//!   uid, root, members of the relay's gid, configured uids/gids); others get
//!   a `refused` line and a warning naming pid/uid/gid.
//! - Per connection, a reader thread (handshake, then lines -> [`ConnEvent`]
//!   to the coordinator) and a writer thread draining a bounded queue. The
//!   coordinator never blocks on a connection: [`ConnHandle::send`] fails
//!   when the queue is full and the coordinator disconnects that peer.
//!
//! The coordinator stays the only writer of every table: these threads only
//! parse and forward.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use whelm_shared::channel::{
    ClientMsg, Command, ErrorCode, LineReader, PROTOCOL_VERSION, RelayMsg, Role, decode, encode,
};

use crate::update::Event;

/// Connections served at once; more are refused.
pub const MAX_CONNECTIONS: usize = 64;
/// Lines queued for one connection before it counts as not reading.
pub const OUT_QUEUE: usize = 4096;
/// Time a client has to send its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Mode of the socket file.
pub const SOCKET_MODE: u32 = 0o660;

/// Who may connect (besides root and the relay's own uid).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// The relay's effective uid.
    pub uid: u32,
    /// The relay's effective gid; its members may connect.
    pub gid: u32,
    /// Further uids allowed (config `control_uids`).
    pub uids: Vec<u32>,
    /// Further gids allowed, as primary or supplementary group (config
    /// `control_gids`).
    pub gids: Vec<u32>,
}

impl PeerPolicy {
    /// The relay's own identity plus the configured lists.
    pub fn current(uids: Vec<u32>, gids: Vec<u32>) -> PeerPolicy {
        PeerPolicy {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            uids,
            gids,
        }
    }

    /// True if a peer with these credentials (and supplementary `groups`)
    /// may use the channel.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        let group_ok = |g: u32| g == self.gid || self.gids.contains(&g);
        uid == 0
            || uid == self.uid
            || self.uids.contains(&uid)
            || group_ok(gid)
            || groups.iter().any(|&g| group_ok(g))
    }
}

/// Supplementary groups of a process, from `/proc/<pid>/status` (empty if
/// unreadable: the check then rests on uid and primary gid).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Binds the command socket at `path`. Creates the directory if missing;
/// replaces a stale socket file only when nothing answers on it; refuses
/// when another process listens there or the path is not a socket.
pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the runtime directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => bail!(
                "another relay is listening on the command socket {} (stop it first)",
                path.display()
            ),
            Err(_) => {
                tracing::warn!("removing stale command socket {}", path.display());
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?;
            }
        },
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the command socket {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("setting group {gid} on {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    Ok(listener)
}

/// Command channel traffic for the coordinator.
#[derive(Debug)]
pub enum ConnEvent {
    /// A connection completed its handshake.
    Opened(ConnHandle),
    /// A request.
    Request {
        /// Connection id.
        conn: u64,
        /// Request id.
        id: u64,
        /// The command.
        command: Command,
    },
    /// A line that is not a valid request; answered with this error.
    Invalid {
        /// Connection id.
        conn: u64,
        /// Request id if one could be read from the line, else 0.
        id: u64,
        /// Why.
        code: ErrorCode,
        /// For the operator.
        message: String,
    },
    /// The peer closed the connection (or it failed).
    Closed {
        /// Connection id.
        conn: u64,
    },
}

/// The coordinator's handle on one connection.
#[derive(Debug)]
pub struct ConnHandle {
    /// Connection id (unique for the process lifetime).
    pub id: u64,
    /// Control or operator.
    pub role: Role,
    /// The client's agent string.
    pub agent: String,
    out: Sender<Vec<u8>>,
    stream: UnixStream,
}

impl ConnHandle {
    /// Queues one encoded line. False if the queue is full (the peer does
    /// not read) or the connection is gone.
    pub fn send(&self, line: Vec<u8>) -> bool {
        match self.out.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Closes the connection (both threads end).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Starts the accepting thread. It stops when `stop` is set.
pub fn spawn_acceptor(
    listener: UnixListener,
    policy: PeerPolicy,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("relay-cmd".into())
        .spawn(move || accept_loop(listener, policy, events, stop))
}

fn accept_loop(
    listener: UnixListener,
    policy: PeerPolicy,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
) {
    let next_id = AtomicU64::new(1);
    let active = Arc::new(AtomicUsize::new(0));
    // Repeated errors (EMFILE, a peer flood) are logged once a minute.
    let mut errors = whelm_daemon::logging::RateLimited::new(Duration::from_secs(60));
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(held) = errors.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        similar_errors_not_logged = held,
                        "command socket accept: {e}"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let cred = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("command socket: cannot read peer credentials ({e}); closing");
                continue;
            }
        };
        let (pid, uid, gid) = (cred.pid(), cred.uid(), cred.gid());
        if !policy.allows(uid, gid, &supplementary_groups(pid)) {
            tracing::warn!(
                "command socket: refused connection from pid={pid} uid={uid} gid={gid} \
                 (allowed: uid 0, uid {}, gid {}, control_uids, control_gids)",
                policy.uid,
                policy.gid
            );
            refuse(
                stream,
                &format!("uid {uid} gid {gid} may not use this relay's command channel"),
            );
            continue;
        }
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            if let Some(held) = errors.allow(std::time::Instant::now()) {
                tracing::warn!(
                    similar_errors_not_logged = held,
                    "command socket: refused pid={pid}: {MAX_CONNECTIONS} connections open"
                );
            }
            refuse(stream, "too many connections");
            continue;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(conn = id, pid, uid, gid, "command connection");
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(active.clone());
        let ev = events.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("relay-cmd{id}"))
            .spawn(move || {
                let _g = guard;
                serve(stream, id, pid, ev);
            });
        if let Err(e) = spawned {
            tracing::warn!("command socket: cannot start a connection thread: {e}");
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refuse(mut stream: UnixStream, reason: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&encode(&RelayMsg::Refused {
        reason: reason.to_string(),
    }));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The request id of a line that failed to decode, if it has one.
fn salvage_id(line: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

/// Checks the first line. Ok((role, agent)) or the refusal reason.
fn handshake(line: &[u8]) -> Result<(Role, String), String> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
        && v.get("type").and_then(|t| t.as_str()) == Some("hello")
        && let Some(ver) = v.get("version").and_then(serde_json::Value::as_u64)
        && ver != u64::from(PROTOCOL_VERSION)
    {
        return Err(format!(
            "relay speaks command channel version {PROTOCOL_VERSION}, client sent {ver}"
        ));
    }
    match decode::<ClientMsg>(line) {
        Ok(ClientMsg::Hello {
            version,
            role,
            agent,
        }) if version == PROTOCOL_VERSION => Ok((role, agent)),
        Ok(ClientMsg::Hello { version, .. }) => Err(format!(
            "relay speaks command channel version {PROTOCOL_VERSION}, client sent {version}"
        )),
        Ok(ClientMsg::Request { .. }) => Err(format!(
            "expected a hello (command channel version {PROTOCOL_VERSION}) before any request"
        )),
        Err(e) => Err(format!(
            "expected a hello (command channel version {PROTOCOL_VERSION}): {e}"
        )),
    }
}

/// Reads lines until `\n`-terminated one is complete (handshake only).
fn read_first_line(stream: &mut UnixStream, reader: &mut LineReader) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.next_line() {
            Some(Ok(l)) => return Some(l),
            Some(Err(_)) => return Some(Vec::new()),
            None => {}
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => reader.extend(&buf[..n]),
        }
    }
}

fn serve(mut stream: UnixStream, conn: u64, pid: i32, events: Sender<Event>) {
    let mut reader = LineReader::default();
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let Some(first) = read_first_line(&mut stream, &mut reader) else {
        return;
    };
    let (role, agent) = match handshake(&first) {
        Ok(x) => x,
        Err(reason) => {
            tracing::warn!(conn, pid, "command socket: handshake refused: {reason}");
            refuse(stream, &reason);
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Vec<u8>>(OUT_QUEUE);
    let (Ok(write_half), Ok(handle_stream)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let welcome = encode(&RelayMsg::Welcome {
        version: PROTOCOL_VERSION,
        agent: format!(
            "whelm-relay {} pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ),
    });
    // First in the queue, so it precedes every reply and event.
    let _ = out_tx.try_send(welcome);
    let writer = std::thread::Builder::new()
        .name(format!("relay-cmdw{conn}"))
        .spawn(move || write_loop(write_half, out_rx));
    if writer.is_err() {
        return;
    }
    tracing::info!(conn, pid, ?role, agent = %agent, "command channel connected");
    let handle = ConnHandle {
        id: conn,
        role,
        agent,
        out: out_tx,
        stream: handle_stream,
    };
    if events.send(Event::Conn(ConnEvent::Opened(handle))).is_err() {
        return;
    }
    read_loop(&mut stream, &mut reader, conn, &events);
    tracing::info!(conn, "command channel closed");
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = events.send(Event::Conn(ConnEvent::Closed { conn }));
}

fn read_loop(stream: &mut UnixStream, reader: &mut LineReader, conn: u64, events: &Sender<Event>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(line) = reader.next_line() {
            let ev = match line {
                Err(e) => ConnEvent::Invalid {
                    conn,
                    id: 0,
                    code: ErrorCode::Malformed,
                    message: e.to_string(),
                },
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(l) => match decode::<ClientMsg>(&l) {
                    Ok(ClientMsg::Request { id, command }) => {
                        ConnEvent::Request { conn, id, command }
                    }
                    Ok(ClientMsg::Hello { .. }) => ConnEvent::Invalid {
                        conn,
                        id: 0,
                        code: ErrorCode::Protocol,
                        message: "second hello on one connection".into(),
                    },
                    Err(e) => ConnEvent::Invalid {
                        conn,
                        id: salvage_id(&l),
                        code: ErrorCode::Malformed,
                        message: e.to_string(),
                    },
                },
            };
            if events.send(Event::Conn(ev)).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => reader.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn write_loop(mut stream: UnixStream, rx: Receiver<Vec<u8>>) {
    while let Ok(line) = rx.recv() {
        if stream.write_all(&line).is_err() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// The default command socket path: `$RUNTIME_DIRECTORY/relay.sock` (systemd
/// `RuntimeDirectory=whelm`; the first entry when several are listed), else
/// `/run/whelm/relay.sock`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(d) if !d.is_empty() => {
            let d = d.to_string_lossy();
            let first = d.split(':').next().unwrap_or_default();
            PathBuf::from(first).join("relay.sock")
        }
        _ => PathBuf::from("/run/whelm/relay.sock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let p = PeerPolicy {
            uid: 1000,
            gid: 1000,
            uids: vec![2000],
            gids: vec![3000],
        };
        assert!(p.allows(0, 5, &[]));
        assert!(p.allows(1000, 5, &[]));
        assert!(p.allows(2000, 5, &[]));
        assert!(p.allows(7, 1000, &[]));
        assert!(p.allows(7, 7, &[3000]));
        assert!(!p.allows(65534, 65534, &[65533]));
    }

    #[test]
    fn handshake_reasons() {
        assert_eq!(
            handshake(br#"{"type":"hello","version":2,"role":"control","agent":"x"}"#),
            Err("relay speaks command channel version 1, client sent 2".into())
        );
        assert_eq!(
            handshake(br#"{"type":"hello","version":1,"role":"operator","agent":"x"}"#),
            Ok((Role::Operator, "x".into()))
        );
        assert!(
            handshake(br#"{"type":"request","id":1,"command":{"op":"snapshot"}}"#)
                .unwrap_err()
                .contains("before any request")
        );
        assert!(handshake(b"garbage").is_err());
        assert_eq!(salvage_id(br#"{"id":9,"type":"bogus"}"#), 9);
        assert_eq!(salvage_id(b"nope"), 0);
    }
}
