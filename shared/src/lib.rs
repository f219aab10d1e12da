//! `whelm-shared`: the wire formats of Whelm Voice. No I/O, no threads.
//!
//! - [`ovp`]: the Opulent Voice frame header (a borrowed 12-byte view),
//!   base-40 callsigns, and [`ovp::validate`], which the relay's hot path
//!   calls on every conference datagram.
//! - [`line`]: the Whelm control line protocol: [`line::Command`] parsed
//!   from a client's line, [`line::Reply`] formatted for it (and the reverse,
//!   for clients and tests).
//! - [`channel`]: the relay command channel (JSON lines over a Unix
//!   socket): versioned handshake, commands with typed replies, events.
//! - [`addr`]: the key a per-address limit counts a source under (IPv6 per
//!   /64).
//! - [`dm`]: the direct-message `channel_id` the Whelm web backend uses.
//! - [`cobs`] and [`station`]: what stations carry inside OVP payloads
//!   (COBS-framed IPv4/UDP packets of voice, text and control), for the
//!   station tools; the relay forwards frames without looking at them.
//!
//! Everything here takes bytes or values and returns values; the relay,
//! control and bench crates own the sockets.

pub mod addr;
pub mod channel;
pub mod cobs;
pub mod dm;
pub mod line;
pub mod ovp;
pub mod station;

pub use dm::dm_channel_id;
