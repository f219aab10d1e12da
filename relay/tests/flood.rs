//! Hostile traffic against the real `whelm-relay` binary, on both engines
//! (ARCHITECTURE.md, "Security model"):
//!
//! - [`garbage_flood_spares_legitimate_traffic`]: ten sources flood both UDP
//!   ports with every kind of garbage while three OVP stations and five 1:1
//!   calls run at their normal rates. Legitimate traffic loses under 1% (per
//!   receiver, by sequence number), every garbage datagram is counted under
//!   the drop reason of its kind, nothing registers or moves, and the
//!   relay's resident memory does not grow.
//! - [`rate_limited_station_leaves_others_untouched`]: one station sending
//!   valid frames at 20 times the normal rate is cut to the per-source limit
//!   (the excess counted as rate-limited, exactly) while three stations at
//!   the normal rate lose nothing.
//! - [`command_channel_survives_malformed_and_huge_lines`]: unknown message
//!   types, wrong field types, non-object JSON, invalid UTF-8, 1 MiB lines
//!   (junk, nesting bombs, a valid one) get one typed reply each and leave
//!   the channel usable without growing the relay; a 1 MiB first line is
//!   refused and closed, and a new connection works. (`handshake_errors_and_roles`
//!   in voice.rs covers bad versions, non-JSON, unknown ops and lines over
//!   the 16 MiB limit.)
//!
//! Modules: `flood/traffic.rs` (the legitimate side and the probes of the
//! relay process), `flood/garbage.rs` (the hostile side).
//!
//! The flood is bounded in time and count and paced (see
//! [`garbage::GARBAGE_PER_THREAD`]): on two shared cores, a sender faster
//! than the relay's worker only fills the kernel's socket queue, and the
//! kernel then drops legitimate datagrams with the garbage, which no relay
//! can prevent. Kernel drops at the relay's sockets are read from
//! `/proc/<pid>/net/udp` and taken into account (and reported) rather than
//! assumed away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "flood/garbage.rs"]
mod garbage;
#[path = "flood/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Control, ENGINES, Station, drops, final_stats, start, sync};
use garbage::{DENIED, GARBAGE_FOR, Kind, UNREGISTERED, flood, sources};
use traffic::{
    OVP_FRAMES, OVP_PERIOD, Received, USERS, VOICE_PACKETS, VOICE_PERIOD, check_receiver,
    kernel_drops, ovp_frame, pace, packets_in, parse_ovp, parse_voice, receive, rss_kib,
    settled_counters, udp, user_ip, voice_packet,
};
use whelm_shared::channel::{
    CallEntry, Command, ErrorCode, Event, Outcome, RelayMsg, Role, State, UserEntry,
};
use whelm_shared::line::UserId;

fn uid(v: u64) -> UserId {
    UserId::new(v).unwrap()
}

// ------------------------------------------------------------------ test 1

fn user_entry(u: u64) -> UserEntry {
    UserEntry {
        user: uid(u),
        ip: user_ip(u).parse().unwrap(),
        token: Some(format!("tok-{u}")),
        voice: None,
    }
}

fn flood_scenario(engine: &str) {
    let callsigns = ["W1AW", "KB5MU-11", "W5NYV.NCS"];
    let allow = callsigns.join(",");
    let deny = format!("{DENIED},W3/G1ABC");
    let Some(relay) = start(
        engine,
        &[
            "--workers",
            "2",
            "--reply-to",
            "source",
            // Off, so every garbage datagram reaches the check its kind is
            // meant for (the limiter, which would catch most of it first, is
            // the next test's subject).
            "--station-rate",
            "0",
            "--allow",
            &allow,
            "--deny",
            &deny,
        ],
    ) else {
        return;
    };
    let pid = relay.pid();
    let ports = [relay.ovp.port(), relay.voice.port()];
    let mut c = Control::connect(&relay.socket, Role::Control);

    // Five calls, every user HELLO-registered from its own IP.
    for u in 1..=USERS {
        c.ok(Command::AllowUser(user_entry(u)));
    }
    for k in 0..USERS / 2 {
        c.ok(Command::InstallCall(CallEntry {
            a: uid(2 * k + 1),
            b: uid(2 * k + 2),
        }));
    }
    let users: Vec<UdpSocket> = (1..=USERS)
        .map(|u| udp(&format!("{}:0", user_ip(u))))
        .collect();
    for (i, s) in users.iter().enumerate() {
        s.send_to(format!("HELLO {}", i + 1).as_bytes(), relay.voice)
            .unwrap();
    }
    let mut registered = HashMap::new();
    while registered.len() < USERS as usize {
        match c.wait_event(|e| matches!(e, Event::VoiceRegistered { .. })) {
            Event::VoiceRegistered { user, addr } => registered.insert(user, addr),
            _ => unreachable!(),
        };
    }
    for (i, s) in users.iter().enumerate() {
        assert_eq!(registered[&uid(i as u64 + 1)], s.local_addr().unwrap());
    }
    let before = c.snapshot();

    // Three OVP stations, known to every worker.
    let stations: Vec<Station> = callsigns
        .iter()
        .enumerate()
        .map(|(i, cs)| Station::bind(cs, &format!("127.0.3.{}:0", i + 1)))
        .collect();
    sync(&stations.iter().collect::<Vec<_>>(), relay.ovp);
    let base = settled_counters(&mut c);
    let base_kernel = kernel_drops(pid, &ports);

    // Receivers: every station, every user.
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let ovp_rx: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sock = s.sock.try_clone().unwrap();
            let done = done.clone();
            let me = i as u8;
            std::thread::spawn(move || {
                receive(sock, done, deadline, move |d| {
                    parse_ovp(d).filter(|(from, _)| *from != me && *from < 3)
                })
            })
        })
        .collect();
    let voice_rx: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sock = s.try_clone().unwrap();
            let done = done.clone();
            let (call, dir) = ((i / 2) as u8, (i % 2) as u8);
            std::thread::spawn(move || {
                receive(sock, done, deadline, move |d| {
                    // Only the partner's direction of this call is legitimate.
                    parse_voice(d)
                        .filter(|(c, d, _)| *c == call && *d == 1 - dir)
                        .map(|(_, d, s)| (d, s))
                })
            })
        })
        .collect();

    // Legitimate senders at the normal rates.
    let (ovp_addr, voice_addr) = (relay.ovp, relay.voice);
    let ovp_plan: Vec<(UdpSocket, Vec<Vec<u8>>)> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let frames = (0..OVP_FRAMES).map(|q| ovp_frame(s, i as u8, q)).collect();
            (s.sock.try_clone().unwrap(), frames)
        })
        .collect();
    let ovp_tx = std::thread::spawn(move || {
        let t0 = Instant::now();
        for q in 0..OVP_FRAMES {
            pace(t0, q, OVP_PERIOD);
            for (sock, frames) in &ovp_plan {
                sock.send_to(&frames[q as usize], ovp_addr).unwrap();
            }
        }
    });
    let voice_socks: Vec<UdpSocket> = users.iter().map(|s| s.try_clone().unwrap()).collect();
    let voice_tx = std::thread::spawn(move || {
        let t0 = Instant::now();
        for q in 0..VOICE_PACKETS {
            pace(t0, q, VOICE_PERIOD);
            for (i, sock) in voice_socks.iter().enumerate() {
                let p = voice_packet((i / 2) as u8, (i % 2) as u8, q);
                sock.send_to(&p, voice_addr).unwrap();
            }
        }
    });

    // The flood, from 0.3 s into the legitimate traffic for GARBAGE_FOR.
    std::thread::sleep(Duration::from_millis(300));
    let mut srcs = sources();
    let second = srcs.split_off(5);
    let flooders: Vec<_> = [srcs, second]
        .into_iter()
        .map(|group| std::thread::spawn(move || flood(group, ovp_addr, voice_addr, GARBAGE_FOR)))
        .collect();
    // Warm-up (every receive buffer cycled, every table and queue at its
    // working size), then the baseline of the memory check.
    std::thread::sleep(Duration::from_millis(1200));
    let rss_warm = rss_kib(pid);
    // The command channel answers during the flood.
    let t = Instant::now();
    let mid = c.counters();
    let answered = t.elapsed();
    assert!(
        packets_in(&mid) > packets_in(&base),
        "{engine}: no traffic?"
    );
    let mut rss_max = rss_warm;
    while flooders.iter().any(|h| !h.is_finished()) {
        rss_max = rss_max.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut sent: BTreeMap<Kind, u64> = BTreeMap::new();
    for h in flooders {
        for (k, n) in h.join().unwrap() {
            *sent.entry(k).or_default() += n;
        }
    }
    ovp_tx.join().unwrap();
    voice_tx.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let ovp_got: Vec<Received> = ovp_rx.into_iter().map(|h| h.join().unwrap()).collect();
    let voice_got: Vec<Received> = voice_rx.into_iter().map(|h| h.join().unwrap()).collect();
    let end = settled_counters(&mut c);
    let rss_end = rss_kib(pid);
    let kernel = kernel_drops(pid, &ports) - base_kernel;
    let garbage: u64 = sent.values().sum();
    eprintln!(
        "{engine}: garbage sent {garbage} ({sent:?}); kernel drops {kernel}; counters answered \
         in {answered:?} mid-flood; VmRSS warm {rss_warm} KiB, max {rss_max} KiB, end {rss_end} KiB"
    );

    // 1. Legitimate traffic: under 1% lost per receiver, no duplicates, no
    //    garbage delivered.
    let mut lost = (0u64, 0u64);
    for (i, r) in ovp_got.iter().enumerate() {
        let want: Vec<(u8, u32)> = (0..3u8)
            .filter(|&j| usize::from(j) != i)
            .map(|j| (j, OVP_FRAMES))
            .collect();
        let (l, s) = check_receiver(
            &format!("{engine}: station {}", callsigns[i]),
            r,
            &want,
            kernel,
        );
        lost = (lost.0 + l, lost.1 + s);
    }
    for (i, r) in voice_got.iter().enumerate() {
        let want = [((1 - i % 2) as u8, VOICE_PACKETS)];
        let (l, s) = check_receiver(&format!("{engine}: user {}", i + 1), r, &want, kernel);
        lost = (lost.0 + l, lost.1 + s);
    }
    eprintln!("{engine}: legitimate traffic lost {} of {}", lost.0, lost.1);

    // 2. Every garbage datagram the relay took in is counted under its
    //    kind's reason: exactly the number sent, less what the kernel
    //    dropped before the relay saw it.
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (k, n) in &sent {
        *by_reason.entry(k.reason()).or_default() += n;
    }
    let delta = |key: &str| drops(&end, key) - drops(&base, key);
    for (reason, n) in &by_reason {
        let mut got = delta(reason);
        if *reason == "hello_denied" {
            got += delta("hello_overflow");
        }
        assert!(
            got <= *n && got + kernel >= *n && got > 0,
            "{engine}: {reason}: counted {got}, sent {n}, kernel drops {kernel}"
        );
    }
    // Nothing else was dropped: legitimate traffic passed every check.
    for key in end.workers[0].drops.keys() {
        if !by_reason.contains_key(key.as_str()) && key != "hello_overflow" {
            assert_eq!(delta(key), 0, "{engine}: unexpected drops: {key}");
        }
    }
    let legit_in = u64::from(OVP_FRAMES) * 3 + u64::from(VOICE_PACKETS) * USERS;
    assert_eq!(
        packets_in(&end) - packets_in(&base) + kernel,
        legit_in + garbage,
        "{engine}: every datagram sent reached the relay or a kernel drop counter"
    );

    // 3. Nothing registered, moved or changed.
    assert_eq!(c.snapshot(), before, "{engine}: voice state changed");
    let st = match c.request(Command::Stations) {
        Outcome::Stations { stations } => stations,
        o => panic!("{o:?}"),
    };
    let mut seen: Vec<(String, SocketAddr)> =
        st.into_iter().map(|s| (s.callsign, s.addr)).collect();
    seen.sort();
    let mut want: Vec<(String, SocketAddr)> = stations
        .iter()
        .map(|s| (s.callsign.clone(), s.sock.local_addr().unwrap()))
        .collect();
    want.sort();
    assert_eq!(seen, want, "{engine}: station registry changed");

    // 4. Memory: no growth after warm-up beyond a fixed slack.
    let slack = (2 * 1024).max(rss_warm / 20);
    assert!(
        rss_end <= rss_warm + slack,
        "{engine}: VmRSS grew from {rss_warm} KiB to {rss_end} KiB (max {rss_max} KiB)"
    );

    // 5. The stats line agrees: every datagram received was either dropped
    //    under a reason or handled (HELLO, valid frame, forwarded voice).
    let err = relay.stop();
    let f = final_stats(&err);
    assert_eq!(f["tx_errors"], 0, "{engine}");
    assert_eq!(f["drop_send_slots_full"], 0, "{engine}");
    let handled: u64 = f
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") && *k != "drop_hello_overflow")
        .map(|(_, v)| v)
        .sum::<u64>()
        + f["voice_hellos"]
        + f["ovp_frames"]
        + f["voice_forwarded"];
    assert!(
        handled <= f["rx_packets"] && f["rx_packets"] <= handled + f["drop_hello_overflow"],
        "{engine}: rx_packets {} but {handled} accounted for: {f:?}",
        f["rx_packets"]
    );
    assert_eq!(f["active_stations"], 3, "{engine}");
    assert_eq!(f["calls"], USERS / 2, "{engine}");
    assert!(!err.contains("NEW STATION: K0K"), "{engine}");
    assert!(!err.contains(&format!("NEW STATION: {UNREGISTERED}")));
    assert!(!err.contains("panicked"), "{engine}: {err}");
}

#[test]
fn garbage_flood_spares_legitimate_traffic() {
    for engine in ENGINES {
        flood_scenario(engine);
    }
}

// ------------------------------------------------------------------ test 2

/// The per-source limit used here: 100 frames/s, 100 deep (the defaults,
/// spelt out so the arithmetic below does not depend on them).
const LIMIT: u32 = 100;
/// How long every station sends.
const LIMIT_FOR: Duration = Duration::from_secs(4);

fn rate_limit_scenario(engine: &str) {
    let limit = LIMIT.to_string();
    let Some(relay) = start(
        engine,
        &[
            "--workers",
            "2",
            "--reply-to",
            "source",
            "--station-rate",
            &limit,
            "--station-burst",
            &limit,
        ],
    ) else {
        return;
    };
    let pid = relay.pid();
    let ports = [relay.ovp.port(), relay.voice.port()];
    let mut c = Control::connect(&relay.socket, Role::Control);
    let callsigns = ["W1AW", "KB5MU-11", "W5NYV.NCS", "W3/G1ABC"];
    let stations: Vec<Station> = callsigns
        .iter()
        .enumerate()
        .map(|(i, cs)| Station::bind(cs, &format!("127.0.4.{}:0", i + 1)))
        .collect();
    sync(&stations.iter().collect::<Vec<_>>(), relay.ovp);
    // Every bucket full again after the sync probes.
    std::thread::sleep(Duration::from_millis(1100));
    let base = settled_counters(&mut c);
    let base_kernel = kernel_drops(pid, &ports);

    // Stations 0..3 at the normal 25 frames/s; station 3 at 20 times that.
    let normal = (LIMIT_FOR.as_millis() / OVP_PERIOD.as_millis()) as u32;
    let fast_period = OVP_PERIOD / 20;
    let fast = normal * 20;
    let deadline = Instant::now() + LIMIT_FOR + Duration::from_secs(20);
    let done = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sock = s.sock.try_clone().unwrap();
            let done = done.clone();
            let me = i as u8;
            std::thread::spawn(move || {
                receive(sock, done, deadline, move |d| {
                    parse_ovp(d).filter(|(from, _)| *from != me && *from < 4)
                })
            })
        })
        .collect();
    let senders: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = Station {
                callsign: s.callsign.clone(),
                id: s.id,
                sock: s.sock.try_clone().unwrap(),
            };
            let to = relay.ovp;
            let (count, period) = if i == 3 {
                (fast, fast_period)
            } else {
                (normal, OVP_PERIOD)
            };
            std::thread::spawn(move || {
                let frames: Vec<Vec<u8>> = (0..count).map(|q| ovp_frame(&st, i as u8, q)).collect();
                let t0 = Instant::now();
                for (q, f) in frames.iter().enumerate() {
                    pace(t0, q as u32, period);
                    st.send(to, f);
                }
                t0.elapsed()
            })
        })
        .collect();
    let took: Vec<Duration> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let got: Vec<Received> = receivers.into_iter().map(|h| h.join().unwrap()).collect();
    let end = settled_counters(&mut c);
    let kernel = kernel_drops(pid, &ports) - base_kernel;
    let fast_took = took[3].as_secs_f64();

    // The normal stations lose nothing, at every receiver (the fast one too).
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.duplicates, 0, "{engine}");
        assert!(r.foreign.is_empty(), "{engine}: {:?}", r.foreign);
        for j in (0..3u8).filter(|&j| usize::from(j) != i) {
            let n = r.seqs.get(&j).map(HashSet::len).unwrap_or(0);
            assert_eq!(
                n,
                normal as usize,
                "{engine}: {} got {n} of {normal} frames from {} (kernel drops {kernel})",
                callsigns[i],
                callsigns[usize::from(j)]
            );
        }
    }
    // The fast station: the same frames reach every other station, about
    // burst + rate x duration of them, the first ones in full.
    let passed: Vec<&HashSet<u32>> = (0..3).map(|i| &got[i].seqs[&3]).collect();
    assert!(
        passed.windows(2).all(|w| w[0] == w[1]),
        "{engine}: receivers disagree on which fast frames passed"
    );
    let admitted = passed[0].len() as u64;
    eprintln!("{engine}: {admitted} of {fast} fast frames passed in {fast_took:.2} s");
    let lo = (f64::from(LIMIT) * (1.0 + fast_took) * 0.9) as u64;
    let hi = (f64::from(LIMIT) * (1.0 + fast_took + 0.5)) as u64 + 10;
    assert!(
        (lo..=hi).contains(&admitted),
        "{engine}: {admitted} of {fast} fast frames passed in {fast_took:.2} s; \
         want {lo}..={hi} (limit {LIMIT}/s, burst {LIMIT})"
    );
    assert!(
        (0..LIMIT - 5).all(|q| passed[0].contains(&q)),
        "{engine}: the burst did not pass whole"
    );
    // The excess is counted as rate-limited, exactly (nothing else was
    // dropped, and only the fast station was limited).
    let delta = |key: &str| drops(&end, key) - drops(&base, key);
    assert_eq!(kernel, 0, "{engine}: kernel drops at {}/s?", fast / 4);
    assert_eq!(
        delta("rate_limited"),
        u64::from(fast) - admitted,
        "{engine}: rate_limited"
    );
    for key in end.workers[0].drops.keys() {
        if key != "rate_limited" {
            assert_eq!(delta(key), 0, "{engine}: unexpected drops: {key}");
        }
    }
    let f = final_stats(&relay.stop());
    assert_eq!(f["rate_limited"], drops(&end, "rate_limited"), "{engine}");
    assert_eq!(f["active_stations"], 4, "{engine}");
}

#[test]
fn rate_limited_station_leaves_others_untouched() {
    for engine in ENGINES {
        rate_limit_scenario(engine);
    }
}

// ------------------------------------------------------------------ test 3

fn malformed(o: Outcome) -> String {
    match o {
        Outcome::Error {
            code: ErrorCode::Malformed,
            message,
        } => message,
        other => panic!("expected a malformed error, got {other:?}"),
    }
}

fn command_channel_scenario(engine: &str) {
    let Some(relay) = start(engine, &["--workers", "1"]) else {
        return;
    };
    let pid = relay.pid();
    let mib = 1 << 20;

    // A 1 MiB first line is no hello: refused and closed; the next
    // connection is served.
    let mut c = Control::connect_raw(&relay.socket);
    let mut junk = vec![b'x'; mib];
    junk.push(b'\n');
    c.raw(&junk);
    assert!(
        matches!(c.read_msg(), Some(RelayMsg::Refused { .. })),
        "{engine}"
    );
    assert_eq!(c.read_msg(), None, "{engine}: connection not closed");
    // Wrong field types in the hello: refused too.
    let mut c = Control::connect_raw(&relay.socket);
    c.raw(b"{\"type\":\"hello\",\"version\":\"1\",\"role\":\"control\",\"agent\":7}\n");
    assert!(
        matches!(c.read_msg(), Some(RelayMsg::Refused { .. })),
        "{engine}"
    );
    assert_eq!(c.read_msg(), None);

    let mut c = Control::connect(&relay.socket, Role::Control);
    // Unknown message type (its id is salvaged for the reply).
    c.raw(b"{\"type\":\"subscribe\",\"id\":5,\"topic\":\"all\"}\n");
    malformed(c.reply(5));
    // Wrong field types.
    for (line, id) in [
        (
            &b"{\"type\":\"request\",\"id\":\"7\",\"command\":{\"op\":\"snapshot\"}}"[..],
            0,
        ),
        (b"{\"type\":\"request\",\"id\":-7,\"command\":{\"op\":\"snapshot\"}}", 0),
        (b"{\"type\":\"request\",\"id\":8,\"command\":\"snapshot\"}", 8),
        (
            b"{\"type\":\"request\",\"id\":9,\"command\":{\"op\":\"allow_user\",\"user\":\"one\",\"ip\":\"127.0.0.2\"}}",
            9,
        ),
        (
            b"{\"type\":\"request\",\"id\":10,\"command\":{\"op\":\"allow_user\",\"user\":1,\"ip\":42}}",
            10,
        ),
        (
            b"{\"type\":\"request\",\"id\":11,\"command\":{\"op\":\"allow_user\",\"user\":0,\"ip\":\"127.0.0.2\"}}",
            11,
        ),
        (
            b"{\"type\":\"request\",\"id\":12,\"command\":{\"op\":\"set_limits\",\"bandwidth_mbps\":-1}}",
            12,
        ),
        (
            b"{\"type\":\"request\",\"id\":13,\"command\":{\"op\":\"install_call\",\"a\":1,\"b\":[2]}}",
            13,
        ),
        (b"{\"type\":\"request\",\"id\":14}", 14),
        // Not an object, not UTF-8, trailing input.
        (b"[]", 0),
        (b"null", 0),
        (b"42", 0),
        (b"\"request\"", 0),
        (b"{\"type\":\"request\",\"id\":15,\"command\":{\"op\":\"snap\xffshot\"}}", 0),
        (
            b"{\"type\":\"request\",\"id\":16,\"command\":{\"op\":\"snapshot\"}} trailing",
            0,
        ),
    ] {
        let mut l = line.to_vec();
        l.push(b'\n');
        c.raw(&l);
        let o = c.reply(id);
        assert!(
            matches!(
                o,
                Outcome::Error {
                    code: ErrorCode::Malformed,
                    ..
                }
            ),
            "{engine}: {:?} -> {o:?}",
            String::from_utf8_lossy(line)
        );
    }
    // Right types, value out of range: a validation error, not a decode one.
    c.raw(b"{\"type\":\"request\",\"id\":17,\"command\":{\"op\":\"set_limits\",\"bandwidth_mbps\":18446744073709551615}}\n");
    assert!(matches!(
        c.reply(17),
        Outcome::Error {
            code: ErrorCode::Invalid,
            ..
        }
    ));
    // Blank lines get no reply: the next reply answers the next request.
    c.raw(b"\n   \n\t\r\n");
    assert_eq!(c.snapshot(), State::default(), "{engine}");

    // 1 MiB lines (the limit is 16 MiB, MAX_LINE_LEN): junk, and nesting
    // bombs that would overflow a recursive parser's stack. Each gets its
    // error; repeated, they do not pile up in memory.
    let mut bomb = vec![b'['; mib];
    bomb.push(b'\n');
    let mut nested = b"{\"type\":\"request\",\"id\":19,\"command\":".to_vec();
    nested.extend(std::iter::repeat_n(b"{\"a\":[".iter().copied(), mib / 6).flatten());
    nested.push(b'\n');
    let mut rss_warm = 0;
    for round in 0..6 {
        if round == 1 {
            rss_warm = rss_kib(pid);
        }
        for line in [&junk, &bomb, &nested] {
            c.raw(line);
            malformed(c.reply(0));
        }
    }
    let rss_junk = rss_kib(pid);
    eprintln!(
        "{engine}: VmRSS {rss_warm} KiB after one round of 1 MiB junk, {rss_junk} after five more"
    );
    assert!(
        rss_junk <= rss_warm + 2 * 1024,
        "{engine}: VmRSS grew from {rss_warm} KiB to {rss_junk} KiB over 1 MiB junk lines"
    );

    // A valid line over 1 MiB: a full state of 16,000 users is accepted;
    // installing and clearing it again does not grow the relay either.
    let state = State {
        users: (1..=16_000u64)
            .map(|u| UserEntry {
                user: uid(u),
                ip: IpAddr::from([10, (u >> 16) as u8, (u >> 8) as u8, u as u8]),
                token: Some(format!("{u:032x}")),
                voice: None,
            })
            .collect(),
        calls: (0..100u64)
            .map(|k| CallEntry {
                a: uid(2 * k + 1),
                b: uid(2 * k + 2),
            })
            .collect(),
    };
    let line = whelm_shared::channel::encode(&whelm_shared::channel::ClientMsg::Request {
        id: 18,
        command: Command::ReplaceAll(state.clone()),
    });
    assert!(line.len() > mib, "{}", line.len());
    let mut rss_state = 0;
    // The allocator settles over the first rounds (glibc raises its mmap
    // threshold after freeing the first large blocks, so a later block of
    // that size stays in the heap: one step of about 3 MiB, seen after the
    // first or third round). A leak would grow with every state, which the
    // eight rounds after the warm-up show well above the slack.
    for round in 0..12 {
        if round == 4 {
            rss_state = rss_kib(pid);
        }
        c.raw(&line);
        assert_eq!(c.reply(18), Outcome::Ok, "{engine}");
        assert_eq!(c.snapshot(), state, "{engine}");
        c.ok(Command::ReplaceAll(State::default()));
    }
    let rss_end = rss_kib(pid);
    eprintln!(
        "{engine}: VmRSS {rss_state} KiB after four 16,000-user states, {rss_end} after eight more"
    );
    assert!(
        rss_end <= rss_state + 4 * 1024,
        "{engine}: VmRSS grew from {rss_state} KiB to {rss_end} KiB over repeated states"
    );

    // Still usable: a change and a read succeed.
    c.ok(Command::AllowUser(user_entry(1)));
    assert_eq!(c.snapshot().users.len(), 1);
    assert_eq!(c.counters().workers.len(), 1);
    // Another connection works alongside.
    let mut op = Control::connect(&relay.socket, Role::Operator);
    assert_eq!(op.snapshot().users.len(), 1);
    let err = relay.stop();
    assert!(!err.contains("panicked"), "{engine}: {err}");
}

#[test]
fn command_channel_survives_malformed_and_huge_lines() {
    for engine in ENGINES {
        command_channel_scenario(engine);
    }
}
