//! Loopback tests of the real `whelm-relay` binary: the Opulent Voice
//! conference on both engines (PROTOCOLS.md section 3).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{
    Control, ENGINES, Station, drops, fields, final_stats, is_sync, start, sync, vector_frames,
};
use whelm_shared::channel::{Command, Outcome, Role};
use whelm_shared::ovp::HEADER_LEN;

/// Own frames of station `i`: sizes from a bare header to 1500 bytes.
fn own_frames(s: &Station, i: usize, count: usize) -> Vec<Vec<u8>> {
    [12usize, 134, 400, 1500, 134, 60]
        .iter()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(k, &size)| {
            let mut p: Vec<u8> = (0..size - HEADER_LEN)
                .map(|j| (i * 31 + k * 7 + j) as u8)
                .collect();
            if let Some(b) = p.first_mut() {
                *b = 0xEE; // never "SYNC"
            }
            s.frame(&p)
        })
        .collect()
}

/// `n` stations, each sending the vector frames of its callsign (the first
/// three) and frames of its own, in interleaved rounds. Every other station
/// must receive every frame byte-identical and in order; nobody receives its
/// own. Returns the final stats.
fn conference(engine: &str, n: usize, reply_to: &str, workers: &str) {
    conference_with(engine, n, reply_to, workers, &[]);
}

/// Like [`conference`] on two workers, asserting that both workers carried
/// traffic. `SO_REUSEPORT` hashes each source to one worker, so all ten land
/// on one about once in 512 runs: such a run proves nothing about the
/// spread (its forwarding was still checked in full) and is repeated with a
/// fresh relay (new port, so new hashes), at most three times.
fn conference_two_workers(engine: &str, n: usize, reply_to: &str) {
    for attempt in 1..=3 {
        let st = conference_with(engine, n, reply_to, "2", &[]);
        match st.get("workers_spread") {
            None => return, // engine skipped
            Some(1) => return,
            Some(_) => eprintln!("{engine}: attempt {attempt}: all sources on one worker; again"),
        }
    }
    panic!("{engine}: all {n} sources hashed to one worker in three runs");
}

fn conference_with(
    engine: &str,
    n: usize,
    reply_to: &str,
    workers: &str,
    extra: &[&str],
) -> std::collections::HashMap<String, u64> {
    let mut args = vec!["--reply-to", reply_to, "--workers", workers];
    args.extend_from_slice(extra);
    let Some(relay) = start(engine, &args) else {
        return HashMap::new();
    };
    let port = relay.ovp.port();
    let vectors = vector_frames();
    let mut stations = Vec::new();
    let mut plans: Vec<Vec<Vec<u8>>> = Vec::new();
    for i in 0..n {
        let cs = match vectors.get(i) {
            Some((cs, _)) => cs.clone(),
            None => format!("T{i}EST"),
        };
        let bind = if reply_to == "listen-port" {
            format!("127.0.0.{}:{port}", i + 2)
        } else {
            "127.0.0.1:0".to_string()
        };
        let s = Station::bind(&cs, &bind);
        let mut plan = vectors.get(i).map(|(_, f)| f.clone()).unwrap_or_default();
        plan.extend(own_frames(&s, i, 12));
        stations.push(s);
        plans.push(plan);
    }
    let refs: Vec<&Station> = stations.iter().collect();
    sync(&refs, relay.ovp);

    let total: usize = plans.iter().map(Vec::len).sum();
    let receivers: Vec<_> = stations
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sock = s.sock.try_clone().unwrap();
            let expect = total - plans[i].len();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                while got.len() < expect && Instant::now() < deadline {
                    if let Ok((len, _)) = sock.recv_from(&mut buf)
                        && !is_sync(&buf[..len])
                    {
                        got.push(buf[..len].to_vec());
                    }
                }
                // Anything extra (a duplicate, an own frame) shows up here.
                let extra_deadline = Instant::now() + Duration::from_millis(300);
                while Instant::now() < extra_deadline {
                    if let Ok((len, _)) = sock.recv_from(&mut buf)
                        && !is_sync(&buf[..len])
                    {
                        got.push(buf[..len].to_vec());
                    }
                }
                got
            })
        })
        .collect();
    let rounds = plans.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        for (s, plan) in stations.iter().zip(&plans) {
            if let Some(f) = plan.get(r) {
                s.send(relay.ovp, f);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, h) in receivers.into_iter().enumerate() {
        let got = h.join().unwrap();
        let mut by_sender: HashMap<[u8; 6], Vec<Vec<u8>>> = HashMap::new();
        for f in got {
            by_sender
                .entry(f[..6].try_into().unwrap())
                .or_default()
                .push(f);
        }
        let own: [u8; 6] = stations[i].id.to_bytes();
        assert!(
            !by_sender.contains_key(&own),
            "{engine}: station {} received its own frames",
            stations[i].callsign
        );
        for (j, s) in stations.iter().enumerate() {
            if i == j {
                continue;
            }
            let got = by_sender.remove(&s.id.to_bytes()).unwrap_or_default();
            assert_eq!(
                got.len(),
                plans[j].len(),
                "{engine} {reply_to}: {} got {} of {} frames from {}",
                stations[i].callsign,
                got.len(),
                plans[j].len(),
                s.callsign
            );
            assert!(
                got == plans[j],
                "{engine}: frames from {} to {} differ or are out of order",
                s.callsign,
                stations[i].callsign
            );
        }
        assert!(by_sender.is_empty(), "frames from unknown senders");
    }
    let err = relay.stop();
    let mut st = final_stats(&err);
    assert_eq!(st["decode_errors"], 0);
    assert_eq!(st["tx_errors"], 0);
    assert_eq!(st["active_stations"], n as u64);
    assert!(st["frames_received"] >= total as u64);
    assert!(st["frames_forwarded"] >= (total * (n - 1)) as u64);
    for s in &stations {
        assert!(
            err.contains(&format!("NEW STATION: {} at 127.0.0.", s.callsign)),
            "no NEW STATION line for {}",
            s.callsign
        );
    }
    if workers == "2" {
        let w0 = fields(&err, "worker id=0")["rx_packets"];
        let w1 = fields(&err, "worker id=1")["rx_packets"];
        assert_eq!(w0 + w1, st["rx_packets"]);
        st.insert("workers_spread".into(), u64::from(w0 > 0 && w1 > 0));
    }
    st
}

#[test]
fn three_stations_listen_port() {
    for e in ENGINES {
        conference(e, 3, "listen-port", "1");
    }
}

#[test]
fn three_stations_source() {
    for e in ENGINES {
        conference(e, 3, "source", "1");
    }
}

#[test]
fn ten_stations_listen_port_two_workers() {
    for e in ENGINES {
        conference_two_workers(e, 10, "listen-port");
    }
}

#[test]
fn ten_stations_source_two_workers() {
    for e in ENGINES {
        conference_two_workers(e, 10, "source");
    }
}

/// Sixteen receive buffers (eight in the ring at a time, eight spare) for
/// ten stations whose frames a 1 ms coalesced wait gathers: the ring runs
/// dry, the multishot receive ends with ENOBUFS, the ring is refilled from
/// the spares and the receive re-armed; nothing is lost (datagrams wait in
/// the socket meanwhile) and the worker survives.
#[test]
fn tiny_buffer_ring_is_rearmed_without_loss() {
    let extra = [
        "--buffers",
        "16",
        "--coalesce-above",
        "1",
        "--coalesce-us",
        "1000",
    ];
    let st = conference_with("uring", 10, "source", "1", &extra);
    if st.is_empty() {
        return; // engine skipped
    }
    let n = st.get("recv_enobufs").copied().unwrap_or(0);
    eprintln!("recv_enobufs={n} recv_rearms={:?}", st.get("recv_rearms"));
    assert!(
        n > 0,
        "the ring never ran dry, so the refill went untested: {st:?}"
    );
}

/// Wake-up coalescing switched on at any rate (the default threshold is
/// 50,000 datagrams/s, more than a test sends): every frame still arrives,
/// byte-identical and in order, and the workers did coalesce.
#[test]
fn coalesced_wakeups_lose_nothing() {
    for e in ENGINES {
        let extra = ["--coalesce-above", "1", "--coalesce-us", "1000"];
        let st = conference_with(e, 10, "source", "1", &extra);
        if st.is_empty() {
            continue; // engine skipped
        }
        assert!(st["coalesced_waits"] > 0, "{e}: no coalesced wait: {st:?}");
    }
}

#[test]
fn garbage_dropped_and_counted_while_traffic_flows() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--reply-to", "source", "--workers", "1"]) else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("KB5MU-11", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
        let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec();
        let dns = vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 7, b'e', b'x',
            b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1,
        ];
        let short = b"hello".to_vec();
        let mut wrong_token = a.frame(b"payload");
        wrong_token[7] = 0;
        let mut bad_b40 = vec![0, 0, 0, 0, 0, 40, 0xBB, 0xAA, 0xDD, 0, 0, 0];
        bad_b40.extend_from_slice(&[1; 20]);
        let mut zero = vec![0, 0, 0, 0, 0, 0, 0xBB, 0xAA, 0xDD, 0, 0, 0];
        zero.extend_from_slice(&[1; 122]);
        let garbage = [http, dns, short, wrong_token, bad_b40, zero];
        let frames: Vec<Vec<u8>> = (0..30u8).map(|k| a.frame(&[0xEE, k])).collect();
        for (k, f) in frames.iter().enumerate() {
            a.send(relay.ovp, f);
            junk.send_to(&garbage[k % garbage.len()], relay.ovp)
                .unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut got = Vec::new();
        while got.len() < frames.len() {
            match b.recv(Duration::from_secs(10)) {
                Some(f) if !is_sync(&f) => got.push(f),
                Some(_) => {}
                None => break,
            }
        }
        assert!(got == frames, "{engine}: valid frames changed by garbage");
        assert!(
            a.recv(Duration::from_millis(300)).is_none(),
            "garbage forwarded"
        );
        let err = relay.stop();
        let st = final_stats(&err);
        assert_eq!(st["decode_errors"], 30, "{engine}");
        // The alarm (half the datagrams were garbage) counts as the stats do.
        let alarm = format!(
            "decode errors exceed 10% of the datagrams to the OVP port: decode_errors=30 \
             frames_received={} (valid)",
            st["frames_received"]
        );
        assert!(err.contains(&alarm), "{engine}: {err}");
        assert_eq!(st["drop_too_short"], 5);
        assert_eq!(st["drop_bad_token"], 15);
        assert_eq!(st["drop_bad_station_id"], 10);
        assert_eq!(st["active_stations"], 2);
    }
}

#[test]
fn station_timeout_on_idle_server() {
    for engine in ENGINES {
        let Some(relay) = start(
            engine,
            &["--reply-to", "source", "-t", "3", "--allow-short-timeout"],
        ) else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        // Nothing arrives for a while: the idle server must still expire both.
        let deadline = Instant::now() + Duration::from_secs(30);
        while relay.stderr().matches("STATION TIMED OUT").count() < 2 {
            assert!(Instant::now() < deadline, "no timeout:\n{}", relay.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        // Give the workers time to apply the removal (one tick).
        std::thread::sleep(Duration::from_millis(500));
        a.send(relay.ovp, &a.frame(&[0xEE, 1]));
        let mut late = None;
        while let Some(f) = b.recv(Duration::from_millis(1000)) {
            if !is_sync(&f) {
                late = Some(f);
                break;
            }
        }
        assert!(
            late.is_none(),
            "{engine}: a timed-out station still receives {late:?}\n{}",
            relay.stderr()
        );
        let err = relay.stop();
        assert!(err.contains("STATION TIMED OUT: K0K at 127.0.0.1:"));
        let st = final_stats(&err);
        assert_eq!(st["timed_out"], 2);
        assert_eq!(st["active_stations"], 1);
    }
}

/// Thirty callsigns each move to a second socket and straight back. Every
/// frame is forwarded; the move back comes within the hold (one second)
/// and moves nothing, so there are 30 moves, not 60. Of those, 20
/// `STATION MOVED` lines are logged in the 10 s window and the other 10 are
/// reported as a count (here at shutdown).
#[test]
fn station_moves_are_held_and_logged_within_a_budget() {
    const STATIONS: usize = 30;
    for engine in ENGINES {
        let args = [
            "--reply-to",
            "source",
            "--workers",
            "1",
            "--station-rate",
            "0",
            "--max-stations-per-ip",
            "64",
        ];
        let Some(relay) = start(engine, &args) else {
            continue;
        };
        let callsigns: Vec<String> = (0..STATIONS).map(|i| format!("M{i}")).collect();
        let first: Vec<Station> = callsigns
            .iter()
            .map(|cs| Station::bind(cs, "127.0.0.1:0"))
            .collect();
        let second: Vec<Station> = callsigns
            .iter()
            .map(|cs| Station::bind(cs, "127.0.0.1:0"))
            .collect();
        let listener = Station::bind("K0K", "127.0.0.1:0");
        let mut all: Vec<&Station> = first.iter().collect();
        all.push(&listener);
        sync(&all, relay.ovp);
        for (i, from) in second.iter().chain(first.iter()).enumerate() {
            let f = from.frame(&[0xEE, i as u8]);
            from.send(relay.ovp, &f);
            let got = loop {
                match listener.recv(Duration::from_secs(10)) {
                    Some(g) if is_sync(&g) => continue,
                    g => break g,
                }
            };
            assert_eq!(
                got.as_deref(),
                Some(&f[..]),
                "{engine}: frame {i}\n{}",
                relay.stderr()
            );
        }
        // The second sockets hold the callsigns: the moves back were held.
        let mut ctl = Control::connect(&relay.socket, Role::Operator);
        let Outcome::Stations { stations } = ctl.request(Command::Stations) else {
            panic!("{engine}: no station list");
        };
        for (cs, s) in callsigns.iter().zip(&second) {
            let at = stations.iter().find(|x| &x.callsign == cs).map(|x| x.addr);
            assert_eq!(at, Some(s.sock.local_addr().unwrap()), "{engine}: {cs}");
        }
        drop(ctl);
        let err = relay.stop();
        let logged = err.matches("STATION MOVED: M").count();
        let unlogged: usize = err
            .lines()
            .filter_map(|l| l.split("STATION MOVED: ").nth(1))
            .filter_map(|r| r.split_once(" more moves not logged"))
            .map(|(n, _)| n.parse::<usize>().unwrap())
            .sum();
        assert_eq!(
            (logged, unlogged),
            (20, STATIONS - 20),
            "{engine}: 20 lines in the window, the rest counted\n{err}"
        );
    }
}

#[test]
fn address_change_is_followed() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--reply-to", "source", "--workers", "1"]) else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        let a2 = Station::bind("W1AW", "127.0.0.1:0");
        let moved = a2.frame(&[0xEE, 2]);
        a2.send(relay.ovp, &moved);
        assert_eq!(b.recv(Duration::from_secs(10)).as_deref(), Some(&moved[..]));
        let reply = b.frame(&[0xEE, 3]);
        b.send(relay.ovp, &reply);
        assert_eq!(
            a2.recv(Duration::from_secs(10)).as_deref(),
            Some(&reply[..])
        );
        assert!(
            a.recv(Duration::from_millis(500)).is_none(),
            "old address still served"
        );
        let err = relay.stop();
        let old = a.sock.local_addr().unwrap();
        let new = a2.sock.local_addr().unwrap();
        assert!(
            err.contains(&format!("STATION MOVED: W1AW from {old} to {new}")),
            "{err}"
        );
        assert_eq!(final_stats(&err)["active_stations"], 2);
    }
}

#[test]
fn rate_limit_drops_a_flood() {
    for engine in ENGINES {
        let Some(relay) = start(
            engine,
            &[
                "--reply-to",
                "source",
                "--station-rate",
                "10",
                "--station-burst",
                "5",
            ],
        ) else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        std::thread::sleep(Duration::from_millis(800)); // refill the bucket
        let frames: Vec<Vec<u8>> = (0..50u8).map(|k| a.frame(&[0xEE, k])).collect();
        for f in &frames {
            a.send(relay.ovp, f);
        }
        let mut got = Vec::new();
        while let Some(f) = b.recv(Duration::from_millis(800)) {
            if !is_sync(&f) {
                got.push(f);
            }
        }
        assert!(
            (5..=10).contains(&got.len()),
            "{engine}: {} of 50 passed a 10/s limit with burst 5",
            got.len()
        );
        assert_eq!(
            got[..],
            frames[..got.len()],
            "the first frames pass, in order"
        );
        let st = final_stats(&relay.stop());
        assert!(st["rate_limited"] >= 50 - got.len() as u64, "{st:?}");
    }
}

#[test]
fn deny_list() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--reply-to", "source", "--deny", "K0K,VE7ABC/W1"])
        else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("KB5MU-11", "127.0.0.1:0");
        let denied = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b], relay.ovp);
        for k in 0..5u8 {
            denied.send(relay.ovp, &denied.frame(&[0xEE, k]));
        }
        let f = a.frame(&[0xEE, 9]);
        a.send(relay.ovp, &f);
        assert_eq!(b.recv(Duration::from_secs(10)).as_deref(), Some(&f[..]));
        assert!(
            b.recv(Duration::from_millis(300)).is_none(),
            "denied frame forwarded"
        );
        assert!(
            denied.recv(Duration::from_millis(300)).is_none(),
            "denied station served"
        );
        let err = relay.stop();
        assert!(!err.contains("NEW STATION: K0K"));
        let st = final_stats(&err);
        assert_eq!(st["drop_denied"], 5);
        assert_eq!(st["list_drops"], 5);
        assert_eq!(st["active_stations"], 2);
    }
}

#[test]
fn voice_port_drops_unknown_sources() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &[]) else {
            continue;
        };
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for _ in 0..4 {
            s.send_to(b"HELLO 1", relay.voice).unwrap();
        }
        for _ in 0..3 {
            s.send_to(b"opus", relay.voice).unwrap();
        }
        let mut buf = [0u8; 64];
        assert!(s.recv_from(&mut buf).is_err());
        let st = final_stats(&relay.stop());
        // No user is allowed: HELLOs are denied, the rest unknown sources.
        assert_eq!(st["hello_denied"], 4, "{engine}");
        assert_eq!(st["voice_hellos"], 4, "{engine}");
        assert_eq!(st["drop_unknown_source"], 3, "{engine}");
        assert_eq!(st["tx_packets"], 0);
    }
}

#[test]
fn dual_stack_bind() {
    for engine in ENGINES {
        let args = [
            "--bind",
            "::",
            "-p",
            "0",
            "--voice-port",
            "0",
            "--engine",
            engine,
            "--reply-to",
            "source",
        ];
        let relay = match common::try_start(&args) {
            common::Start::Ok(r) => r,
            common::Start::Failed(_, err)
                if engine == "uring"
                    && err.contains("io_uring setup failed")
                    && std::env::var("WHELM_TEST_REQUIRE_URING").as_deref() != Ok("1") =>
            {
                eprintln!("NOTICE: skipping uring: {err}");
                continue;
            }
            common::Start::Failed(c, err) => panic!("{c:?}: {err}"),
        };
        assert!(relay.ovp.is_ipv6(), "{}", relay.ready_line);
        let target = format!("127.0.0.1:{}", relay.ovp.port()).parse().unwrap();
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("K0K", "127.0.0.1:0");
        sync(&[&a, &b], target);
        let f = a.frame(&[0xEE; 1500 - HEADER_LEN]);
        a.send(target, &f);
        assert_eq!(b.recv(Duration::from_secs(10)).as_deref(), Some(&f[..]));
        let err = relay.stop();
        assert!(err.contains("NEW STATION: W1AW at 127.0.0.1:"), "{err}");
    }
}

#[test]
fn bind_failure_exits_nonzero_naming_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    match common::try_start(&["--bind", "127.0.0.1", "-p", &port, "--voice-port", "0"]) {
        common::Start::Ok(_) => panic!("bound a taken port"),
        common::Start::Failed(code, err) => {
            assert!(matches!(code, Some(c) if c != 0), "{code:?}");
            assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        }
    }
}

#[test]
fn timeout_below_minimum_is_refused() {
    match common::try_start(&["-p", "0", "--voice-port", "0", "-t", "30"]) {
        common::Start::Ok(_) => panic!("accepted -t 30"),
        common::Start::Failed(code, err) => {
            assert!(matches!(code, Some(c) if c != 0));
            assert!(err.contains("minimum of 60"), "{err}");
        }
    }
}

/// In the default `--reply-to listen-port` mode, a station on the relay's
/// own host would be sent the conference at the relay's own address, and
/// every copy would come back as a frame of that station from there: a
/// loop without end with `--station-rate 0`, and the station's address
/// moved onto the relay. Such a station is not registered: its frames are
/// dropped and counted as `own_address`, the relay sends nothing, and the
/// log says why and what to use instead.
#[test]
fn a_station_on_the_relays_host_cannot_make_it_send_to_itself() {
    for engine in ENGINES {
        let Some(relay) = start(engine, &["--station-rate", "0", "--workers", "1"]) else {
            continue;
        };
        let a = Station::bind("W1AW", "127.0.0.1:0");
        let b = Station::bind("KB5MU-11", "127.0.0.1:0");
        for i in 0..3u8 {
            a.send(relay.ovp, &a.frame(&[i]));
            b.send(relay.ovp, &b.frame(&[i]));
        }
        let mut ctl = Control::connect(&relay.socket, Role::Operator);
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            let c = ctl.counters();
            if drops(&c, "own_address") >= 6 || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(drops(&c, "own_address"), 6, "{engine}: {c:?}");
        // A little later nothing more has come in or gone out: no loop.
        std::thread::sleep(Duration::from_millis(300));
        let c = ctl.counters();
        let (rx, tx): (u64, u64) = c
            .workers
            .iter()
            .fold((0, 0), |(r, t), w| (r + w.packets_in, t + w.packets_out));
        assert_eq!((rx, tx), (6, 0), "{engine}: {c:?}");
        assert_eq!(c.stations, 0, "{engine}");
        assert!(a.recv(Duration::from_millis(100)).is_none());
        assert!(b.recv(Duration::from_millis(100)).is_none());
        drop(ctl);
        let port = relay.ovp.port();
        let err = relay.stop();
        let own =
            format!("the conference would be sent to 127.0.0.1:{port}, the relay's own address");
        assert!(err.contains(&own), "{engine}: {err}");
        assert!(err.contains("use --reply-to source"), "{engine}: {err}");
        assert_eq!(final_stats(&err)["drop_own_address"], 6, "{engine}");
    }
}
