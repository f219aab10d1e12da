//! Target `line_parser`: the control line protocol (`whelm_shared::line`).

use whelm_shared::line::{Command, Reply};

use crate::known::{self, Bug};

/// The line as the parsers see it: one `\n`, then one `\r`, stripped.
fn stripped(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Bug::TrailingCr: what is left still ends in a line ending.
fn trailing_eol(b: &[u8]) -> bool {
    matches!(stripped(b).last(), Some(b'\r' | b'\n')) && known::skip(Bug::TrailingCr)
}

/// The target body.
pub fn run(data: &[u8]) {
    command(data);
    reply(&String::from_utf8_lossy(data));
}

fn command(data: &[u8]) {
    if trailing_eol(data) {
        let _ = Command::parse(data);
        return;
    }
    match Command::parse(data) {
        Ok(cmd) => {
            match &cmd {
                Command::Call { callee: u } | Command::Accept { caller: u } | Command::Reject { caller: u } | Command::Msg { recipient: u, .. } => {
                    assert!(u.get() != 0 && u.get() <= i64::MAX as u64, "user id {u:?}");
                }
                _ => {}
            }
            let line = cmd.to_line();
            assert_eq!(Command::parse(line.as_bytes()), Ok(cmd.clone()), "to_line {line:?}");
            // What a client sends on the wire: the line and `\n` (or `\r\n`).
            assert_eq!(Command::parse(format!("{line}\n").as_bytes()), Ok(cmd.clone()));
            assert_eq!(Command::parse(format!("{line}\r\n").as_bytes()), Ok(cmd));
        }
        Err(e) => {
            // Every error has a reply line that a client parses back.
            let r = Reply::Error(e.reply());
            let line = r.to_line();
            assert!(line.starts_with("ERROR "), "{line:?}");
            assert_eq!(Reply::parse(&line), Ok(r), "error reply {line:?}");
        }
    }
}

fn reply(text: &str) {
    if trailing_eol(text.as_bytes()) {
        let _ = Reply::parse(text);
        return;
    }
    let Ok(r) = Reply::parse(text) else { return };
    let line = r.to_line();
    assert_eq!(Reply::parse(&line), Ok(r.clone()), "to_line {line:?}");
    let wire = r.to_wire();
    assert_eq!(wire.last(), Some(&b'\n'));
    assert_eq!(Reply::parse(&String::from_utf8_lossy(&wire)), Ok(r));
}
