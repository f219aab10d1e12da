//! One worker's OVP station table: the slots (callsign, source address,
//! destination, frames seen since the last report) and, kept in step with
//! them, the distinct destination addresses and the number of stations per
//! source IP.
//!
//! The distinct destinations are contiguous, so a fan-out is a slice with
//! one copy per address however many stations share it (two stations behind
//! one NAT address in listen-port mode, or one socket that claims many
//! callsigns). Finding a station's place in it is an index, not a lookup:
//! the packet path costs what it cost before.
//!
//! No caps here: [`crate::core::Core`], this table's only writer, checks
//! `max_stations` and `max_stations_per_ip` before it inserts or moves a
//! station for a frame, and applies the coordinator's updates as they come.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use whelm_shared::addr::limit_key;
use whelm_shared::ovp::StationId;

use crate::core::KeyedMap;

/// The key of a source in the per-IP station count
/// ([`whelm_shared::addr::limit_key`]): an IPv4-mapped IPv6 address
/// (dual-stack socket) counts as its IPv4 address, an IPv6 address as its
/// /64.
pub fn ip_key(a: SocketAddr) -> IpAddr {
    limit_key(a.ip())
}

/// Stations per source IP ([`ip_key`]); no entry at zero. Kept by the
/// worker's table and by the coordinator's registry alike.
#[derive(Debug, Default, Clone)]
pub struct IpCounts(KeyedMap<IpAddr, u32>);

impl IpCounts {
    /// Stations whose source IP is `ip` ([`ip_key`] applied).
    pub fn get(&self, ip: IpAddr) -> usize {
        self.0.get(&limit_key(ip)).map_or(0, |&n| n as usize)
    }

    /// One more station sends from `src`'s IP.
    pub fn add(&mut self, src: SocketAddr) {
        *self.0.entry(ip_key(src)).or_insert(0) += 1;
    }

    /// One station fewer sends from `src`'s IP.
    pub fn release(&mut self, src: SocketAddr) {
        let k = ip_key(src);
        if let Some(n) = self.0.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.remove(&k);
            }
        }
    }

    /// A station moved from `from` to `to` (nothing changes on one IP).
    pub fn moved(&mut self, from: SocketAddr, to: SocketAddr) {
        if ip_key(from) != ip_key(to) {
            self.release(from);
            self.add(to);
        }
    }

    /// Number of IPs with stations.
    pub fn ips(&self) -> usize {
        self.0.len()
    }
}

/// A borrowed fan-out: every destination in `dests` except index `skip`.
#[derive(Debug, Clone)]
pub struct Fanout<'a> {
    dests: &'a [SocketAddr],
    skip: usize,
}

impl<'a> Fanout<'a> {
    /// A fan-out to one destination.
    pub fn one(dest: &'a SocketAddr) -> Fanout<'a> {
        Fanout {
            dests: std::slice::from_ref(dest),
            skip: usize::MAX,
        }
    }

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

/// The table. Parallel vectors indexed by slot (removal swaps the last slot
/// in), an index from callsign to slot, the distinct destinations and the
/// per-IP counts.
#[derive(Debug, Default)]
pub struct Stations {
    ids: Vec<StationId>,
    srcs: Vec<SocketAddr>,
    dests: Vec<SocketAddr>,
    /// Where each slot's destination is in `fan`.
    fan_slot: Vec<usize>,
    /// Valid frames since the last seen-report, per slot.
    seen: Vec<u32>,
    /// Until when a slot stays where it is (see [`Stations::hold`]).
    held: Vec<Option<Instant>>,
    index: KeyedMap<StationId, usize>,
    /// The distinct destinations; `fan_refs[u]` slots send to `fan[u]`;
    /// `fan_index` maps an address to its place.
    fan: Vec<SocketAddr>,
    fan_refs: Vec<u32>,
    fan_index: KeyedMap<SocketAddr, usize>,
    per_ip: IpCounts,
}

impl Stations {
    /// Number of stations.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of distinct destination addresses.
    pub fn destination_count(&self) -> usize {
        self.fan.len()
    }

    /// The slot of a callsign.
    pub fn slot(&self, id: StationId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// The source address of slot `i`.
    pub fn src(&self, i: usize) -> SocketAddr {
        self.srcs[i]
    }

    /// The source address of a callsign.
    pub fn source_of(&self, id: StationId) -> Option<SocketAddr> {
        self.slot(id).map(|i| self.srcs[i])
    }

    /// Stations whose source IP is `ip` ([`ip_key`] applied).
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(ip)
    }

    /// Counts a valid frame of slot `i` for the next seen-report.
    pub fn saw(&mut self, i: usize) {
        self.seen[i] = self.seen[i].saturating_add(1);
    }

    /// Where a frame of slot `i` goes: every distinct destination but the
    /// sender's own, unless another station shares that address (it must
    /// hear the frame; one copy).
    pub fn fanout(&self, i: usize) -> Fanout<'_> {
        let u = self.fan_slot[i];
        let skip = if self.fan_refs[u] == 1 { u } else { usize::MAX };
        Fanout {
            dests: &self.fan,
            skip,
        }
    }

    /// Adds a station sending from `src` to be sent to at `dest`; returns
    /// its slot. The caller made sure `id` is not in the table.
    pub fn insert(&mut self, id: StationId, src: SocketAddr, dest: SocketAddr) -> usize {
        let i = self.ids.len();
        let u = self.fan_add(dest);
        self.ids.push(id);
        self.srcs.push(src);
        self.dests.push(dest);
        self.fan_slot.push(u);
        self.seen.push(0);
        self.held.push(None);
        self.index.insert(id, i);
        self.per_ip.add(src);
        i
    }

    /// Removes a station, if present.
    pub fn remove(&mut self, id: StationId) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        self.per_ip.release(self.srcs[i]);
        self.fan_release(self.fan_slot[i]);
        self.ids.swap_remove(i);
        self.srcs.swap_remove(i);
        self.dests.swap_remove(i);
        self.fan_slot.swap_remove(i);
        self.seen.swap_remove(i);
        self.held.swap_remove(i);
        if let Some(moved) = self.ids.get(i) {
            self.index.insert(*moved, i);
        }
    }

    /// True when slot `i` may move at `now` (no [`Stations::hold`] in force).
    pub fn may_move(&self, i: usize, now: Instant) -> bool {
        self.held[i].is_none_or(|t| now >= t)
    }

    /// Keeps slot `i` where it is until `until`.
    pub fn hold(&mut self, i: usize, until: Instant) {
        self.held[i] = Some(until);
    }

    /// Moves slot `i` to source `src`, destination `dest`.
    pub fn set_src(&mut self, i: usize, src: SocketAddr, dest: SocketAddr) {
        self.per_ip.moved(self.srcs[i], src);
        self.srcs[i] = src;
        let from = self.dests[i];
        if from == dest {
            return;
        }
        self.dests[i] = dest;
        let u = self.fan_slot[i];
        if self.fan_refs[u] == 1 && !self.fan_index.contains_key(&dest) {
            // Its own address: renamed in place, the fan-out order stays.
            self.fan[u] = dest;
            self.fan_index.remove(&from);
            self.fan_index.insert(dest, u);
        } else {
            self.fan_slot[i] = self.fan_add(dest);
            self.fan_release(u);
        }
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

    /// One more slot sends to `dest`; returns its place in `fan`.
    fn fan_add(&mut self, dest: SocketAddr) -> usize {
        if let Some(&u) = self.fan_index.get(&dest) {
            self.fan_refs[u] += 1;
            return u;
        }
        let u = self.fan.len();
        self.fan.push(dest);
        self.fan_refs.push(1);
        self.fan_index.insert(dest, u);
        u
    }

    /// One slot fewer sends to `fan[u]`; the last one gone frees the place,
    /// and the address that takes it over is re-pointed in every slot (a
    /// scan of the table, only when an address leaves it).
    fn fan_release(&mut self, u: usize) {
        self.fan_refs[u] = self.fan_refs[u].saturating_sub(1);
        if self.fan_refs[u] > 0 {
            return;
        }
        let gone = self.fan.swap_remove(u);
        self.fan_refs.swap_remove(u);
        self.fan_index.remove(&gone);
        if let Some(&moved) = self.fan.get(u) {
            self.fan_index.insert(moved, u);
            for (d, s) in self.dests.iter().zip(self.fan_slot.iter_mut()) {
                if *d == moved {
                    *s = u;
                }
            }
        }
    }

    /// (callsign, source, destination) of every slot.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> impl Iterator<Item = (StationId, SocketAddr, SocketAddr)> + '_ {
        (0..self.ids.len()).map(|i| (self.ids[i], self.srcs[i], self.dests[i]))
    }

    /// The fan-out a frame of `id` must get: the distinct destinations of
    /// every other station, sorted.
    #[cfg(test)]
    pub(crate) fn expected_fanout(&self, id: StationId) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .slots()
            .filter(|(s, _, _)| *s != id)
            .map(|(_, _, d)| d)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Panics unless every derived table agrees with the slots.
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        let n = self.ids.len();
        assert_eq!(self.srcs.len(), n);
        assert_eq!(self.dests.len(), n);
        assert_eq!(self.fan_slot.len(), n);
        assert_eq!(self.seen.len(), n);
        assert_eq!(self.held.len(), n);
        assert_eq!(self.index.len(), n);
        for i in 0..n {
            assert_eq!(self.index[&self.ids[i]], i);
            assert_eq!(self.fan[self.fan_slot[i]], self.dests[i], "slot {i}");
        }
        let mut distinct = self.dests.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(self.fan.len(), distinct.len(), "one entry per address");
        assert_eq!(self.fan_refs.len(), self.fan.len());
        assert_eq!(self.fan_index.len(), self.fan.len());
        for (u, d) in self.fan.iter().enumerate() {
            assert_eq!(self.fan_index[d], u);
            let refs = self.dests.iter().filter(|x| *x == d).count();
            assert_eq!(self.fan_refs[u] as usize, refs, "{d}");
        }
        let mut per_ip: std::collections::HashMap<IpAddr, u32> = Default::default();
        for s in &self.srcs {
            *per_ip.entry(ip_key(*s)).or_default() += 1;
        }
        assert_eq!(per_ip.len(), self.per_ip.ips());
        for (ip, k) in per_ip {
            assert_eq!(self.per_ip.get(ip), k as usize, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cs: &str) -> StationId {
        StationId::encode(cs).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn fan(t: &Stations, cs: &str) -> Vec<SocketAddr> {
        let f = t.fanout(t.slot(id(cs)).unwrap());
        let v: Vec<SocketAddr> = f.iter().copied().collect();
        assert_eq!(v.len(), f.len());
        v
    }

    #[test]
    fn one_copy_per_address_and_the_senders_own_only_when_shared() {
        let mut t = Stations::default();
        let host = addr("10.0.0.1:57372");
        let other = addr("10.0.0.2:57372");
        t.insert(id("A"), addr("10.0.0.1:40000"), host);
        t.insert(id("B"), addr("10.0.0.1:40001"), host);
        t.insert(id("D"), addr("10.0.0.2:40000"), other);
        assert_eq!(fan(&t, "D"), vec![host], "one copy for A and B");
        // A's frame must reach B, whose address is A's own: one copy there.
        assert_eq!(fan(&t, "A"), vec![host, other]);
        assert_eq!(t.destination_count(), 2);
        assert_eq!(t.from_ip(host.ip()), 2);
        t.remove(id("B"));
        assert_eq!(fan(&t, "A"), vec![other]);
        t.assert_consistent();
    }

    #[test]
    fn moves_keep_the_order_and_the_counts() {
        let mut t = Stations::default();
        let (a, b, c) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.2:1"),
            addr("127.0.0.3:1"),
        );
        t.insert(id("A"), a, a);
        t.insert(id("B"), b, b);
        t.insert(id("C"), c, c);
        // A to its own new address: renamed in place.
        let a2 = addr("127.0.0.9:1");
        t.set_src(0, a2, a2);
        assert_eq!(fan(&t, "C"), vec![a2, b]);
        assert_eq!(t.from_ip(a.ip()), 0);
        assert_eq!(t.from_ip(a2.ip()), 1);
        // B into C's address: shared; out again.
        t.set_src(1, c, c);
        assert_eq!(t.destination_count(), 2);
        assert_eq!(fan(&t, "A"), vec![c]);
        let mut f = fan(&t, "B");
        f.sort();
        assert_eq!(f, vec![c, a2]);
        t.set_src(1, b, b);
        assert_eq!(t.destination_count(), 3);
        t.assert_consistent();
        // IPv4-mapped IPv6 is the same IP.
        let mapped = addr("[::ffff:127.0.0.9]:2");
        t.insert(id("M"), mapped, mapped);
        assert_eq!(t.from_ip(a2.ip()), 2);
        assert_eq!(t.from_ip(mapped.ip()), 2);
        t.assert_consistent();
    }

    #[test]
    fn seen_counts_are_taken_once() {
        let mut t = Stations::default();
        let a = addr("127.0.0.1:1");
        let i = t.insert(id("A"), a, a);
        t.saw(i);
        t.saw(i);
        assert_eq!(t.take_seen(), vec![(id("A"), 2)]);
        assert!(t.take_seen().is_empty());
    }

    /// Random inserts, moves and removals over a small address space (in
    /// both destination rules): the derived tables always agree with the
    /// slots and every fan-out is the distinct addresses of the others.
    #[test]
    fn random_operations_keep_the_tables_consistent() {
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for listen_port in [false, true] {
            let mut t = Stations::default();
            for _ in 0..1500 {
                let cs = id(&format!("S{}", next(30)));
                let src = addr(&format!("10.0.0.{}:{}", 1 + next(6), 1 + next(3)));
                let dest = if listen_port {
                    SocketAddr::new(src.ip(), 57372)
                } else {
                    src
                };
                match (next(4), t.slot(cs)) {
                    (0, _) => t.remove(cs),
                    (_, Some(i)) => t.set_src(i, src, dest),
                    (_, None) => {
                        t.insert(cs, src, dest);
                    }
                }
                t.assert_consistent();
                for (s, _, _) in t.slots().collect::<Vec<_>>() {
                    let mut f = fan(&t, &s.to_string());
                    f.sort();
                    assert_eq!(f, t.expected_fanout(s));
                }
            }
        }
    }
}
