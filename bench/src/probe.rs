//! The probe every load packet carries: which sender, its sequence number,
//! the CLOCK_MONOTONIC send time, and whether it belongs to the measured
//! window (warm-up and join packets do not).
//!
//! Layout (little-endian), at a fixed offset in the packet (for OVP, right
//! after the 12-byte header, inside the payload area the relay never reads):
//!
//! | bytes  | field                         |
//! |--------|-------------------------------|
//! | 0..4   | magic `WBP1`                  |
//! | 4..8   | sender index                  |
//! | 8..16  | sequence number (per sender)  |
//! | 16..24 | send time, monotonic ns       |
//! | 24     | flags: bit 0 = measured       |

/// Bytes a probe needs.
pub const PROBE_LEN: usize = 25;
const MAGIC: [u8; 4] = *b"WBP1";
const MEASURED: u8 = 1;

/// One packet's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Index of the sending station/flow source.
    pub sender: u32,
    /// Sequence number, from 0, per sender.
    pub seq: u64,
    /// CLOCK_MONOTONIC ns just before the send syscall.
    pub sent_ns: u64,
    /// Inside the measured window.
    pub measured: bool,
}

impl Probe {
    /// Writes the probe into `out[..PROBE_LEN]`; false if `out` is too short.
    pub fn write(&self, out: &mut [u8]) -> bool {
        let Some(b) = out.get_mut(..PROBE_LEN) else {
            return false;
        };
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
        b[24] = if self.measured { MEASURED } else { 0 };
        true
    }

    /// Reads a probe; `None` if the bytes are not one.
    pub fn read(b: &[u8]) -> Option<Probe> {
        let b = b.get(..PROBE_LEN)?;
        if b[0..4] != MAGIC {
            return None;
        }
        Some(Probe {
            sender: u32::from_le_bytes(b[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
            sent_ns: u64::from_le_bytes(b[16..24].try_into().ok()?),
            measured: b[24] & MEASURED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let p = Probe {
            sender: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
            measured: true,
        };
        let mut b = [0u8; 40];
        assert!(p.write(&mut b[3..]));
        assert_eq!(Probe::read(&b[3..]), Some(p));
        assert_eq!(Probe::read(&b[..10]), None);
        assert_eq!(Probe::read(&[0u8; 40]), None);
        assert!(!p.write(&mut [0u8; 10]));
    }
}
