//! The Prometheus endpoint: `GET /metrics` (or `/`; a query string is
//! ignored) answers 200 in the Prometheus text format with whatever the
//! daemon's render function returns at scrape time; `HEAD` is answered
//! likewise without the body, any other path is a 404, any other method a
//! 405. Every response closes its connection.
//!
//! A small hand-written HTTP/1.x responder on one thread: a non-blocking
//! listener and its connections multiplexed with `mio` (epoll). What a client
//! can make it hold is bounded, since anyone on the host can connect:
//!
//! - at most 64 connections are open at once. Beyond that, the
//!   connection accepted longest ago that has not yet sent its whole request
//!   head is closed to make room, so idle connections cannot shut a scraper
//!   out; when every open connection is being answered, the new one is closed
//!   at once. Either way the listener's backlog keeps draining.
//! - each connection has a deadline, 5 s from accept, for sending its request
//!   head and reading the response; past it the connection is closed. Writes
//!   are non-blocking, so a client that never reads holds nothing but its
//!   slot until then.
//! - the request head is capped at 8 KiB (longer: 431, then close).
//! - a failing `accept` (EMFILE and the like) backs off 100 ms instead of
//!   spinning.
//!
//! [`MetricsServer::stop`] (or dropping the server) wakes the thread through
//! a `mio::Waker` and joins it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::logging::RateLimited;

/// Connections open at once.
const MAX_CONNS: usize = 64;
/// From accept to the whole response written.
const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// The longest request head (request line and header fields) read.
const MAX_HEAD: usize = 8 * 1024;
/// The pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accepts per wakeup before the open connections get their turn.
const ACCEPT_BATCH: usize = 256;
/// What is read after the response to let the close be a FIN, not a RST.
const MAX_DRAIN: usize = 64 * 1024;

const LISTENER: Token = Token(MAX_CONNS);
const WAKER: Token = Token(MAX_CONNS + 1);

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus endpoint's thread.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
    /// The bound address (port resolved).
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` with what `render` returns,
    /// from a thread named `thread_name`.
    pub fn start(
        addr: SocketAddr,
        thread_name: &str,
        render: impl Fn() -> String + Send + 'static,
    ) -> anyhow::Result<MetricsServer> {
        MetricsServer::start_with(addr, thread_name, render, CONN_DEADLINE)
    }

    /// [`MetricsServer::start`] with each connection's deadline (from accept
    /// to the response written) given.
    pub(crate) fn start_with(
        addr: SocketAddr,
        thread_name: &str,
        render: impl Fn() -> String + Send + 'static,
        deadline: Duration,
    ) -> anyhow::Result<MetricsServer> {
        let mut listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot bind the metrics endpoint {addr}"))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("local address of the metrics endpoint {addr}"))?;
        let poll = Poll::new().context("creating the metrics endpoint's poll")?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .context("registering the metrics listener")?;
        let waker =
            Waker::new(poll.registry(), WAKER).context("creating the metrics endpoint's waker")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || serve(poll, listener, &render, deadline, &s))
            .context("spawning the metrics thread")?;
        Ok(MetricsServer {
            stop,
            waker,
            thread: Some(thread),
            addr: local,
        })
    }

    /// Stops the thread: open connections are closed, the port released.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            if let Err(e) = self.waker.wake() {
                // Cannot happen short of a broken eventfd; the thread would
                // then only see the flag on its next event or deadline.
                tracing::warn!("waking the metrics thread: {e}");
            }
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// Closed when this passes, whatever its state.
    deadline: Instant,
    state: State,
}

enum State {
    /// Reading the request head (what has come so far).
    Head(Vec<u8>),
    /// Writing the response.
    Reply { out: Vec<u8>, sent: usize },
}

/// What reading the head came to.
enum HeadRead {
    /// The head ends at this offset.
    Complete(usize),
    /// Longer than [`MAX_HEAD`].
    TooLong,
    /// Nothing more to read for now.
    Pending,
    /// EOF or an error before the head was whole.
    Closed,
}

/// Whether the listener's queue may be drained further.
enum Accepted {
    Drained,
    More,
    Failed(io::Error),
}

/// The thread: until the stop flag is seen.
fn serve(
    mut poll: Poll,
    mut listener: TcpListener,
    render: &dyn Fn() -> String,
    deadline: Duration,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(MAX_CONNS + 2);
    let mut conns: Vec<Option<Conn>> = (0..MAX_CONNS).map(|_| None).collect();
    // Connections may be waiting in the backlog; with edge-triggered
    // readiness nothing says so again until a new one arrives.
    let mut accept_wanted = true;
    // Set after a failed accept: no accept before then.
    let mut accept_resume: Option<Instant> = None;
    let mut accept_log = RateLimited::new(Duration::from_secs(60));
    let mut poll_log = RateLimited::new(Duration::from_secs(60));
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let timeout = next_timeout(Instant::now(), &conns, accept_wanted, accept_resume);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                if let Some(n) = poll_log.allow(Instant::now()) {
                    tracing::warn!("metrics endpoint: poll failed: {e} ({n} more not logged)");
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            continue;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => accept_wanted = true,
                Token(i) => {
                    if let Some(slot) = conns.get_mut(i)
                        && let Some(c) = slot
                        && !c.drive(render)
                    {
                        close(poll.registry(), slot);
                    }
                }
            }
        }
        let now = Instant::now();
        for slot in &mut conns {
            if slot.as_ref().is_some_and(|c| c.deadline <= now) {
                close(poll.registry(), slot);
            }
        }
        if accept_wanted && accept_resume.is_none_or(|t| t <= now) {
            accept_resume = None;
            match accept_batch(&listener, poll.registry(), &mut conns, deadline) {
                Accepted::Drained => accept_wanted = false,
                Accepted::More => {}
                Accepted::Failed(e) => {
                    accept_resume = Some(now + ACCEPT_BACKOFF);
                    if let Some(n) = accept_log.allow(now) {
                        tracing::warn!(
                            "metrics endpoint: accept failed: {e}; retrying in {} ms \
                             ({n} more not logged)",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                }
            }
        }
    }
    for slot in &mut conns {
        close(poll.registry(), slot);
    }
    let _ = poll.registry().deregister(&mut listener);
}

/// How long the poll may sleep: until the next deadline or the end of an
/// accept back-off; not at all while the backlog may hold connections.
fn next_timeout(
    now: Instant,
    conns: &[Option<Conn>],
    accept_wanted: bool,
    accept_resume: Option<Instant>,
) -> Option<Duration> {
    let accept_at = match (accept_wanted, accept_resume) {
        (true, None) => return Some(Duration::ZERO),
        (true, Some(t)) => Some(t),
        (false, _) => None,
    };
    conns
        .iter()
        .flatten()
        .map(|c| c.deadline)
        .chain(accept_at)
        .min()
        .map(|t| t.saturating_duration_since(now))
}

/// Accepts up to [`ACCEPT_BATCH`] connections.
fn accept_batch(
    listener: &TcpListener,
    registry: &Registry,
    conns: &mut [Option<Conn>],
    deadline: Duration,
) -> Accepted {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, _)) => admit(registry, conns, stream, deadline),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Drained,
            // A connection reset while in the queue.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => return Accepted::Failed(e),
        }
    }
    Accepted::More
}

/// Gives `stream` a slot: a free one, else the one of the connection accepted
/// longest ago that is still sending its head. With neither, `stream` is
/// closed.
fn admit(
    registry: &Registry,
    conns: &mut [Option<Conn>],
    mut stream: TcpStream,
    deadline: Duration,
) {
    let i = match conns.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            let oldest = conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    Some(c) if matches!(c.state, State::Head(_)) => Some((c.deadline, i)),
                    _ => None,
                })
                .min()
                .map(|(_, i)| i);
            let Some(i) = oldest else {
                return; // dropping `stream` closes it
            };
            close(registry, &mut conns[i]);
            i
        }
    };
    if registry
        .register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )
        .is_err()
    {
        return;
    }
    conns[i] = Some(Conn {
        stream,
        deadline: Instant::now() + deadline,
        state: State::Head(Vec::new()),
    });
}

fn close(registry: &Registry, slot: &mut Option<Conn>) {
    if let Some(mut c) = slot.take() {
        let _ = registry.deregister(&mut c.stream);
    }
}

impl Conn {
    /// Reads and writes what the socket allows now; false when the
    /// connection is done with (answered, or failed).
    fn drive(&mut self, render: &dyn Fn() -> String) -> bool {
        let Conn { stream, state, .. } = self;
        if let State::Head(buf) = state {
            let out = match read_head(stream, buf) {
                HeadRead::Pending => return true,
                HeadRead::Closed => return false,
                HeadRead::Complete(end) => respond(&buf[..end], render),
                HeadRead::TooLong => reply(
                    431,
                    "Request Header Fields Too Large",
                    "",
                    "request head too long\n",
                ),
            };
            *state = State::Reply { out, sent: 0 };
        }
        let State::Reply { out, sent } = state else {
            return true;
        };
        while *sent < out.len() {
            match stream.write(&out[*sent..]) {
                Ok(0) => return false,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        // Done. Whatever the client sent after its head is read (up to a
        // bound) so that closing sends a FIN: closing with unread data sends
        // a RST, which can cost the client the response.
        let _ = stream.shutdown(Shutdown::Write);
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_DRAIN {
            match stream.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        false
    }
}

/// Reads into `buf` until the head is whole, too long, or the socket has
/// nothing more.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> HeadRead {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return HeadRead::Closed,
            Ok(n) => {
                // The blank line may straddle two reads.
                let from = buf.len().saturating_sub(3);
                buf.extend_from_slice(&chunk[..n]);
                match head_end(buf, from) {
                    Some(end) if end <= MAX_HEAD => return HeadRead::Complete(end),
                    Some(_) => return HeadRead::TooLong,
                    None if buf.len() >= MAX_HEAD => return HeadRead::TooLong,
                    None => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeadRead::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// The offset just past the blank line that ends a head (CRLF or bare LF
/// line ends), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.iter()
        .enumerate()
        .skip(from)
        .filter(|&(_, &b)| b == b'\n')
        .find_map(|(i, _)| match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

/// The response to a whole request head.
fn respond(head: &[u8], render: &dyn Fn() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reply(400, "Bad Request", "", "bad request line\n");
    };
    if !version.starts_with(b"HTTP/1.") {
        return reply(400, "Bad Request", "", "bad request line\n");
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => {
            return reply(
                405,
                "Method Not Allowed",
                "Allow: GET, HEAD\r\n",
                "GET only\n",
            );
        }
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let mut out = if path == b"/metrics" || path == b"/" {
        reply(200, "OK", "", &render())
    } else {
        reply(404, "Not Found", "", "not found\n")
    };
    if head_only && let Some(end) = head_end(&out, 0) {
        out.truncate(end);
    }
    out
}

/// A whole response: status line, fields (`extra` is zero or more CRLF-ended
/// lines), body.
fn reply(status: u16, reason: &str, extra: &str, body: &str) -> Vec<u8> {
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests;
