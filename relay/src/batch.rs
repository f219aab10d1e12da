//! The one seam between I/O and logic (STYLE.md practice 2): an engine fills
//! a fixed-capacity batch of received datagrams, [`process`] runs each
//! through the sans-IO [`Core`] and hands every destination to the engine's
//! send sink, which queues (buffer id, offset, length, destination) sends.
//!
//! Both engines call exactly this function, so they forward identically.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::{Core, Decision, DropReason, PortKind};
use crate::metrics::{LocalCounters, Metric};

/// One received datagram: where its payload lies in which buffer, and who
/// sent it on which port.
#[derive(Debug, Clone, Copy)]
pub struct RecvItem {
    /// Buffer id (engine-specific pool index).
    pub buf: u16,
    /// Payload offset inside the buffer.
    pub off: u32,
    /// Payload length.
    pub len: u32,
    /// The sender.
    pub peer: SocketAddr,
    /// Which listening port it came in on.
    pub port: PortKind,
    /// The kernel cut it (larger than the buffer).
    pub truncated: bool,
}

/// A fixed-capacity batch, allocated once.
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<T>,
    cap: usize,
}

impl<T> Batch<T> {
    /// An empty batch holding at most `cap` items.
    pub fn with_capacity(cap: usize) -> Batch<T> {
        Batch {
            items: Vec::with_capacity(cap),
            cap,
        }
    }
    /// Adds an item; false (and nothing added) when full.
    #[inline]
    pub fn push(&mut self, t: T) -> bool {
        if self.items.len() >= self.cap {
            return false;
        }
        self.items.push(t);
        true
    }
    /// True when full.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.cap
    }
    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// The items.
    pub fn items(&self) -> &[T] {
        &self.items
    }
    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// Runs one received datagram through the core. `payload` is the datagram;
/// `send(dest)` queues one send of it and returns false if it could not
/// (the engine counts that). Returns how many sends were queued, which is
/// the buffer's reference count in the io_uring engine.
#[inline]
pub fn process<F: FnMut(SocketAddr) -> bool>(
    core: &mut Core,
    item: &RecvItem,
    payload: &[u8],
    now: Instant,
    counters: &mut LocalCounters,
    mut send: F,
) -> u32 {
    counters.inc(Metric::RxPackets);
    counters.add(Metric::RxBytes, u64::from(item.len));
    let decision = if item.truncated {
        Decision::Drop(DropReason::Truncated)
    } else {
        core.decide(payload, item.peer, item.port, now)
    };
    match decision {
        Decision::Drop(r) => {
            counters.inc(Metric::for_drop(r));
            0
        }
        Decision::Hello => {
            counters.inc(Metric::VoiceHellos);
            0
        }
        Decision::Forward(fanout) => {
            if item.port == PortKind::Ovp {
                counters.inc(Metric::OvpFrames);
            }
            let mut queued = 0;
            for d in fanout.iter() {
                if send(*d) {
                    queued += 1;
                }
            }
            queued
        }
    }
}
