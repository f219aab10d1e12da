//! The io_uring engine.
//!
//! Per worker: one ring (SINGLE_ISSUER|DEFER_TASKRUN when the kernel takes
//! it, else COOP_TASKRUN, else plain), the worker's sockets registered as
//! fixed files, one provided-buffer ring shared by them, one multishot
//! `RecvMsgMulti` per socket, and a fixed array of send slots (msghdr +
//! iovec + sockaddr). A received buffer is sent to every destination
//! straight from the buffer ring memory (no copy); its reference count is
//! the number of sends in flight, and it goes back to the buffer ring when
//! the last one completes.
//!
//! user_data: op kind in the top byte ([`OP_RECV`], [`OP_SEND`],
//! [`OP_WAKE`]), socket index or slot index in the low bits.
//!
//! Wake-up: one `Read` on the worker's eventfd is always armed; the
//! coordinator writes the eventfd after queueing table updates, the read
//! completes, the wait returns, and the loop applies the updates.
//!
//! Failure handling: a receive completion without `IORING_CQE_F_MORE`
//! (ENOBUFS when every buffer is in flight, or any error) clears the socket's
//! armed flag and the next loop re-arms it; a full SQ is submitted and the
//! push retried; no free send slot drops that send and counts it.

use std::ffi::c_void;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::SockAddr;

use super::bufring::BufRing;
use super::{Coalescer, PORTS, WORKER_TICK, WorkerCtx};
use crate::batch::{RecvItem, process};
use crate::core::PortKind;
use crate::metrics::Metric;
use crate::net::{for_socket, parse_sockaddr};

const OP_SHIFT: u32 = 56;
/// Datagrams a coalesced wait gathers before it returns early.
const COALESCE_BATCH: usize = 64;
/// Receive buffers in the provided-buffer ring at once (at most half of
/// them all); the rest wait in the buffer ring's spare stack (see
/// `bufring`). A coalesced wait at 250k datagrams/s gathers about 60; this
/// leaves room for four times that, and a larger backlog drains in passes
/// of this many.
const RING_FILL: u16 = 256;
/// user_data kind of a multishot receive (low bits: socket index).
const OP_RECV: u64 = 1;
/// user_data kind of a send (low bits: slot index).
const OP_SEND: u64 = 2;
/// user_data kind of a cancel request at shutdown.
const OP_CANCEL: u64 = 3;
/// user_data kind of the read on the worker's eventfd (a wake-up).
const OP_WAKE: u64 = 4;

fn user_data(op: u64, idx: usize) -> u64 {
    (op << OP_SHIFT) | idx as u64
}

/// One in-flight send: the kernel reads `addr` (SEND with an address), or
/// `hdr`, which points at `iov` (into the receive buffer) and `addr`
/// (SENDMSG). Slots live in a boxed slice that never moves, so these
/// self-pointers stay valid until the send completes.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: SockAddr,
    buf: u16,
    port: PortKind,
}

/// The engine state of one worker. Field order matters for drop: the ring
/// (closing the io_uring, which cancels every request) goes before the
/// buffer memory and the send slots it points into.
pub struct UringEngine {
    ring: IoUring,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free: Vec<u16>,
    refs: Vec<u16>,
    armed: Vec<bool>,
    /// The eventfd read is in flight.
    wake_armed: bool,
    /// Where the eventfd read writes its 8 bytes (boxed: never moves).
    wake_buf: Box<u64>,
    cqes: Vec<(u64, i32, u32)>,
    setup: &'static str,
    /// `IORING_OP_SEND` with a destination address (Linux 6.0) instead of
    /// `SENDMSG`: the kernel copies a sockaddr, not a msghdr and an iovec.
    send_to: bool,
    /// Coalesced waits use an absolute deadline (`IORING_ENTER_ABS_TIMER`,
    /// Linux 6.12); cleared when the kernel refuses the flag.
    abs_timer: bool,
}

fn build_ring(entries: u32, cq: u32) -> io::Result<(IoUring, &'static str)> {
    let defer = IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    if let Ok(r) = defer {
        return Ok((r, "single_issuer+defer_taskrun"));
    }
    let coop = IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .build(entries);
    if let Ok(r) = coop {
        return Ok((r, "coop_taskrun"));
    }
    Ok((IoUring::builder().setup_cqsize(cq).build(entries)?, "plain"))
}

impl UringEngine {
    /// Sets up the ring, probes the opcodes, registers the buffer ring.
    /// Must run on the worker thread (SINGLE_ISSUER).
    pub fn new(ctx: &WorkerCtx) -> anyhow::Result<UringEngine> {
        let s = ctx.sizes;
        let entries = s.ring_entries.next_power_of_two().min(32_768);
        let cq = (s.send_slots + s.buffers)
            .next_power_of_two()
            .clamp(entries * 2, 65_536);
        let (ring, setup) = build_ring(entries, cq).context("io_uring_setup")?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .context("io_uring probe")?;
        for (code, name) in [
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::SendMsg::CODE, "SENDMSG"),
        ] {
            if !probe.is_supported(code) {
                anyhow::bail!("io_uring opcode {name} not supported");
            }
        }
        // DEFER_TASKRUN needs 6.1, so a ring that has it also has SEND with
        // an address; older kernels reject the address (EINVAL per send).
        let send_to =
            setup == "single_issuer+defer_taskrun" && probe.is_supported(opcode::Send::CODE);
        // The worker's sockets as fixed files (index = socket index): a send
        // or receive on a fixed file skips the lookup and reference count
        // of the process's (shared) file table.
        let fds: Vec<i32> = ctx.sockets.iter().map(|s| s.as_raw_fd()).collect();
        ring.submitter()
            .register_files(&fds)
            .context("registering the worker's sockets as io_uring fixed files")?;
        let nbufs = u16::try_from(s.buffers).context("buffer count above 32768")?;
        let bufs = BufRing::new(nbufs, s.buffer_size, RING_FILL.min(nbufs / 2), 0)
            .context("allocating buffer ring")?;
        // SAFETY: the ring memory is page aligned, holds `entries()` entries
        // and lives in `bufs`, which this engine owns; the engine unregisters
        // it (end of `run`) or closes the io_uring (field order) before the
        // memory is freed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.entries(),
                bufs.bgid,
                0,
            )
        }
        .context("registering the provided-buffer ring")?;

        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        recv_hdr.msg_controllen = 0;

        let unspecified = SockAddr::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let slots: Box<[SendSlot]> = (0..s.send_slots)
            .map(|_| SendSlot {
                // SAFETY: all-zero msghdr/iovec are valid values.
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                addr: unspecified.clone(),
                buf: 0,
                port: PortKind::Ovp,
            })
            .collect();
        let free = (0..s.send_slots as usize).rev().map(|i| i as u16).collect();
        Ok(UringEngine {
            ring,
            refs: vec![0; usize::from(nbufs)],
            bufs,
            recv_hdr,
            slots,
            free,
            armed: vec![false; ctx.sockets.len()],
            wake_armed: false,
            wake_buf: Box::new(0),
            cqes: Vec::with_capacity(cq as usize),
            setup,
            send_to,
            abs_timer: true,
        })
    }

    /// The worker loop; returns at shutdown.
    pub fn run(&mut self, ctx: &mut WorkerCtx) -> anyhow::Result<()> {
        tracing::info!(
            worker = ctx.index,
            core = ctx.cpu,
            "engine=uring setup={} send={} buffers={} send_slots={}",
            self.setup,
            if self.send_to { "send" } else { "sendmsg" },
            self.bufs.entries(),
            self.slots.len()
        );
        let wake_fd = ctx.wake.as_fd().as_raw_fd();
        let tick = types::Timespec::from(WORKER_TICK);
        let args = types::SubmitArgs::new().timespec(&tick);
        let mut coalesce =
            Coalescer::new(ctx.sizes.coalesce, ctx.sizes.coalesce_above, Instant::now());
        let cq_cap = self.cqes.capacity();
        ctx.local.set(Metric::SendSlots, self.slots.len() as u64);
        while !ctx.stopping() {
            ctx.apply_updates();
            let now = Instant::now();
            {
                let UringEngine {
                    ring,
                    bufs,
                    recv_hdr,
                    slots,
                    free,
                    refs,
                    armed,
                    wake_armed,
                    wake_buf,
                    cqes,
                    send_to,
                    abs_timer,
                    ..
                } = self;
                let send_to = *send_to;
                let (submitter, mut sq, mut cq) = ring.split();
                cqes.clear();
                cq.sync();
                for cqe in &mut cq {
                    cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
                    if cqes.len() >= cq_cap {
                        break;
                    }
                }
                cq.sync();
                drop(cq);
                let more_pending = cqes.len() >= cq_cap;
                let mut slot_drops = 0u64;
                // Datagrams received and sends queued by this pass.
                let mut received = 0usize;
                let mut sends = 0usize;
                for &(ud, res, flags) in cqes.iter() {
                    let op = ud >> OP_SHIFT;
                    let idx = (ud & ((1 << OP_SHIFT) - 1)) as usize;
                    if op == OP_SEND {
                        let Some(slot) = slots.get(idx) else { continue };
                        let bid = slot.buf;
                        if res >= 0 {
                            ctx.local.inc(Metric::TxPackets);
                            ctx.local.add(Metric::TxBytes, res as u64);
                            ctx.local.inc(match slot.port {
                                PortKind::Ovp => Metric::OvpForwarded,
                                PortKind::Voice => Metric::VoiceForwarded,
                            });
                        } else {
                            ctx.local.inc(Metric::TxErrors);
                        }
                        free.push(idx as u16);
                        let r = &mut refs[usize::from(bid)];
                        *r = r.saturating_sub(1);
                        if *r == 0 {
                            bufs.push(bid);
                        }
                        continue;
                    }
                    if op == OP_WAKE {
                        // Updates are applied at the top of the next loop.
                        *wake_armed = false;
                        continue;
                    }
                    if op != OP_RECV || idx >= armed.len() {
                        continue;
                    }
                    if !cqueue::more(flags) {
                        armed[idx] = false;
                    }
                    if res < 0 {
                        match -res {
                            libc::ENOBUFS => {
                                bufs.emptied();
                                ctx.local.inc(Metric::RecvNoBufs);
                            }
                            libc::ECANCELED => {}
                            e => {
                                ctx.local.inc(Metric::RecvErrors);
                                tracing::trace!(worker = ctx.index, "recv error {e}");
                            }
                        }
                        continue;
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        ctx.local.inc(Metric::RecvErrors);
                        continue;
                    };
                    bufs.taken();
                    let whole = bufs.buf(bid);
                    let data = &whole[..(res as usize).min(whole.len())];
                    // (peer, payload offset, payload length, truncated)
                    let parsed = types::RecvMsgOut::parse(data, recv_hdr).ok().and_then(|m| {
                        let p = m.payload_data();
                        let off = p.as_ptr() as usize - whole.as_ptr() as usize;
                        parse_sockaddr(m.name_data())
                            .map(|peer| (peer, off, p.len(), m.is_payload_truncated()))
                    });
                    let Some((peer, off, len, truncated)) = parsed else {
                        ctx.local.inc(Metric::RecvErrors);
                        bufs.push(bid);
                        continue;
                    };
                    let payload = &whole[off..off + len];
                    received += 1;
                    let item = RecvItem {
                        buf: bid,
                        off: off as u32,
                        len: len as u32,
                        peer,
                        port: PORTS[idx],
                        truncated,
                    };
                    let fd = types::Fixed(idx as u32);
                    let v6 = ctx.v6;
                    let queued =
                        process(&mut ctx.core, &item, payload, now, &mut ctx.local, |dest| {
                            let Some(si) = free.pop() else {
                                slot_drops += 1;
                                return false;
                            };
                            let slot = &mut slots[usize::from(si)];
                            slot.addr = SockAddr::from(for_socket(dest, v6));
                            slot.buf = bid;
                            slot.port = item.port;
                            let sqe = if send_to {
                                let len = payload.len() as u32;
                                opcode::Send::new(fd, payload.as_ptr(), len)
                                    .dest_addr(slot.addr.as_ptr().cast())
                                    .dest_addr_len(slot.addr.len())
                                    .build()
                            } else {
                                slot.iov = libc::iovec {
                                    iov_base: payload.as_ptr() as *mut c_void,
                                    iov_len: payload.len(),
                                };
                                slot.hdr.msg_name = slot.addr.as_ptr() as *mut c_void;
                                slot.hdr.msg_namelen = slot.addr.len();
                                slot.hdr.msg_iov = &mut slot.iov;
                                slot.hdr.msg_iovlen = 1;
                                opcode::SendMsg::new(fd, &slot.hdr).build()
                            };
                            let sqe = sqe.user_data(user_data(OP_SEND, usize::from(si)));
                            if push_sqe(&submitter, &mut sq, &sqe) {
                                true
                            } else {
                                free.push(si);
                                slot_drops += 1;
                                false
                            }
                        });
                    sends += queued as usize;
                    if queued == 0 {
                        bufs.push(bid);
                    } else {
                        refs[usize::from(bid)] = queued as u16;
                    }
                }
                ctx.local.add(Metric::DropSendSlotsFull, slot_drops);
                if !cqes.is_empty() {
                    ctx.local.inc(Metric::Batches);
                    ctx.local.add(Metric::BatchItems, cqes.len() as u64);
                }
                ctx.local
                    .set(Metric::SendSlotsInUse, (slots.len() - free.len()) as u64);
                for (i, a) in armed.iter_mut().enumerate() {
                    if *a {
                        continue;
                    }
                    let sqe =
                        opcode::RecvMsgMulti::new(types::Fixed(i as u32), &**recv_hdr, bufs.bgid)
                            .build()
                            .user_data(user_data(OP_RECV, i));
                    if push_sqe(&submitter, &mut sq, &sqe) {
                        *a = true;
                        ctx.local.inc(Metric::RecvRearms);
                    }
                }
                if !*wake_armed {
                    let buf: *mut u64 = &mut **wake_buf;
                    let sqe = opcode::Read::new(types::Fd(wake_fd), buf.cast::<u8>(), 8)
                        .build()
                        .user_data(user_data(OP_WAKE, 0));
                    if push_sqe(&submitter, &mut sq, &sqe) {
                        *wake_armed = true;
                    }
                }
                bufs.refill();
                sq.sync();
                let to_submit = sq.len();
                drop(sq);
                ctx.after_batch(now);
                coalesce.record(now, received);
                // The sends submitted by this call complete during it (UDP
                // sends rarely wait), so the wait asks for that many CQEs
                // plus the next datagram's: one io_uring_enter per pass,
                // not one that returns at once with the send completions
                // and a second that sleeps.
                let res = if more_pending {
                    submitter.submit_with_args(0, &args)
                } else if let Some(deadline) = coalesce.deadline() {
                    ctx.local.inc(Metric::CoalescedWaits);
                    let delay = deadline.saturating_duration_since(Instant::now());
                    // Sleep until `coalesce_us` after this pass began, or
                    // until COALESCE_BATCH more completions. The deadline is
                    // absolute: the sends this call submits run first, and
                    // their time counts against it (a relative timeout would
                    // start after them and stretch every cycle). A deadline
                    // already past runs the deferred task work and returns.
                    // (IORING_ENTER min_wait_usec was tried: with
                    // DEFER_TASKRUN it held the wait until the full count,
                    // hundreds of microseconds at 200k/s.)
                    let want = sends + COALESCE_BATCH;
                    let relative = || {
                        let d = types::Timespec::from(delay);
                        submitter.submit_with_args(want, &types::SubmitArgs::new().timespec(&d))
                    };
                    if !*abs_timer {
                        relative()
                    } else {
                        match submit_and_wait_until(&submitter, to_submit, want, delay) {
                            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                                *abs_timer = false;
                                tracing::info!(
                                    worker = ctx.index,
                                    "io_uring without IORING_ENTER_ABS_TIMER: \
                                     coalesced waits use relative timeouts"
                                );
                                relative()
                            }
                            r => r,
                        }
                    }
                } else {
                    submitter.submit_with_args(sends + 1, &args)
                };
                match res {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                        ) => {}
                    Err(e) => return Err(e).context("io_uring_enter"),
                }
            }
        }
        self.drain(ctx);
        Ok(())
    }

    /// Shutdown: cancel the receives, wait (bounded) for in-flight sends,
    /// unregister the buffer ring.
    fn drain(&mut self, ctx: &mut WorkerCtx) {
        let deadline = Instant::now() + Duration::from_secs(1);
        {
            let (submitter, mut sq, _) = self.ring.split();
            for i in 0..self.armed.len() {
                let sqe = opcode::AsyncCancel::new(user_data(OP_RECV, i))
                    .build()
                    .user_data(user_data(OP_CANCEL, i));
                push_sqe(&submitter, &mut sq, &sqe);
            }
            let sqe = opcode::AsyncCancel::new(user_data(OP_WAKE, 0))
                .build()
                .user_data(user_data(OP_CANCEL, 0));
            push_sqe(&submitter, &mut sq, &sqe);
            sq.sync();
        }
        let tick = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&tick);
        while self.free.len() < self.slots.len() && Instant::now() < deadline {
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for cqe in self.ring.completion() {
                if cqe.user_data() >> OP_SHIFT == OP_SEND {
                    let idx = (cqe.user_data() & ((1 << OP_SHIFT) - 1)) as u16;
                    self.free.push(idx);
                    if cqe.result() >= 0 {
                        ctx.local.inc(Metric::TxPackets);
                        ctx.local.add(Metric::TxBytes, cqe.result() as u64);
                        let port = self.slots.get(usize::from(idx)).map(|s| s.port);
                        ctx.local.inc(match port {
                            Some(PortKind::Voice) => Metric::VoiceForwarded,
                            _ => Metric::OvpForwarded,
                        });
                    }
                }
            }
        }
        ctx.local.publish(&ctx.counters);
        let _ = self.ring.submitter().unregister_buf_ring(self.bufs.bgid);
    }
}

/// Pushes one SQE, submitting to make room when the SQ is full. False if
/// the SQ stays full.
fn push_sqe(
    submitter: &io_uring::Submitter<'_>,
    sq: &mut io_uring::SubmissionQueue<'_>,
    sqe: &squeue::Entry,
) -> bool {
    for _ in 0..4 {
        // SAFETY: every pointer in the entries we push stays valid until the
        // completion: a send's sockaddr (and, for SENDMSG, its msghdr and
        // iovec) live in a send slot that is not reused before its
        // completion, and its data buffer is not
        // returned to the buffer ring before its reference count reaches 0;
        // the receive msghdr and the eventfd read's 8-byte buffer are boxed
        // in the engine; all of them outlive the ring (drain + field order).
        if unsafe { sq.push(sqe) }.is_ok() {
            return true;
        }
        sq.sync();
        if let Err(e) = submitter.submit()
            && !matches!(
                e.raw_os_error(),
                Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
            )
        {
            return false;
        }
        sq.sync();
    }
    false
}

/// Submits `to_submit` queued entries, then waits until `want` completions
/// are ready or until `delay` from now on CLOCK_MONOTONIC, whichever comes
/// first; the deadline is absolute (`IORING_ENTER_ABS_TIMER`), so the time
/// the submission itself takes counts against it. EINVAL: the kernel does
/// not know the flag (before 6.12); nothing was submitted then.
fn submit_and_wait_until(
    submitter: &io_uring::Submitter<'_>,
    to_submit: usize,
    want: usize,
    delay: Duration,
) -> io::Result<usize> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let now = Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32);
    let deadline = types::Timespec::from(now + delay);
    let args = types::SubmitArgs::new().timespec(&deadline);
    let flags = io_uring::EnterFlags::GETEVENTS
        | io_uring::EnterFlags::EXT_ARG
        | io_uring::EnterFlags::ABS_TIMER;
    // SAFETY: `args` is a `SubmitArgs`, `repr(transparent)` over the
    // kernel's `io_uring_getevents_arg`, as EXT_ARG declares; it and the
    // timespec it points at live until the call returns. The `to_submit`
    // entries were written and published by `push_sqe`/`sq.sync()` and
    // point at buffers and send slots the engine owns until their
    // completions are reaped, as for every other submission.
    unsafe {
        submitter.enter(
            to_submit as u32,
            want.min(u32::MAX as usize) as u32,
            flags.bits(),
            Some(&args),
        )
    }
}
