//! The hostile side of the flood tests: ten sources, every kind of garbage
//! for both UDP ports, each kind with the drop counter it must land in, and
//! the paced, bounded sender.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use whelm_shared::ovp::{HEADER_LEN, StationId};

use super::traffic::{USERS, VOICE_PACKETS, udp, user_ip, voice_packet};

/// xorshift64*: deterministic garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Garbage datagrams each sender thread sends at most, and their pace: this
/// many per second per thread, sent back to back in bursts of [`BURST`]
/// (the fastest a socket sends) with a sleep whenever a burst is ahead of the
/// pace. Two threads: 60,000 garbage datagrams/s (240,000 in all) against
/// the debug build of the relay on two shared cores. Unpaced, the two
/// threads offer about 450,000/s; the debug relay took in about 390,000/s
/// and the kernel dropped the rest at its full socket queues, legitimate
/// datagrams in the same proportion (14% of a station's frames), which no
/// relay can prevent. At this pace the kernel drops nothing, also with two
/// CPU hogs beside the test.
pub(crate) const GARBAGE_PER_THREAD: u64 = 30_000;
/// Datagrams per burst.
const BURST: u64 = 100;
/// How long the garbage runs.
pub(crate) const GARBAGE_FOR: Duration = Duration::from_secs(4);

/// One kind of garbage, and the drop counter it must land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    // OVP port.
    Http,
    Dns,
    Short,
    WrongToken,
    BadBase40,
    ZeroId,
    /// A valid header of a callsign not on the allow list.
    Unregistered,
    /// A valid header of a callsign on the deny list.
    DeniedCall,
    RandomOvp,
    /// Larger than a receive buffer.
    Jumbo,
    // Voice port.
    HelloUnknownUser,
    /// `HELLO <registered user>` from another IP (no token or a wrong one).
    HelloWrongIp,
    /// `HELLO <user> <wrong token>` from the user's own IP, another port.
    HelloWrongToken,
    BadHello,
    RandomVoice,
    /// A registered user's packet, byte for byte, from another port of the
    /// user's IP.
    Spoof,
}

impl Kind {
    /// The `drops` key of the command channel's counters.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Kind::Http | Kind::Dns | Kind::WrongToken | Kind::RandomOvp => "bad_token",
            Kind::Short => "too_short",
            Kind::BadBase40 | Kind::ZeroId => "bad_station_id",
            Kind::Unregistered => "not_allowed",
            Kind::DeniedCall => "denied",
            Kind::Jumbo => "truncated",
            Kind::HelloUnknownUser | Kind::HelloWrongIp | Kind::HelloWrongToken => "hello_denied",
            Kind::BadHello => "bad_hello",
            Kind::RandomVoice | Kind::Spoof => "unknown_source",
        }
    }

    pub(crate) fn voice(self) -> bool {
        self >= Kind::HelloUnknownUser
    }
}

/// A garbage source: its socket, and variants of each kind it sends.
pub(crate) struct Source {
    sock: UdpSocket,
    kinds: Vec<(Kind, Vec<Vec<u8>>)>,
}

pub(crate) const DENIED: &str = "K0K";
pub(crate) const UNREGISTERED: &str = "VE7ABC/W1";

fn ovp_garbage(kind: Kind, rng: &mut Rng) -> Vec<Vec<u8>> {
    let header = |cs: &str| {
        let mut h = [0u8; HEADER_LEN];
        whelm_shared::ovp::write_header(StationId::encode(cs).unwrap(), &mut h);
        h.to_vec()
    };
    let one = |v: Vec<u8>| vec![v];
    match kind {
        Kind::Http => one(b"GET / HTTP/1.1\r\nHost: relay\r\nUser-Agent: scan\r\n\r\n".to_vec()),
        Kind::Dns => one(vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 7, b'e', b'x',
            b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ]),
        Kind::Short => (0..12).map(|n| rng.bytes(n)).collect(),
        Kind::WrongToken => {
            let mut f = header("W1AW");
            f[7] = 0;
            f.extend_from_slice(&[0xEE; 122]);
            one(f)
        }
        Kind::BadBase40 => {
            let mut f = vec![0, 0, 0, 0, 0, 40, 0xBB, 0xAA, 0xDD, 0, 0, 0];
            f.extend_from_slice(&[1; 122]);
            one(f)
        }
        Kind::ZeroId => {
            let mut f = vec![0, 0, 0, 0, 0, 0, 0xBB, 0xAA, 0xDD, 0, 0, 0];
            f.extend_from_slice(&[1; 122]);
            one(f)
        }
        Kind::Unregistered | Kind::DeniedCall => {
            let cs = if kind == Kind::DeniedCall {
                DENIED
            } else {
                UNREGISTERED
            };
            let mut f = header(cs);
            f.extend_from_slice(&[0xEE; 122]);
            one(f)
        }
        Kind::RandomOvp => (0..16)
            .map(|_| {
                let n = 12 + rng.below(1200) as usize;
                let mut f = rng.bytes(n);
                if f[6] == 0xBB {
                    f[6] = 0;
                }
                f
            })
            .collect(),
        Kind::Jumbo => one(vec![0x5A; 3000]),
        _ => unreachable!("{kind:?} is voice garbage"),
    }
}

/// Voice garbage of source `i`: `own_user` is the user whose IP it shares
/// (spoofers only).
fn voice_garbage(kind: Kind, i: usize, own_user: Option<u64>, rng: &mut Rng) -> Vec<Vec<u8>> {
    match kind {
        Kind::HelloUnknownUser => (0..8)
            .map(|k| format!("HELLO {}", 9_000 + i * 10 + k).into_bytes())
            .collect(),
        Kind::HelloWrongIp => (1..=USERS)
            .flat_map(|u| [format!("HELLO {u}"), format!("HELLO {u} tok-{u}-wrong\r\n")])
            .map(String::into_bytes)
            .collect(),
        Kind::HelloWrongToken => {
            let u = own_user.unwrap();
            vec![
                format!("HELLO {u} nope").into_bytes(),
                format!("HELLO {u} tok-{u}x\n").into_bytes(),
            ]
        }
        Kind::BadHello => [
            "HELLO ",
            "HELLO abc",
            "HELLO 0",
            "HELLO -3",
            "HELLO 1 a b",
            "HELLO 99999999999999999999",
            "HELLO 2 \u{7f}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        Kind::RandomVoice => (0..16)
            .map(|_| {
                let n = 1 + rng.below(1200) as usize;
                let mut p = rng.bytes(n);
                if p[0] == b'H' || p[0] == b'V' {
                    p[0] = 0;
                }
                p
            })
            .collect(),
        Kind::Spoof => {
            let u = own_user.unwrap();
            let (call, dir) = (((u - 1) / 2) as u8, ((u - 1) % 2) as u8);
            (0..16)
                .map(|_| voice_packet(call, dir, rng.below(u64::from(VOICE_PACKETS)) as u32))
                .collect()
        }
        _ => unreachable!("{kind:?} is OVP garbage"),
    }
}

/// Ten sources: 0..8 on addresses of their own, 8 and 9 on the IPs of
/// users 1 and 2 (other ports), spoofing them.
pub(crate) fn sources() -> Vec<Source> {
    const OVP_KINDS: [Kind; 10] = [
        Kind::Http,
        Kind::Dns,
        Kind::Short,
        Kind::WrongToken,
        Kind::BadBase40,
        Kind::ZeroId,
        Kind::Unregistered,
        Kind::DeniedCall,
        Kind::RandomOvp,
        Kind::Jumbo,
    ];
    (0..10usize)
        .map(|i| {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let (bind, own_user) = if i < 8 {
                (format!("127.0.2.{}:0", i + 1), None)
            } else {
                let u = i as u64 - 7;
                (format!("{}:0", user_ip(u)), Some(u))
            };
            let mut kinds: Vec<Kind> = OVP_KINDS.to_vec();
            kinds.extend([Kind::HelloUnknownUser, Kind::BadHello, Kind::RandomVoice]);
            if own_user.is_some() {
                kinds.extend([Kind::HelloWrongToken, Kind::Spoof]);
            } else {
                kinds.push(Kind::HelloWrongIp);
            }
            let kinds = kinds
                .into_iter()
                .map(|k| {
                    let v = if k.voice() {
                        voice_garbage(k, i, own_user, &mut rng)
                    } else {
                        ovp_garbage(k, &mut rng)
                    };
                    (k, v)
                })
                .collect();
            Source {
                sock: udp(&bind),
                kinds,
            }
        })
        .collect()
}

/// Sends garbage from `sources` round-robin (one datagram of every kind of
/// every source per round) at the pace of [`GARBAGE_PER_THREAD`], for at
/// most `dur` and at most that rate times `dur` datagrams. Returns the
/// datagrams sent per kind.
pub(crate) fn flood(
    sources: Vec<Source>,
    ovp: SocketAddr,
    voice: SocketAddr,
    dur: Duration,
) -> BTreeMap<Kind, u64> {
    let mut sent: BTreeMap<Kind, u64> = BTreeMap::new();
    let max = GARBAGE_PER_THREAD * dur.as_secs().max(1);
    let start = Instant::now();
    let mut total = 0u64;
    let mut round = 0usize;
    'outer: while total < max && start.elapsed() < dur {
        for s in &sources {
            for (kind, variants) in &s.kinds {
                let d = &variants[round % variants.len()];
                let to = if kind.voice() { voice } else { ovp };
                if s.sock.send_to(d, to).is_ok() {
                    *sent.entry(*kind).or_default() += 1;
                }
                total += 1;
                if total.is_multiple_of(BURST) {
                    let due =
                        start + Duration::from_secs_f64(total as f64 / GARBAGE_PER_THREAD as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if total >= max || start.elapsed() >= dur {
                        break 'outer;
                    }
                }
            }
        }
        round += 1;
    }
    sent
}
