//! Builds one station's outgoing OVP frames with inner addressing the caller
//! chooses (PROTOCOLS.md section 3, "Payload").
//!
//! `whelm_shared::station::Outgoing` derives the inner IPv4/UDP addressing
//! from a seed, so it cannot reproduce a given capture; this sender takes the
//! addressing explicitly (source/destination address, source port, first
//! IPv4 id) and otherwise follows the same conventions: one IPv4 id per
//! packet, control marked TOS 0xC0, one RTP stream with 40 ms steps and the
//! marker on the first voice packet after `PTT_START`. The framing itself is
//! whelm-shared's ([`station::build_packet`], [`station::frames_for_packet`]).

use std::net::Ipv4Addr;

use whelm_shared::ovp::{FRAME_LEN, StationId};
use whelm_shared::station::{
    self, Addressing, CONTROL_PORT, RTP_LEN, RTP_PAYLOAD_TYPE, RTP_TICKS_PER_FRAME, Rtp, TEXT_PORT,
    VOICE_PORT,
};

/// TOS byte the reference station puts on control packets.
const CONTROL_TOS: u8 = 0xC0;

/// Inner addressing of a station's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerAddressing {
    /// IPv4 source (the reference uses 127.0.0.1).
    pub src: Ipv4Addr,
    /// IPv4 destination (the reference uses 10.0.0.1).
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// IPv4 identification of the first packet; incremented per packet.
    pub first_ident: u16,
}

impl InnerAddressing {
    /// The reference station's addresses with a source port and first id
    /// derived from `seed` (so two stations in one test differ).
    pub fn from_seed(seed: u32) -> InnerAddressing {
        InnerAddressing {
            src: Ipv4Addr::LOCALHOST,
            dst: Ipv4Addr::new(10, 0, 0, 1),
            src_port: 49152 | (seed as u16 & 0x3FFF),
            first_ident: (seed >> 8) as u16,
        }
    }
}

/// One station's sender: text, control and voice frames.
#[derive(Debug, Clone)]
pub struct StationTx {
    station: StationId,
    inner: InnerAddressing,
    ident: u16,
    rtp_seq: u16,
    rtp_timestamp: u32,
    ssrc: u32,
    talking: bool,
}

impl StationTx {
    /// A sender for `station` with the given inner addressing.
    pub fn new(station: StationId, inner: InnerAddressing) -> StationTx {
        let seed = u32::from(inner.src_port) << 16 | u32::from(inner.first_ident);
        StationTx {
            station,
            inner,
            ident: inner.first_ident,
            rtp_seq: seed as u16,
            rtp_timestamp: seed.rotate_left(11),
            ssrc: seed ^ 0x5EED_0B5E,
            talking: false,
        }
    }

    /// The station this sender speaks for.
    pub fn station(&self) -> StationId {
        self.station
    }

    fn packet(&mut self, dst_port: u16, tos: u8, data: &[u8]) -> Vec<[u8; FRAME_LEN]> {
        let a = Addressing {
            src: self.inner.src,
            dst: self.inner.dst,
            src_port: self.inner.src_port,
            dst_port,
            ident: self.ident,
            tos,
        };
        self.ident = self.ident.wrapping_add(1);
        match station::build_packet(&a, data) {
            Some(p) => station::frames_for_packet(self.station, &p),
            None => Vec::new(),
        }
    }

    /// Frames of one UTF-8 text message (several when long; none when the
    /// text cannot fit in one IPv4 packet).
    pub fn text(&mut self, text: &str) -> Vec<[u8; FRAME_LEN]> {
        self.packet(TEXT_PORT, 0, text.as_bytes())
    }

    /// Frames of a control word such as `PTT_START` or `PTT_STOP`.
    pub fn control(&mut self, word: &str) -> Vec<[u8; FRAME_LEN]> {
        if word == "PTT_START" {
            self.talking = false;
        }
        self.packet(CONTROL_PORT, CONTROL_TOS, word.as_bytes())
    }

    /// The frame(s) of one 40 ms voice packet (exactly one frame for an
    /// 80-byte Opus payload). The first after `PTT_START` has the RTP marker.
    pub fn voice(&mut self, opus: &[u8]) -> Vec<[u8; FRAME_LEN]> {
        let rtp = Rtp {
            marker: !self.talking,
            payload_type: RTP_PAYLOAD_TYPE,
            seq: self.rtp_seq,
            timestamp: self.rtp_timestamp,
            ssrc: self.ssrc,
        };
        self.talking = true;
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        self.rtp_timestamp = self.rtp_timestamp.wrapping_add(RTP_TICKS_PER_FRAME);
        let mut data = Vec::with_capacity(RTP_LEN + opus.len());
        data.extend_from_slice(&rtp.to_bytes());
        data.extend_from_slice(opus);
        self.packet(VOICE_PORT, 0, &data)
    }
}

/// A synthetic 80-byte "Opus" payload for voice frame `n` (not real audio:
/// the relay and the station tools never decode it).
pub fn synthetic_opus(n: u32) -> [u8; station::OPUS_FRAME_LEN] {
    let mut o = [0u8; station::OPUS_FRAME_LEN];
    for (i, b) in o.iter_mut().enumerate() {
        *b = (n as usize).wrapping_mul(31).wrapping_add(i) as u8 | 1;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use whelm_shared::ovp::HEADER_LEN;
    use whelm_shared::station::{Message, Reassembler};

    #[test]
    fn text_control_voice_round_trip() {
        let id = StationId::encode("W1AW").unwrap();
        let mut tx = StationTx::new(id, InnerAddressing::from_seed(99));
        let mut rx = Reassembler::new();
        let long = "roger ".repeat(60);
        let mut frames = tx.text(&long);
        assert!(frames.len() > 1);
        frames.extend(tx.control("PTT_START"));
        frames.extend(tx.voice(&synthetic_opus(0)));
        frames.extend(tx.voice(&synthetic_opus(1)));
        frames.extend(tx.control("PTT_STOP"));
        let got: Vec<Message> = frames
            .iter()
            .flat_map(|f| rx.push(&f[HEADER_LEN..]))
            .map(|r| r.unwrap().message)
            .collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Message::Text(long));
        assert_eq!(got[1], Message::Control("PTT_START".into()));
        let Message::Voice { rtp, opus } = &got[2] else {
            panic!("{:?}", got[2])
        };
        assert!(rtp.marker);
        assert_eq!(opus.as_slice(), synthetic_opus(0).as_slice());
        let Message::Voice { rtp, .. } = &got[3] else {
            panic!("{:?}", got[3])
        };
        assert!(!rtp.marker);
        assert_eq!(got[4], Message::Control("PTT_STOP".into()));
    }
}
