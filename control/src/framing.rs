//! Splitting a TCP byte stream into lines (PROTOCOLS.md section 1: lines end
//! in `\n`, `\r\n` accepted). A line longer than [`MAX_LINE_LEN`] is reported
//! once, as soon as it is known to be too long, and the bytes up to its `\n`
//! are discarded without being buffered.
//!
//! The framer keeps only the unfinished tail of a line; complete lines in a
//! read are handed out as borrowed slices of the read buffer.

use whelm_shared::line::MAX_LINE_LEN;

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without `\n` (a trailing `\r` is left for the parser).
    Line(&'a [u8]),
    /// A line over the limit (its remaining bytes are being discarded).
    TooLong,
}

/// The unfinished line of one connection. Empty (no allocation) between lines.
#[derive(Debug, Default)]
pub struct Framer {
    partial: Vec<u8>,
    discarding: bool,
}

/// Room for the limit plus a `\r`.
const LIMIT: usize = MAX_LINE_LEN + 1;

impl Framer {
    /// Bytes held for an unfinished line.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes, calling `f` for each frame in order.
    pub fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(Frame<'_>)) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            match nl {
                Some(i) => {
                    let seg = &data[..i];
                    data = &data[i + 1..];
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if self.partial.is_empty() {
                        if seg.len() > LIMIT || (seg.len() == LIMIT && seg.last() != Some(&b'\r')) {
                            f(Frame::TooLong);
                        } else {
                            f(Frame::Line(seg));
                        }
                    } else {
                        self.partial.extend_from_slice(seg);
                        let line = std::mem::take(&mut self.partial);
                        let too_long = line.len() > LIMIT
                            || (line.len() == LIMIT && line.last() != Some(&b'\r'));
                        if too_long {
                            f(Frame::TooLong);
                        } else {
                            f(Frame::Line(&line));
                        }
                        // Reuse small buffers; give big ones back.
                        if line.capacity() <= 1024 {
                            self.partial = line;
                            self.partial.clear();
                        }
                    }
                }
                None => {
                    if !self.discarding {
                        if self.partial.len() + data.len() > LIMIT {
                            f(Frame::TooLong);
                            self.discarding = true;
                            self.partial = Vec::new();
                        } else {
                            self.partial.extend_from_slice(data);
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        f.feed(data, |fr| {
            out.push(match fr {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::TooLong => "<too long>".into(),
            })
        });
        out
    }

    #[test]
    fn splits_and_joins() {
        let mut f = Framer::default();
        assert_eq!(frames(&mut f, b"AUTH a\nHEART"), vec!["AUTH a"]);
        assert_eq!(f.buffered(), 5);
        assert_eq!(
            frames(&mut f, b"BEAT\r\n\nHANGUP\n"),
            vec!["HEARTBEAT\r", "", "HANGUP"]
        );
        assert_eq!(f.buffered(), 0);
        assert_eq!(frames(&mut f, b"x"), Vec::<String>::new());
        assert_eq!(frames(&mut f, b"y\n"), vec!["xy"]);
    }

    #[test]
    fn long_lines_reported_once_and_discarded() {
        let mut f = Framer::default();
        let big = vec![b'a'; MAX_LINE_LEN + 10];
        assert_eq!(frames(&mut f, &big), vec!["<too long>"]);
        assert_eq!(f.buffered(), 0);
        assert_eq!(frames(&mut f, &big), Vec::<String>::new());
        assert_eq!(frames(&mut f, b"tail\nHANGUP\n"), vec!["HANGUP"]);
        // In one read with its newline.
        let mut one = big.clone();
        one.extend_from_slice(b"\nOK\n");
        assert_eq!(frames(&mut f, &one), vec!["<too long>", "OK"]);
        // Exactly the limit is fine, with or without \r.
        let mut exact = vec![b'b'; MAX_LINE_LEN];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(frames(&mut f, &exact).len(), 1);
        assert_ne!(frames(&mut f, &exact)[0], "<too long>");
        let mut over = vec![b'b'; MAX_LINE_LEN + 1];
        over.push(b'\n');
        assert_eq!(frames(&mut f, &over), vec!["<too long>"]);
        // Split across reads.
        let half = vec![b'c'; MAX_LINE_LEN / 2 + 1];
        assert_eq!(frames(&mut f, &half), Vec::<String>::new());
        assert_eq!(frames(&mut f, &half), vec!["<too long>"]);
        assert_eq!(frames(&mut f, b"zz\nX\n"), vec!["X"]);
    }
}
