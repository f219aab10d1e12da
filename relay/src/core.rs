//! The sans-IO forwarding core: one worker's replica of the forwarding tables
//! and the per-datagram decision.
//!
//! [`Core::decide`] maps (bytes, peer address, port kind, now) to a
//! [`Decision`]: drop with a `Copy` [`DropReason`], or forward to a fan-out
//! borrowed from the tables. It owns no socket and reads no clock, so the
//! scenario tests below run without either.
//!
//! Writers: the owning worker is the only writer of a `Core`. It applies
//! [`Update`]s broadcast by the coordinator between batches, and applies what
//! it learns itself (a new OVP station, an address change) at once, queueing a
//! [`Learned`] for the coordinator, which broadcasts it to the other workers.
//!
//! Voice port: a `HELLO` datagram is never forwarded; a well-formed one is
//! queued for the coordinator ([`Core::take_hellos`]), which alone decides
//! whether it registers anything. Every other datagram needs one lookup:
//! source address -> [`VoiceSlot`] (a route to the partner, or why not), then
//! the worker's share of the bandwidth limit.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use whelm_shared::ovp::{self, FrameError, StationId};

use crate::hello::{is_hello, parse_hello};
use crate::update::{Learned, Update};

/// Which listening port a datagram arrived on; each has its own decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// Opulent Voice conference (PROTOCOLS.md section 3).
    Ovp,
    /// Whelm voice (PROTOCOLS.md section 2); routes are installed by control.
    Voice,
}

/// Why a datagram was dropped. Each variant is a counter
/// ([`crate::metrics::Metric::for_drop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// OVP header validation failed (counted as a decode error).
    Decode(FrameError),
    /// The source exceeded its frame rate.
    RateLimited,
    /// The callsign is on the deny list.
    Denied,
    /// An allow list is configured and the callsign is not on it.
    NotAllowed,
    /// Voice datagram from an address that is not registered.
    UnknownSource,
    /// Voice datagram from a registered address whose user is in no call.
    NotInCall,
    /// Voice datagram from a user in a call whose partner has no registered
    /// voice address yet.
    PartnerNotRegistered,
    /// Over this worker's share of the voice bandwidth limit.
    Bandwidth,
    /// Starts with `HELLO ` but is not a well-formed HELLO.
    BadHello,
    /// Too many HELLOs queued for the coordinator in one batch.
    HelloOverflow,
    /// The datagram did not fit in a receive buffer.
    Truncated,
}

/// Why a registered voice address has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Its user is in no call.
    NotInCall,
    /// The partner has not registered a voice address.
    PartnerNotRegistered,
}

/// What a worker does with datagrams from a registered voice address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VoiceSlot {
    /// Forward unchanged to the partner's registered address.
    Route(SocketAddr),
    /// Drop and count.
    Hold(HoldReason),
}

/// HELLOs a worker queues per batch at most; more are dropped and counted
/// ([`DropReason::HelloOverflow`]).
pub const MAX_PENDING_HELLOS: usize = 256;

/// A HELLO waiting to be handed to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingHello {
    /// The user it names.
    pub user: whelm_shared::line::UserId,
    /// The token, if any.
    pub token: Option<Box<str>>,
    /// Its source.
    pub src: SocketAddr,
}

/// A byte-rate token bucket (the voice bandwidth limit).
#[derive(Debug, Clone, Copy)]
struct ByteBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl ByteBucket {
    fn new(bytes_per_sec: u64) -> ByteBucket {
        let rate = bytes_per_sec as f64;
        // 100 ms of traffic (a scheduling hiccup of the sender), at least a
        // few full-size datagrams.
        let burst = (rate / 10.0).max(4.0 * 1500.0);
        ByteBucket {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
    }
}

/// Inbound and outbound byte buckets of one worker.
#[derive(Debug, Clone, Copy)]
struct Bandwidth {
    inbound: ByteBucket,
    outbound: ByteBucket,
}

impl Bandwidth {
    /// Charges `len` bytes in and `len` bytes out (1:1 voice); false (and
    /// nothing charged) when either bucket lacks them.
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        self.inbound.refill(now);
        self.outbound.refill(now);
        let n = len as f64;
        if self.inbound.tokens < n || self.outbound.tokens < n {
            return false;
        }
        self.inbound.tokens -= n;
        self.outbound.tokens -= n;
        true
    }
}

/// Where OVP frames are sent for a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyTo {
    /// The station's IP at the server's own OVP port (the reference server's
    /// behaviour; what the interlocutor station client needs).
    #[default]
    ListenPort,
    /// The station's source address (NAT, several stations per host).
    Source,
}

/// Static policy of the conference, shared by every worker.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Destination rule.
    pub reply_to: ReplyTo,
    /// The resolved OVP listen port (for [`ReplyTo::ListenPort`]).
    pub ovp_port: u16,
    /// Frames per second per source before drops; 0 = no limit.
    pub station_rate: u32,
    /// Burst size of the rate limit, in frames.
    pub station_burst: u32,
    /// If set, only these callsigns are forwarded.
    pub allow: Option<HashSet<StationId>>,
    /// These callsigns are never forwarded.
    pub deny: HashSet<StationId>,
}

impl CoreConfig {
    /// The destination of a station that sends from `src`.
    pub fn dest_for(&self, src: SocketAddr) -> SocketAddr {
        match self.reply_to {
            ReplyTo::Source => src,
            ReplyTo::ListenPort => {
                let mut d = src;
                d.set_port(self.ovp_port);
                d
            }
        }
    }
}

/// A cheap hasher for keys that are already well spread (station ids,
/// socket addresses): a multiply-rotate over the written words. Not
/// DoS-resistant against chosen keys, but keys are bounded tables filled by
/// valid frames or control, never by arbitrary garbage.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// HashMap with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Per-source token bucket state.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Sources tracked by one worker's rate limiter at most; beyond it new
/// sources are dropped as rate-limited until idle entries are purged.
pub const MAX_LIMITER_SOURCES: usize = 65_536;

/// A source idle this long is forgotten by the limiter (its bucket is full).
const LIMITER_IDLE: Duration = Duration::from_secs(10);

/// A borrowed fan-out: every destination in `dests` except index `skip`.
#[derive(Debug, Clone)]
pub struct Fanout<'a> {
    dests: &'a [SocketAddr],
    skip: usize,
}

impl<'a> Fanout<'a> {
    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.dests.len() - usize::from(self.skip < self.dests.len())
    }

    /// True when there is nobody to send to.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The destinations, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &'a SocketAddr> + 'a {
        let skip = self.skip;
        self.dests
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != skip)
            .map(|(_, d)| d)
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone)]
pub enum Decision<'a> {
    /// Drop and count.
    Drop(DropReason),
    /// Send the datagram unchanged to each destination.
    Forward(Fanout<'a>),
    /// A well-formed HELLO, queued for the coordinator; nothing is sent.
    Hello,
}

/// One worker's forwarding tables and decision logic.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    /// OVP stations, parallel vectors indexed by slot: id, source, dest,
    /// seen-since-last-report. `dests` is contiguous so a fan-out is a slice.
    ids: Vec<StationId>,
    srcs: Vec<SocketAddr>,
    dests: Vec<SocketAddr>,
    /// Valid frames since the last seen-report, per slot.
    seen: Vec<u32>,
    index: FastMap<StationId, usize>,
    /// Registered voice addresses: source address -> what to do (installed
    /// by the coordinator from control's calls and HELLOs).
    voice: FastMap<SocketAddr, VoiceSlot>,
    /// This worker's share of the voice bandwidth limit (None = no limit).
    bandwidth: Option<Bandwidth>,
    limiter: FastMap<SocketAddr, Bucket>,
    learned: Vec<Learned>,
    hellos: Vec<PendingHello>,
}

impl Core {
    /// An empty table with the given policy.
    pub fn new(cfg: CoreConfig) -> Core {
        Core {
            cfg,
            ids: Vec::new(),
            srcs: Vec::new(),
            dests: Vec::new(),
            seen: Vec::new(),
            index: FastMap::default(),
            voice: FastMap::default(),
            bandwidth: None,
            limiter: FastMap::default(),
            learned: Vec::new(),
            hellos: Vec::new(),
        }
    }

    /// The policy.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Number of OVP stations in this replica.
    pub fn station_count(&self) -> usize {
        self.ids.len()
    }

    /// Largest fan-out a single datagram can currently produce.
    pub fn max_fanout(&self) -> usize {
        self.ids.len().max(1)
    }

    /// The source address this replica holds for a station.
    pub fn station_source(&self, id: StationId) -> Option<SocketAddr> {
        self.index.get(&id).map(|&i| self.srcs[i])
    }

    /// Decides what to do with one datagram. Never panics on any input.
    pub fn decide(
        &mut self,
        pkt: &[u8],
        peer: SocketAddr,
        kind: PortKind,
        now: Instant,
    ) -> Decision<'_> {
        match kind {
            PortKind::Voice => self.decide_voice(pkt, peer, now),
            PortKind::Ovp => self.decide_ovp(pkt, peer, now),
        }
    }

    fn decide_voice(&mut self, pkt: &[u8], peer: SocketAddr, now: Instant) -> Decision<'_> {
        if is_hello(pkt) {
            return self.hello(pkt, peer);
        }
        let Core {
            voice, bandwidth, ..
        } = self;
        match voice.get(&peer) {
            None => Decision::Drop(DropReason::UnknownSource),
            Some(VoiceSlot::Hold(HoldReason::NotInCall)) => Decision::Drop(DropReason::NotInCall),
            Some(VoiceSlot::Hold(HoldReason::PartnerNotRegistered)) => {
                Decision::Drop(DropReason::PartnerNotRegistered)
            }
            Some(VoiceSlot::Route(d)) => {
                if let Some(b) = bandwidth
                    && !b.admit(pkt.len(), now)
                {
                    return Decision::Drop(DropReason::Bandwidth);
                }
                Decision::Forward(Fanout {
                    dests: std::slice::from_ref(d),
                    skip: usize::MAX,
                })
            }
        }
    }

    fn hello(&mut self, pkt: &[u8], peer: SocketAddr) -> Decision<'_> {
        let Some(h) = parse_hello(pkt) else {
            return Decision::Drop(DropReason::BadHello);
        };
        if self.hellos.len() >= MAX_PENDING_HELLOS {
            return Decision::Drop(DropReason::HelloOverflow);
        }
        self.hellos.push(PendingHello {
            user: h.user,
            token: h.token.map(Box::from),
            src: peer,
        });
        Decision::Hello
    }

    /// Takes the HELLOs queued since the last call (for the coordinator).
    pub fn take_hellos(&mut self) -> std::vec::Drain<'_, PendingHello> {
        self.hellos.drain(..)
    }

    /// True if HELLOs are queued.
    pub fn has_hellos(&self) -> bool {
        !self.hellos.is_empty()
    }

    /// Number of registered voice addresses in this replica.
    pub fn voice_count(&self) -> usize {
        self.voice.len()
    }

    fn decide_ovp(&mut self, pkt: &[u8], peer: SocketAddr, now: Instant) -> Decision<'_> {
        if self.cfg.station_rate != 0 && !self.admit(peer, now) {
            return Decision::Drop(DropReason::RateLimited);
        }
        let station = match ovp::validate(pkt) {
            Ok(h) => h.station(),
            Err(e) => return Decision::Drop(DropReason::Decode(e)),
        };
        if self.cfg.deny.contains(&station) {
            return Decision::Drop(DropReason::Denied);
        }
        if let Some(allow) = &self.cfg.allow
            && !allow.contains(&station)
        {
            return Decision::Drop(DropReason::NotAllowed);
        }
        let slot = match self.index.get(&station) {
            Some(&i) => {
                if self.srcs[i] != peer {
                    let from = self.srcs[i];
                    self.srcs[i] = peer;
                    self.dests[i] = self.cfg.dest_for(peer);
                    self.learned.push(Learned::Moved {
                        id: station,
                        from,
                        to: peer,
                    });
                }
                self.seen[i] = self.seen[i].saturating_add(1);
                i
            }
            None => {
                let i = self.insert(station, peer);
                self.seen[i] = 1;
                self.learned.push(Learned::NewStation {
                    id: station,
                    src: peer,
                });
                i
            }
        };
        Decision::Forward(Fanout {
            dests: &self.dests,
            skip: slot,
        })
    }

    /// Token bucket per source: `station_rate` per second, `station_burst`
    /// deep. Returns false when the frame must be dropped.
    fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let rate = f64::from(self.cfg.station_rate);
        let burst = f64::from(self.cfg.station_burst.max(1));
        if let Some(b) = self.limiter.get_mut(&peer) {
            let dt = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + dt * rate).min(burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        } else if self.limiter.len() >= MAX_LIMITER_SOURCES {
            false
        } else {
            self.limiter.insert(
                peer,
                Bucket {
                    tokens: burst - 1.0,
                    last: now,
                },
            );
            true
        }
    }

    fn insert(&mut self, id: StationId, src: SocketAddr) -> usize {
        let i = self.ids.len();
        self.ids.push(id);
        self.srcs.push(src);
        self.dests.push(self.cfg.dest_for(src));
        self.seen.push(0);
        self.index.insert(id, i);
        i
    }

    fn remove(&mut self, id: StationId) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        self.ids.swap_remove(i);
        self.srcs.swap_remove(i);
        self.dests.swap_remove(i);
        self.seen.swap_remove(i);
        if let Some(moved) = self.ids.get(i) {
            self.index.insert(*moved, i);
        }
    }

    /// Applies a table update from the coordinator. Idempotent.
    pub fn apply(&mut self, u: &Update) {
        match u {
            Update::Commit { updates, .. } => {
                for u in updates.iter() {
                    self.apply(u);
                }
            }
            _ => self.apply_one(u),
        }
    }

    fn apply_one(&mut self, u: &Update) {
        match *u {
            Update::Station { id, src } => match self.index.get(&id) {
                Some(&i) => {
                    self.srcs[i] = src;
                    self.dests[i] = self.cfg.dest_for(src);
                }
                None => {
                    self.insert(id, src);
                }
            },
            Update::RemoveStation { id } => self.remove(id),
            Update::VoiceRoute { src, dest } => {
                self.voice.insert(src, VoiceSlot::Route(dest));
            }
            Update::VoiceHold { src, reason } => {
                self.voice.insert(src, VoiceSlot::Hold(reason));
            }
            Update::RemoveVoiceRoute { src } => {
                self.voice.remove(&src);
            }
            Update::Bandwidth { bytes_per_sec } => {
                self.bandwidth = (bytes_per_sec > 0).then(|| Bandwidth {
                    inbound: ByteBucket::new(bytes_per_sec),
                    outbound: ByteBucket::new(bytes_per_sec),
                });
            }
            Update::StationRate { rate, burst } => {
                self.cfg.station_rate = rate;
                self.cfg.station_burst = burst.max(1);
            }
            Update::Lists {
                ref allow,
                ref deny,
            } => {
                self.cfg.allow = allow.as_deref().cloned();
                self.cfg.deny = (**deny).clone();
            }
            Update::Commit { .. } => {}
        }
    }

    /// Takes what this replica learned since the last call (for the
    /// coordinator).
    pub fn take_learned(&mut self) -> Vec<Learned> {
        std::mem::take(&mut self.learned)
    }

    /// True if something was learned since the last [`Core::take_learned`].
    pub fn has_learned(&self) -> bool {
        !self.learned.is_empty()
    }

    /// Stations that sent valid frames since the last call, with how many;
    /// clears the counts.
    pub fn take_seen(&mut self) -> Vec<(StationId, u32)> {
        let mut out = Vec::new();
        for (i, s) in self.seen.iter_mut().enumerate() {
            if *s > 0 {
                out.push((self.ids[i], *s));
                *s = 0;
            }
        }
        out
    }

    /// Forgets rate-limit state of sources idle for a while (their bucket
    /// would be full again anyway). Called from the worker's timer.
    pub fn purge_limiter(&mut self, now: Instant) {
        self.limiter
            .retain(|_, b| now.saturating_duration_since(b.last) < LIMITER_IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whelm_shared::ovp::{HEADER_LEN, write_header};

    fn id(cs: &str) -> StationId {
        StationId::encode(cs).unwrap()
    }

    fn frame(cs: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; HEADER_LEN];
        write_header(id(cs), &mut h);
        let mut f = h.to_vec();
        f.extend_from_slice(payload);
        f
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cfg(reply_to: ReplyTo) -> CoreConfig {
        CoreConfig {
            reply_to,
            ovp_port: 57372,
            station_rate: 0,
            station_burst: 0,
            allow: None,
            deny: HashSet::new(),
        }
    }

    fn dests(d: Decision<'_>) -> Vec<SocketAddr> {
        match d {
            Decision::Forward(f) => {
                let v: Vec<_> = f.iter().copied().collect();
                assert_eq!(v.len(), f.len());
                v
            }
            Decision::Drop(r) => panic!("dropped: {r:?}"),
            Decision::Hello => panic!("hello"),
        }
    }

    fn drop_reason(d: Decision<'_>) -> DropReason {
        match d {
            Decision::Drop(r) => r,
            Decision::Forward(f) => panic!("forwarded to {:?}", f.iter().collect::<Vec<_>>()),
            Decision::Hello => panic!("hello"),
        }
    }

    #[test]
    fn three_stations_listen_port() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::ListenPort));
        let a = addr("10.0.0.1:40000");
        let b = addr("10.0.0.2:40001");
        let d = addr("[2001:db8::3]:40002");
        assert!(dests(c.decide(&frame("W1AW", b"x"), a, PortKind::Ovp, t)).is_empty());
        assert_eq!(
            c.take_learned(),
            vec![Learned::NewStation {
                id: id("W1AW"),
                src: a
            }]
        );
        assert_eq!(
            dests(c.decide(&frame("KB5MU", b"y"), b, PortKind::Ovp, t)),
            vec![addr("10.0.0.1:57372")]
        );
        assert_eq!(
            dests(c.decide(&frame("K0K", b""), d, PortKind::Ovp, t)),
            vec![addr("10.0.0.1:57372"), addr("10.0.0.2:57372")]
        );
        assert_eq!(
            dests(c.decide(&frame("W1AW", b"z"), a, PortKind::Ovp, t)),
            vec![addr("10.0.0.2:57372"), addr("[2001:db8::3]:57372")]
        );
        assert_eq!(c.take_learned().len(), 2);
        assert!(!c.has_learned());
        let mut seen = c.take_seen();
        seen.sort();
        assert_eq!(seen.len(), 3);
        assert!(c.take_seen().is_empty());
    }

    #[test]
    fn source_mode_and_address_change() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::Source));
        let a = addr("127.0.0.1:1000");
        let a2 = addr("127.0.0.1:1001");
        let b = addr("127.0.0.1:2000");
        dests(c.decide(&frame("W1AW", b""), a, PortKind::Ovp, t));
        assert_eq!(
            dests(c.decide(&frame("K0K", b""), b, PortKind::Ovp, t)),
            vec![a]
        );
        c.take_learned();
        assert_eq!(
            dests(c.decide(&frame("W1AW", b""), a2, PortKind::Ovp, t)),
            vec![b]
        );
        assert_eq!(
            c.take_learned(),
            vec![Learned::Moved {
                id: id("W1AW"),
                from: a,
                to: a2
            }]
        );
        assert_eq!(
            dests(c.decide(&frame("K0K", b""), b, PortKind::Ovp, t)),
            vec![a2]
        );
    }

    #[test]
    fn garbage_is_dropped_as_decode_errors() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::Source));
        let p = addr("127.0.0.1:9");
        let cases: [(&[u8], FrameError); 5] = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", FrameError::BadToken),
            (b"hello", FrameError::TooShort),
            (
                &[
                    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'w', b'w',
                ],
                FrameError::BadToken,
            ),
            (
                &[0, 0, 0, 0, 0, 0, 0xBB, 0xAA, 0xDD, 0, 0, 0],
                FrameError::BadStationId,
            ),
            (
                &[0, 0, 0, 0, 0, 40, 0xBB, 0xAA, 0xDD, 0, 0, 0],
                FrameError::BadStationId,
            ),
        ];
        for (pkt, e) in cases {
            assert_eq!(
                drop_reason(c.decide(pkt, p, PortKind::Ovp, t)),
                DropReason::Decode(e)
            );
        }
        assert_eq!(c.station_count(), 0);
        assert!(!c.has_learned());
    }

    #[test]
    fn rate_limit_per_source() {
        let t = Instant::now();
        let mut cf = cfg(ReplyTo::Source);
        cf.station_rate = 10;
        cf.station_burst = 5;
        let mut c = Core::new(cf);
        let p = addr("127.0.0.1:5");
        let q = addr("127.0.0.1:6");
        let f = frame("W1AW", b"");
        let g = frame("K0K", b"");
        let mut ok = 0;
        for _ in 0..20 {
            if matches!(c.decide(&f, p, PortKind::Ovp, t), Decision::Forward(_)) {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
        // Another source is unaffected.
        assert!(matches!(
            c.decide(&g, q, PortKind::Ovp, t),
            Decision::Forward(_)
        ));
        // 10/s: after 200 ms two more tokens.
        let t2 = t + Duration::from_millis(200);
        assert!(matches!(
            c.decide(&f, p, PortKind::Ovp, t2),
            Decision::Forward(_)
        ));
        assert!(matches!(
            c.decide(&f, p, PortKind::Ovp, t2),
            Decision::Forward(_)
        ));
        assert_eq!(
            drop_reason(c.decide(&f, p, PortKind::Ovp, t2)),
            DropReason::RateLimited
        );
        c.purge_limiter(t2 + Duration::from_secs(60));
        assert!(matches!(
            c.decide(&f, p, PortKind::Ovp, t2 + Duration::from_secs(60)),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn allow_and_deny_lists() {
        let t = Instant::now();
        let mut cf = cfg(ReplyTo::Source);
        cf.deny.insert(id("K0K"));
        cf.allow = Some([id("W1AW"), id("K0K")].into_iter().collect());
        let mut c = Core::new(cf);
        let p = addr("127.0.0.1:5");
        assert_eq!(
            drop_reason(c.decide(&frame("K0K", b""), p, PortKind::Ovp, t)),
            DropReason::Denied
        );
        assert_eq!(
            drop_reason(c.decide(&frame("KB5MU", b""), p, PortKind::Ovp, t)),
            DropReason::NotAllowed
        );
        dests(c.decide(&frame("W1AW", b""), p, PortKind::Ovp, t));
        assert_eq!(c.station_count(), 1);
    }

    #[test]
    fn updates_and_voice_routes() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::Source));
        let a = addr("127.0.0.1:1");
        let b = addr("127.0.0.1:2");
        let v = addr("127.0.0.1:3");
        assert_eq!(
            drop_reason(c.decide(b"opus", v, PortKind::Voice, t)),
            DropReason::UnknownSource
        );
        c.apply(&Update::Station {
            id: id("W1AW"),
            src: a,
        });
        c.apply(&Update::Station {
            id: id("K0K"),
            src: b,
        });
        c.apply(&Update::Station {
            id: id("K0K"),
            src: b,
        });
        assert_eq!(c.station_count(), 2);
        assert_eq!(
            dests(c.decide(&frame("KB5MU", b""), v, PortKind::Ovp, t)),
            vec![a, b]
        );
        c.apply(&Update::RemoveStation { id: id("W1AW") });
        c.apply(&Update::RemoveStation { id: id("W1AW") });
        assert_eq!(
            dests(c.decide(&frame("KB5MU", b""), v, PortKind::Ovp, t)),
            vec![b]
        );
        assert_eq!(c.station_source(id("K0K")), Some(b));
        c.apply(&Update::VoiceRoute { src: v, dest: a });
        assert_eq!(dests(c.decide(b"opus", v, PortKind::Voice, t)), vec![a]);
        c.apply(&Update::RemoveVoiceRoute { src: v });
        assert_eq!(
            drop_reason(c.decide(b"opus", v, PortKind::Voice, t)),
            DropReason::UnknownSource
        );
    }

    #[test]
    fn voice_slots_hellos_and_bandwidth() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::Source));
        let a = addr("127.0.0.2:1000");
        let b = addr("127.0.0.3:1000");
        // HELLOs are queued, never forwarded, whatever the source.
        assert!(matches!(
            c.decide(b"HELLO 1\n", a, PortKind::Voice, t),
            Decision::Hello
        ));
        assert_eq!(
            drop_reason(c.decide(b"HELLO x", a, PortKind::Voice, t)),
            DropReason::BadHello
        );
        let h: Vec<_> = c.take_hellos().collect();
        assert_eq!(
            h,
            vec![PendingHello {
                user: whelm_shared::line::UserId::new(1).unwrap(),
                token: None,
                src: a
            }]
        );
        assert!(!c.has_hellos());
        for _ in 0..MAX_PENDING_HELLOS {
            assert!(matches!(
                c.decide(b"HELLO 2 tok", b, PortKind::Voice, t),
                Decision::Hello
            ));
        }
        assert_eq!(
            drop_reason(c.decide(b"HELLO 2 tok", b, PortKind::Voice, t)),
            DropReason::HelloOverflow
        );
        assert_eq!(c.take_hellos().count(), MAX_PENDING_HELLOS);
        c.apply(&Update::VoiceHold {
            src: a,
            reason: HoldReason::NotInCall,
        });
        assert_eq!(
            drop_reason(c.decide(b"opus", a, PortKind::Voice, t)),
            DropReason::NotInCall
        );
        c.apply(&Update::Commit {
            updates: vec![
                Update::VoiceHold {
                    src: a,
                    reason: HoldReason::PartnerNotRegistered,
                },
                Update::Bandwidth {
                    bytes_per_sec: 100_000,
                },
            ]
            .into(),
            generation: 1,
        });
        assert_eq!(
            drop_reason(c.decide(b"opus", a, PortKind::Voice, t)),
            DropReason::PartnerNotRegistered
        );
        c.apply(&Update::VoiceRoute { src: a, dest: b });
        // A route forwards HELLO-free datagrams, within the bucket: 10,000
        // bytes of burst, then 100 bytes per millisecond.
        let pkt = [0u8; 1000];
        let mut ok = 0;
        for _ in 0..14 {
            if let Decision::Forward(f) = c.decide(&pkt, a, PortKind::Voice, t) {
                assert_eq!(f.iter().copied().collect::<Vec<_>>(), vec![b]);
                ok += 1;
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(
            drop_reason(c.decide(&pkt, a, PortKind::Voice, t)),
            DropReason::Bandwidth
        );
        let t2 = t + Duration::from_millis(10);
        assert!(matches!(
            c.decide(&pkt, a, PortKind::Voice, t2),
            Decision::Forward(_)
        ));
        c.apply(&Update::Bandwidth { bytes_per_sec: 0 });
        for _ in 0..100 {
            assert!(matches!(
                c.decide(&pkt, a, PortKind::Voice, t2),
                Decision::Forward(_)
            ));
        }
        assert_eq!(c.voice_count(), 1);
    }
}
