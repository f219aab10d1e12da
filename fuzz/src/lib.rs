//! `whelm-fuzz`: the bodies of the cargo-fuzz targets of issue 8, as plain
//! functions so that `tests/replay.rs` can run every committed corpus file
//! and crash artifact on stable without libFuzzer.
//!
//! Each `run(data)` must not panic for any input; a panic is a finding. Each
//! checks a property beyond "no panic":
//!
//! - [`ovp_validate`]: `ovp::validate` agrees with an independent model of
//!   PROTOCOLS.md section 3, never looks past byte 12, and a valid station id
//!   re-encodes from its callsign text to the same bytes.
//! - [`station_reassembly`]: a `Reassembler` gives the same results however
//!   its input is cut into payloads; every packet it yields rebuilds with
//!   `build_packet` and re-parses equal; `Outgoing` text/control/voice frames
//!   reassemble to exactly what was sent.
//! - [`line_parser`]: `Command::parse` / `Reply::parse` round trip through
//!   `to_line`; parsed user ids are never 0.
//! - [`channel_decoder`]: `decode(encode(msg)) == msg` for both directions,
//!   `encode` is one line; `LineReader` output equals a reference model of
//!   the line split under any chunking and limit.
//! - [`config_parser`]: relay and control TOML files either fail or give a
//!   config with the documented invariants and the values the file named;
//!   printing the resolved config as TOML and loading it again gives the
//!   same config.

pub mod channel_decoder;
pub mod config_parser;
pub mod line_parser;
pub mod ovp_validate;
pub mod station_reassembly;
pub mod util;
