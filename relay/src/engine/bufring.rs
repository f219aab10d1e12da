//! A provided-buffer ring (`io_uring_buf_ring`) and the buffers behind it.
//!
//! The ring is an array of `io_uring_buf` entries in page-aligned memory
//! shared with the kernel; the kernel consumes entries from its head, we add
//! entries at our tail and publish the tail with a Release store (the tail
//! lives in the `resv` field of entry 0). Buffer memory is one allocation of
//! `count * size` bytes, allocated once. Buffer id = index in that memory.
//!
//! Ownership of a buffer: in the ring (kernel may fill it) -> delivered in a
//! receive completion (ours; read-only while sends point into it) -> pushed
//! back with [`BufRing::push`] once its last send completed.
//!
//! The ring holds at most `fill` buffers at a time; the others wait in a
//! stack of spares, and [`BufRing::refill`] tops the ring up from the most
//! recently returned end of it. Two reasons:
//! - The kernel takes buffers in ring order. With every buffer in the ring,
//!   a busy worker would walk all of `count * size` bytes (8 MiB by
//!   default) before reusing one, so every receive and send would touch
//!   memory (and a page translation) that had long left the caches. With a
//!   short ring refilled from the top of the stack, the same few hundred
//!   buffers go round while they are still cached.
//! - One wait cannot take more than `fill` datagrams. After a stall, a deep
//!   socket queue would otherwise be received whole in one wait, then sent
//!   in one pass too large for the caches, which made every packet of it
//!   dearer and kept the queue standing. With the cap, the receive ends with
//!   ENOBUFS (the datagrams stay queued in the socket) and the engine re-arms
//!   it after the pass, so a backlog drains in passes of `fill` datagrams.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Page size assumed for the ring alignment (the kernel requires the ring to
/// be page aligned; 4 KiB on x86_64 and most aarch64 kernels; 64 KiB also
/// satisfies 4 KiB).
const RING_ALIGN: usize = 65_536;

/// The ring plus its buffers.
pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    mem: NonNull<u8>,
    mem_layout: Layout,
    count: u16,
    size: u32,
    mask: u16,
    /// Our tail (entries added so far, wrapping). Published by `publish`.
    tail: u16,
    /// Ring entries the kernel has taken, as counted by [`BufRing::taken`]
    /// (wrapping, like `tail`).
    head: u16,
    /// Most entries the ring holds at once.
    fill: u16,
    /// Buffers that are ours and not in the ring; the last one pushed is
    /// the first one back in.
    spare: Vec<u16>,
    /// The group id the ring is registered under.
    pub bgid: u16,
}

impl BufRing {
    /// Allocates `count` buffers (a power of two, at most 32768) of `size`
    /// bytes, and a ring with `fill` of them in it (at least one, at most
    /// `count`), published; the others are spares.
    pub fn new(count: u16, size: u32, fill: u16, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32_768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two <= 32768",
            ));
        }
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            RING_ALIGN,
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mem_layout = Layout::from_size_align(usize::from(count) * size as usize, 64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have non-zero size (count >= 1, size >= 1).
        let ring = NonNull::new(unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let mem = match NonNull::new(unsafe { alloc_zeroed(mem_layout) }) {
            Some(m) => m,
            None => {
                // SAFETY: `ring` was allocated just above with `ring_layout`.
                unsafe { dealloc(ring.as_ptr().cast(), ring_layout) };
                return Err(io::Error::from(io::ErrorKind::OutOfMemory));
            }
        };
        let mut r = BufRing {
            ring,
            ring_layout,
            mem,
            mem_layout,
            count,
            size,
            mask: count - 1,
            tail: 0,
            head: 0,
            fill: fill.clamp(1, count),
            spare: (0..count).rev().collect(),
            bgid,
        };
        r.refill();
        Ok(r)
    }

    /// Address of the ring, for registration.
    pub fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Number of entries (= buffers).
    pub fn entries(&self) -> u16 {
        self.count
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> u32 {
        self.size
    }

    /// Gives buffer `bid` back (it re-enters the ring at a later
    /// [`BufRing::refill`]).
    #[inline]
    pub fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        self.spare.push(bid & self.mask);
    }

    /// Counts one buffer the kernel took from the ring (a receive
    /// completion that carries a buffer).
    #[inline]
    pub fn taken(&mut self) {
        self.head = self.head.wrapping_add(1);
    }

    /// The kernel found the ring empty (a receive failed with ENOBUFS): it
    /// has taken every entry up to the tail published last, which is ours
    /// (entries are only written by `refill`, which publishes them). This
    /// puts our count of taken entries right even if it had drifted.
    #[inline]
    pub fn emptied(&mut self) {
        self.head = self.tail;
    }

    /// Tops the ring up to `fill` entries from the spares, most recently
    /// returned first, and publishes the tail.
    pub fn refill(&mut self) {
        let mut in_ring = self.tail.wrapping_sub(self.head);
        if in_ring > self.count {
            // More taken than we put in: a completion counted by `taken`
            // arrived after the `emptied` that already covered it.
            self.head = self.tail;
            in_ring = 0;
        }
        while in_ring < self.fill {
            let Some(bid) = self.spare.pop() else { break };
            self.put_in_ring(bid);
            in_ring += 1;
        }
        self.publish();
    }

    /// Writes the ring entry after our tail for buffer `bid` (visible to the
    /// kernel after [`BufRing::publish`]).
    #[inline]
    fn put_in_ring(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let bid = bid & self.mask;
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: idx < count, so the entry lies inside the ring allocation.
        // The kernel only reads entries between its head and the published
        // tail; this one is past the published tail, so nothing reads it
        // concurrently. We set fields one by one so that entry 0's `resv`
        // (the shared tail) is not overwritten.
        let e = unsafe { &mut *self.ring.as_ptr().add(idx) };
        // SAFETY: bid < count, so the buffer lies inside `mem`.
        let addr = unsafe { self.mem.as_ptr().add(usize::from(bid) * self.size as usize) };
        e.set_addr(addr as u64);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail with a Release store, making every entry written
    /// so far visible to the kernel.
    #[inline]
    fn publish(&self) {
        // SAFETY: `ring` points at the first entry of a live, initialised
        // ring, as `BufRingEntry::tail` requires.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) };
        // SAFETY: the tail is a naturally aligned u16 inside our allocation
        // that the kernel reads atomically; we are its only writer, and all
        // accesses to it go through atomics from here on.
        let atomic = unsafe { AtomicU16::from_ptr(tail.cast_mut()) };
        atomic.store(self.tail, Ordering::Release);
    }

    /// The whole buffer `bid`.
    ///
    /// Call only for a buffer the kernel handed to us in a completion and
    /// that was not pushed back yet (the caller's ownership rule).
    #[inline]
    pub fn buf(&self, bid: u16) -> &[u8] {
        let bid = bid & self.mask;
        // SAFETY: the slice lies inside `mem` (bid < count). The kernel wrote
        // this buffer before posting the completion that gave it to us and
        // does not write it again until we push it back; sends only read it.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.as_ptr().add(usize::from(bid) * self.size as usize),
                self.size as usize,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both pointers were allocated in `new` with these layouts.
        // The owner unregisters the ring and closes the io_uring before
        // dropping this (field order in `UringEngine`), so the kernel no
        // longer writes into either allocation.
        unsafe {
            dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            dealloc(self.mem.as_ptr(), self.mem_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_publish() {
        let mut r = BufRing::new(8, 64, 8, 0).unwrap();
        assert_eq!(r.entries(), 8);
        assert_eq!(r.tail, 8);
        r.taken();
        r.push(3);
        r.refill();
        assert_eq!(r.tail, 9);
        assert_eq!(r.buf(3).len(), 64);
        assert!(BufRing::new(6, 64, 6, 0).is_err());
    }

    /// The bid in ring entry `i` (counting from the first entry ever written).
    fn bid_at(r: &BufRing, i: u16) -> u16 {
        // SAFETY: the index is masked into the ring; test-only read.
        unsafe { (*r.ring.as_ptr().add(usize::from(i & r.mask))).bid() }
    }

    #[test]
    fn short_ring_refills_from_the_last_returned_buffer() {
        let mut r = BufRing::new(16, 64, 4, 0).unwrap();
        assert_eq!(r.tail, 4, "only `fill` buffers go in the ring");
        assert_eq!(
            (0..4).map(|i| bid_at(&r, i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // The kernel takes three; nothing returned yet: the ring is topped up
        // from the spares in order.
        for _ in 0..3 {
            r.taken();
        }
        r.refill();
        assert_eq!(r.tail, 7);
        assert_eq!((4..7).map(|i| bid_at(&r, i)).collect::<Vec<_>>(), [4, 5, 6]);
        // Two come back: they go in before the untouched spares, the last
        // returned first.
        r.push(1);
        r.push(0);
        r.taken();
        r.taken();
        r.refill();
        assert_eq!(r.tail, 9);
        assert_eq!((7..9).map(|i| bid_at(&r, i)).collect::<Vec<_>>(), [0, 1]);
        // A full ring takes nothing more.
        r.push(2);
        r.refill();
        assert_eq!(r.tail, 9);
    }
}
