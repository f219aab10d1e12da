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
//! OVP stations are bounded: a new callsign beyond `max_stations` in total
//! or `max_stations_per_ip` from one source IP, or a station moving to an IP
//! that has its share, is dropped ([`DropReason::StationLimit`]); the
//! coordinator's registry enforces the same caps authoritatively (two
//! workers may each admit the last free place; it refuses one and tells the
//! workers to remove it). A fan-out sends one copy per distinct destination
//! address, however many stations share it ([`Stations`]), so a frame costs
//! at most one datagram per address the registry holds.
//!
//! Voice port: a `HELLO` datagram is never forwarded; a well-formed one is
//! queued for the coordinator ([`Core::take_hellos`]), which alone decides
//! whether it registers anything. Every other datagram needs one lookup:
//! source address -> [`VoiceSlot`] (a route to the partner, or why not), then
//! the worker's share of the bandwidth limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use whelm_shared::ovp::{self, FrameError, StationId};

use crate::hello::{is_hello, parse_hello};
pub use crate::stations::Fanout;
use crate::stations::{Stations, ip_key};
use crate::update::{Learned, StationCap, Update};

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
    /// A new callsign (or a move to another IP) while `max_stations` or the
    /// source IP's `max_stations_per_ip` is reached.
    StationLimit,
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
    /// An OVP datagram from the relay's own OVP address (one of its own
    /// sends come back, or a spoof), or from a station whose share of the
    /// conference would be sent there ([`CoreConfig::is_own`]).
    OwnAddress,
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
    /// OVP stations in total at most.
    pub max_stations: usize,
    /// OVP stations per source IP at most.
    pub max_stations_per_ip: usize,
    /// The IPs at which the OVP socket receives: the bound one, or every
    /// local one (loopback always) when bound to the unspecified address.
    pub own_ips: OwnIps,
}

/// The relay's own IPs (see [`CoreConfig::own_ips`]).
#[derive(Debug, Clone, Default)]
pub enum OwnIps {
    /// Bound to one address: only it (canonical form).
    Bound(IpAddr),
    /// Bound to the unspecified address: loopback, and these (the host's
    /// addresses at start, canonical form).
    Any(HashSet<IpAddr>),
    /// Not known (tests).
    #[default]
    Unknown,
}

impl CoreConfig {
    /// True when `a` is the relay's own OVP address: a datagram sent there
    /// comes back to the relay.
    pub fn is_own(&self, a: SocketAddr) -> bool {
        if a.port() != self.ovp_port {
            return false;
        }
        let ip = a.ip().to_canonical();
        match &self.own_ips {
            OwnIps::Bound(b) => ip == *b,
            OwnIps::Any(set) => ip.is_loopback() || ip.is_unspecified() || set.contains(&ip),
            OwnIps::Unknown => false,
        }
    }

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

/// A cheap hasher for keys that are already well spread (socket
/// addresses): a multiply-rotate over the written words. Not DoS-resistant
/// against chosen keys: only for tables whose keys control installs (the
/// registered voice addresses). Tables an outsider fills use [`KeyedMap`].
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

/// HashMap for keys an outsider chooses (the source address of any
/// datagram, the callsign of any valid frame): std's SipHash with a random
/// key per map, so that nobody can pick keys that collide and turn every
/// lookup into a walk along the table.
pub type KeyedMap<K, V> = HashMap<K, V, std::collections::hash_map::RandomState>;

/// Per-source token bucket state.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Sources tracked by one worker's rate limiter at most. A new source
/// beyond it takes the place of the one tracked longest, which starts
/// again with a full bucket when it next sends.
pub const MAX_LIMITER_SOURCES: usize = 65_536;

/// A station that moved to another source address stays there this long:
/// frames of its callsign from elsewhere meanwhile are forwarded but move
/// nothing. A station whose address changes moves at once; one callsign
/// sent from several ports in turn costs one move (a table update on every
/// worker and an event to control) per second instead of one per frame.
pub const MOVE_HOLD: Duration = Duration::from_secs(1);

/// A source idle this long is forgotten by the limiter (its bucket is full).
const LIMITER_IDLE: Duration = Duration::from_secs(10);

/// A worker reports a station-cap refusal to the coordinator (for its log
/// line) at most this often; the drop counter counts every one.
pub const STATION_LIMIT_REPORT: Duration = Duration::from_secs(60);

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
    /// OVP stations.
    stations: Stations,
    /// When this worker last reported a station-cap refusal.
    last_refusal: Option<Instant>,
    /// When this worker last reported a station at its own address.
    last_own_report: Option<Instant>,
    /// Registered voice addresses: source address -> what to do (installed
    /// by the coordinator from control's calls and HELLOs).
    voice: FastMap<SocketAddr, VoiceSlot>,
    /// This worker's share of the voice bandwidth limit (None = no limit).
    bandwidth: Option<Bandwidth>,
    limiter: KeyedMap<SocketAddr, Bucket>,
    /// The limiter's sources, oldest first (the same keys as `limiter`).
    limiter_order: VecDeque<SocketAddr>,
    learned: Vec<Learned>,
    hellos: Vec<PendingHello>,
}

impl Core {
    /// An empty table with the given policy.
    pub fn new(cfg: CoreConfig) -> Core {
        Core {
            cfg,
            stations: Stations::default(),
            last_refusal: None,
            last_own_report: None,
            voice: FastMap::default(),
            bandwidth: None,
            limiter: KeyedMap::default(),
            limiter_order: VecDeque::new(),
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
        self.stations.len()
    }

    /// Largest fan-out a single datagram can currently produce (one per
    /// distinct destination address).
    pub fn max_fanout(&self) -> usize {
        self.stations.destination_count().max(1)
    }

    /// Number of distinct OVP destination addresses in this replica.
    pub fn destination_count(&self) -> usize {
        self.stations.destination_count()
    }

    /// Number of stations this replica holds from `ip`.
    pub fn stations_from(&self, ip: IpAddr) -> usize {
        self.stations.from_ip(ip)
    }

    /// The source address this replica holds for a station.
    pub fn station_source(&self, id: StationId) -> Option<SocketAddr> {
        self.stations.source_of(id)
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
                Decision::Forward(Fanout::one(d))
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
        if self.cfg.is_own(peer) {
            return Decision::Drop(DropReason::OwnAddress);
        }
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
        let slot = match self.stations.slot(station) {
            Some(i) => {
                let from = self.stations.src(i);
                if from != peer && self.stations.may_move(i, now) {
                    let dest = self.cfg.dest_for(peer);
                    if self.cfg.is_own(dest) {
                        return self.own_address(station, peer, dest, now);
                    }
                    if ip_key(from) != ip_key(peer) && self.ip_full(peer) {
                        return self.refuse(station, peer, StationCap::PerIp, now);
                    }
                    self.stations.set_src(i, peer, dest);
                    self.stations.hold(i, now + MOVE_HOLD);
                    self.learned.push(Learned::Moved {
                        id: station,
                        from,
                        to: peer,
                    });
                }
                i
            }
            None => {
                let dest = self.cfg.dest_for(peer);
                if self.cfg.is_own(dest) {
                    return self.own_address(station, peer, dest, now);
                }
                if self.stations.len() >= self.cfg.max_stations {
                    return self.refuse(station, peer, StationCap::Total, now);
                }
                if self.ip_full(peer) {
                    return self.refuse(station, peer, StationCap::PerIp, now);
                }
                let i = self.stations.insert(station, peer, dest);
                self.learned.push(Learned::NewStation {
                    id: station,
                    src: peer,
                });
                i
            }
        };
        self.stations.saw(slot);
        Decision::Forward(self.stations.fanout(slot))
    }

    /// True when `src`'s IP already has `max_stations_per_ip` stations.
    fn ip_full(&self, src: SocketAddr) -> bool {
        self.stations.from_ip(src.ip()) >= self.cfg.max_stations_per_ip
    }

    /// Drops a frame a station cap refused; queues a report for the
    /// coordinator's log at most once per [`STATION_LIMIT_REPORT`].
    fn refuse(
        &mut self,
        id: StationId,
        src: SocketAddr,
        cap: StationCap,
        now: Instant,
    ) -> Decision<'static> {
        let due = self
            .last_refusal
            .is_none_or(|t| now.saturating_duration_since(t) >= STATION_LIMIT_REPORT);
        if due {
            self.last_refusal = Some(now);
            let limit = match cap {
                StationCap::Total => self.cfg.max_stations,
                StationCap::PerIp => self.cfg.max_stations_per_ip,
            };
            self.learned.push(Learned::Refused {
                id,
                src,
                cap,
                limit,
            });
        }
        Decision::Drop(DropReason::StationLimit)
    }

    /// Drops a frame whose station would be sent to the relay's own
    /// address; queues a report at most once per [`STATION_LIMIT_REPORT`].
    fn own_address(
        &mut self,
        id: StationId,
        src: SocketAddr,
        dest: SocketAddr,
        now: Instant,
    ) -> Decision<'static> {
        let due = self
            .last_own_report
            .is_none_or(|t| now.saturating_duration_since(t) >= STATION_LIMIT_REPORT);
        if due {
            self.last_own_report = Some(now);
            self.learned.push(Learned::OwnAddress { id, src, dest });
        }
        Decision::Drop(DropReason::OwnAddress)
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
        } else {
            if self.limiter.len() >= MAX_LIMITER_SOURCES
                && let Some(oldest) = self.limiter_order.pop_front()
            {
                self.limiter.remove(&oldest);
            }
            self.limiter_order.push_back(peer);
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
            // The coordinator decided (within its caps): applied as is.
            Update::Station { id, src } => match self.stations.slot(id) {
                Some(i) => {
                    if self.stations.src(i) != src {
                        self.stations.set_src(i, src, self.cfg.dest_for(src));
                    }
                }
                None => {
                    self.stations.insert(id, src, self.cfg.dest_for(src));
                }
            },
            Update::RemoveStation { id } => self.stations.remove(id),
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
            Update::StationLimits {
                max_stations,
                max_stations_per_ip,
            } => {
                self.cfg.max_stations = max_stations;
                self.cfg.max_stations_per_ip = max_stations_per_ip;
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
        self.stations.take_seen()
    }

    /// Forgets rate-limit state of sources idle for a while (their bucket
    /// would be full again anyway). Called from the worker's timer.
    pub fn purge_limiter(&mut self, now: Instant) {
        self.limiter
            .retain(|_, b| now.saturating_duration_since(b.last) < LIMITER_IDLE);
        let kept = &self.limiter;
        self.limiter_order.retain(|k| kept.contains_key(k));
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
            max_stations: 1000,
            max_stations_per_ip: 16,
            own_ips: OwnIps::Unknown,
        }
    }

    /// The relay-forwarding-to-itself loop: in listen-port mode a station
    /// on the relay's host would be sent its share at the relay's own
    /// address, and every copy would come back as a frame of that station
    /// from there. Such a station is not registered, and a datagram from
    /// the relay's own address is dropped.
    #[test]
    fn nothing_is_sent_to_or_taken_from_the_relays_own_address() {
        let t = Instant::now();
        let mut cf = cfg(ReplyTo::ListenPort);
        cf.own_ips = OwnIps::Any([addr("192.0.2.7:0").ip()].into_iter().collect());
        let mut c = Core::new(cf.clone());
        let remote = addr("10.0.0.1:40000");
        dests(c.decide(&frame("W1AW", b""), remote, PortKind::Ovp, t));
        c.take_learned();
        for local in [
            "127.0.0.1:40001",
            "192.0.2.7:40001",
            "[::ffff:127.0.0.1]:40001",
        ] {
            assert_eq!(
                drop_reason(c.decide(&frame("KB5MU", b""), addr(local), PortKind::Ovp, t)),
                DropReason::OwnAddress,
                "{local}"
            );
        }
        assert_eq!(c.station_count(), 1);
        // One report per worker and minute, naming where it would have gone.
        assert_eq!(
            c.take_learned(),
            vec![Learned::OwnAddress {
                id: id("KB5MU"),
                src: addr("127.0.0.1:40001"),
                dest: addr("127.0.0.1:57372"),
            }]
        );
        // A copy of W1AW's frame come back from the relay's own socket: it
        // neither moves W1AW nor goes anywhere.
        for own in ["127.0.0.1:57372", "192.0.2.7:57372", "[::1]:57372"] {
            assert_eq!(
                drop_reason(c.decide(&frame("W1AW", b""), addr(own), PortKind::Ovp, t)),
                DropReason::OwnAddress
            );
        }
        // Nor may W1AW move onto the relay's host.
        let later = t + MOVE_HOLD;
        assert_eq!(
            drop_reason(c.decide(
                &frame("W1AW", b""),
                addr("127.0.0.1:40002"),
                PortKind::Ovp,
                later
            )),
            DropReason::OwnAddress
        );
        assert_eq!(c.station_source(id("W1AW")), Some(remote));
        // Bound to one address, another loopback address is somebody else.
        cf.own_ips = OwnIps::Bound(addr("127.0.0.1:0").ip());
        let mut c = Core::new(cf);
        assert!(
            dests(c.decide(
                &frame("K0K", b""),
                addr("127.0.0.2:40000"),
                PortKind::Ovp,
                t
            ))
            .is_empty()
        );
        assert_eq!(
            drop_reason(c.decide(
                &frame("W1AW", b""),
                addr("127.0.0.1:40000"),
                PortKind::Ovp,
                t
            )),
            DropReason::OwnAddress
        );
        // Source mode sends back to the source: a station on the host is fine.
        let mut c = Core::new(cfg(ReplyTo::Source));
        c.cfg.own_ips = OwnIps::Any(HashSet::new());
        assert!(
            dests(c.decide(
                &frame("K0K", b""),
                addr("127.0.0.1:40000"),
                PortKind::Ovp,
                t
            ))
            .is_empty()
        );
        assert_eq!(
            drop_reason(c.decide(
                &frame("W1AW", b""),
                addr("127.0.0.1:57372"),
                PortKind::Ovp,
                t
            )),
            DropReason::OwnAddress
        );
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

    /// 65,536 sources (one junk datagram each, as a spread of spoofed
    /// addresses would send) fill the limiter; the next new source, a real
    /// station, is still heard, and a flood from a new source is still cut
    /// to its burst.
    #[test]
    fn a_full_rate_limiter_still_admits_and_limits_new_sources() {
        let t = Instant::now();
        let mut cf = cfg(ReplyTo::Source);
        cf.station_rate = 25;
        cf.station_burst = 5;
        let mut c = Core::new(cf);
        for n in 0..MAX_LIMITER_SOURCES as u32 {
            let [a, b, hi, lo] = n.to_be_bytes();
            let src = SocketAddr::from(([10, a | b, hi, lo], 1000));
            assert!(matches!(
                c.decide(b"x", src, PortKind::Ovp, t),
                Decision::Drop(DropReason::Decode(_))
            ));
        }
        assert_eq!(c.limiter.len(), MAX_LIMITER_SOURCES);
        let station = addr("192.0.2.1:4000");
        assert!(dests(c.decide(&frame("W1AW", b""), station, PortKind::Ovp, t)).is_empty());
        let flooder = addr("192.0.2.2:4000");
        let f = frame("K0K", b"");
        let passed = (0..20)
            .filter(|_| {
                matches!(
                    c.decide(&f, flooder, PortKind::Ovp, t),
                    Decision::Forward(_)
                )
            })
            .count();
        assert_eq!(passed, 5);
        assert_eq!(c.limiter.len(), MAX_LIMITER_SOURCES);
        assert_eq!(c.limiter_order.len(), MAX_LIMITER_SOURCES);
        // The station is tracked (its frames count against its bucket).
        assert!(c.limiter.contains_key(&station));
        c.purge_limiter(t + LIMITER_IDLE);
        assert!(c.limiter.is_empty() && c.limiter_order.is_empty());
    }

    /// A callsign sent from two ports in turn moves once per [`MOVE_HOLD`],
    /// not once per frame; its frames are forwarded all the while.
    #[test]
    fn a_station_moves_at_most_once_per_hold() {
        let t = Instant::now();
        let mut c = Core::new(cfg(ReplyTo::Source));
        let a = addr("127.0.0.1:1000");
        let a2 = addr("127.0.0.1:1001");
        let b = addr("127.0.0.1:2000");
        dests(c.decide(&frame("K0K", b""), b, PortKind::Ovp, t));
        dests(c.decide(&frame("W1AW", b""), a, PortKind::Ovp, t));
        c.take_learned();
        let mut moves = 0;
        for n in 0..100u32 {
            let now = t + Duration::from_millis(u64::from(n) * 10);
            let src = if n % 2 == 0 { a2 } else { a };
            assert_eq!(
                dests(c.decide(&frame("W1AW", b""), src, PortKind::Ovp, now)),
                vec![b]
            );
            moves += c.take_learned().len();
        }
        // 100 frames over 990 ms: the first moves it, the rest are held.
        assert_eq!(moves, 1);
        assert_eq!(c.stations.source_of(id("W1AW")), Some(a2));
        let later = t + MOVE_HOLD + Duration::from_millis(1);
        dests(c.decide(&frame("W1AW", b""), a, PortKind::Ovp, later));
        assert_eq!(
            c.take_learned(),
            vec![Learned::Moved {
                id: id("W1AW"),
                from: a2,
                to: a
            }]
        );
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

    fn capped(reply_to: ReplyTo, max_stations: usize, per_ip: usize) -> Core {
        let mut cf = cfg(reply_to);
        cf.max_stations = max_stations;
        cf.max_stations_per_ip = per_ip;
        Core::new(cf)
    }

    /// The station table is consistent, and each destination follows
    /// from its source by the policy.
    fn assert_consistent(c: &Core) {
        c.stations.assert_consistent();
        for (_, src, dest) in c.stations.slots() {
            assert_eq!(dest, c.cfg.dest_for(src));
        }
    }

    #[test]
    fn per_ip_cap_refuses_new_callsigns_and_reports_once_a_minute() {
        let t = Instant::now();
        let mut c = capped(ReplyTo::Source, 100, 2);
        let a1 = addr("10.0.0.1:1");
        let a2 = addr("10.0.0.1:2");
        let a3 = addr("10.0.0.1:3");
        let b = addr("10.0.0.2:1");
        dests(c.decide(&frame("A1", b""), a1, PortKind::Ovp, t));
        dests(c.decide(&frame("A2", b""), a2, PortKind::Ovp, t));
        dests(c.decide(&frame("B", b""), b, PortKind::Ovp, t));
        assert_eq!(c.take_learned().len(), 3);
        // A third callsign from 10.0.0.1, from any port: dropped, not
        // registered, not forwarded; reported once.
        assert_eq!(
            drop_reason(c.decide(&frame("A3", b"x"), a3, PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        assert_eq!(
            c.take_learned(),
            vec![Learned::Refused {
                id: id("A3"),
                src: a3,
                cap: StationCap::PerIp,
                limit: 2
            }]
        );
        for k in 0..50u16 {
            let cs = format!("X{k}");
            assert_eq!(
                drop_reason(c.decide(&frame(&cs, b""), a1, PortKind::Ovp, t)),
                DropReason::StationLimit
            );
        }
        assert!(!c.has_learned(), "one report a minute");
        assert_eq!(c.station_count(), 3);
        assert_eq!(c.stations_from(a1.ip()), 2);
        assert_eq!(c.station_source(id("A3")), None);
        // Stations already there are untouched.
        assert_eq!(
            dests(c.decide(&frame("B", b""), b, PortKind::Ovp, t)),
            vec![a1, a2]
        );
        assert_eq!(
            dests(c.decide(&frame("A1", b""), a1, PortKind::Ovp, t)),
            vec![a2, b]
        );
        // A minute later the next refusal is reported again.
        let t2 = t + STATION_LIMIT_REPORT;
        drop_reason(c.decide(&frame("A3", b""), a3, PortKind::Ovp, t2));
        assert!(matches!(
            c.take_learned()[..],
            [Learned::Refused {
                cap: StationCap::PerIp,
                ..
            }]
        ));
        // IPv4-mapped IPv6 (a dual-stack socket) counts as the same IP.
        assert_eq!(
            drop_reason(c.decide(
                &frame("A4", b""),
                addr("[::ffff:10.0.0.1]:4"),
                PortKind::Ovp,
                t2
            )),
            DropReason::StationLimit
        );
        assert_consistent(&c);
    }

    #[test]
    fn total_cap_refuses_new_callsigns() {
        let t = Instant::now();
        let mut c = capped(ReplyTo::ListenPort, 3, 16);
        for (k, cs) in ["A", "B", "C"].iter().enumerate() {
            let src = addr(&format!("10.0.0.{}:4000", k + 1));
            dests(c.decide(&frame(cs, b""), src, PortKind::Ovp, t));
        }
        c.take_learned();
        let d = addr("10.0.0.9:4000");
        assert_eq!(
            drop_reason(c.decide(&frame("D", b""), d, PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        assert_eq!(
            c.take_learned(),
            vec![Learned::Refused {
                id: id("D"),
                src: d,
                cap: StationCap::Total,
                limit: 3
            }]
        );
        assert_eq!(c.station_count(), 3);
        // A known station moving to a new IP is not a new station.
        dests(c.decide(&frame("A", b""), d, PortKind::Ovp, t));
        assert_eq!(c.station_source(id("A")), Some(d));
        assert_consistent(&c);
    }

    #[test]
    fn a_move_is_checked_against_the_new_ip() {
        let t = Instant::now();
        let mut c = capped(ReplyTo::Source, 100, 2);
        let a1 = addr("10.0.0.1:1");
        let a2 = addr("10.0.0.1:2");
        let b = addr("10.0.0.2:1");
        dests(c.decide(&frame("A1", b""), a1, PortKind::Ovp, t));
        dests(c.decide(&frame("A2", b""), a2, PortKind::Ovp, t));
        dests(c.decide(&frame("B", b""), b, PortKind::Ovp, t));
        c.take_learned();
        // B to 10.0.0.1, which has its two: dropped, B stays where it was.
        let b_to_a = addr("10.0.0.1:9");
        assert_eq!(
            drop_reason(c.decide(&frame("B", b""), b_to_a, PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        assert_eq!(c.station_source(id("B")), Some(b));
        assert!(matches!(
            c.take_learned()[..],
            [Learned::Refused {
                cap: StationCap::PerIp,
                ..
            }]
        ));
        assert_eq!(
            dests(c.decide(&frame("A1", b""), a1, PortKind::Ovp, t)),
            vec![a2, b]
        );
        // Another port of the same IP is always fine (no new IP share).
        let a1b = addr("10.0.0.1:7");
        assert_eq!(
            dests(c.decide(&frame("A1", b""), a1b, PortKind::Ovp, t)),
            vec![a2, b]
        );
        assert_eq!(
            c.take_learned(),
            vec![Learned::Moved {
                id: id("A1"),
                from: a1,
                to: a1b
            }]
        );
        // A1 leaves 10.0.0.1 (after its hold): room for B.
        let t2 = t + MOVE_HOLD;
        dests(c.decide(&frame("A1", b""), addr("10.0.0.3:1"), PortKind::Ovp, t2));
        assert_eq!(c.stations_from(a1.ip()), 1);
        dests(c.decide(&frame("B", b""), b_to_a, PortKind::Ovp, t2));
        assert_eq!(c.station_source(id("B")), Some(b_to_a));
        assert_eq!(c.stations_from(b.ip()), 0);
        assert_consistent(&c);
    }

    #[test]
    fn expiry_frees_room() {
        let t = Instant::now();
        let mut c = capped(ReplyTo::Source, 2, 1);
        let a = addr("10.0.0.1:1");
        let b = addr("10.0.0.2:1");
        let a2 = addr("10.0.0.1:2");
        let z = addr("10.0.0.3:1");
        dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t));
        dests(c.decide(&frame("B", b""), b, PortKind::Ovp, t));
        assert_eq!(
            drop_reason(c.decide(&frame("Z", b""), z, PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        // The coordinator times A out: one place in total, and A's IP free.
        c.apply(&Update::RemoveStation { id: id("A") });
        assert_eq!(c.stations_from(a.ip()), 0);
        assert_eq!(
            dests(c.decide(&frame("A2", b""), a2, PortKind::Ovp, t)),
            vec![b]
        );
        assert_eq!(
            drop_reason(c.decide(&frame("Z", b""), z, PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        c.apply(&Update::RemoveStation { id: id("B") });
        assert_eq!(
            dests(c.decide(&frame("Z", b""), z, PortKind::Ovp, t)),
            vec![a2]
        );
        assert_eq!(c.station_count(), 2);
        assert_consistent(&c);
    }

    #[test]
    fn coordinator_updates_are_applied_whatever_the_local_caps() {
        let t = Instant::now();
        let mut c = capped(ReplyTo::Source, 2, 1);
        let a = addr("10.0.0.1:1");
        dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t));
        c.take_learned();
        // Another worker admitted B and C; the coordinator's word wins.
        c.apply(&Update::Station {
            id: id("B"),
            src: addr("10.0.0.1:2"),
        });
        c.apply(&Update::Station {
            id: id("C"),
            src: addr("10.0.0.2:1"),
        });
        assert_eq!(c.station_count(), 3);
        assert_eq!(c.stations_from(a.ip()), 2);
        // The coordinator refused this worker's A (the registry was full):
        // removed here.
        c.apply(&Update::RemoveStation { id: id("A") });
        assert_eq!(c.station_count(), 2);
        // A reload raises the caps.
        c.apply(&Update::Commit {
            updates: vec![Update::StationLimits {
                max_stations: 10,
                max_stations_per_ip: 3,
            }]
            .into(),
            generation: 1,
        });
        dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t));
        assert_eq!(c.stations_from(a.ip()), 2);
        dests(c.decide(&frame("D", b""), addr("10.0.0.1:4"), PortKind::Ovp, t));
        assert_eq!(
            drop_reason(c.decide(&frame("E", b""), addr("10.0.0.1:5"), PortKind::Ovp, t)),
            DropReason::StationLimit
        );
        assert_consistent(&c);
    }

    #[test]
    fn one_copy_per_destination_address() {
        let t = Instant::now();
        // Listen-port mode: two stations on one host share ip:57372.
        let mut c = capped(ReplyTo::ListenPort, 100, 16);
        let a = addr("10.0.0.1:40000");
        let b = addr("10.0.0.1:40001");
        let d = addr("10.0.0.2:40000");
        dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t));
        dests(c.decide(&frame("B", b""), b, PortKind::Ovp, t));
        assert_eq!(
            dests(c.decide(&frame("D", b""), d, PortKind::Ovp, t)),
            vec![addr("10.0.0.1:57372")],
            "one copy for A and B"
        );
        // A's frame must reach B, whose address is A's own: one copy there.
        assert_eq!(
            dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t)),
            vec![addr("10.0.0.1:57372"), addr("10.0.0.2:57372")]
        );
        assert_eq!(c.max_fanout(), 2);
        c.apply(&Update::RemoveStation { id: id("B") });
        assert_eq!(
            dests(c.decide(&frame("A", b""), a, PortKind::Ovp, t)),
            vec![addr("10.0.0.2:57372")]
        );

        // Source mode: 300 callsigns from one socket (under a generous cap)
        // still cost one copy per frame.
        let mut c = capped(ReplyTo::Source, 1000, 1000);
        let victim = addr("127.0.0.1:7");
        let legit = addr("127.0.0.2:7");
        dests(c.decide(&frame("W1AW", b""), legit, PortKind::Ovp, t));
        for k in 0..300u16 {
            let cs = format!("F{k}");
            dests(c.decide(&frame(&cs, b""), victim, PortKind::Ovp, t));
        }
        assert_eq!(c.station_count(), 301);
        assert_eq!(c.destination_count(), 2);
        assert_eq!(
            dests(c.decide(&frame("W1AW", b""), legit, PortKind::Ovp, t)),
            vec![victim]
        );
        // A move into a shared address, and out of it again.
        dests(c.decide(&frame("W1AW", b""), victim, PortKind::Ovp, t));
        assert_eq!(c.destination_count(), 1);
        assert_eq!(
            dests(c.decide(&frame("F0", b""), victim, PortKind::Ovp, t)),
            vec![victim]
        );
        let t2 = t + MOVE_HOLD;
        dests(c.decide(&frame("W1AW", b""), legit, PortKind::Ovp, t2));
        // F0 shares its address with F1..F299, who must hear it: one copy.
        let mut got = dests(c.decide(&frame("F0", b""), victim, PortKind::Ovp, t2));
        got.sort();
        assert_eq!(got, vec![victim, legit]);
        assert_consistent(&c);
    }

    /// Random traffic, moves, removals and coordinator updates over a small
    /// address space: after every step the derived tables agree with the
    /// slots, the caps hold for what this worker admitted itself, and every
    /// fan-out is exactly the distinct addresses of the other stations.
    #[test]
    fn random_operations_keep_the_tables_consistent() {
        let t0 = Instant::now();
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for reply_to in [ReplyTo::Source, ReplyTo::ListenPort] {
            let mut c = capped(reply_to, 12, 4);
            let (mut forwarded, mut refused, mut held) = (0, 0, 0);
            let mut t = t0;
            // When each callsign last moved by a frame of its own (a hold).
            let mut moved_at: HashMap<String, Instant> = HashMap::new();
            for _ in 0..5000 {
                t += MOVE_HOLD / 4 * next(3) as u32;
                let cs = format!("S{}", next(20));
                let src = addr(&format!("10.0.0.{}:{}", 1 + next(5), 1 + next(3)));
                match next(10) {
                    0 => {
                        c.apply(&Update::RemoveStation { id: id(&cs) });
                        moved_at.remove(&cs);
                    }
                    1 => {
                        if c.station_source(id(&cs)).is_none() {
                            moved_at.remove(&cs);
                        }
                        c.apply(&Update::Station { id: id(&cs), src });
                    }
                    _ => {
                        let before = c.station_source(id(&cs));
                        let holding = moved_at.get(&cs).is_some_and(|&m| t < m + MOVE_HOLD);
                        let (n, from_ip) = (c.station_count(), c.stations_from(src.ip()));
                        match c.decide(&frame(&cs, b""), src, PortKind::Ovp, t) {
                            Decision::Forward(f) => {
                                let mut got: Vec<SocketAddr> = f.iter().copied().collect();
                                assert_eq!(got.len(), f.len());
                                got.sort();
                                assert_eq!(got, c.stations.expected_fanout(id(&cs)));
                                if holding && before != Some(src) {
                                    assert_eq!(c.station_source(id(&cs)), before);
                                    held += 1;
                                } else {
                                    assert_eq!(c.station_source(id(&cs)), Some(src));
                                    if before.is_some_and(|b| b != src) {
                                        moved_at.insert(cs.clone(), t);
                                    }
                                }
                                forwarded += 1;
                            }
                            Decision::Drop(DropReason::StationLimit) => {
                                assert_eq!(c.station_source(id(&cs)), before);
                                let new_ip = before.is_none_or(|b| ip_key(b) != ip_key(src));
                                assert!(new_ip && !holding);
                                assert!(
                                    (before.is_none() && n >= 12) || from_ip >= 4,
                                    "refused below the caps"
                                );
                                refused += 1;
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                }
                assert_consistent(&c);
            }
            assert!(
                forwarded > 1000 && refused > 100 && held > 100,
                "{forwarded} {refused} {held}"
            );
            c.take_learned();
        }
    }
}
