//! The authoritative OVP station registry, owned by the coordinator thread
//! (its only writer). Sans-IO: events and `now` in, table updates and
//! log-worthy notices out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use whelm_shared::ovp::StationId;

use crate::update::{Learned, Update};

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
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    timeout: Duration,
    stations: BTreeMap<StationId, Station>,
    timed_out: u64,
}

impl Registry {
    /// An empty registry expiring stations silent for `timeout`.
    pub fn new(timeout: Duration) -> Registry {
        Registry {
            timeout,
            stations: BTreeMap::new(),
            timed_out: 0,
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
    pub fn learned(&mut self, what: Learned, at: Instant) -> (Option<Update>, Option<Notice>) {
        let (id, src) = match what {
            Learned::NewStation { id, src } => (id, src),
            Learned::Moved { id, to, .. } => (id, to),
        };
        match self.stations.get_mut(&id) {
            Some(s) if s.src == src => {
                s.last_seen = s.last_seen.max(at);
                (None, None)
            }
            Some(s) => {
                let from = s.src;
                s.src = src;
                s.last_seen = s.last_seen.max(at);
                (
                    Some(Update::Station { id, src }),
                    Some(Notice::Moved(id, from, src)),
                )
            }
            None => {
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
        let mut r = Registry::new(Duration::from_secs(60));
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
}
