//! Synthetic voice for station tools and load. The frames themselves are
//! built by `whelm_shared::station::Outgoing` (reference framing, with the
//! inner addressing the caller chooses).

use whelm_shared::station;

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
    use whelm_shared::ovp::StationId;
    use whelm_shared::station::{InnerAddressing, Message, Outgoing, Reassembler};

    #[test]
    fn text_control_voice_round_trip() {
        let id = StationId::encode("W1AW").unwrap();
        let mut tx = Outgoing::with_addressing(id, InnerAddressing::from_seed(99));
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
