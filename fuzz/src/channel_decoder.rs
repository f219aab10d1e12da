//! Target `channel_decoder`: the relay command channel
//! (`whelm_shared::channel`): `decode`/`encode` of both directions and the
//! `LineReader` that splits the socket stream.

use whelm_shared::channel::{self, ClientMsg, DecodeError, LineReader, RelayMsg};

use crate::util::{Rng, chunks, fnv};

/// The target body.
pub fn run(data: &[u8]) {
    if let Ok(m) = channel::decode::<ClientMsg>(data) {
        round_trip(&m);
    }
    if let Ok(m) = channel::decode::<RelayMsg>(data) {
        round_trip(&m);
    }
    line_reader(data);
}

fn round_trip<T>(m: &T)
where
    T: serde::Serialize + for<'a> serde::Deserialize<'a> + PartialEq + std::fmt::Debug,
{
    let wire = channel::encode(m);
    assert_eq!(wire.last(), Some(&b'\n'));
    assert_eq!(
        wire.iter().filter(|&&b| b == b'\n').count(),
        1,
        "encode is exactly one line"
    );
    let back: T = channel::decode(&wire).expect("encode output decodes");
    assert_eq!(&back, m, "decode(encode(m)) != m");
    // And through the reader that splits the socket stream.
    let mut r = LineReader::default();
    r.extend(&wire);
    let line = r.next_line().expect("a line").expect("within the limit");
    let back: T = channel::decode(&line).expect("the line decodes");
    assert_eq!(&back, m);
    assert!(r.next_line().is_none());
}

/// What `LineReader` must return for `data` with `limit`, when the caller
/// drains it after every read: each complete line within the limit, one
/// `TooLong` for each longer line, and one for an unfinished line that is
/// already over the limit.
fn model(data: &[u8], limit: usize) -> Vec<Result<Vec<u8>, ()>> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    for p in parts {
        out.push(if p.len() > limit {
            Err(())
        } else {
            Ok(p.to_vec())
        });
    }
    if tail.len() > limit {
        out.push(Err(()));
    }
    out
}

fn line_reader(data: &[u8]) {
    let h = fnv(data);
    let limit = match h % 4 {
        0 => channel::MAX_LINE_LEN,
        _ => (h >> 8) as usize % 64,
    };
    let mut rng = Rng::new(h);
    let mut r = LineReader::with_limit(limit);
    let mut got = Vec::new();
    let mut returned = 0usize;
    for chunk in chunks(data, &mut rng, 40) {
        r.extend(chunk);
        while let Some(l) = r.next_line() {
            got.push(match l {
                Ok(line) => {
                    assert!(line.len() <= limit, "line over the limit");
                    assert!(!line.contains(&b'\n'), "line contains a newline");
                    returned += line.len() + 1;
                    Ok(line)
                }
                Err(DecodeError::TooLong) => Err(()),
                Err(e) => panic!("LineReader returned {e}"),
            });
        }
    }
    assert!(returned <= data.len(), "more bytes out than in");
    assert_eq!(got, model(data, limit), "limit {limit}");
}
