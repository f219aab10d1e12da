//! The Whelm voice registration datagram (PROTOCOLS.md section 2):
//! ASCII `HELLO <user_id>` or `HELLO <user_id> <token>`, with an optional
//! trailing `\n` or `\r\n`. Sans-IO: bytes in, a borrowed view out.

use whelm_shared::line::UserId;

/// The prefix that marks a datagram as a HELLO (never forwarded).
pub const HELLO_PREFIX: &[u8] = b"HELLO ";

/// Longest token accepted (session tokens are far shorter).
pub const MAX_TOKEN_LEN: usize = 128;

/// A parsed HELLO, borrowing the token from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloView<'a> {
    /// The user.
    pub user: UserId,
    /// The token, when sent.
    pub token: Option<&'a str>,
}

/// True if the datagram claims to be a HELLO (it is then never forwarded,
/// parsed or not).
#[inline]
pub fn is_hello(pkt: &[u8]) -> bool {
    pkt.starts_with(HELLO_PREFIX)
}

/// Parses a HELLO datagram. `None` when it is not a well-formed one: wrong
/// prefix, a bad user id, an empty, over-long or non-printable token, more
/// than two fields, or anything after the line end.
pub fn parse_hello(pkt: &[u8]) -> Option<HelloView<'_>> {
    let rest = pkt.strip_prefix(HELLO_PREFIX)?;
    let rest = rest
        .strip_suffix(b"\r\n")
        .or_else(|| rest.strip_suffix(b"\n"))
        .unwrap_or(rest);
    let text = std::str::from_utf8(rest).ok()?;
    let mut fields = text.split(' ');
    let user = UserId::parse(fields.next()?)?;
    let token = match fields.next() {
        None => None,
        Some(t) => {
            if t.is_empty() || t.len() > MAX_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            Some(t)
        }
    };
    if fields.next().is_some() {
        return None;
    }
    Some(HelloView { user, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(v: u64) -> UserId {
        UserId::new(v).unwrap()
    }

    #[test]
    fn accepted_forms() {
        for (pkt, user, token) in [
            (&b"HELLO 1"[..], 1, None),
            (b"HELLO 42\n", 42, None),
            (b"HELLO 42\r\n", 42, None),
            (b"HELLO 7 abc-DEF_123", 7, Some("abc-DEF_123")),
            (b"HELLO 7 tok\r\n", 7, Some("tok")),
        ] {
            assert_eq!(
                parse_hello(pkt),
                Some(HelloView {
                    user: uid(user),
                    token
                }),
                "{:?}",
                String::from_utf8_lossy(pkt)
            );
        }
    }

    #[test]
    fn rejected_forms() {
        let long = format!("HELLO 1 {}", "x".repeat(MAX_TOKEN_LEN + 1));
        for pkt in [
            &b"HELLO"[..],
            b"HELLO ",
            b"HELLO 0",
            b"HELLO -1",
            b"HELLO 1 ",
            b"HELLO 1  t",
            b"HELLO 1 t x",
            b"HELLO 1\n\n",
            b"HELLO 1\nx",
            b"HELLO 99999999999999999999",
            b"HELLO 1 t\xff",
            b"hello 1",
            b" HELLO 1",
            long.as_bytes(),
        ] {
            assert_eq!(parse_hello(pkt), None, "{:?}", String::from_utf8_lossy(pkt));
        }
        assert!(is_hello(b"HELLO x"));
        assert!(!is_hello(b"HELL"));
    }
}
