//! The fallback engine: `recvmmsg` into a fixed batch of buffers, the same
//! [`crate::batch::process`] as io_uring, `sendmmsg` of every send the batch
//! produced (straight from the receive buffers, no copy). Used when io_uring
//! setup fails or with `--engine mmsg`.
//!
//! The socket stays blocking for sends (a full send buffer applies back
//! pressure rather than dropping); receives use `MSG_DONTWAIT` after `poll`
//! says a socket is readable, with [`WORKER_TICK`] as the poll timeout. The
//! worker's eventfd is polled too, so queued table updates wake it at once.
//!
//! Why raw `libc` and `unsafe` here, outside the io_uring engine: nix 0.31's
//! safe `recvmmsg`/`sendmmsg` wrappers are unsound for this use. Their
//! results iterator calls `assume_init()` on preallocated address slots that
//! `sendmmsg` never writes, and on 128-byte storage of which `recvmmsg`
//! writes only the 16 or 28 bytes of the address (nix issues #2506, #2797).
//! Here every header, iovec and address is zero-initialised once, and each
//! FFI call states why it holds.

use std::ffi::c_void;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use socket2::SockAddr;

use super::{Coalescer, PORTS, WORKER_TICK, WorkerCtx};
use crate::batch::{Batch, RecvItem, process};
use crate::core::PortKind;
use crate::metrics::Metric;
use crate::net::{for_socket, parse_sockaddr};

/// `sendmmsg` takes at most this many messages per call (UIO_MAXIOV).
const MAX_SEND: usize = 1024;

/// One queued send.
#[derive(Debug, Clone, Copy)]
struct SendItem {
    buf: u16,
    off: u32,
    len: u32,
    dest: SocketAddr,
}

/// Engine state of one worker: buffers and header arrays allocated once.
pub struct MmsgEngine {
    batch: usize,
    buf_size: usize,
    mem: Vec<u8>,
    names: Vec<libc::sockaddr_in6>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    recv: Batch<RecvItem>,
    sends: Batch<SendItem>,
    send_names: Vec<SockAddr>,
    send_iovs: Vec<libc::iovec>,
    send_hdrs: Vec<libc::mmsghdr>,
}

impl MmsgEngine {
    /// Allocates the batch.
    pub fn new(ctx: &WorkerCtx) -> MmsgEngine {
        let batch = ctx.sizes.batch as usize;
        let buf_size = ctx.sizes.buffer_size as usize;
        let placeholder = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        MmsgEngine {
            batch,
            buf_size,
            mem: vec![0; batch * buf_size],
            // SAFETY: all-zero sockaddr_in6/iovec/mmsghdr are valid values.
            names: vec![unsafe { std::mem::zeroed() }; batch],
            // SAFETY: as above.
            iovs: vec![unsafe { std::mem::zeroed() }; batch],
            // SAFETY: as above.
            hdrs: vec![unsafe { std::mem::zeroed() }; batch],
            recv: Batch::with_capacity(batch),
            sends: Batch::with_capacity(MAX_SEND),
            send_names: vec![placeholder; MAX_SEND],
            // SAFETY: as above.
            send_iovs: vec![unsafe { std::mem::zeroed() }; MAX_SEND],
            // SAFETY: as above.
            send_hdrs: vec![unsafe { std::mem::zeroed() }; MAX_SEND],
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
        let fds: Vec<i32> = ctx.sockets.iter().map(|s| s.as_raw_fd()).collect();
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wake_fd = ctx.wake.as_fd().as_raw_fd();
        pfds.push(libc::pollfd {
            fd: wake_fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let tick_ms = WORKER_TICK.as_millis() as libc::c_int;
        let mut coalesce =
            Coalescer::new(ctx.sizes.coalesce, ctx.sizes.coalesce_above, Instant::now());
        while !ctx.stopping() {
            ctx.apply_updates();
            for p in pfds.iter_mut() {
                p.revents = 0;
            }
            // Under load, let datagrams gather until `coalesce_us` after the
            // previous wake-up, then look without waiting; otherwise wake
            // for the first one.
            let timeout_ms = match coalesce.deadline() {
                Some(deadline) => {
                    ctx.local.inc(Metric::CoalescedWaits);
                    let delay = deadline.saturating_duration_since(Instant::now());
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    0
                }
                None => tick_ms,
            };
            // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs
            // for the duration of the call.
            let n =
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
            let pass_start = Instant::now();
            let mut received = 0;
            if n > 0 {
                if pfds[fds.len()].revents & libc::POLLIN != 0 {
                    // Readable, so this read does not block; it resets the
                    // counter. The updates are applied at the loop's top.
                    let _ = ctx.wake.read();
                }
                for i in 0..fds.len() {
                    if pfds[i].revents & (libc::POLLIN | libc::POLLERR) == 0 {
                        continue;
                    }
                    // Bounded: at most 16 batches per socket per loop, so the
                    // other socket and the updates get their turn.
                    for _ in 0..16 {
                        let got = self.recv_batch(ctx, fds[i], PORTS[i]);
                        received += got;
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
            coalesce.record(pass_start, received);
            ctx.after_batch(pass_start);
        }
        ctx.local.publish(&ctx.counters);
        Ok(())
    }

    /// Receives up to `batch` datagrams into the receive batch.
    fn recv_batch(&mut self, ctx: &mut WorkerCtx, fd: i32, port: PortKind) -> usize {
        self.recv.clear();
        for i in 0..self.batch {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * buf_size + buf_size <= mem.len().
                iov_base: unsafe { self.mem.as_mut_ptr().add(i * self.buf_size) } as *mut c_void,
                iov_len: self.buf_size,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i]) as *mut libc::sockaddr_in6 as *mut c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs[..batch]` are initialised above and point at `names`,
        // `iovs` and `mem`, all owned by self and alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                ctx.local.inc(Metric::RecvErrors);
            }
            return 0;
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            let namelen =
                (h.msg_hdr.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_in6>());
            // SAFETY: `names[i]` is a plain sockaddr_in6 of which the kernel
            // wrote `namelen` bytes; viewing it as bytes is valid.
            let name = unsafe {
                std::slice::from_raw_parts(
                    (&self.names[i]) as *const libc::sockaddr_in6 as *const u8,
                    namelen,
                )
            };
            let Some(peer) = parse_sockaddr(name) else {
                ctx.local.inc(Metric::RecvErrors);
                continue;
            };
            self.recv.push(RecvItem {
                buf: i as u16,
                off: 0,
                len: h.msg_len.min(self.buf_size as u32),
                peer,
                port,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        n
    }

    fn process_batch(&mut self, ctx: &mut WorkerCtx, fd: i32, port: PortKind) {
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

    /// Sends every queued datagram with as few `sendmmsg` calls as possible.
    fn flush(&mut self, ctx: &mut WorkerCtx, fd: i32, port: PortKind) {
        let n = self.sends.len();
        if n == 0 {
            return;
        }
        for (i, s) in self.sends.items().iter().enumerate() {
            self.send_names[i] = SockAddr::from(for_socket(s.dest, ctx.v6));
            let start = usize::from(s.buf) * self.buf_size + s.off as usize;
            self.send_iovs[i] = libc::iovec {
                // sendmmsg only reads through this pointer.
                iov_base: self.mem[start..].as_ptr() as *mut c_void,
                iov_len: s.len as usize,
            };
            let h = &mut self.send_hdrs[i];
            h.msg_hdr.msg_name = self.send_names[i].as_ptr() as *mut c_void;
            h.msg_hdr.msg_namelen = self.send_names[i].len();
            h.msg_hdr.msg_iov = &mut self.send_iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `send_hdrs[done..n]` are initialised above and point at
            // `send_names`, `send_iovs` and `mem`, all alive for the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The message at `done` failed; count it and go on.
                ctx.local.inc(Metric::TxErrors);
                done += 1;
                continue;
            }
            for i in done..done + r as usize {
                self.count_sent(ctx, i, port);
            }
            done += r as usize;
        }
        self.sends.clear();
    }

    fn count_sent(&self, ctx: &mut WorkerCtx, i: usize, port: PortKind) {
        ctx.local.inc(Metric::TxPackets);
        ctx.local
            .add(Metric::TxBytes, u64::from(self.send_hdrs[i].msg_len));
        ctx.local.inc(match port {
            PortKind::Ovp => Metric::OvpForwarded,
            PortKind::Voice => Metric::VoiceForwarded,
        });
    }
}
