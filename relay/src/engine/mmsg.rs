//! The fallback engine: `recvmmsg` into a fixed batch of buffers, the same
//! [`crate::batch::process`] as io_uring, `sendmmsg` of every send the batch
//! produced (straight from the receive buffers, no copy). Used when io_uring
//! setup fails or with `--engine mmsg`.
//!
//! The socket stays blocking for sends (a full send buffer applies back
//! pressure rather than dropping); receives use `MSG_DONTWAIT` after `poll`
//! says a socket is readable, with [`WORKER_TICK`] as the poll timeout. The
//! worker's eventfd is polled too, so queued table updates wake it at once.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

use super::{PORTS, WORKER_TICK, WorkerCtx};
use crate::batch::{Batch, RecvItem, process};
use crate::core::PortKind;
use crate::metrics::Metric;
use crate::net::{for_socket, from_sockaddr_storage};

/// `sendmmsg` takes at most this many messages per call (UIO_MAXIOV).
const MAX_SEND: usize = 1024;
/// Largest receive batch (the configuration's upper bound).
const MAX_BATCH: usize = 1024;

/// One queued send.
#[derive(Debug, Clone, Copy)]
struct SendItem {
    buf: u16,
    off: u32,
    len: u32,
    dest: SocketAddr,
}

/// Engine state of one worker: buffers and header arrays allocated once.
///
/// The iovecs borrow `mem`, so they cannot live in the struct with their
/// real lifetime: receives build them in a stack array, sends take the empty
/// `send_iovs` vector's allocation for the call and give it back
/// ([`recycle`]), so no call allocates.
pub struct MmsgEngine {
    batch: usize,
    buf_size: usize,
    mem: Vec<u8>,
    /// Receive headers, one set per socket ([`PORTS`] order): nix keeps the
    /// address length the kernel wrote last, which is fixed per socket.
    recv_hdrs: Vec<MultiHeaders<SockaddrStorage>>,
    recv: Batch<RecvItem>,
    sends: Batch<SendItem>,
    send_names: Vec<Option<SockaddrStorage>>,
    send_iovs: Vec<[IoSlice<'static>; 1]>,
    send_hdrs: MultiHeaders<SockaddrStorage>,
}

/// An empty vector with `v`'s allocation, for an element type that differs
/// only in lifetime (in-place collect keeps the buffer; see the test).
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

impl MmsgEngine {
    /// Allocates the batch.
    pub fn new(ctx: &WorkerCtx) -> MmsgEngine {
        let batch = (ctx.sizes.batch as usize).clamp(1, MAX_BATCH);
        let buf_size = ctx.sizes.buffer_size as usize;
        MmsgEngine {
            batch,
            buf_size,
            mem: vec![0; batch * buf_size],
            recv_hdrs: (0..PORTS.len())
                .map(|_| MultiHeaders::preallocate(batch, None))
                .collect(),
            recv: Batch::with_capacity(batch),
            sends: Batch::with_capacity(MAX_SEND),
            send_names: Vec::with_capacity(MAX_SEND),
            send_iovs: Vec::with_capacity(MAX_SEND),
            send_hdrs: MultiHeaders::preallocate(MAX_SEND, None),
        }
    }

    /// The worker loop; returns at shutdown.
    pub fn run(&mut self, ctx: &mut WorkerCtx) -> anyhow::Result<()> {
        tracing::info!(
            worker = ctx.index,
            core = ctx.cpu,
            "engine=mmsg batch={}",
            self.batch
        );
        anyhow::ensure!(
            ctx.sockets.len() == PORTS.len(),
            "mmsg engine: {} sockets, expected {}",
            ctx.sockets.len(),
            PORTS.len()
        );
        let fds: [RawFd; PORTS.len()] = std::array::from_fn(|i| ctx.sockets[i].as_raw_fd());
        let timeout = PollTimeout::try_from(WORKER_TICK).unwrap_or(PollTimeout::MAX);
        while !ctx.stopping() {
            ctx.apply_updates();
            if let Some(ready) = wait(ctx, timeout) {
                if ready[fds.len()].contains(PollFlags::POLLIN) {
                    // Readable, so this read does not block; it resets the
                    // counter. The updates are applied at the loop's top.
                    let _ = ctx.wake.read();
                }
                for i in 0..fds.len() {
                    if !ready[i].intersects(PollFlags::POLLIN | PollFlags::POLLERR) {
                        continue;
                    }
                    // Bounded: at most 16 batches per socket per loop, so the
                    // other socket and the updates get their turn.
                    for _ in 0..16 {
                        let got = self.recv_batch(ctx, fds[i], i);
                        if got > 0 {
                            ctx.local.inc(Metric::Batches);
                            ctx.local.add(Metric::BatchItems, got as u64);
                            self.process_batch(ctx, fds[i], PORTS[i]);
                        }
                        if got < self.batch {
                            break;
                        }
                    }
                }
            }
            ctx.after_batch(Instant::now());
        }
        ctx.local.publish(&ctx.counters);
        Ok(())
    }

    /// Receives up to `batch` datagrams from socket `sock` into the receive
    /// batch.
    fn recv_batch(&mut self, ctx: &mut WorkerCtx, fd: RawFd, sock: usize) -> usize {
        // The iovec array lives on the stack, in the smallest size class
        // that holds the batch (nix ties its lifetime to the headers', so a
        // reused heap vector would stay borrowed).
        match self.batch {
            0..=16 => self.recv_into::<16>(ctx, fd, sock),
            17..=64 => self.recv_into::<64>(ctx, fd, sock),
            65..=256 => self.recv_into::<256>(ctx, fd, sock),
            _ => self.recv_into::<MAX_BATCH>(ctx, fd, sock),
        }
    }

    fn recv_into<const N: usize>(&mut self, ctx: &mut WorkerCtx, fd: RawFd, sock: usize) -> usize {
        self.recv.clear();
        let port = PORTS[sock];
        let mut chunks = self.mem.chunks_exact_mut(self.buf_size);
        let mut iovs: [[IoSliceMut<'_>; 1]; N] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        match recvmmsg(
            fd,
            &mut self.recv_hdrs[sock],
            iovs[..self.batch].iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(msgs) => {
                let mut n = 0;
                for (i, m) in msgs.enumerate() {
                    n += 1;
                    let Some(peer) = m.address.as_ref().and_then(from_sockaddr_storage) else {
                        ctx.local.inc(Metric::RecvErrors);
                        continue;
                    };
                    self.recv.push(RecvItem {
                        buf: i as u16,
                        off: 0,
                        len: (m.bytes as u32).min(self.buf_size as u32),
                        peer,
                        port,
                        truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
                    });
                }
                n
            }
            Err(Errno::EAGAIN | Errno::EINTR) => 0,
            Err(_) => {
                ctx.local.inc(Metric::RecvErrors);
                0
            }
        }
    }

    fn process_batch(&mut self, ctx: &mut WorkerCtx, fd: RawFd, port: PortKind) {
        let now = Instant::now();
        for k in 0..self.recv.len() {
            let item = self.recv.items()[k];
            if MAX_SEND - self.sends.len() < ctx.core.max_fanout() {
                self.flush(ctx, fd, port);
            }
            let start = usize::from(item.buf) * self.buf_size + item.off as usize;
            let payload = &self.mem[start..start + item.len as usize];
            let sends = &mut self.sends;
            let mut overflow = 0u64;
            process(&mut ctx.core, &item, payload, now, &mut ctx.local, |dest| {
                let ok = sends.push(SendItem {
                    buf: item.buf,
                    off: item.off,
                    len: item.len,
                    dest,
                });
                overflow += u64::from(!ok);
                ok
            });
            ctx.local.add(Metric::DropSendSlotsFull, overflow);
        }
        self.flush(ctx, fd, port);
    }

    /// Sends every queued datagram with as few `sendmmsg` calls as possible,
    /// straight from the receive buffers.
    fn flush(&mut self, ctx: &mut WorkerCtx, fd: RawFd, port: PortKind) {
        let n = self.sends.len();
        if n == 0 {
            return;
        }
        let forwarded = match port {
            PortKind::Ovp => Metric::OvpForwarded,
            PortKind::Voice => Metric::VoiceForwarded,
        };
        let mut iovs: Vec<[IoSlice<'_>; 1]> = recycle(std::mem::take(&mut self.send_iovs));
        self.send_names.clear();
        for s in self.sends.items() {
            let start = usize::from(s.buf) * self.buf_size + s.off as usize;
            iovs.push([IoSlice::new(&self.mem[start..start + s.len as usize])]);
            self.send_names
                .push(Some(SockaddrStorage::from(for_socket(s.dest, ctx.v6))));
        }
        let mut done = 0;
        while done < n {
            match sendmmsg(
                fd,
                &mut self.send_hdrs,
                &iovs[done..n],
                &self.send_names[done..n],
                [],
                MsgFlags::empty(),
            ) {
                Ok(sent) => {
                    let mut r = 0;
                    for m in sent {
                        r += 1;
                        ctx.local.inc(Metric::TxPackets);
                        ctx.local.add(Metric::TxBytes, m.bytes as u64);
                        ctx.local.inc(forwarded);
                    }
                    done += r;
                }
                Err(Errno::EINTR) => {}
                Err(_) => {
                    // The message at `done` failed; count it and go on.
                    ctx.local.inc(Metric::TxErrors);
                    done += 1;
                }
            }
        }
        self.send_iovs = recycle(iovs);
        self.sends.clear();
    }
}

/// Polls the sockets and the wake eventfd for up to `timeout`; the ready
/// flags of each ([`PORTS`] order, then the eventfd), or `None` when nothing
/// is ready (timeout, `EINTR`).
fn wait(ctx: &WorkerCtx, timeout: PollTimeout) -> Option<[PollFlags; PORTS.len() + 1]> {
    let mut pfds: [PollFd<'_>; PORTS.len() + 1] = std::array::from_fn(|i| {
        let fd = match ctx.sockets.get(i) {
            Some(s) => s.as_fd(),
            None => ctx.wake.as_fd(),
        };
        PollFd::new(fd, PollFlags::POLLIN)
    });
    match poll(&mut pfds, timeout) {
        Ok(n) if n > 0 => Some(std::array::from_fn(|i| {
            pfds[i].revents().unwrap_or(PollFlags::empty())
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycle_keeps_the_allocation() {
        let mem = [0u8; 64];
        let store: Vec<[IoSlice<'static>; 1]> = Vec::with_capacity(16);
        let cap = store.capacity();
        let mut iovs: Vec<[IoSlice<'_>; 1]> = recycle(store);
        assert_eq!(iovs.capacity(), cap);
        let ptr = iovs.as_ptr();
        iovs.extend(mem.chunks_exact(4).map(|b| [IoSlice::new(b)]));
        assert_eq!(iovs.as_ptr(), ptr);
        let back: Vec<[IoSlice<'static>; 1]> = recycle(iovs);
        assert_eq!(back.capacity(), cap);
        assert_eq!(back.as_ptr(), ptr);
        assert!(back.is_empty());
    }
}
