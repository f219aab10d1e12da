//! The real `whelm-bench station` binary over loopback sockets, against the
//! reference station vectors (shared/tests/vectors/ovp-frames.json), in
//! both directions.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use whelm_shared::ovp::{self, HEADER_LEN};
use whelm_shared::station::{Message, Reassembler};

struct Vector {
    kind: String,
    callsign: String,
    index: u64,
    of: u64,
    bytes: Vec<u8>,
    text: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/tests/vectors/ovp-frames.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Vector {
            kind: f["kind"].as_str().unwrap().to_string(),
            callsign: f["callsign"].as_str().unwrap().to_string(),
            index: f["index"].as_u64().unwrap(),
            of: f["of"].as_u64().unwrap(),
            bytes: hex(f["hex"].as_str().unwrap()),
            text: f.get("text").and_then(|t| t.as_str()).map(String::from),
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A station process, killed on drop.
struct Station {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_station(args: &[&str]) -> Station {
    let mut child = Command::new(env!("CARGO_BIN_EXE_whelm-bench"))
        .arg("station")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // First stderr line: "station CALL on ADDR, server ...".
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
    });
    Station { child, addr }
}

/// Closes stdin and waits (bounded) for the exit; returns stdout.
fn finish(mut s: Station) -> String {
    drop(s.child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "station exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "station did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    s.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

fn server_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn station_shows_every_reference_message() {
    let server = server_socket();
    let server_addr = server.local_addr().unwrap().to_string();
    let station = start_station(&[
        "N0CALL",
        "--server",
        &server_addr,
        "--bind",
        "127.0.0.1:0",
        "--linger-ms",
        "300",
    ]);
    let mut want = Vec::new();
    for v in vectors() {
        server.send_to(&v.bytes, station.addr).unwrap();
        // Paced a little, like a station on air.
        std::thread::sleep(Duration::from_millis(2));
        if v.index + 1 != v.of {
            continue;
        }
        match v.kind.as_str() {
            "text" => want.push(format!("[{}]: {}", v.callsign, v.text.unwrap())),
            "control" => want.push(format!("[{}] * {}", v.callsign, v.text.unwrap())),
            _ => {}
        }
    }
    // Also garbage, which must be dropped silently.
    server
        .send_to(b"GET / HTTP/1.1\r\n\r\n", station.addr)
        .unwrap();
    let out = finish(station);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("[W1AW]: hello everyone\n"));
}

#[test]
fn station_frames_match_the_reference_bytes() {
    let server = server_socket();
    let server_addr = server.local_addr().unwrap().to_string();
    // The W1AW text vectors use inner source port 49961 and ids 0xb7f0..
    let mut station = start_station(&[
        "W1AW",
        "--server",
        &server_addr,
        "--bind",
        "127.0.0.1:0",
        "--linger-ms",
        "50",
        "--inner-src-port",
        "49961",
        "--inner-ident",
        "0xb7f0",
    ]);
    let vs = vectors();
    let texts: Vec<&Vector> = vs
        .iter()
        .filter(|v| v.callsign == "W1AW" && v.kind == "text")
        .collect();
    let mut stdin = station.child.stdin.take().unwrap();
    let mut sent_texts = Vec::new();
    for v in texts.iter().filter(|v| v.index == 0) {
        let t = v.text.clone().unwrap();
        writeln!(stdin, "{t}").unwrap();
        sent_texts.push(t);
    }
    writeln!(stdin, "/ptt 3").unwrap();
    drop(stdin);

    let mut buf = [0u8; 2048];
    let mut frames = Vec::new();
    // 5 text frames, PTT_START, 3 voice, PTT_STOP.
    while frames.len() < 10 {
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(from, station.addr);
        frames.push(buf[..n].to_vec());
    }
    for (got, want) in frames.iter().zip(&texts) {
        assert_eq!(got, &want.bytes, "text frames are the reference's bytes");
    }
    let mut rx = Reassembler::new();
    let mut messages = Vec::new();
    for f in &frames {
        assert_eq!(f.len(), ovp::FRAME_LEN);
        let h = ovp::validate(f).unwrap();
        assert_eq!(h.station().to_string(), "W1AW");
        for p in rx.push(&f[HEADER_LEN..]) {
            messages.push(p.unwrap().message);
        }
    }
    assert_eq!(messages.len(), 3 + 1 + 3 + 1);
    for (m, t) in messages.iter().zip(&sent_texts) {
        assert_eq!(m, &Message::Text(t.clone()));
    }
    assert_eq!(messages[3], Message::Control("PTT_START".into()));
    for (i, m) in messages[4..7].iter().enumerate() {
        let Message::Voice { rtp, opus } = m else {
            panic!("{m:?}")
        };
        assert_eq!(rtp.marker, i == 0);
        assert_eq!(opus.len(), 80);
    }
    assert_eq!(messages[7], Message::Control("PTT_STOP".into()));
    // The control frames keep the reference's layout: TOS 0xC0 and the
    // same header bytes as the vector apart from the id and checksums.
    let start = vs
        .iter()
        .find(|v| v.callsign == "W1AW" && v.text.as_deref() == Some("PTT_START"))
        .unwrap();
    assert_eq!(frames[5][..HEADER_LEN], start.bytes[..HEADER_LEN]);
    assert_eq!(frames[5].len(), start.bytes.len());
    finish(station);
}
