//! Target `line_parser`: the control line protocol (`whelm_shared::line`).

use whelm_shared::line::{Command, Reply};

/// A line as the connection layer delivers it: no `\n` but a final one.
fn is_line(data: &[u8]) -> bool {
    !data[..data.len().saturating_sub(1)].contains(&b'\n')
}

/// The target body.
pub fn run(data: &[u8]) {
    // Bytes with a `\n` inside are not a line (framing splits on `\n`):
    // parsed for panics only, since an argument ending in `\n` cannot
    // round trip through a line.
    if !is_line(data) {
        let _ = Command::parse(data);
        let _ = Reply::parse(&String::from_utf8_lossy(data));
        return;
    }
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
            // No argument keeps a line ending (fixed in b12651f: `AUTH x\r `).
            assert!(!line.ends_with('\r'), "{line:?}");
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
            assert_eq!(Reply::parse(&line), Ok(r), "error reply {line:?}");
        }
    }
}

fn reply(text: &str) {
    let Ok(r) = Reply::parse(text) else { return };
    let line = r.to_line();
    assert_eq!(Reply::parse(&line), Ok(r.clone()), "to_line {line:?}");
    let wire = r.to_wire();
    assert_eq!(wire.last(), Some(&b'\n'));
    assert_eq!(Reply::parse(&String::from_utf8_lossy(&wire)), Ok(r));
}
