//! What an Opulent Voice station puts inside OVP payloads (PROTOCOLS.md
//! section 3, "Payload"). The relay never needs this; station tools do.
//!
//! A message is an IPv4 packet (20-byte header, UDP 8 bytes, data) that is
//! COBS-encoded, ended with a `00` delimiter, and cut into 122-byte frame
//! payloads, the last one zero-padded. The inner UDP destination port says
//! what the data is: 57373 voice (RTP 12 bytes + Opus), 57374 text (UTF-8),
//! 57375 control (ASCII such as `PTT_START`).
//!
//! Sending: [`Outgoing`] builds packets and [`frames_for_packet`] frames them.
//! Receiving: one [`Reassembler`] per station turns payloads back into
//! [`Message`]s.

use std::net::Ipv4Addr;

use crate::cobs::{self, CobsError};
use crate::ovp::{self, FRAME_LEN, HEADER_LEN, PAYLOAD_LEN, StationId};

/// Inner UDP port of voice packets.
pub const VOICE_PORT: u16 = 57373;
/// Inner UDP port of text messages.
pub const TEXT_PORT: u16 = 57374;
/// Inner UDP port of control messages.
pub const CONTROL_PORT: u16 = 57375;
/// Opus bytes in one 40 ms voice frame (the reference codec setting).
pub const OPUS_FRAME_LEN: usize = 80;
/// RTP header length.
pub const RTP_LEN: usize = 12;
/// RTP timestamp step of one 40 ms frame at 48 kHz.
pub const RTP_TICKS_PER_FRAME: u32 = 1920;
/// RTP payload type of the reference voice stream (dynamic, Opus).
pub const RTP_PAYLOAD_TYPE: u8 = 96;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// Largest packet a message can be (the IPv4 total length limit).
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// Largest COBS encoding of a [`MAX_MESSAGE_LEN`] packet: what the
/// reassembler buffers before it gives up on a stream.
const MAX_ENCODED_LEN: usize = MAX_MESSAGE_LEN + MAX_MESSAGE_LEN / 254 + 1;

/// Why a reassembled packet is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The COBS block does not decode.
    #[error("COBS: {0}")]
    Cobs(#[from] CobsError),
    /// Not an IPv4 header with IHL 5 (no options).
    #[error("not an IPv4 packet with a 20-byte header")]
    NotIpv4,
    /// The IPv4 header checksum is wrong.
    #[error("IPv4 header checksum mismatch")]
    IpChecksum,
    /// Not UDP.
    #[error("IPv4 protocol is not UDP")]
    NotUdp,
    /// Lengths in the headers disagree with the bytes present.
    #[error("IPv4/UDP lengths disagree with the packet")]
    BadLength,
    /// The UDP checksum is wrong.
    #[error("UDP checksum mismatch")]
    UdpChecksum,
    /// A voice packet shorter than its RTP header.
    #[error("voice packet shorter than the RTP header")]
    ShortRtp,
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// More than [`MAX_MESSAGE_LEN`] bytes without a delimiter.
    #[error("message longer than {MAX_MESSAGE_LEN} bytes")]
    TooLong,
}

/// The RTP header of a voice packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtp {
    /// Set on the first packet of a transmission.
    pub marker: bool,
    /// Payload type (96 for the reference Opus stream).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// 48 kHz timestamp.
    pub timestamp: u32,
    /// Stream source id.
    pub ssrc: u32,
}

impl Rtp {
    /// The 12 header bytes: version 2, no padding, extension or CSRC.
    pub fn to_bytes(&self) -> [u8; RTP_LEN] {
        let mut h = [0u8; RTP_LEN];
        h[0] = 0x80;
        h[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7F);
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        h
    }

    fn parse(b: &[u8]) -> Option<Rtp> {
        let h: &[u8; RTP_LEN] = b.get(..RTP_LEN)?.try_into().ok()?;
        Some(Rtp {
            marker: h[1] & 0x80 != 0,
            payload_type: h[1] & 0x7F,
            seq: u16::from_be_bytes([h[2], h[3]]),
            timestamp: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ssrc: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        })
    }
}

/// The inner IPv4/UDP addressing of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port: the message type.
    pub dst_port: u16,
    /// IPv4 identification.
    pub ident: u16,
    /// IPv4 type of service (the reference marks control 0xC0).
    pub tos: u8,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 57373: one RTP packet with its Opus payload.
    Voice {
        /// RTP header.
        rtp: Rtp,
        /// Opus bytes.
        opus: Vec<u8>,
    },
    /// 57374: UTF-8 text.
    Text(String),
    /// 57375: control text such as `PTT_START`.
    Control(String),
    /// Any other destination port.
    Other {
        /// UDP destination port.
        port: u16,
        /// UDP data.
        data: Vec<u8>,
    },
}

/// A message with its inner addressing, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// IPv4/UDP fields.
    pub addressing: Addressing,
    /// The data, by type.
    pub message: Message,
}

/// RFC 1071 ones'-complement sum, folded, over several slices.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in part.iter() {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_checksum(a: &Addressing, udp: &[u8]) -> u16 {
    // Lengths fit u16: build_packet and parse_packet bound them.
    let len = (udp.len() as u16).to_be_bytes();
    let pseudo = [0, 17, len[0], len[1]];
    let c = checksum(&[&a.src.octets(), &a.dst.octets(), &pseudo, udp]);
    // A computed 0 is sent as 0xFFFF (RFC 768).
    if c == 0 { 0xFFFF } else { c }
}

/// Builds the IPv4/UDP packet carrying `data`. `None` if it would exceed
/// 65,535 bytes.
pub fn build_packet(a: &Addressing, data: &[u8]) -> Option<Vec<u8>> {
    let total = IPV4_HEADER_LEN + UDP_HEADER_LEN + data.len();
    let total16 = u16::try_from(total).ok()?;
    let udp_len = (UDP_HEADER_LEN + data.len()) as u16;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, a.tos]);
    p.extend_from_slice(&total16.to_be_bytes());
    p.extend_from_slice(&a.ident.to_be_bytes());
    p.extend_from_slice(&[0x40, 0x00, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum
    p.extend_from_slice(&a.src.octets());
    p.extend_from_slice(&a.dst.octets());
    let ip_sum = checksum(&[&p[..IPV4_HEADER_LEN]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&a.src_port.to_be_bytes());
    p.extend_from_slice(&a.dst_port.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    let udp_sum = udp_checksum(a, &p[IPV4_HEADER_LEN..]);
    p[IPV4_HEADER_LEN + 6..IPV4_HEADER_LEN + 8].copy_from_slice(&udp_sum.to_be_bytes());
    Some(p)
}

/// Parses and checks an IPv4/UDP packet and classifies its data.
pub fn parse_packet(p: &[u8]) -> Result<Packet, PacketError> {
    let ip: &[u8; IPV4_HEADER_LEN] = p
        .get(..IPV4_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::NotIpv4)?;
    if ip[0] != 0x45 {
        return Err(PacketError::NotIpv4);
    }
    if checksum(&[ip]) != 0 {
        return Err(PacketError::IpChecksum);
    }
    if ip[9] != 17 {
        return Err(PacketError::NotUdp);
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let packet = p.get(..total).ok_or(PacketError::BadLength)?;
    let udp = packet
        .get(IPV4_HEADER_LEN..)
        .ok_or(PacketError::BadLength)?;
    if udp.len() < UDP_HEADER_LEN || usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len()
    {
        return Err(PacketError::BadLength);
    }
    let a = Addressing {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        ident: u16::from_be_bytes([ip[4], ip[5]]),
        tos: ip[1],
    };
    // A zero UDP checksum means "not computed" (RFC 768).
    if udp[6..8] != [0, 0]
        && checksum(&[&a.src.octets(), &a.dst.octets(), &[0, 17], &udp[4..6], udp]) != 0
    {
        return Err(PacketError::UdpChecksum);
    }
    let data = &udp[UDP_HEADER_LEN..];
    let text = || String::from_utf8(data.to_vec()).map_err(|_| PacketError::NotUtf8);
    let message = match a.dst_port {
        VOICE_PORT => {
            let rtp = Rtp::parse(data).ok_or(PacketError::ShortRtp)?;
            Message::Voice {
                rtp,
                opus: data[RTP_LEN..].to_vec(),
            }
        }
        TEXT_PORT => Message::Text(text()?),
        CONTROL_PORT => Message::Control(text()?),
        port => Message::Other {
            port,
            data: data.to_vec(),
        },
    };
    Ok(Packet {
        addressing: a,
        message,
    })
}

/// COBS-encodes `packet`, adds the `00` delimiter, and cuts it into complete
/// frames for `station`, the last payload zero-padded.
pub fn frames_for_packet(station: StationId, packet: &[u8]) -> Vec<[u8; FRAME_LEN]> {
    let mut stream = Vec::new();
    cobs::encode(packet, &mut stream);
    stream.push(0);
    let mut header = [0u8; HEADER_LEN];
    ovp::write_header(station, &mut header);
    stream
        .chunks(PAYLOAD_LEN)
        .map(|chunk| {
            let mut f = [0u8; FRAME_LEN];
            f[..HEADER_LEN].copy_from_slice(&header);
            f[HEADER_LEN..HEADER_LEN + chunk.len()].copy_from_slice(chunk);
            f
        })
        .collect()
}

/// The inner IPv4/UDP addressing of one station's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerAddressing {
    /// IPv4 source (the reference station uses 127.0.0.1).
    pub src: Ipv4Addr,
    /// IPv4 destination (the reference station uses 10.0.0.1).
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// IPv4 identification of the first packet; incremented per packet.
    pub first_ident: u16,
}

impl InnerAddressing {
    /// The reference station's addresses with a source port and first id
    /// derived from `seed`, so that two stations differ.
    pub fn from_seed(seed: u32) -> InnerAddressing {
        InnerAddressing {
            src: Ipv4Addr::LOCALHOST,
            dst: Ipv4Addr::new(10, 0, 0, 1),
            src_port: 49152 | (seed as u16 & 0x3FFF),
            first_ident: (seed >> 8) as u16,
        }
    }
}

/// Builds station traffic with the reference's conventions: incrementing
/// IPv4 ids, one RTP stream with 40 ms steps, control marked TOS 0xC0.
#[derive(Debug, Clone)]
pub struct Outgoing {
    station: StationId,
    inner: InnerAddressing,
    ident: u16,
    rtp_seq: u16,
    rtp_timestamp: u32,
    ssrc: u32,
    talking: bool,
}

impl Outgoing {
    /// A sender for `station` with addressing derived from `seed`.
    pub fn new(station: StationId, seed: u32) -> Outgoing {
        Outgoing::with_addressing(station, InnerAddressing::from_seed(seed))
    }

    /// A sender for `station` with the given inner addressing (to reproduce
    /// a capture byte for byte).
    pub fn with_addressing(station: StationId, inner: InnerAddressing) -> Outgoing {
        let seed = (u32::from(inner.src_port) << 16) | u32::from(inner.first_ident);
        Outgoing {
            station,
            inner,
            ident: inner.first_ident,
            rtp_seq: seed as u16,
            rtp_timestamp: seed.rotate_left(11),
            ssrc: seed ^ 0x9988_CF36,
            talking: false,
        }
    }

    /// The station this sender speaks for.
    pub fn station(&self) -> StationId {
        self.station
    }

    fn next(&mut self, dst_port: u16, tos: u8, data: &[u8]) -> Vec<[u8; FRAME_LEN]> {
        let a = Addressing {
            src: self.inner.src,
            dst: self.inner.dst,
            src_port: self.inner.src_port,
            dst_port,
            ident: self.ident,
            tos,
        };
        self.ident = self.ident.wrapping_add(1);
        match build_packet(&a, data) {
            Some(p) => frames_for_packet(self.station, &p),
            None => Vec::new(),
        }
    }

    /// Frames of one text message (several when long). Text longer than an
    /// IPv4 packet can hold yields no frames.
    pub fn text(&mut self, text: &str) -> Vec<[u8; FRAME_LEN]> {
        self.next(TEXT_PORT, 0, text.as_bytes())
    }

    /// Frames of a control message such as `PTT_START`.
    pub fn control(&mut self, word: &str) -> Vec<[u8; FRAME_LEN]> {
        if word == "PTT_START" {
            self.talking = false;
        }
        self.next(CONTROL_PORT, 0xC0, word.as_bytes())
    }

    /// The frame of one 40 ms voice packet. The first after `PTT_START`
    /// carries the RTP marker.
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
        self.next(VOICE_PORT, 0, &data)
    }
}

/// Reassembles one station's payloads into packets. Keep one per station
/// (callsign): frames of different stations interleave on the wire.
#[derive(Debug, Default, Clone)]
pub struct Reassembler {
    pending: Vec<u8>,
    overflowed: bool,
}

impl Reassembler {
    /// A reassembler with nothing pending.
    pub fn new() -> Reassembler {
        Reassembler::default()
    }

    /// Feeds one frame's payload (the bytes after the 12-byte header).
    /// Returns every packet it completes, in order; padding yields nothing.
    pub fn push(&mut self, payload: &[u8]) -> Vec<Result<Packet, PacketError>> {
        let mut out = Vec::new();
        let mut parts = payload.split(|&b| b == 0).peekable();
        while let Some(part) = parts.next() {
            let delimited = parts.peek().is_some();
            if self.pending.len() + part.len() > MAX_ENCODED_LEN {
                self.pending.clear();
                self.overflowed = true;
            } else if !self.overflowed {
                self.pending.extend_from_slice(part);
            }
            if delimited {
                if self.overflowed {
                    out.push(Err(PacketError::TooLong));
                } else if !self.pending.is_empty() {
                    out.push(
                        cobs::decode(&self.pending)
                            .map_err(PacketError::from)
                            .and_then(|p| parse_packet(&p)),
                    );
                }
                self.pending.clear();
                self.overflowed = false;
            }
        }
        out
    }

    /// Whether a partial message is buffered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_valid_header_is_zero() {
        let a = Addressing {
            src: Ipv4Addr::LOCALHOST,
            dst: Ipv4Addr::new(10, 0, 0, 1),
            src_port: 49961,
            dst_port: TEXT_PORT,
            ident: 0xb7f0,
            tos: 0,
        };
        let p = build_packet(&a, b"hello everyone").unwrap();
        assert_eq!(checksum(&[&p[..20]]), 0);
        assert_eq!(&p[10..12], &[0xf9, 0xd0], "the reference's IPv4 checksum");
        assert_eq!(&p[26..28], &[0xdc, 0xc7], "the reference's UDP checksum");
        let back = parse_packet(&p).unwrap();
        assert_eq!(back.addressing, a);
        assert_eq!(back.message, Message::Text("hello everyone".into()));
    }

    #[test]
    fn voice_round_trip_with_marker_on_first_packet_only() {
        let id = StationId::encode("W1AW").unwrap();
        let mut out = Outgoing::new(id, 7);
        let mut rx = Reassembler::new();
        out.control("PTT_START");
        for n in 0..3u8 {
            let frames = out.voice(&[n + 1; OPUS_FRAME_LEN]);
            assert_eq!(frames.len(), 1, "one voice packet is exactly one frame");
            let got = rx.push(&frames[0][HEADER_LEN..]);
            let Ok(Packet {
                message: Message::Voice { rtp, opus },
                ..
            }) = &got[0]
            else {
                panic!("{got:?}");
            };
            assert_eq!(rtp.marker, n == 0);
            assert_eq!(opus, &vec![n + 1; OPUS_FRAME_LEN]);
        }
    }

    /// The largest text an IPv4 packet holds reassembles (its COBS form is
    /// longer than the packet; found by the station_reassembly fuzz target).
    #[test]
    fn text_up_to_the_ipv4_limit_reassembles() {
        let id = StationId::encode("W1AW").unwrap();
        let text = "x".repeat(MAX_MESSAGE_LEN - IPV4_HEADER_LEN - UDP_HEADER_LEN);
        let mut rx = Reassembler::new();
        let got: Vec<_> = Outgoing::new(id, 1)
            .text(&text)
            .iter()
            .flat_map(|f| rx.push(&f[HEADER_LEN..]))
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap().message, Message::Text(text));
        assert!(
            Outgoing::new(id, 1)
                .text(&"x".repeat(MAX_MESSAGE_LEN))
                .is_empty()
        );
    }

    #[test]
    fn corrupt_and_oversized_streams_are_errors() {
        let mut rx = Reassembler::new();
        assert_eq!(
            rx.push(&[0x05, 0x11, 0x00]),
            vec![Err(PacketError::Cobs(CobsError::Truncated))]
        );
        assert!(rx.push(&[0; 122]).is_empty(), "padding is nothing");
        for _ in 0..(MAX_ENCODED_LEN / 100 + 1) {
            assert!(rx.push(&[0x11; 100]).is_empty());
        }
        assert!(rx.has_pending());
        assert_eq!(rx.push(&[0x00]), vec![Err(PacketError::TooLong)]);
        assert!(!rx.has_pending());
    }
}
