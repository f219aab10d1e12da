//! Target `ovp_validate`: `whelm_shared::ovp::validate` on any bytes.

use whelm_shared::ovp::{self, FrameError, HEADER_LEN, StationId, TOKEN};

/// PROTOCOLS.md section 3, written independently of ovp.rs: the station id
/// is valid iff it is non-zero and its base-40 digits, most significant
/// first without leading zeros, contain no zero.
fn model(data: &[u8]) -> Result<u64, FrameError> {
    if data.len() < 12 {
        return Err(FrameError::TooShort);
    }
    if data[6] != 0xBB || data[7] != 0xAA || data[8] != 0xDD {
        return Err(FrameError::BadToken);
    }
    let mut raw: u64 = 0;
    for &b in &data[..6] {
        raw = raw * 256 + u64::from(b);
    }
    if raw == 0 {
        return Err(FrameError::BadStationId);
    }
    let mut digits = Vec::new();
    let mut v = raw;
    while v > 0 {
        digits.push(v % 40);
        v /= 40;
    }
    if digits.contains(&0) {
        return Err(FrameError::BadStationId);
    }
    Ok(raw)
}

/// The target body.
pub fn run(data: &[u8]) {
    let got = ovp::validate(data);
    // Never reads past the header: the result is a function of data[..12].
    let prefix = ovp::validate(data.get(..HEADER_LEN).unwrap_or(data));
    assert_eq!(
        got.map(|h| *h.as_bytes()),
        prefix.map(|h| *h.as_bytes()),
        "result depends on bytes after the header"
    );
    let want = model(data);
    assert_eq!(
        got.map(|h| h.station().raw()),
        want,
        "disagrees with the model"
    );
    let Ok(h) = got else { return };
    let id = h.station();
    assert_eq!(h.as_bytes()[..], data[..HEADER_LEN]);
    assert_eq!(id.to_bytes()[..], data[..6]);
    assert_eq!(h.reserved()[..], data[9..12]);
    assert_eq!(h.as_bytes()[6..9], TOKEN);
    // The callsign text re-encodes to the same id (base-40 round trip).
    let text = id.to_string();
    assert!(
        !text.is_empty() && text.len() <= ovp::MAX_CALLSIGN_LEN,
        "{text:?}"
    );
    let again = StationId::encode(&text).expect("a valid id's callsign encodes");
    assert_eq!(again, id, "{text:?}");
    assert_eq!(again.raw(), id.raw());
    assert_eq!(StationId::encode(&text.to_ascii_lowercase()), Ok(id));
    assert_eq!(StationId::from_raw(id.raw()), Ok(id));
    assert_eq!(StationId::from_bytes(id.to_bytes()), Ok(id));
    // write_header produces a header that validates to the same id.
    let mut out = [0u8; HEADER_LEN];
    ovp::write_header(id, &mut out);
    assert_eq!(out[..9], data[..9]);
    assert_eq!(ovp::validate(&out).map(|h| h.station()), Ok(id));
}
