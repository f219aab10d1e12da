//! The authoritative OVP station registry, owned by the coordinator thread
//! (its only writer). Sans-IO: events and `now` in, table updates and
//! log-worthy notices out.
//!
//! Bounded: at most `max_stations` stations, at most `max_stations_per_ip`
//! from one source IP. The workers check the same caps on their replicas
//! first, but two of them may each admit the last free place; what the
//! registry refuses is undone on every replica (a refused new station is
//! removed, a refused move is sent back to its address).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use whelm_shared::ovp::StationId;

use crate::stations::{IpCounts, ip_key};
use crate::update::{Learned, StationCap, Update};

/// The station caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StationLimits {
    /// Stations in total at most.
    pub max_stations: usize,
    /// Stations per source IP at most.
    pub max_stations_per_ip: usize,
}

impl StationLimits {
    /// The value of `cap`.
    pub fn of(&self, cap: StationCap) -> usize {
        match cap {
            StationCap::Total => self.max_stations,
            StationCap::PerIp => self.max_stations_per_ip,
        }
    }
}

/// One registered station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    /// Current source address.
    pub src: SocketAddr,
    /// First frame seen.
    pub first_seen: Instant,
    /// Last frame reported seen.
    pub last_seen: Instant,
    /// Valid frames the workers reported (reports come every 500 ms, so
    /// the latest frames are not counted yet).
    pub frames: u64,
}

/// Something the coordinator logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `NEW STATION: <callsign> at <addr>`.
    New(StationId, SocketAddr),
    /// Address change.
    Moved(StationId, SocketAddr, SocketAddr),
    /// Removed after the inactivity timeout.
    TimedOut(StationId, SocketAddr),
    /// A new station (or a move to `src`) refused by a cap (by the registry
    /// or first by a worker); the frame was dropped.
    Refused {
        /// The callsign.
        id: StationId,
        /// Where its frame came from.
        src: SocketAddr,
        /// Which cap.
        cap: StationCap,
        /// Its value.
        limit: usize,
    },
    /// A station that would be sent to the relay's own address was not
    /// registered ([`Learned::OwnAddress`]).
    OwnAddress {
        /// The callsign.
        id: StationId,
        /// Where its frame came from.
        src: SocketAddr,
        /// The relay's own address it would have been sent to.
        dest: SocketAddr,
    },
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    timeout: Duration,
    limits: StationLimits,
    stations: BTreeMap<StationId, Station>,
    per_ip: IpCounts,
    timed_out: u64,
}

impl Registry {
    /// An empty registry expiring stations silent for `timeout`, bounded by
    /// `limits`.
    pub fn new(timeout: Duration, limits: StationLimits) -> Registry {
        Registry {
            timeout,
            limits,
            stations: BTreeMap::new(),
            per_ip: IpCounts::default(),
            timed_out: 0,
        }
    }

    /// The caps in force.
    pub fn limits(&self) -> StationLimits {
        self.limits
    }

    /// New caps (a reload). Stations beyond them stay until they time out;
    /// new ones are refused meanwhile.
    pub fn set_limits(&mut self, limits: StationLimits) {
        self.limits = limits;
    }

    /// Stations registered from `ip`.
    pub fn stations_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(ip)
    }

    fn refused(&self, id: StationId, src: SocketAddr, cap: StationCap) -> Notice {
        Notice::Refused {
            id,
            src,
            cap,
            limit: self.limits.of(cap),
        }
    }

    /// Stations in callsign order.
    pub fn stations(&self) -> impl Iterator<Item = (&StationId, &Station)> {
        self.stations.iter()
    }

    /// Number of stations.
    pub fn len(&self) -> usize {
        self.stations.len()
    }

    /// True when no station is registered.
    pub fn is_empty(&self) -> bool {
        self.stations.is_empty()
    }

    /// Stations removed by timeout since start.
    pub fn timed_out(&self) -> u64 {
        self.timed_out
    }

    /// A worker learned something: record it and say what to broadcast.
    /// Beyond a cap: an update that undoes what the worker applied, and
    /// [`Notice::Refused`].
    pub fn learned(&mut self, what: Learned, at: Instant) -> (Option<Update>, Option<Notice>) {
        let (id, src) = match what {
            Learned::NewStation { id, src } => (id, src),
            Learned::Moved { id, to, .. } => (id, to),
            Learned::Refused {
                id,
                src,
                cap,
                limit,
            } => {
                return (
                    None,
                    Some(Notice::Refused {
                        id,
                        src,
                        cap,
                        limit,
                    }),
                );
            }
            Learned::OwnAddress { id, src, dest } => {
                return (None, Some(Notice::OwnAddress { id, src, dest }));
            }
        };
        let ip_full = self.stations_from(src.ip()) >= self.limits.max_stations_per_ip;
        match self.stations.get(&id).copied() {
            Some(s) if s.src == src => {
                if let Some(s) = self.stations.get_mut(&id) {
                    s.last_seen = s.last_seen.max(at);
                }
                (None, None)
            }
            Some(s) if ip_key(s.src) != ip_key(src) && ip_full => (
                Some(Update::Station { id, src: s.src }),
                Some(self.refused(id, src, StationCap::PerIp)),
            ),
            Some(s) => {
                self.per_ip.moved(s.src, src);
                if let Some(st) = self.stations.get_mut(&id) {
                    st.src = src;
                    st.last_seen = st.last_seen.max(at);
                }
                (
                    Some(Update::Station { id, src }),
                    Some(Notice::Moved(id, s.src, src)),
                )
            }
            None if self.stations.len() >= self.limits.max_stations => (
                Some(Update::RemoveStation { id }),
                Some(self.refused(id, src, StationCap::Total)),
            ),
            None if ip_full => (
                Some(Update::RemoveStation { id }),
                Some(self.refused(id, src, StationCap::PerIp)),
            ),
            None => {
                self.per_ip.add(src);
                self.stations.insert(
                    id,
                    Station {
                        src,
                        first_seen: at,
                        last_seen: at,
                        frames: 0,
                    },
                );
                (
                    Some(Update::Station { id, src }),
                    Some(Notice::New(id, src)),
                )
            }
        }
    }

    /// A worker reports stations it saw.
    pub fn seen(&mut self, ids: &[(StationId, u32)], at: Instant) {
        for (id, n) in ids {
            if let Some(s) = self.stations.get_mut(id) {
                s.last_seen = s.last_seen.max(at);
                s.frames += u64::from(*n);
            }
        }
    }

    /// Removes stations silent for the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<(Update, Notice)> {
        let timeout = self.timeout;
        let dead: Vec<(StationId, SocketAddr)> = self
            .stations
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) >= timeout)
            .map(|(id, s)| (*id, s.src))
            .collect();
        dead.into_iter()
            .map(|(id, src)| {
                self.stations.remove(&id);
                self.per_ip.release(src);
                self.timed_out += 1;
                (Update::RemoveStation { id }, Notice::TimedOut(id, src))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let t = Instant::now();
        let id = StationId::encode("W1AW").unwrap();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut r = Registry::new(
            Duration::from_secs(60),
            StationLimits {
                max_stations: 10,
                max_stations_per_ip: 10,
            },
        );
        assert_eq!(
            r.learned(Learned::NewStation { id, src: a }, t),
            (
                Some(Update::Station { id, src: a }),
                Some(Notice::New(id, a))
            )
        );
        // A second worker reporting the same thing changes nothing.
        assert_eq!(
            r.learned(Learned::NewStation { id, src: a }, t),
            (None, None)
        );
        // A "new" station at another address is a move.
        assert_eq!(
            r.learned(Learned::NewStation { id, src: b }, t),
            (
                Some(Update::Station { id, src: b }),
                Some(Notice::Moved(id, a, b))
            )
        );
        r.seen(&[(id, 3)], t + Duration::from_secs(30));
        assert_eq!(r.stations().next().map(|(_, s)| s.frames), Some(3));
        assert!(r.expire(t + Duration::from_secs(89)).is_empty());
        assert_eq!(
            r.expire(t + Duration::from_secs(90)),
            vec![(Update::RemoveStation { id }, Notice::TimedOut(id, b))]
        );
        assert!(r.is_empty());
        assert_eq!(r.timed_out(), 1);
    }

    fn limits(max_stations: usize, max_stations_per_ip: usize) -> StationLimits {
        StationLimits {
            max_stations,
            max_stations_per_ip,
        }
    }

    fn new(r: &mut Registry, cs: &str, src: &str, t: Instant) -> (Option<Update>, Option<Notice>) {
        let id = StationId::encode(cs).unwrap();
        r.learned(
            Learned::NewStation {
                id,
                src: src.parse().unwrap(),
            },
            t,
        )
    }

    #[test]
    fn caps_refuse_and_undo_what_a_worker_applied() {
        let t = Instant::now();
        let id = |cs: &str| StationId::encode(cs).unwrap();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let mut r = Registry::new(Duration::from_secs(60), limits(3, 2));
        assert!(new(&mut r, "A1", "10.0.0.1:1", t).1.is_some());
        assert!(new(&mut r, "A2", "10.0.0.1:2", t).1.is_some());
        // Two workers each admitted a third station from 10.0.0.1: the
        // registry refuses it and every replica removes it.
        assert_eq!(
            new(&mut r, "A3", "10.0.0.1:3", t),
            (
                Some(Update::RemoveStation { id: id("A3") }),
                Some(Notice::Refused {
                    id: id("A3"),
                    src: "10.0.0.1:3".parse().unwrap(),
                    cap: StationCap::PerIp,
                    limit: 2
                })
            )
        );
        assert!(new(&mut r, "B", "10.0.0.2:1", t).1.is_some());
        assert_eq!(
            new(&mut r, "C", "10.0.0.3:1", t),
            (
                Some(Update::RemoveStation { id: id("C") }),
                Some(Notice::Refused {
                    id: id("C"),
                    src: "10.0.0.3:1".parse().unwrap(),
                    cap: StationCap::Total,
                    limit: 3
                })
            )
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r.stations_from(a.ip()), 2);
        // B moving to 10.0.0.1 is refused and sent back to its address.
        let b = id("B");
        let b_src: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let to: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert_eq!(
            r.learned(
                Learned::Moved {
                    id: b,
                    from: b_src,
                    to
                },
                t
            ),
            (
                Some(Update::Station { id: b, src: b_src }),
                Some(Notice::Refused {
                    id: b,
                    src: to,
                    cap: StationCap::PerIp,
                    limit: 2
                })
            )
        );
        // A move within 10.0.0.1 is fine.
        let a9: SocketAddr = "10.0.0.1:7".parse().unwrap();
        assert_eq!(
            new(&mut r, "A1", "10.0.0.1:7", t),
            (
                Some(Update::Station {
                    id: id("A1"),
                    src: a9
                }),
                Some(Notice::Moved(id("A1"), a, a9))
            )
        );
        assert_eq!(r.stations_from(a.ip()), 2);
        // A worker's own refusal is passed on for the log, nothing changes.
        let w = Learned::Refused {
            id: id("Z"),
            src: a,
            cap: StationCap::Total,
            limit: 3,
        };
        assert_eq!(
            r.learned(w, t),
            (
                None,
                Some(Notice::Refused {
                    id: id("Z"),
                    src: a,
                    cap: StationCap::Total,
                    limit: 3
                })
            )
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn expiry_and_reload_change_the_room() {
        let t = Instant::now();
        let mut r = Registry::new(Duration::from_secs(60), limits(2, 1));
        new(&mut r, "A", "10.0.0.1:1", t);
        new(&mut r, "B", "10.0.0.2:1", t + Duration::from_secs(30));
        assert!(matches!(
            new(&mut r, "C", "10.0.0.3:1", t).1,
            Some(Notice::Refused { .. })
        ));
        // A times out: room for one, and 10.0.0.1 is free again.
        assert_eq!(r.expire(t + Duration::from_secs(60)).len(), 1);
        assert_eq!(r.stations_from("10.0.0.1".parse().unwrap()), 0);
        assert!(matches!(
            new(&mut r, "A2", "10.0.0.1:2", t + Duration::from_secs(60)).1,
            Some(Notice::New(..))
        ));
        assert!(matches!(
            new(&mut r, "C", "10.0.0.3:1", t).1,
            Some(Notice::Refused { .. })
        ));
        // Lowering the caps removes nobody; raising them admits again.
        r.set_limits(limits(1, 1));
        assert_eq!(r.len(), 2);
        assert!(matches!(
            new(&mut r, "C", "10.0.0.3:1", t).1,
            Some(Notice::Refused {
                cap: StationCap::Total,
                limit: 1,
                ..
            })
        ));
        r.set_limits(limits(3, 1));
        assert!(matches!(
            new(&mut r, "C", "10.0.0.3:1", t).1,
            Some(Notice::New(..))
        ));
        assert_eq!(r.limits(), limits(3, 1));
    }
}
