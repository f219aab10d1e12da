//! The legitimate side of the flood tests: stations and calls at their
//! normal rates (PROTOCOLS.md sections 2 and 3), each datagram numbered so
//! a receiver counts what it lost; and the probes of the relay process
//! (resident memory, kernel drops at its sockets, settled counters).

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use whelm_shared::channel::Counters;
use whelm_shared::ovp::HEADER_LEN;

use crate::common::{Control, Station, is_sync};

/// Users 1..=10, five calls (1-2, 3-4, ...).
pub(crate) const USERS: u64 = 10;
/// Voice packets per direction: 5 s at 50/s.
pub(crate) const VOICE_PACKETS: u32 = 250;
/// Frames per OVP station: 5 s at 25/s.
pub(crate) const OVP_FRAMES: u32 = 125;

pub(crate) fn user_ip(u: u64) -> String {
    format!("127.0.1.{u}")
}

/// A UDP socket on `bind` ("ip:port") with a 4 MiB receive buffer.
pub(crate) fn udp(bind: &str) -> UdpSocket {
    let addr: SocketAddr = bind.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// The relay's resident set size in KiB (`VmRSS` of /proc/<pid>/status).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Datagrams the kernel dropped at the relay's UDP sockets on `ports`
/// (the `drops` column of /proc/<pid>/net/udp; full receive queues).
pub(crate) fn kernel_drops(pid: u32, ports: &[u16]) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let drops: u64 = f.last()?.parse().ok()?;
            ports.contains(&port).then_some(drops)
        })
        .sum()
}

pub(crate) fn packets_in(c: &Counters) -> u64 {
    c.workers.iter().map(|w| w.packets_in).sum()
}

/// Polls counters until the relay has taken in everything that was sent
/// (`packets_in` stops moving for 300 ms; bounded), returns the last ones.
pub(crate) fn settled_counters(c: &mut Control) -> Counters {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = c.counters();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let k = c.counters();
        if packets_in(&k) != packets_in(&last) {
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(300) {
            return k;
        }
        last = k;
    }
    last
}

/// Sleeps until `start + k * period` (no sleep when already late, so a
/// sender that fell behind catches up and the count stays exact).
pub(crate) fn pace(start: Instant, k: u32, period: Duration) {
    let due = start + period * k;
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Normal OVP station rate: one frame every 40 ms (PROTOCOLS.md section 3).
pub(crate) const OVP_PERIOD: Duration = Duration::from_millis(40);
/// Normal Whelm voice rate: one Opus packet every 20 ms (PROTOCOLS.md 2).
pub(crate) const VOICE_PERIOD: Duration = Duration::from_millis(20);

/// OVP frame `seq` of station `idx`: a normal 134-byte frame whose payload
/// starts with 0xEE (never a sync probe), the station index and `seq`.
pub(crate) fn ovp_frame(s: &Station, idx: u8, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 122];
    p[0] = 0xEE;
    p[1] = idx;
    p[2..6].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(6) {
        *b = (seq as usize * 13 + i) as u8;
    }
    s.frame(&p)
}

/// Who sent a legitimate OVP frame and its sequence number.
pub(crate) fn parse_ovp(f: &[u8]) -> Option<(u8, u32)> {
    let p = f.get(HEADER_LEN..)?;
    if p.len() != 122 || p[0] != 0xEE {
        return None;
    }
    Some((p[1], u32::from_be_bytes(p[2..6].try_into().ok()?)))
}

/// Voice packet `seq` of call `call`, direction `dir` (0: a -> b, 1: b -> a):
/// 120 bytes, like an Opus frame at 48 kbit/s.
pub(crate) fn voice_packet(call: u8, dir: u8, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 120];
    p[0] = b'V';
    p[1] = call;
    p[2] = dir;
    p[3..7].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(7) {
        *b = (seq as usize * 7 + usize::from(call) * 31 + i) as u8;
    }
    p
}

pub(crate) fn parse_voice(p: &[u8]) -> Option<(u8, u8, u32)> {
    if p.len() != 120 || p[0] != b'V' {
        return None;
    }
    Some((p[1], p[2], u32::from_be_bytes(p[3..7].try_into().ok()?)))
}

/// What one receiver got: distinct sequence numbers per sender, duplicates,
/// and datagrams that are not legitimate traffic from an expected sender.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) seqs: BTreeMap<u8, HashSet<u32>>,
    pub(crate) duplicates: u64,
    pub(crate) foreign: Vec<Vec<u8>>,
}

/// Receives on `sock` until `done` is set (the senders finished) and then
/// 300 ms more, or until `deadline`. `classify` maps a datagram to (sender
/// key, seq), None for foreign ones.
pub(crate) fn receive(
    sock: UdpSocket,
    done: Arc<AtomicBool>,
    deadline: Instant,
    classify: impl Fn(&[u8]) -> Option<(u8, u32)>,
) -> Received {
    let mut r = Received::default();
    let mut buf = vec![0u8; 4096];
    let mut linger: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || linger.is_some_and(|l| now >= l) {
            return r;
        }
        if linger.is_none() && done.load(Ordering::Relaxed) {
            linger = Some(now + Duration::from_millis(300));
        }
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let d = &buf[..n];
        if is_sync(d) {
            continue;
        }
        match classify(d) {
            Some((from, seq)) => {
                if !r.seqs.entry(from).or_default().insert(seq) {
                    r.duplicates += 1;
                }
            }
            None => {
                if r.foreign.len() < 8 {
                    r.foreign.push(d.to_vec());
                }
            }
        }
    }
}

/// Loss of one receiver as a fraction, asserting no duplicates or foreign
/// datagrams; `want` lists (sender key, count sent).
pub(crate) fn check_receiver(
    tag: &str,
    r: &Received,
    want: &[(u8, u32)],
    kernel: u64,
) -> (u64, u64) {
    assert_eq!(
        r.duplicates, 0,
        "{tag}: duplicates (a spoofed copy was forwarded?)"
    );
    assert!(
        r.foreign.is_empty(),
        "{tag}: received datagrams that are not legitimate traffic: {:?}",
        r.foreign
            .iter()
            .map(|f| String::from_utf8_lossy(&f[..f.len().min(40)]).into_owned())
            .collect::<Vec<_>>()
    );
    let keys: HashSet<u8> = want.iter().map(|(k, _)| *k).collect();
    assert!(
        r.seqs.keys().all(|k| keys.contains(k)),
        "{tag}: traffic from an unexpected sender: {:?}",
        r.seqs.keys().collect::<Vec<_>>()
    );
    let mut lost = 0u64;
    let mut sent = 0u64;
    for &(k, n) in want {
        let got = r.seqs.get(&k).map(|s| s.len() as u64).unwrap_or(0);
        if let Some(s) = r.seqs.get(&k) {
            assert!(s.iter().all(|&q| q < n), "{tag}: sequence out of range");
        }
        lost += u64::from(n) - got;
        sent += u64::from(n);
    }
    assert!(
        lost * 100 < sent,
        "{tag}: lost {lost} of {sent} (>= 1%); kernel drops at the relay's sockets: {kernel}"
    );
    (lost, sent)
}
