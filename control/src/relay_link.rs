//! The link to the relay's command socket. The state machine already emits
//! [`RelayCmd`]s (allow a user from an IP, revoke it, install and remove
//! calls); issue 5 writes the Unix-socket client. Until then they are
//! dropped, each logged at debug level.

use std::path::PathBuf;

use crate::jobs::RelayCmd;

/// Where relay commands go.
#[derive(Debug)]
pub struct RelayLink {
    socket: Option<PathBuf>,
    dropped: u64,
}

impl RelayLink {
    /// A link to `socket` (not connected yet: see the module docs).
    pub fn new(socket: Option<PathBuf>) -> RelayLink {
        if let Some(p) = &socket {
            tracing::info!(
                socket = %p.display(),
                "relay link not implemented yet (issue 5); relay commands are dropped"
            );
        }
        RelayLink { socket, dropped: 0 }
    }

    /// `none` or the socket path, for the ready line.
    pub fn describe(&self) -> String {
        match &self.socket {
            Some(p) => p.display().to_string(),
            None => "none".into(),
        }
    }

    /// Hands over one command.
    pub fn send(&mut self, cmd: RelayCmd) {
        self.dropped += 1;
        tracing::debug!(?cmd, "relay command dropped (no relay link)");
    }

    /// Commands dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
