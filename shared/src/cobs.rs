//! Consistent Overhead Byte Stuffing, as the Opulent Voice station code uses
//! it to frame IPv4 packets inside OVP payloads: the encoded form contains no
//! `00` byte, so a single `00` delimits one packet from the next.

/// Why a COBS block does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CobsError {
    /// A code byte of 0 inside the block (the caller should have split on it).
    #[error("zero byte inside a COBS block")]
    ZeroInBlock,
    /// A code byte points past the end of the block.
    #[error("COBS code byte runs past the end of the block")]
    Truncated,
}

/// Appends the COBS encoding of `input` to `out` (no trailing delimiter).
/// The result is at most `input.len() + input.len() / 254 + 1` bytes.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    out.reserve(input.len() + input.len() / 254 + 1);
    let mut code_at = out.len();
    out.push(0); // placeholder for the first code byte
    let mut code: u8 = 1;
    for &b in input {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
}

/// Decodes one COBS block (the bytes between two delimiters, without them).
pub fn decode(block: &[u8]) -> Result<Vec<u8>, CobsError> {
    let mut out = Vec::with_capacity(block.len());
    let mut i = 0;
    while i < block.len() {
        let code = block[i];
        if code == 0 {
            return Err(CobsError::ZeroInBlock);
        }
        let end = i + usize::from(code);
        let data = block.get(i + 1..end).ok_or(CobsError::Truncated)?;
        if data.contains(&0) {
            return Err(CobsError::ZeroInBlock);
        }
        out.extend_from_slice(data);
        i = end;
        // A code below 0xFF stands for "data, then a zero", except that the
        // zero after the last group is the implicit end of the block.
        if code < 0xFF && i < block.len() {
            out.push(0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(input: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(input, &mut v);
        v
    }

    #[test]
    fn textbook_cases() {
        // The examples of the COBS paper / Wikipedia table.
        assert_eq!(enc(&[]), [0x01]);
        assert_eq!(enc(&[0x00]), [0x01, 0x01]);
        assert_eq!(enc(&[0x00, 0x00]), [0x01, 0x01, 0x01]);
        assert_eq!(
            enc(&[0x11, 0x22, 0x00, 0x33]),
            [0x03, 0x11, 0x22, 0x02, 0x33]
        );
        assert_eq!(
            enc(&[0x11, 0x00, 0x00, 0x00]),
            [0x02, 0x11, 0x01, 0x01, 0x01]
        );
        let run: Vec<u8> = (1..=254).collect();
        let mut want = vec![0xFF];
        want.extend(&run);
        want.push(0x01);
        assert_eq!(enc(&run), want);
        for case in [&[][..], &[0], &[0x11, 0x22, 0x00, 0x33], &run] {
            assert_eq!(decode(&enc(case)).unwrap(), case);
        }
    }

    #[test]
    fn bad_blocks() {
        assert_eq!(decode(&[0x05, 0x11]), Err(CobsError::Truncated));
        assert_eq!(decode(&[0x02, 0x11, 0x00]), Err(CobsError::ZeroInBlock));
        assert_eq!(decode(&[0x03, 0x00, 0x11]), Err(CobsError::ZeroInBlock));
    }
}
