//! Opulent Voice Protocol (OVP) frame header and base-40 callsigns
//! (PROTOCOLS.md section 3).
//!
//! A frame is a 12-byte header followed by a payload (normally 122 bytes):
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0..6   | station id: base-40 callsign, big-endian 48-bit     |
//! | 6..9   | token `BB AA DD`                                    |
//! | 9..12  | reserved                                            |
//!
//! [`validate`] is what the relay's hot path calls on every datagram: it
//! borrows the buffer, copies nothing, and returns a small `Copy` error whose
//! variants are drop counters.

use std::fmt;

/// Default UDP port of the conference server (PROTOCOLS.md section 3).
pub const DEFAULT_PORT: u16 = 57372;
/// Header length; anything shorter is a decode error.
pub const HEADER_LEN: usize = 12;
/// Payload length of a normal frame.
pub const PAYLOAD_LEN: usize = 122;
/// Length of a normal frame (header + payload).
pub const FRAME_LEN: usize = HEADER_LEN + PAYLOAD_LEN;
/// The token every frame carries at bytes 6..9.
pub const TOKEN: [u8; 3] = [0xBB, 0xAA, 0xDD];
/// Frames per second of a transmitting station (one every 40 ms).
pub const FRAMES_PER_SECOND: u32 = 25;

/// Base-40 radix.
const RADIX: u64 = 40;
/// Station ids are 48-bit.
const MAX_ID: u64 = (1 << 48) - 1;
/// 40^10 > 2^48 > 40^9, so a callsign has at most 10 characters.
pub const MAX_CALLSIGN_LEN: usize = 10;

/// Why a frame was dropped. Each variant is a decode-error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("frame shorter than the 12-byte header")]
    TooShort,
    /// Bytes 6..9 are not `BB AA DD`.
    #[error("frame token is not BB AA DD")]
    BadToken,
    /// The station id is zero or has a zero base-40 digit.
    #[error("station id is not valid base-40")]
    BadStationId,
}

impl FrameError {
    /// Every variant, in counter order.
    pub const ALL: [FrameError; 3] = [
        FrameError::TooShort,
        FrameError::BadToken,
        FrameError::BadStationId,
    ];

    /// Stable snake_case name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            FrameError::TooShort => "too_short",
            FrameError::BadToken => "bad_token",
            FrameError::BadStationId => "bad_station_id",
        }
    }

    /// Index into a counter array of length `ALL.len()`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a callsign string cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallsignError {
    /// The empty string.
    #[error("callsign is empty")]
    Empty,
    /// A character outside `A-Z 0-9 - / .` (lower case is accepted and folded).
    #[error("callsign has a character outside A-Z 0-9 - / .: {0:?}")]
    BadChar(char),
    /// The value does not fit in 48 bits.
    #[error("callsign does not fit in 48 bits")]
    TooLong,
}

/// A valid OVP station id: non-zero, 48-bit, every base-40 digit non-zero.
///
/// This is the relay's registry key; it converts to text only for logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StationId(u64);

impl StationId {
    /// Checks a raw 48-bit id: the value is non-zero and decoding meets no
    /// zero digit before the value reaches zero.
    pub fn from_raw(raw: u64) -> Result<StationId, FrameError> {
        if raw == 0 || raw > MAX_ID {
            return Err(FrameError::BadStationId);
        }
        let mut v = raw;
        while v != 0 {
            if v.is_multiple_of(RADIX) {
                return Err(FrameError::BadStationId);
            }
            v /= RADIX;
        }
        Ok(StationId(raw))
    }

    /// Reads the big-endian 48-bit id from six bytes.
    pub fn from_bytes(b: [u8; 6]) -> Result<StationId, FrameError> {
        let raw = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        StationId::from_raw(raw)
    }

    /// Encodes a callsign. The first character is the least significant digit.
    pub fn encode(callsign: &str) -> Result<StationId, CallsignError> {
        if callsign.is_empty() {
            return Err(CallsignError::Empty);
        }
        let mut value: u64 = 0;
        let mut scale: u64 = 1;
        for (i, c) in callsign.chars().enumerate() {
            if i >= MAX_CALLSIGN_LEN {
                return Err(CallsignError::TooLong);
            }
            let d = digit(c).ok_or(CallsignError::BadChar(c))?;
            value += d * scale;
            scale = scale.saturating_mul(RADIX);
        }
        if value > MAX_ID {
            return Err(CallsignError::TooLong);
        }
        Ok(StationId(value))
    }

    /// The raw 48-bit value.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The six big-endian bytes that start a frame.
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// The callsign as fixed-size text (no allocation): its bytes and length.
    pub fn callsign(self) -> Callsign {
        let mut out = Callsign {
            bytes: [0; MAX_CALLSIGN_LEN],
            len: 0,
        };
        let mut v = self.0;
        while v != 0 {
            // A StationId is valid, so every digit is 1..=39.
            out.bytes[out.len] = ALPHABET[(v % RADIX) as usize];
            out.len += 1;
            v /= RADIX;
        }
        out
    }
}

impl fmt::Display for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.callsign().as_str())
    }
}

impl fmt::Debug for StationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StationId({} = {:#014x})",
            self.callsign().as_str(),
            self.0
        )
    }
}

impl std::str::FromStr for StationId {
    type Err = CallsignError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StationId::encode(s)
    }
}

/// A decoded callsign held inline (at most 10 ASCII characters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Callsign {
    bytes: [u8; MAX_CALLSIGN_LEN],
    len: usize,
}

impl Callsign {
    /// The callsign text.
    pub fn as_str(&self) -> &str {
        // Every byte comes from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

impl fmt::Debug for Callsign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Digit 0 is unused; index = base-40 digit.
const ALPHABET: &[u8; 40] = b"\0ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/.";

fn digit(c: char) -> Option<u64> {
    let c = c.to_ascii_uppercase();
    match c {
        'A'..='Z' => Some(c as u64 - 'A' as u64 + 1),
        '0'..='9' => Some(c as u64 - '0' as u64 + 27),
        '-' => Some(37),
        '/' => Some(38),
        '.' => Some(39),
        _ => None,
    }
}

/// A validated header: a view over the first 12 bytes of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    raw: &'a [u8; HEADER_LEN],
    station: StationId,
}

impl<'a> Header<'a> {
    /// The sending station.
    pub fn station(&self) -> StationId {
        self.station
    }

    /// The three reserved bytes.
    pub fn reserved(&self) -> [u8; 3] {
        [self.raw[9], self.raw[10], self.raw[11]]
    }

    /// The header bytes as received.
    pub fn as_bytes(&self) -> &'a [u8; HEADER_LEN] {
        self.raw
    }
}

/// Validates a frame exactly as the reference server does: at least 12
/// bytes, token `BB AA DD`, and a valid base-40 station id. Borrows, never
/// copies, never panics.
pub fn validate(frame: &[u8]) -> Result<Header<'_>, FrameError> {
    let raw: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::TooShort)?;
    if raw[6..9] != TOKEN {
        return Err(FrameError::BadToken);
    }
    let id = [raw[0], raw[1], raw[2], raw[3], raw[4], raw[5]];
    let station = StationId::from_bytes(id)?;
    Ok(Header { raw, station })
}

/// Writes a header for `station` (reserved bytes zero).
pub fn write_header(station: StationId, out: &mut [u8; HEADER_LEN]) {
    out[..6].copy_from_slice(&station.to_bytes());
    out[6..9].copy_from_slice(&TOKEN);
    out[9..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: [u8; 6]) -> Vec<u8> {
        let mut f = id.to_vec();
        f.extend_from_slice(&TOKEN);
        f.extend_from_slice(&[0; 3 + PAYLOAD_LEN]);
        f
    }

    #[test]
    fn documented_callsigns() {
        for (cs, raw) in [
            ("W1AW", 0x0000001680b7u64),
            ("KB5MU-11", 0x0447b6864a5b),
            ("W5NYV.NCS", 0x71c06f55a697),
            ("VE7ABC/W1", 0xaa764d576f5e),
            ("W3/G1ABC", 0x007463900847),
            ("K0K", 0x000000004903),
            ("OFD4BS.-BA", 0xffffffffffff),
        ] {
            let id = StationId::encode(cs).unwrap();
            assert_eq!(id.raw(), raw, "{cs}");
            assert_eq!(id.to_string(), cs);
            assert_eq!(StationId::from_raw(raw), Ok(id));
        }
    }

    #[test]
    fn encode_rejects() {
        assert_eq!(StationId::encode(""), Err(CallsignError::Empty));
        assert_eq!(StationId::encode("W1 AW"), Err(CallsignError::BadChar(' ')));
        assert_eq!(StationId::encode("OFD4BS.-BB"), Err(CallsignError::TooLong));
        assert_eq!(
            StationId::encode("AAAAAAAAAAA"),
            Err(CallsignError::TooLong)
        );
        assert_eq!(StationId::encode("w1aw").map(|s| s.raw()), Ok(0x1680b7));
    }

    #[test]
    fn validate_cases() {
        let ok = frame([0, 0, 0, 0x16, 0x80, 0xb7]);
        assert_eq!(validate(&ok).unwrap().station().to_string(), "W1AW");
        assert_eq!(validate(&ok[..11]).unwrap_err(), FrameError::TooShort);
        assert!(validate(&ok[..12]).is_ok(), "a bare header is valid");
        let mut bad = ok.clone();
        bad[7] = 0;
        assert_eq!(validate(&bad).unwrap_err(), FrameError::BadToken);
        assert_eq!(
            validate(&frame([0; 6])).unwrap_err(),
            FrameError::BadStationId
        );
        // 40 = digits (0, 1): a zero digit below a non-zero one.
        assert_eq!(
            validate(&frame([0, 0, 0, 0, 0, 40])).unwrap_err(),
            FrameError::BadStationId
        );
        assert_eq!(
            validate(b"GET / HTTP/1.1\r\n").unwrap_err(),
            FrameError::BadToken
        );
    }

    #[test]
    fn header_roundtrip() {
        let id = StationId::encode("KB5MU-11").unwrap();
        let mut h = [0u8; HEADER_LEN];
        write_header(id, &mut h);
        assert_eq!(validate(&h).unwrap().station(), id);
        assert_eq!(validate(&h).unwrap().reserved(), [0; 3]);
    }
}
