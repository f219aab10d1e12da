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
    /// The group id the ring is registered under.
    pub bgid: u16,
}

impl BufRing {
    /// Allocates `count` buffers (a power of two, at most 32768) of `size`
    /// bytes and a ring with every buffer in it (not yet published).
    pub fn new(count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
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
            bgid,
        };
        for bid in 0..count {
            r.push(bid);
        }
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

    /// Puts buffer `bid` back at the tail (visible to the kernel after
    /// [`BufRing::publish`]).
    #[inline]
    pub fn push(&mut self, bid: u16) {
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

    /// Publishes the tail with a Release store, making every pushed entry
    /// visible to the kernel.
    #[inline]
    pub fn publish(&self) {
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
        let mut r = BufRing::new(8, 64, 0).unwrap();
        assert_eq!(r.entries(), 8);
        assert_eq!(r.tail, 8);
        r.publish();
        r.push(3);
        r.publish();
        assert_eq!(r.buf(3).len(), 64);
        assert!(BufRing::new(6, 64, 0).is_err());
    }
}
