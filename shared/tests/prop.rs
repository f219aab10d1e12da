//! Property tests for every wire type: round trips, and no input that makes
//! a parser panic. Failing cases are saved under `tests/prop.proptest-regressions`
//! and committed.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod strategies;

use proptest::prelude::*;
use whelm_shared::channel::{self, ClientMsg, LineReader};
use whelm_shared::line::{Command, Reply};
use whelm_shared::ovp::{self, HEADER_LEN, StationId};
use whelm_shared::station::{self, Message, Outgoing, Reassembler};
use whelm_shared::{cobs, dm_channel_id};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn callsign_round_trip(cs in strategies::callsign()) {
        let id = StationId::encode(&cs).unwrap();
        prop_assert_eq!(id.to_string(), cs);
        prop_assert_eq!(StationId::from_bytes(id.to_bytes()), Ok(id));
    }

    #[test]
    fn every_valid_raw_id_round_trips(raw in 0u64..(1 << 48)) {
        if let Ok(id) = StationId::from_raw(raw) {
            prop_assert_eq!(StationId::encode(&id.to_string()).unwrap().raw(), raw);
        }
    }

    #[test]
    fn cobs_round_trip_and_no_zero(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut enc = Vec::new();
        cobs::encode(&data, &mut enc);
        prop_assert!(!enc.contains(&0));
        prop_assert!(enc.len() <= data.len() + data.len() / 254 + 1);
        prop_assert_eq!(cobs::decode(&enc).unwrap(), data);
    }

    #[test]
    fn text_of_any_length_reassembles(cs in strategies::callsign(), text in "\\PC{0,600}", seed: u32) {
        let id = StationId::encode(&cs).unwrap();
        let frames = Outgoing::new(id, seed).text(&text);
        let mut rx = Reassembler::new();
        let mut got = Vec::new();
        for f in &frames {
            prop_assert_eq!(ovp::validate(f).unwrap().station(), id);
            got.extend(rx.push(&f[HEADER_LEN..]));
        }
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].as_ref().unwrap().message, &Message::Text(text));
    }

    #[test]
    fn command_round_trip(cmd in strategies::command()) {
        let line = format!("{cmd}\r\n");
        prop_assert_eq!(Command::parse(line.as_bytes()), Ok(cmd));
    }

    #[test]
    fn reply_round_trip(reply in strategies::reply()) {
        let wire = reply.to_wire();
        prop_assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        prop_assert_eq!(Reply::parse(std::str::from_utf8(&wire).unwrap()), Ok(reply));
    }

    #[test]
    fn channel_id_is_symmetric_and_31_bit(a: u64, b: u64) {
        prop_assert_eq!(dm_channel_id(a, b), dm_channel_id(b, a));
        prop_assert!(dm_channel_id(a, b) <= 0x7FFF_FFFF);
    }

    #[test]
    fn channel_request_round_trip(msg in strategies::channel_request()) {
        let wire = channel::encode(&msg);
        prop_assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        prop_assert_eq!(channel::decode::<ClientMsg>(&wire).unwrap(), msg);
    }

    /// However a stream is cut into reads, the reader returns the same lines,
    /// none longer than its limit.
    #[test]
    fn line_reader_is_independent_of_read_sizes(
        lines in proptest::collection::vec("[a-z]{0,12}", 0..20),
        cuts in proptest::collection::vec(1usize..9, 1..10),
    ) {
        let stream: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
        let mut r = LineReader::with_limit(8);
        let mut got = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - at);
            r.extend(&stream[at..at + n]);
            at += n;
            i += 1;
            while let Some(l) = r.next_line() {
                got.push(l.map_err(|e| e.to_string()));
            }
        }
        let want: Vec<Result<Vec<u8>, String>> = lines
            .iter()
            .map(|l| if l.len() > 8 { Err("line longer than 16777216 bytes".to_string()) } else { Ok(l.clone().into_bytes()) })
            .collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            match (g, w) {
                (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{g:?} vs {w:?}"),
            }
        }
    }

    /// No byte string makes any parser panic.
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = ovp::validate(&bytes);
        let _ = Command::parse(&bytes);
        let _ = Reply::parse(&String::from_utf8_lossy(&bytes));
        let _ = cobs::decode(&bytes);
        let _ = station::parse_packet(&bytes);
        let mut rx = Reassembler::new();
        let _ = rx.push(&bytes);
        let _ = rx.push(&bytes);
        let _ = channel::decode::<ClientMsg>(&bytes);
        let _ = channel::decode::<channel::RelayMsg>(&bytes);
        if bytes.len() >= 8 {
            let raw = u64::from_be_bytes(bytes[..8].try_into().unwrap());
            let _ = StationId::from_raw(raw).map(|id| id.to_string());
        }
    }

    /// A header view never claims more than it was given, and validation
    /// depends only on the first 12 bytes.
    #[test]
    fn validate_reads_only_the_header(bytes in proptest::collection::vec(any::<u8>(), 12..200)) {
        let a = ovp::validate(&bytes).map(|h| h.station());
        let b = ovp::validate(&bytes[..12]).map(|h| h.station());
        prop_assert_eq!(a, b);
    }
}
