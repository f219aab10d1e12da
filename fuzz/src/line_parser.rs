//! Target `line_parser`: the control line protocol (`whelm_shared::line`).

use whelm_shared::line::{Command, Reply};

use crate::known::{self, Bug};

/// Bug::TrailingCr: a value whose line ends in `\r` or `\n` (an argument
/// or unknown word that kept a line ending) loses it when parsed again.
fn known_trailing_eol(line: &str) -> bool {
    line.ends_with(['\r', '\n']) && known::skip(Bug::TrailingCr)
}

/// The target body.
pub fn run(data: &[u8]) {
    command(data);
    reply(&String::from_utf8_lossy(data));
}

fn command(data: &[u8]) {
    match Command::parse(data) {
        Ok(cmd) => {
            match &cmd {
                Command::Call { callee: u }
                | Command::Accept { caller: u }
                | Command::Reject { caller: u }
                | Command::Msg { recipient: u, .. } => {
                    assert!(u.get() != 0 && u.get() <= i64::MAX as u64, "user id {u:?}");
                }
                _ => {}
            }
            let line = cmd.to_line();
            if known_trailing_eol(&line) {
                return;
            }
            assert_eq!(
                Command::parse(line.as_bytes()),
                Ok(cmd.clone()),
                "to_line {line:?}"
            );
            // What a client sends on the wire: the line and `\n` (or `\r\n`).
            assert_eq!(
                Command::parse(format!("{line}\n").as_bytes()),
                Ok(cmd.clone())
            );
            assert_eq!(Command::parse(format!("{line}\r\n").as_bytes()), Ok(cmd));
        }
        Err(e) => {
            // Every error has a reply line that a client parses back.
            let r = Reply::Error(e.reply());
            let line = r.to_line();
            assert!(line.starts_with("ERROR "), "{line:?}");
            if known_trailing_eol(&line) {
                return;
            }
            assert_eq!(Reply::parse(&line), Ok(r), "error reply {line:?}");
        }
    }
}

fn reply(text: &str) {
    let Ok(r) = Reply::parse(text) else { return };
    let line = r.to_line();
    if known_trailing_eol(&line) {
        return;
    }
    assert_eq!(Reply::parse(&line), Ok(r.clone()), "to_line {line:?}");
    let wire = r.to_wire();
    assert_eq!(wire.last(), Some(&b'\n'));
    assert_eq!(Reply::parse(&String::from_utf8_lossy(&wire)), Ok(r));
}
