//! Receiver accounting per flow (one sender to one receiver): received,
//! reordered, duplicated; lost follows from what the sender says it sent.
//!
//! Each flow keeps the highest sequence number seen and a 64-bit window of
//! the sequence numbers below it, so a duplicate within 64 packets is
//! recognised and a late packet counts as reordered. A packet older than
//! the window counts as received and reordered (it cannot be checked for
//! duplication; on loopback that does not happen).

/// Width of the duplicate window.
const WINDOW: u64 = 64;

/// One flow's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Highest sequence number seen + 1; 0 = nothing seen yet.
    next: u64,
    /// Lowest sequence number seen (valid once `next` > 0).
    first: u64,
    /// Bit i: sequence number `next - 1 - i` was seen.
    seen: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets received again.
    pub duplicated: u64,
}

impl Flow {
    /// Accounts one arrival of sequence number `seq`.
    pub fn arrive(&mut self, seq: u64) {
        self.first = if self.next == 0 {
            seq
        } else {
            self.first.min(seq)
        };
        if self.next == 0 || seq >= self.next {
            let shift = if self.next == 0 {
                WINDOW
            } else {
                seq + 1 - self.next
            };
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.next = seq + 1;
            self.received += 1;
            return;
        }
        let back = self.next - 1 - seq;
        if back >= WINDOW {
            self.received += 1;
            self.reordered += 1;
        } else if self.seen & (1 << back) != 0 {
            self.duplicated += 1;
        } else {
            self.seen |= 1 << back;
            self.received += 1;
            self.reordered += 1;
        }
    }

    /// Sequence numbers between the lowest and the highest seen that have
    /// not arrived: lost, or still overtaken (a running lower bound of the
    /// loss; packets after the highest one seen are not counted).
    pub fn gaps(&self) -> u64 {
        if self.next == 0 {
            return 0;
        }
        (self.next - self.first).saturating_sub(self.received)
    }
}

/// A flow that lost packets: where in its sequence the loss was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LossyFlow {
    /// Sender index.
    pub sender: usize,
    /// Receiver index.
    pub receiver: usize,
    /// Measured packets the sender sent.
    pub sent: u64,
    /// Distinct ones received.
    pub received: u64,
    /// Lowest sequence number received (None: nothing arrived).
    pub first_seen: Option<u64>,
    /// Highest sequence number received.
    pub last_seen: Option<u64>,
    /// Missing between those two ([`Flow::gaps`]); the rest of the loss
    /// was before the first or after the last received packet.
    pub gaps: u64,
}

/// Totals over flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Packets that should have arrived (sent x receivers per sender).
    pub expected: u64,
    /// Distinct packets that arrived.
    pub received: u64,
    /// Expected but never arrived (per flow, never negative).
    pub lost: u64,
    /// Arrived after a later one of the same flow.
    pub reordered: u64,
    /// Arrived more than once.
    pub duplicated: u64,
}

/// Every (sender, receiver) flow of a run, densely indexed.
#[derive(Debug, Clone)]
pub struct FlowTable {
    receivers: usize,
    flows: Vec<Flow>,
}

impl FlowTable {
    /// A table of `senders` x `receivers` flows.
    pub fn new(senders: usize, receivers: usize) -> FlowTable {
        FlowTable {
            receivers,
            flows: vec![Flow::default(); senders * receivers],
        }
    }

    /// Accounts one arrival; false if the indices are out of range (a
    /// stray packet, not counted).
    pub fn arrive(&mut self, sender: usize, receiver: usize, seq: u64) -> bool {
        if receiver >= self.receivers {
            return false;
        }
        match self.flows.get_mut(sender * self.receivers + receiver) {
            Some(f) => {
                f.arrive(seq);
                true
            }
            None => false,
        }
    }

    /// One flow.
    pub fn flow(&self, sender: usize, receiver: usize) -> Option<&Flow> {
        self.flows.get(sender * self.receivers + receiver)
    }

    /// Distinct packets received over all flows.
    pub fn received(&self) -> u64 {
        self.flows.iter().map(|f| f.received).sum()
    }

    /// [`Flow::gaps`] summed over all flows.
    pub fn gaps(&self) -> u64 {
        self.flows.iter().map(Flow::gaps).sum()
    }

    /// The expected flows that received fewer packets than were sent
    /// (at most `max` of them), given the same arguments as
    /// [`FlowTable::totals`].
    pub fn lossy(
        &self,
        sent: &[u64],
        expects: impl Fn(usize, usize) -> bool,
        max: usize,
    ) -> Vec<LossyFlow> {
        let mut v = Vec::new();
        for (s, &n) in sent.iter().enumerate() {
            for r in 0..self.receivers {
                let f = self.flow(s, r).copied().unwrap_or_default();
                if v.len() >= max || !expects(s, r) || f.received >= n {
                    continue;
                }
                let seen = f.next > 0;
                v.push(LossyFlow {
                    sender: s,
                    receiver: r,
                    sent: n,
                    received: f.received,
                    first_seen: seen.then_some(f.first),
                    last_seen: seen.then(|| f.next - 1),
                    gaps: f.gaps(),
                });
            }
        }
        v
    }

    /// Totals, given how many measured packets each sender sent and which
    /// receivers should get a sender's packets.
    pub fn totals(&self, sent: &[u64], expects: impl Fn(usize, usize) -> bool) -> Totals {
        let mut t = Totals::default();
        for (s, &n) in sent.iter().enumerate() {
            for r in 0..self.receivers {
                let f = self.flow(s, r).copied().unwrap_or_default();
                t.received += f.received;
                t.reordered += f.reordered;
                t.duplicated += f.duplicated;
                if expects(s, r) {
                    t.expected += n;
                    t.lost += n.saturating_sub(f.received);
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_loss_reorder_duplicate() {
        let mut f = Flow::default();
        for s in [10, 11, 13, 12, 12, 14, 14, 200, 150, 150, 100] {
            f.arrive(s);
        }
        // 10 11 13 12(late) 12(dup) 14 14(dup) 200 150(late, in window)
        // 150(dup) 100(older than the window: late, unchecked)
        assert_eq!(f.received, 8);
        assert_eq!(f.reordered, 3);
        assert_eq!(f.duplicated, 3);
    }

    #[test]
    fn gaps_count_what_a_later_packet_overtook() {
        let mut f = Flow::default();
        assert_eq!(f.gaps(), 0);
        for s in [5, 6, 9] {
            f.arrive(s);
        }
        assert_eq!(f.gaps(), 2, "7 and 8");
        f.arrive(8);
        assert_eq!(f.gaps(), 1);
        f.arrive(4);
        assert_eq!(f.gaps(), 1, "4 moved the start; 7 still missing");
        let mut t = FlowTable::new(2, 1);
        t.arrive(0, 0, 1);
        t.arrive(0, 0, 3);
        t.arrive(1, 0, 0);
        assert_eq!((t.received(), t.gaps()), (3, 1));
        let l = t.lossy(&[4, 1], |_, _| true, 10);
        assert_eq!(
            l,
            [LossyFlow {
                sender: 0,
                receiver: 0,
                sent: 4,
                received: 2,
                first_seen: Some(1),
                last_seen: Some(3),
                gaps: 1
            }],
            "sender 1 lost nothing"
        );
        assert!(t.lossy(&[4], |_, _| true, 0).is_empty());
    }

    #[test]
    fn totals_count_loss_per_expected_flow() {
        let mut t = FlowTable::new(2, 2);
        for s in 0..10 {
            if s != 4 {
                assert!(t.arrive(0, 1, s));
            }
            assert!(t.arrive(1, 0, s));
        }
        assert!(!t.arrive(0, 5, 0));
        assert!(!t.arrive(9, 0, 0));
        let tot = t.totals(&[10, 12], |s, r| s != r);
        assert_eq!(
            tot,
            Totals {
                expected: 22,
                received: 19,
                lost: 3,
                reordered: 0,
                duplicated: 0
            }
        );
    }
}
