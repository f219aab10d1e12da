//! Target `station_reassembly`: the station-side COBS/IPv4/UDP reassembly
//! (`whelm_shared::station`).
//!
//! Two uses of the same input:
//! 1. As a stream of frame payloads: pushed into a `Reassembler` whole and
//!    in chunks chosen from a hash of the input (0..=300 bytes, empty chunks
//!    too); both must give the same results. Every `Ok` packet must rebuild
//!    with `build_packet` from its addressing and data, re-parse equal, and
//!    survive `frames_for_packet` -> `Reassembler` unchanged.
//! 2. As a message to send (text if UTF-8, control, voice): `Outgoing`
//!    frames it, every frame validates as OVP from the right station, and a
//!    fresh `Reassembler` gives back exactly the message. The first input
//!    byte's top three bits set ask for the rest repeated up to ~64 KiB, so the size
//!    limits are reached.

use whelm_shared::ovp::{self, HEADER_LEN, StationId};
use whelm_shared::station::{
    self, CONTROL_PORT, Message, Outgoing, Packet, PacketError, Reassembler, TEXT_PORT, VOICE_PORT,
};

use crate::util::{Rng, chunks, fnv};

/// The UDP data a message was built from.
pub fn message_data(m: &Message) -> Vec<u8> {
    match m {
        Message::Voice { rtp, opus } => {
            let mut d = rtp.to_bytes().to_vec();
            d.extend_from_slice(opus);
            d
        }
        Message::Text(s) | Message::Control(s) => s.as_bytes().to_vec(),
        Message::Other { data, .. } => data.clone(),
    }
}

fn push_all(rx: &mut Reassembler, payloads: &[&[u8]]) -> Vec<Result<Packet, PacketError>> {
    payloads.iter().flat_map(|p| rx.push(p)).collect()
}

/// Frames -> payloads -> one fresh reassembler.
pub fn reassemble_frames(
    station: StationId,
    frames: &[[u8; ovp::FRAME_LEN]],
) -> Vec<Result<Packet, PacketError>> {
    let mut rx = Reassembler::new();
    let mut out = Vec::new();
    for f in frames {
        let h = ovp::validate(f).expect("our own frame validates");
        assert_eq!(h.station(), station);
        assert_eq!(h.reserved(), [0; 3]);
        out.extend(rx.push(&f[HEADER_LEN..]));
    }
    assert!(
        !rx.has_pending(),
        "a complete message leaves nothing pending"
    );
    out
}

fn check_packet(p: &Packet) {
    let data = message_data(&p.message);
    let built = station::build_packet(&p.addressing, &data)
        .expect("a packet that parsed fits in an IPv4 packet");
    let again = station::parse_packet(&built).expect("a rebuilt packet parses");
    assert_eq!(&again, p, "build_packet/parse_packet round trip");
    let id = StationId::encode("W1AW").expect("valid");
    let back = reassemble_frames(id, &station::frames_for_packet(id, &built));
    assert_eq!(back, vec![Ok(p.clone())], "frames_for_packet round trip");
}

fn stream(data: &[u8]) {
    let mut whole = Reassembler::new();
    let want = whole.push(data);
    let mut rng = Rng::new(fnv(data));
    let mut cut = Reassembler::new();
    let got = push_all(&mut cut, &chunks(data, &mut rng, 300));
    assert_eq!(got, want, "results depend on how the stream is cut");
    assert_eq!(cut.has_pending(), whole.has_pending());
    for p in want.iter().flatten() {
        check_packet(p);
    }
}

fn send(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let body: Vec<u8> = if flags & 0xE0 == 0xE0 && !body.is_empty() {
        // 60,000..=66,200 bytes: across the IPv4 and reassembly limits.
        let target = 60_000 + usize::from(flags & 0x1F) * 200;
        body.iter().copied().cycle().take(target).collect()
    } else {
        body.to_vec()
    };
    let id = StationId::from_raw(1 + u64::from(fnv(&body) as u32))
        .unwrap_or_else(|_| StationId::encode("K0K").expect("valid"));
    let mut out = Outgoing::new(id, u32::from(flags));
    // Largest data an IPv4/UDP packet carries.
    let fits = body.len() <= 65_535 - 28;

    if let Ok(text) = std::str::from_utf8(&body) {
        let frames = out.text(text);
        if !fits {
            assert!(
                frames.is_empty(),
                "text over the IPv4 limit yields no frames"
            );
        } else {
            let got = reassemble_frames(id, &frames);
            assert_eq!(
                got.len(),
                1,
                "one message: {:?}",
                got.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
            );
            let p = got[0].as_ref().expect("our own text reassembles");
            assert_eq!(p.addressing.dst_port, TEXT_PORT);
            assert_eq!(p.message, Message::Text(text.to_owned()));
        }
        let frames = out.control(text);
        if fits {
            let got = reassemble_frames(id, &frames);
            let p = got[0].as_ref().expect("our own control reassembles");
            assert_eq!(p.addressing.dst_port, CONTROL_PORT);
            assert_eq!(p.addressing.tos, 0xC0);
            assert_eq!(p.message, Message::Control(text.to_owned()));
        }
    }
    let frames = out.voice(&body);
    if body.len() + station::RTP_LEN <= 65_535 - 28 {
        let got = reassemble_frames(id, &frames);
        assert_eq!(got.len(), 1);
        let p = got[0].as_ref().expect("our own voice reassembles");
        assert_eq!(p.addressing.dst_port, VOICE_PORT);
        match &p.message {
            Message::Voice { rtp, opus } => {
                assert_eq!(opus, &body);
                assert_eq!(rtp.payload_type, station::RTP_PAYLOAD_TYPE);
            }
            other => panic!("not voice: {other:?}"),
        }
    } else {
        assert!(frames.is_empty());
    }
}

/// The target body.
pub fn run(data: &[u8]) {
    stream(data);
    send(data);
}
