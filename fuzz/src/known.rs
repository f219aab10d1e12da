//! Bugs found by these targets and reported, not yet fixed in the crates
//! this crate does not own. While a bug is open its check is skipped so the
//! fuzzer keeps exploring past it; `WHELM_FUZZ_STRICT=1` checks it anyway
//! (the `#[ignore]`d tests in `tests/regressions.rs` do the same). Remove an
//! entry when the fix lands.

/// An open bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// shared/src/station.rs: `Outgoing` frames a packet of up to 65,535
    /// bytes but `Reassembler::push` refuses a COBS stream longer than
    /// `MAX_MESSAGE_LEN` (65,535) bytes, and COBS adds up to 259: texts of
    /// 65,251..=65,507 bytes come back as `Err(TooLong)`.
    /// Artifact: artifacts/station_reassembly/text-65400.
    CobsLimit,
    /// shared/src/line.rs: `Command::parse` and `Reply::parse` strip one
    /// `\n` and then one `\r`, so a line such as `AUTH x\r\r` (on the wire
    /// `AUTH x\r\r\n`) parses to token `x\r`, whose `to_line` `AUTH x\r`
    /// parses to token `x`: the parsed value does not round trip. The same
    /// for MSG content, OK AUTH / INCOMING / START_CALL usernames and the
    /// word of `ERROR Unknown command: <word>` (`FOO\r BAR` gives the word
    /// `FOO\r`, the client reads back `FOO`).
    /// Artifacts: artifacts/line_parser/auth-cr-cr, msg-cr-cr, okauth-cr-cr,
    /// unknown-word-lf (found by the fuzzer).
    TrailingCr,
    /// control/src/config.rs: `secs` accepts any finite `v > 0.0`, but
    /// `Duration::from_secs_f64` turns values below 1 ns (`1e-10`) into
    /// zero: `heartbeat_timeout = 1e-10` loads as a zero timeout instead of
    /// being refused as "not a positive number of seconds".
    /// Artifact: artifacts/config_parser/heartbeat-1e-10.
    SubNanosecond,
}

/// `true` when the check for `bug` should be skipped.
pub fn skip(bug: Bug) -> bool {
    let _ = bug;
    std::env::var_os("WHELM_FUZZ_STRICT").is_none_or(|v| v != "1")
}
