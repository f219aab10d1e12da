//! Messages of the soak: `pairs` senders and `pairs` recipients, all
//! connected and authenticated once (the `im` scenario's connections,
//! [`crate::im::connect_all`]). Sender `p` sends `MSG <recipient p> soak
//! <p> <seq>` at a steady rate until the deadline; every `OK MSG` (the
//! store committed it; replies come in the order of the commands) marks
//! the oldest unanswered message of that sender as acknowledged, an
//! `ERROR` marks it failed. Recipients record every `MSG {json}` whose
//! sender, recipient and content match. After the deadline: no more
//! sends; replies and deliveries are read until every message is answered
//! and every acknowledged one delivered, or the drain time is over.
//!
//! The result lists every acknowledged message (sender, recipient,
//! content), for the store check ([`super::store`]) after control stops.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use serde::Serialize;
use whelm_shared::line::{MessageJson, Reply};

use crate::im::{self, Conn};

/// HEARTBEAT period of the message sessions.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Error messages kept.
const KEEP_ERRORS: usize = 10;
/// Longest wait for each poll (the rate is low; pacing stays within 5 ms).
const POLL_MS: u16 = 5;

/// What the message load does.
#[derive(Debug, Clone)]
pub struct MsgConfig {
    /// whelm-control's line protocol address.
    pub control: SocketAddrV4,
    /// Sender/recipient pairs.
    pub pairs: usize,
    /// Messages/s over all senders.
    pub rate: f64,
    /// No message is sent after this.
    pub deadline: Instant,
    /// Longest wait for answers and deliveries after the deadline.
    pub drain: Duration,
}

/// Running counters for progress lines, and the early-stop request.
#[derive(Debug, Default)]
pub struct MsgLive {
    /// Set by the scenario: stop sending now, then drain.
    pub stop: AtomicBool,
    /// `MSG` sent.
    pub sent: AtomicU64,
    /// `OK MSG` received.
    pub acked: AtomicU64,
    /// Matching `MSG {json}` received by recipients (first copies).
    pub delivered: AtomicU64,
}

/// An acknowledged message as the store must hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckedMsg {
    /// `users.id` of the sender.
    pub sender_id: u64,
    /// `users.id` of the recipient.
    pub recipient_id: u64,
    /// The exact content sent.
    pub content: String,
}

/// What the message load saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MsgResult {
    /// `MSG` sent.
    pub sent: u64,
    /// Answered `OK MSG`.
    pub acked: u64,
    /// Answered `ERROR ...`.
    pub errors: u64,
    /// The first few error lines.
    pub error_samples: Vec<String>,
    /// Never answered by the end of the drain.
    pub unanswered: u64,
    /// Distinct messages delivered to their recipient.
    pub delivered: u64,
    /// Deliveries of a message already delivered.
    pub duplicates: u64,
    /// Deliveries after a later message of the same sender.
    pub reordered: u64,
    /// `MSG` lines that were not one of ours (wrong sender, recipient or
    /// content).
    pub unexpected: u64,
    /// Acknowledged but never delivered to the recipient.
    pub acked_not_delivered: u64,
    /// The first few of those (`soak <pair> <seq>`).
    pub acked_not_delivered_samples: Vec<String>,
    /// Delivered although never acknowledged (answered `ERROR`, or not
    /// answered): not a failure, the store may have committed it.
    pub delivered_not_acked: u64,
    /// Why the load stopped early (a connection closed, a write failed).
    pub fatal: Option<String>,
    /// Every acknowledged message (for the store check; not serialised).
    #[serde(skip)]
    pub acked_list: Vec<AckedMsg>,
}

/// The content of message `seq` of pair `p`.
pub fn content(p: usize, seq: u64) -> String {
    format!("soak {p} {seq}")
}

/// `soak <p> <seq>` -> (p, seq).
pub fn parse_content(c: &str) -> Option<(usize, u64)> {
    let mut w = c.split(' ');
    if w.next()? != "soak" {
        return None;
    }
    let p = w.next()?.parse().ok()?;
    let seq = w.next()?.parse().ok()?;
    w.next().is_none().then_some((p, seq))
}

/// Per-pair state.
#[derive(Debug, Default)]
struct Pair {
    next_seq: u64,
    /// Sequence numbers awaiting an answer, oldest first.
    pending: VecDeque<u64>,
    /// Per sequence number: 1 = acked, 2 = delivered (bits).
    state: Vec<u8>,
    /// Highest delivered sequence number + 1.
    delivered_next: u64,
}

const ACKED: u8 = 1;
const DELIVERED: u8 = 2;

/// The message load and its accounting.
struct Load<'a> {
    cfg: &'a MsgConfig,
    conns: Vec<Conn>,
    pairs: Vec<Pair>,
    r: MsgResult,
    live: &'a MsgLive,
}

/// Runs the message load; returns what it saw (a connection failure ends
/// it early and is recorded in `fatal`). `live.stop` ends it early too.
pub fn run(cfg: &MsgConfig, tokens: &[String], live: &MsgLive) -> MsgResult {
    let mut load = Load {
        cfg,
        conns: Vec::new(),
        pairs: (0..cfg.pairs).map(|_| Pair::default()).collect(),
        r: MsgResult::default(),
        live,
    };
    if let Err(e) = load.run(tokens) {
        load.r.fatal = Some(format!("{e:#}"));
    }
    load.finish()
}

impl Load<'_> {
    fn run(&mut self, tokens: &[String]) -> anyhow::Result<()> {
        let pairs = self.cfg.pairs;
        if tokens.len() != 2 * pairs {
            anyhow::bail!("{} tokens for {pairs} pairs", tokens.len());
        }
        self.conns =
            im::connect_all(self.cfg.control, tokens).context("connecting message sessions")?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        for (i, c) in self.conns.iter().enumerate() {
            epoll
                .add(
                    c.stream.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
                )
                .context("epoll_ctl")?;
        }
        let mut events = vec![EpollEvent::empty(); 64];
        let per_sender = self.cfg.rate / pairs as f64;
        let start = Instant::now();
        let mut next_heartbeat = start + HEARTBEAT;
        // Sending, bounded by the deadline.
        while Instant::now() < self.cfg.deadline && !self.live.stop.load(Ordering::Relaxed) {
            let elapsed = start.elapsed().as_secs_f64();
            for p in 0..pairs {
                let due = (elapsed * per_sender + p as f64 / pairs as f64).floor() as u64;
                let to = self.conns[pairs + p].user_id;
                let pair = &mut self.pairs[p];
                // Bounded: at most what is due (a stall sends its backlog).
                while pair.next_seq < due {
                    let seq = pair.next_seq;
                    pair.next_seq += 1;
                    self.conns[p].queue(&format!("MSG {to} {}", content(p, seq)));
                    pair.pending.push_back(seq);
                    pair.state.push(0);
                    self.r.sent += 1;
                    self.live.sent.fetch_add(1, Ordering::Relaxed);
                }
                self.conns[p].flush()?;
            }
            if Instant::now() >= next_heartbeat {
                next_heartbeat += HEARTBEAT;
                for c in &mut self.conns {
                    c.queue("HEARTBEAT");
                    c.flush()?;
                }
            }
            self.poll(&epoll, &mut events)?;
        }
        // Drain: answers and deliveries, bounded by the drain time.
        let drain_end = Instant::now() + self.cfg.drain;
        while Instant::now() < drain_end && !self.settled() {
            for c in &mut self.conns {
                c.flush()?;
            }
            self.poll(&epoll, &mut events)?;
        }
        Ok(())
    }

    /// Every message answered and every acknowledged one delivered.
    fn settled(&self) -> bool {
        self.pairs.iter().all(|p| {
            p.pending.is_empty()
                && p.state
                    .iter()
                    .all(|&s| s & ACKED == 0 || s & DELIVERED != 0)
        })
    }

    fn poll(&mut self, epoll: &Epoll, events: &mut [EpollEvent]) -> anyhow::Result<()> {
        let n = match epoll.wait(events, POLL_MS) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let Some(c) = self.conns.get_mut(i) else {
                continue;
            };
            let lines = c
                .read_lines()
                .with_context(|| format!("message session {i}"))?;
            for l in lines {
                self.line(i, &l);
            }
        }
        Ok(())
    }

    fn line(&mut self, i: usize, l: &str) {
        let pairs = self.cfg.pairs;
        match Reply::parse(l) {
            Ok(Reply::OkMsg) if i < pairs => {
                if let Some(seq) = self.pairs[i].pending.pop_front() {
                    if let Some(s) = self.pairs[i].state.get_mut(seq as usize) {
                        *s |= ACKED;
                    }
                    self.r.acked += 1;
                    self.live.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Reply::Error(_)) => {
                self.r.errors += 1;
                if self.r.error_samples.len() < KEEP_ERRORS {
                    self.r.error_samples.push(format!("session {i}: {l}"));
                }
                // An error answers a MSG (the only command senders send
                // besides HEARTBEAT, which is answered OK).
                if i < pairs {
                    self.pairs[i].pending.pop_front();
                }
            }
            Ok(Reply::Msg(m)) if i >= pairs => self.delivery(i - pairs, &m),
            Ok(Reply::OkHeartbeat) => {}
            _ => self.r.unexpected += 1,
        }
    }

    fn delivery(&mut self, p: usize, m: &MessageJson) {
        let ok = parse_content(&m.content).filter(|&(q, _)| {
            q == p
                && m.sender_id == self.conns[p].user_id
                && m.recipient_id == self.conns[self.cfg.pairs + p].user_id
        });
        let Some((_, seq)) = ok else {
            self.r.unexpected += 1;
            return;
        };
        let pair = &mut self.pairs[p];
        let Some(s) = pair.state.get_mut(seq as usize) else {
            self.r.unexpected += 1;
            return;
        };
        if *s & DELIVERED != 0 {
            self.r.duplicates += 1;
            return;
        }
        *s |= DELIVERED;
        self.r.delivered += 1;
        self.live.delivered.fetch_add(1, Ordering::Relaxed);
        if seq < pair.delivered_next {
            self.r.reordered += 1;
        }
        pair.delivered_next = pair.delivered_next.max(seq + 1);
    }

    fn finish(mut self) -> MsgResult {
        let pairs = self.cfg.pairs;
        for (p, pair) in self.pairs.iter().enumerate() {
            self.r.unanswered += pair.pending.len() as u64;
            let ids = match (self.conns.get(p), self.conns.get(pairs + p)) {
                (Some(a), Some(b)) => Some((a.user_id, b.user_id)),
                _ => None,
            };
            for (seq, &s) in pair.state.iter().enumerate() {
                let acked = s & ACKED != 0;
                let delivered = s & DELIVERED != 0;
                if acked && !delivered {
                    self.r.acked_not_delivered += 1;
                    if self.r.acked_not_delivered_samples.len() < KEEP_ERRORS {
                        self.r
                            .acked_not_delivered_samples
                            .push(content(p, seq as u64));
                    }
                }
                if delivered && !acked {
                    self.r.delivered_not_acked += 1;
                }
                if let (true, Some((sender_id, recipient_id))) = (acked, ids) {
                    self.r.acked_list.push(AckedMsg {
                        sender_id,
                        recipient_id,
                        content: content(p, seq as u64),
                    });
                }
            }
        }
        self.r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trip() {
        assert_eq!(parse_content(&content(3, 1234)), Some((3, 1234)));
        assert_eq!(parse_content("soak 3"), None);
        assert_eq!(parse_content("soak 3 4 5"), None);
        assert_eq!(parse_content("wb 3 4"), None);
        assert_eq!(parse_content("soak x 4"), None);
    }
}
