//! The network thread: one mio poll loop that accepts connections, reads and
//! frames lines, parses them once and hands them to the state machine, and
//! writes the replies the machine queued (it wakes us through a [`Waker`]).
//!
//! Memory per idle connection is a socket and two empty `Vec`s: reads go
//! through one shared buffer, and a connection holds bytes only for an
//! unfinished line or unwritten replies. A connection whose unwritten
//! replies exceed `max_outbuf` is dropped (a client that does not read never
//! blocks anyone). A connection the machine closes gets [`CLOSE_GRACE`] to
//! read its last replies, then is reset. Each connection's reads per
//! wake-up are budgeted, so one busy client cannot starve the others.
//!
//! The optional TLS listener's connections live in the same table: each
//! holds a `rustls::ServerConnection` driven on readiness (`read_tls`,
//! `process_new_packets`, plaintext through the same framer; replies
//! through `writer()` and `write_tls`), so TLS sessions share the machine,
//! the limits and the queues of plain ones.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use whelm_daemon::logging::RateLimited;
use whelm_shared::addr::limit_key;
use whelm_shared::line::{Command, ErrorReply, LineError, Reply};

use crate::framing::{Frame, Framer};
use crate::jobs::{Input, SessionId};
use crate::metrics::Metrics;

const LISTENER: Token = Token(0);
/// The token of the waker the machine thread uses.
pub const WAKER: Token = Token(1);
const TLS_LISTENER: Token = Token(2);
const FIRST_CONN: usize = 3;
/// Shared read buffer.
const READ_BUF: usize = 64 * 1024;
/// Reads per connection per wake-up before others get a turn.
const READ_BUDGET: usize = 8;
/// When this many inputs wait for the machine, reading pauses.
const MACHINE_BACKLOG: usize = 200_000;
/// How long a connection the machine closed (auth deadline, heartbeat
/// timeout, KICKED) may take to read its last replies. After that it is
/// reset unread: a client that never reads would otherwise keep its
/// socket, its queue and its per-IP slot for ever, since a closing
/// connection is no longer read (its EOF would go unnoticed too).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Limits of the network thread.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per peer IP at most (0: no limit).
    pub max_per_ip: usize,
    /// Unwritten reply bytes per connection before it is dropped.
    pub max_outbuf: usize,
}

/// What the machine thread tells the network thread.
#[derive(Debug)]
pub enum NetCmd {
    /// Queue bytes to a session.
    Send(SessionId, Vec<u8>),
    /// Close a session after writing what is queued.
    Close(SessionId),
    /// Stop accepting; close everything once flushed (bounded wait); exit.
    Shutdown,
    /// SIGHUP: new limits for new events (connections over a new limit stay
    /// open) and, with TLS, a new certificate for new connections.
    Reconfigure(NetConfig, Option<Arc<rustls::ServerConfig>>),
}

/// Where the network thread tells the watchdog it is alive: milliseconds
/// since `epoch` at its latest loop iteration.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Shared reference time.
    pub epoch: Instant,
    /// Written by the network thread, read by the machine thread.
    pub at_ms: Arc<AtomicU64>,
}

impl Progress {
    /// A new cell, "now".
    pub fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            at_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn mark(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the network thread last went round its loop.
    pub fn age(&self, now: Instant) -> Duration {
        let at = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch).saturating_sub(at)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

struct Conn {
    stream: TcpStream,
    session: SessionId,
    /// The `per_ip` entry it counts under ([`limit_key`] of its peer).
    ip_key: IpAddr,
    framer: Framer,
    out: Vec<u8>,
    out_pos: usize,
    /// The machine asked to close once `out` is written.
    closing: bool,
    /// WRITABLE interest is registered.
    want_write: bool,
    /// The TLS state of a connection from the TLS listener.
    tls: Option<Box<rustls::ServerConnection>>,
}

/// The network thread's state.
pub struct Net {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_session: HashMap<SessionId, usize>,
    /// Open connections per source ([`limit_key`]: IPv6 per /64).
    per_ip: HashMap<IpAddr, usize>,
    open: usize,
    next_session: u64,
    cmds: Receiver<NetCmd>,
    machine: Sender<Input>,
    cfg: NetConfig,
    /// Connections with reads left over (budget spent or machine busy).
    again: Vec<usize>,
    /// Connections with bytes to write.
    dirty: Vec<usize>,
    /// Sessions the machine closed, in order, with the end of their
    /// [`CLOSE_GRACE`]; a session still open then is dropped unread.
    closing: VecDeque<(Instant, SessionId)>,
    tls_listener: Option<TcpListener>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
    progress: Progress,
    /// Longest poll wait, so that `progress` moves on an idle server.
    idle_wait: Duration,
    accept_errors: RateLimited,
    /// Sessions the open-file limit leaves room for (see
    /// [`Net::cap_sessions`]); the connection limit is the lower of this
    /// and `max_connections`.
    session_cap: usize,
    /// After an accept error (EMFILE, ENOMEM, ...), when to try the
    /// listeners again. The poll is edge-triggered: connections left in
    /// the backlog raise no new event, so without this they would wait for
    /// the next connection to arrive.
    accept_retry: Option<Instant>,
}

/// How long the listeners rest after an accept error before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

impl Net {
    /// A network thread over a bound listener. Returns it and the waker the
    /// machine thread calls after queueing commands.
    pub fn new(
        mut listener: TcpListener,
        cmds: Receiver<NetCmd>,
        machine: Sender<Input>,
        cfg: NetConfig,
    ) -> io::Result<(Net, Arc<Waker>)> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok((
            Net {
                poll,
                listener: Some(listener),
                conns: Vec::new(),
                free: Vec::new(),
                by_session: HashMap::new(),
                per_ip: HashMap::new(),
                open: 0,
                next_session: 1,
                cmds,
                machine,
                cfg,
                again: Vec::new(),
                dirty: Vec::new(),
                closing: VecDeque::new(),
                tls_listener: None,
                tls_config: None,
                metrics: Arc::new(Metrics::default()),
                progress: Progress::new(),
                idle_wait: Duration::from_secs(1),
                accept_errors: RateLimited::new(Duration::from_secs(10)),
                session_cap: usize::MAX,
                accept_retry: None,
            },
            waker,
        ))
    }

    /// Adds the TLS listener and its certificate.
    pub fn set_tls(
        &mut self,
        mut listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut listener, TLS_LISTENER, Interest::READABLE)?;
        self.tls_listener = Some(listener);
        self.tls_config = Some(config);
        Ok(())
    }

    /// Where connection counts go, and where liveness is reported (the
    /// poll never waits longer than `idle_wait`).
    pub fn observe(&mut self, metrics: Arc<Metrics>, progress: Progress, idle_wait: Duration) {
        self.metrics = metrics;
        self.progress = progress;
        self.idle_wait = idle_wait.max(Duration::from_millis(10));
    }

    /// Caps open sessions at `cap` whatever `max_connections` says (also
    /// after a reload): each is a descriptor, and those the store, the
    /// relay link and the listeners need must stay available.
    pub fn cap_sessions(&mut self, cap: usize) {
        self.session_cap = cap;
    }

    /// Runs until [`NetCmd::Shutdown`] (or the machine is gone).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUF];
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let mut timeout = if !self.again.is_empty() {
                Duration::from_millis(1)
            } else if shutdown_at.is_some() {
                Duration::from_millis(20)
            } else {
                self.idle_wait
            };
            if let Some(&(deadline, _)) = self.closing.front() {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            }
            if let Some(at) = self.accept_retry {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            let timeout = Some(timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "poll failed; network thread stops");
                return;
            }
            self.progress.mark();
            if self.accept_retry.is_some_and(|at| at <= Instant::now()) {
                self.accept_retry = None;
                self.accept(false);
                self.accept(true);
            }
            let again = std::mem::take(&mut self.again);
            for idx in again {
                self.read(idx, &mut buf);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(false),
                    TLS_LISTENER => self.accept(true),
                    WAKER => {}
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if ev.is_writable() {
                            self.flush(idx);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(idx, &mut buf);
                        }
                    }
                }
            }
            loop {
                match self.cmds.try_recv() {
                    Ok(NetCmd::Send(s, bytes)) => self.queue(s, &bytes),
                    Ok(NetCmd::Close(s)) => {
                        if let Some(&idx) = self.by_session.get(&s) {
                            if let Some(c) = self.conns[idx].as_mut()
                                && !c.closing
                            {
                                c.closing = true;
                                self.closing.push_back((Instant::now() + CLOSE_GRACE, s));
                            }
                            self.dirty.push(idx);
                        }
                    }
                    Ok(NetCmd::Reconfigure(cfg, tls)) => {
                        self.cfg = cfg;
                        if tls.is_some() {
                            self.tls_config = tls;
                        }
                    }
                    Ok(NetCmd::Shutdown) => {
                        if let Some(mut l) = self.listener.take() {
                            let _ = self.poll.registry().deregister(&mut l);
                        }
                        if let Some(mut l) = self.tls_listener.take() {
                            let _ = self.poll.registry().deregister(&mut l);
                        }
                        shutdown_at.get_or_insert_with(Instant::now);
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        shutdown_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            }
            let dirty = std::mem::take(&mut self.dirty);
            for idx in dirty {
                self.flush(idx);
            }
            self.expire_closing(Instant::now());
            if let Some(t) = shutdown_at
                && (self.open == 0 || t.elapsed() > Duration::from_secs(2))
            {
                return;
            }
        }
    }

    fn accept(&mut self, tls: bool) {
        loop {
            let listener = if tls {
                self.tls_listener.as_ref()
            } else {
                self.listener.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE and friends: log (rate-limited) and try again
                    // shortly; the backlog raises no new event by itself.
                    if let Some(held) = self.accept_errors.allow(Instant::now()) {
                        tracing::warn!(error = %e, similar_errors_not_logged = held, "accept failed");
                    }
                    self.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            let ip = peer.ip();
            let ip_key = limit_key(ip);
            let per_ip = self.per_ip.get(&ip_key).copied().unwrap_or(0);
            if self.open >= self.cfg.max_connections.min(self.session_cap)
                || (self.cfg.max_per_ip > 0 && per_ip >= self.cfg.max_per_ip)
            {
                tracing::debug!(%peer, "connection refused: limit reached");
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                if !tls {
                    let _ = stream.write(&Reply::Error(ErrorReply::AtCapacity).to_wire());
                }
                continue;
            }
            let tls_conn = match (&self.tls_config, tls) {
                (Some(cfg), true) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(c) => Some(Box::new(c)),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS session setup failed");
                        self.metrics.tls_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
                _ => None,
            };
            if tls {
                self.metrics.accepted_tls.fetch_add(1, Ordering::Relaxed);
            } else {
                self.metrics.accepted_tcp.fetch_add(1, Ordering::Relaxed);
            }
            let _ = stream.set_nodelay(true);
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(idx + FIRST_CONN),
                Interest::READABLE,
            ) {
                tracing::warn!(error = %e, "register failed");
                self.free.push(idx);
                continue;
            }
            let session = SessionId(self.next_session);
            self.next_session += 1;
            self.conns[idx] = Some(Conn {
                stream,
                session,
                ip_key,
                framer: Framer::default(),
                out: Vec::new(),
                out_pos: 0,
                closing: false,
                want_write: false,
                tls: tls_conn,
            });
            self.by_session.insert(session, idx);
            *self.per_ip.entry(ip_key).or_insert(0) += 1;
            self.open += 1;
            if self.machine.send(Input::Connected { session, ip }).is_err() {
                return;
            }
        }
    }

    fn read(&mut self, idx: usize, buf: &mut [u8]) {
        if self.machine.len() > MACHINE_BACKLOG {
            self.again.push(idx);
            return;
        }
        let machine = &self.machine;
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if c.closing {
            return;
        }
        let session = c.session;
        let Conn {
            stream,
            framer,
            tls,
            ..
        } = c;
        let mut feed = |bytes: &[u8]| {
            framer.feed(bytes, |fr| {
                let line = match fr {
                    Frame::Line(l) => Command::parse(l),
                    Frame::TooLong => Err(LineError::TooLong),
                };
                let _ = machine.send(Input::Line { session, line });
            });
        };
        let mut gone = false;
        let mut tls_failed = false;
        let mut reads = 0;
        loop {
            if reads == READ_BUDGET {
                self.again.push(idx);
                break;
            }
            let got = match tls.as_mut() {
                None => stream.read(buf),
                Some(t) => t.read_tls(stream),
            };
            match got {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => {
                    reads += 1;
                    let Some(t) = tls.as_mut() else {
                        feed(&buf[..n]);
                        continue;
                    };
                    if let Err(e) = t.process_new_packets() {
                        tracing::debug!(session = session.0, error = %e, "TLS error");
                        // Best effort: tell the peer why (the alert).
                        let _ = t.write_tls(stream);
                        tls_failed = true;
                        gone = true;
                        break;
                    }
                    match drain_plaintext(t, buf, &mut feed) {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        let handshake_out = tls.as_ref().is_some_and(|t| t.wants_write());
        if tls_failed {
            self.metrics.tls_errors.fetch_add(1, Ordering::Relaxed);
        }
        if gone {
            self.drop_conn(idx, true);
        } else if handshake_out {
            self.dirty.push(idx);
        }
    }

    fn queue(&mut self, session: SessionId, bytes: &[u8]) {
        let Some(&idx) = self.by_session.get(&session) else {
            return;
        };
        let max = self.cfg.max_outbuf;
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.out.len() - c.out_pos + bytes.len() > max {
            tracing::debug!(
                session = session.0,
                "client does not read its replies; dropped"
            );
            self.drop_conn(idx, true);
            return;
        }
        if c.out.is_empty() {
            self.dirty.push(idx);
        }
        c.out.extend_from_slice(bytes);
    }

    fn flush(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let failed = match c.tls.as_mut() {
            None => write_plain(&mut c.stream, &c.out, &mut c.out_pos),
            Some(t) => write_tls(t, &mut c.stream, &c.out, &mut c.out_pos),
        };
        if failed {
            self.drop_conn(idx, true);
            return;
        }
        let done = c.out_pos == c.out.len() && !c.tls.as_ref().is_some_and(|t| t.wants_write());
        if done {
            c.out.clear();
            c.out_pos = 0;
            if c.out.capacity() > 16 * 1024 {
                c.out = Vec::new();
            }
            if c.closing {
                if let Some(t) = c.tls.as_mut() {
                    t.send_close_notify();
                    let _ = t.write_tls(&mut c.stream);
                }
                self.drop_conn(idx, false);
                return;
            }
        }
        if done == c.want_write {
            c.want_write = !done;
            let interest = if done {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let token = Token(idx + FIRST_CONN);
            if self
                .poll
                .registry()
                .reregister(&mut c.stream, token, interest)
                .is_err()
            {
                self.drop_conn(idx, true);
            }
        }
    }

    /// Resets the closed sessions whose [`CLOSE_GRACE`] is over and that
    /// still have replies unread (the others are gone already).
    fn expire_closing(&mut self, now: Instant) {
        while let Some(&(deadline, session)) = self.closing.front() {
            if deadline > now {
                break;
            }
            self.closing.pop_front();
            let Some(&idx) = self.by_session.get(&session) else {
                continue;
            };
            if let Some(c) = self.conns[idx].as_ref() {
                tracing::debug!(
                    session = session.0,
                    unread = c.out.len() - c.out_pos,
                    "closed session did not read its last replies; reset"
                );
                // Reset rather than leave the kernel retrying to a peer
                // that does not read.
                let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            }
            self.drop_conn(idx, false);
        }
    }

    /// Forgets a connection; tells the machine unless it asked for this.
    fn drop_conn(&mut self, idx: usize, tell_machine: bool) {
        let Some(mut c) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.free.push(idx);
        self.by_session.remove(&c.session);
        self.open -= 1;
        if let Some(n) = self.per_ip.get_mut(&c.ip_key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip_key);
            }
        }
        if tell_machine && !c.closing {
            let _ = self
                .machine
                .send(Input::Disconnected { session: c.session });
        }
    }
}

/// Hands every plaintext byte rustls has decrypted to `feed`. `Ok(false)`
/// when the peer closed the TLS session.
fn drain_plaintext(
    t: &mut rustls::ServerConnection,
    buf: &mut [u8],
    feed: &mut impl FnMut(&[u8]),
) -> io::Result<bool> {
    loop {
        match t.reader().read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `out[pos..]` to a plain stream; `true` when the connection failed.
fn write_plain(stream: &mut TcpStream, out: &[u8], pos: &mut usize) -> bool {
    while *pos < out.len() {
        match stream.write(&out[*pos..]) {
            Ok(0) => return true,
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    false
}

/// Moves `out[pos..]` into rustls (as much as its buffer takes) and writes
/// TLS records until the socket would block; `true` when it failed.
fn write_tls(
    t: &mut rustls::ServerConnection,
    stream: &mut TcpStream,
    out: &[u8],
    pos: &mut usize,
) -> bool {
    loop {
        while *pos < out.len() {
            match t.writer().write(&out[*pos..]) {
                Ok(0) => break,
                Ok(n) => *pos += n,
                Err(_) => return true,
            }
        }
        let mut blocked = false;
        while t.wants_write() {
            match t.write_tls(stream) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        if blocked || *pos == out.len() {
            return false;
        }
    }
}
