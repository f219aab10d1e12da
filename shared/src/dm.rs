//! Direct-message `channel_id` as the Whelm web backend computes it
//! (PROTOCOLS.md section 1, "Persistence"), so the web client finds messages
//! that this server stores.

/// `key = "{min}_{max}"` of the two ids in decimal; `h = 0` as a wrapping
/// signed 64-bit integer; `h = h*31 + b` for each byte; result `h & 0x7FFFFFFF`.
pub fn dm_channel_id(a: u64, b: u64) -> u32 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let key = format!("{lo}_{hi}");
    let h = key.bytes().fold(0i64, |h, byte| {
        h.wrapping_mul(31).wrapping_add(i64::from(byte))
    });
    // Masked to 31 bits, so the value fits u32 exactly.
    (h & 0x7FFF_FFFF) as u32
}

#[cfg(test)]
mod tests {
    use super::dm_channel_id;

    #[test]
    fn documented_case_and_symmetry() {
        assert_eq!(dm_channel_id(1, 2), 50084);
        assert_eq!(dm_channel_id(2, 1), 50084);
    }
}
