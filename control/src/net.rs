//! The network thread: one mio poll loop that accepts connections, reads and
//! frames lines, parses them once and hands them to the state machine, and
//! writes the replies the machine queued (it wakes us through a [`Waker`]).
//!
//! Memory per idle connection is a socket and two empty `Vec`s: reads go
//! through one shared buffer, and a connection holds bytes only for an
//! unfinished line or unwritten replies. A connection whose unwritten
//! replies exceed `max_outbuf` is dropped (a client that does not read never
//! blocks anyone). Each connection's reads per wake-up are budgeted, so one
//! busy client cannot starve the others.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use whelm_shared::line::{Command, ErrorReply, LineError, Reply};

use crate::framing::{Frame, Framer};
use crate::jobs::{Input, SessionId};

const LISTENER: Token = Token(0);
/// The token of the waker the machine thread uses.
pub const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Shared read buffer.
const READ_BUF: usize = 64 * 1024;
/// Reads per connection per wake-up before others get a turn.
const READ_BUDGET: usize = 8;
/// When this many inputs wait for the machine, reading pauses.
const MACHINE_BACKLOG: usize = 200_000;

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
}

struct Conn {
    stream: TcpStream,
    session: SessionId,
    ip: IpAddr,
    framer: Framer,
    out: Vec<u8>,
    out_pos: usize,
    /// The machine asked to close once `out` is written.
    closing: bool,
    /// WRITABLE interest is registered.
    want_write: bool,
}

/// The network thread's state.
pub struct Net {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_session: HashMap<SessionId, usize>,
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
}

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
            },
            waker,
        ))
    }

    /// Runs until [`NetCmd::Shutdown`] (or the machine is gone).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUF];
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let timeout = if !self.again.is_empty() {
                Some(Duration::from_millis(1))
            } else if shutdown_at.is_some() {
                Some(Duration::from_millis(20))
            } else {
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed; network thread stops");
                    return;
                }
            }
            let again = std::mem::take(&mut self.again);
            for idx in again {
                self.read(idx, &mut buf);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
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
                            if let Some(c) = self.conns[idx].as_mut() {
                                c.closing = true;
                            }
                            self.dirty.push(idx);
                        }
                    }
                    Ok(NetCmd::Shutdown) => {
                        if let Some(mut l) = self.listener.take() {
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
            if let Some(t) = shutdown_at {
                if self.open == 0 || t.elapsed() > Duration::from_secs(2) {
                    return;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            let ip = peer.ip();
            let per_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            if self.open >= self.cfg.max_connections
                || (self.cfg.max_per_ip > 0 && per_ip >= self.cfg.max_per_ip)
            {
                tracing::debug!(%peer, "connection refused: limit reached");
                let _ = stream.write(&Reply::Error(ErrorReply::AtCapacity).to_wire());
                continue;
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
                ip,
                framer: Framer::default(),
                out: Vec::new(),
                out_pos: 0,
                closing: false,
                want_write: false,
            });
            self.by_session.insert(session, idx);
            *self.per_ip.entry(ip).or_insert(0) += 1;
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
        let mut gone = false;
        let mut reads = 0;
        loop {
            if reads == READ_BUDGET {
                self.again.push(idx);
                break;
            }
            match c.stream.read(buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => {
                    reads += 1;
                    c.framer.feed(&buf[..n], |fr| {
                        let line = match fr {
                            Frame::Line(l) => Command::parse(l),
                            Frame::TooLong => Err(LineError::TooLong),
                        };
                        let _ = machine.send(Input::Line { session, line });
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            self.drop_conn(idx, true);
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
        let mut failed = false;
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.drop_conn(idx, true);
            return;
        }
        let done = c.out_pos == c.out.len();
        if done {
            c.out.clear();
            c.out_pos = 0;
            if c.out.capacity() > 16 * 1024 {
                c.out = Vec::new();
            }
            if c.closing {
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

    /// Forgets a connection; tells the machine unless it asked for this.
    fn drop_conn(&mut self, idx: usize, tell_machine: bool) {
        let Some(mut c) = self.conns.get_mut(idx).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.free.push(idx);
        self.by_session.remove(&c.session);
        self.open -= 1;
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
        if tell_machine && !c.closing {
            let _ = self
                .machine
                .send(Input::Disconnected { session: c.session });
        }
    }
}
