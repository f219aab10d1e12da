//! The reference implementations' test data (copied from the design folder
//! into `tests/vectors/`, so a clean clone is self-contained): every case
//! must hold, and altering a vector file makes these tests fail.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use serde_json::Value;
use whelm_shared::dm_channel_id;
use whelm_shared::ovp::{self, HEADER_LEN, StationId};
use whelm_shared::station::{self, Message, Packet, Reassembler};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn field<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("missing {k:?} in {v}"))
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    field(v, k)
        .as_str()
        .unwrap_or_else(|| panic!("{k:?} is not a string in {v}"))
}

#[test]
fn every_callsign_encodes_and_decodes() {
    let v = load("ovp-frames.json");
    let callsigns = field(&v, "callsigns").as_object().unwrap();
    assert_eq!(callsigns.len(), 9);
    for (cs, raw) in callsigns {
        let raw = u64::from_str_radix(raw.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        let id = StationId::encode(cs).unwrap();
        assert_eq!(id.raw(), raw, "{cs}");
        assert_eq!(StationId::from_raw(raw).unwrap().to_string(), *cs);
    }
}

#[test]
fn every_frame_validates_and_decodes_to_its_recorded_content() {
    let v = load("ovp-frames.json");
    let frames = field(&v, "frames").as_array().unwrap();
    assert_eq!(frames.len(), 27);
    let mut rx: std::collections::HashMap<StationId, Reassembler> = Default::default();
    let mut messages = 0;
    for (n, f) in frames.iter().enumerate() {
        let bytes = hex(str_of(f, "hex"));
        assert_eq!(bytes.len(), ovp::FRAME_LEN, "frame {n}");
        let header = ovp::validate(&bytes).unwrap_or_else(|e| panic!("frame {n}: {e}"));
        assert_eq!(
            header.station().to_string(),
            str_of(f, "callsign"),
            "frame {n}"
        );
        let got = rx
            .entry(header.station())
            .or_default()
            .push(&bytes[HEADER_LEN..]);
        let last = field(f, "index").as_u64() == field(f, "of").as_u64().map(|of| of - 1);
        if !last {
            assert!(got.is_empty(), "frame {n} is not the last of its message");
            continue;
        }
        assert_eq!(got.len(), 1, "frame {n} completes one message");
        let packet = got
            .into_iter()
            .next()
            .unwrap()
            .unwrap_or_else(|e| panic!("frame {n}: {e}"));
        match (str_of(f, "kind"), &packet.message) {
            ("text", Message::Text(t)) | ("control", Message::Control(t)) => {
                assert_eq!(t, str_of(f, "text"), "frame {n}")
            }
            ("voice", Message::Voice { opus, .. }) => {
                assert_eq!(*opus, hex(str_of(f, "opus_hex")), "frame {n}")
            }
            (kind, m) => panic!("frame {n}: kind {kind} decoded as {m:?}"),
        }
        messages += 1;
    }
    assert_eq!(messages, 21, "27 frames hold 21 messages");
    assert!(
        rx.values().all(|r| !r.has_pending()),
        "nothing left half-assembled"
    );
}

/// The other direction: our encoder, given the packet's addressing and
/// content, produces the reference's frames byte for byte.
#[test]
fn our_encoder_reproduces_every_message_exactly() {
    let v = load("ovp-frames.json");
    let frames = field(&v, "frames").as_array().unwrap();
    let mut i = 0;
    while i < frames.len() {
        let of = field(&frames[i], "of").as_u64().unwrap() as usize;
        let want: Vec<Vec<u8>> = frames[i..i + of]
            .iter()
            .map(|f| hex(str_of(f, "hex")))
            .collect();
        let station = ovp::validate(&want[0]).unwrap().station();
        let mut rx = Reassembler::new();
        let packet: Packet = want
            .iter()
            .flat_map(|f| rx.push(&f[HEADER_LEN..]))
            .next()
            .unwrap()
            .unwrap();
        let data = match &packet.message {
            Message::Text(t) | Message::Control(t) => t.as_bytes().to_vec(),
            Message::Voice { rtp, opus } => [&rtp.to_bytes()[..], opus].concat(),
            Message::Other { .. } => panic!("unexpected port"),
        };
        let ip = station::build_packet(&packet.addressing, &data).unwrap();
        let got = station::frames_for_packet(station, &ip);
        assert_eq!(got.len(), of, "frames for message at {i}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.as_slice(), w.as_slice(), "message at frame {i}");
        }
        i += of;
    }
}

#[test]
fn every_channel_id_case() {
    let v = load("channel-ids.json");
    let cases = field(&v, "cases").as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for c in cases {
        let a = field(c, "a").as_u64().unwrap();
        let b = field(c, "b").as_u64().unwrap();
        let want = field(c, "channel_id").as_u64().unwrap();
        assert_eq!(u64::from(dm_channel_id(a, b)), want, "{a}, {b}");
    }
}
