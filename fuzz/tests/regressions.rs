//! One test per bug the targets found (details in the commit messages and
//! RUNS.md). All of them are fixed; each test here fails if its bug
//! comes back.

use whelm_shared::line::{Command, Reply};
use whelm_shared::ovp::{HEADER_LEN, StationId};
use whelm_shared::station::{Message, Outgoing, Reassembler};

/// shared/src/station.rs `Reassembler::push` (fixed): the largest text
/// `Outgoing::text` frames reassembles; it used to give `Err(TooLong)` for
/// 65,251..=65,507 bytes (artifacts/station_reassembly/text-65400).
#[test]
fn text_up_to_the_ipv4_limit_reassembles() {
    let id = StationId::encode("W1AW").expect("valid");
    for n in [65_250usize, 65_251, 65_400, 65_507] {
        let text = "x".repeat(n);
        let frames = Outgoing::new(id, 1).text(&text);
        assert!(!frames.is_empty(), "{n} bytes fit an IPv4 packet");
        let mut rx = Reassembler::new();
        let got: Vec<_> = frames
            .iter()
            .flat_map(|f| rx.push(&f[HEADER_LEN..]))
            .collect();
        assert_eq!(got.len(), 1, "{n}");
        let p = got[0].as_ref().unwrap_or_else(|e| panic!("{n} bytes: {e}"));
        assert_eq!(p.message, Message::Text(text));
    }
}

/// shared/src/line.rs `Command::parse`, `Reply::parse` (fixed): a second
/// trailing `\r` stayed in the last argument, so `to_line` did not parse
/// back to the same value (artifacts/line_parser/auth-cr-cr, msg-cr-cr,
/// okauth-cr-cr).
#[test]
fn trailing_cr_round_trips() {
    for line in [&b"AUTH x\r\r"[..], b"MSG 2 hi\r\r\n", b"X\r\r"] {
        let cmd = Command::parse(line);
        let show = String::from_utf8_lossy(line);
        match &cmd {
            Ok(c) => assert_eq!(Command::parse(c.to_line().as_bytes()), cmd, "{show:?}"),
            Err(e) => {
                let r = Reply::Error(e.reply());
                assert_eq!(Reply::parse(&r.to_line()), Ok(r), "{show:?}");
            }
        }
    }
    let r = Reply::parse("OK AUTH 1 bob\r\r").expect("parses");
    assert_eq!(Reply::parse(&r.to_line()), Ok(r));
}

/// shared/src/line.rs (fixed in b12651f): `AUTH x\r ` kept the `\r` in
/// the token because the spaces after it were trimmed after the `\r`s
/// (artifacts/line_parser/auth-cr-space; the campaign found
/// crash-70d4bdb6...).
#[test]
fn cr_before_trailing_space_round_trips() {
    for line in [&b"AUTH x\r "[..], b"MSG 2 hi\r ", b"HEARTBEAT away\r "] {
        let cmd = Command::parse(line);
        if let Ok(c) = &cmd {
            assert_eq!(Command::parse(c.to_line().as_bytes()), cmd, "{line:?}");
        }
    }
}

/// shared/src/line.rs `Command::parse` (fixed): the unknown word of
/// `FOO\r BAR` was `FOO\r`, and the error reply line read back as `FOO`
/// (artifacts/line_parser/unknown-word-cr).
#[test]
fn unknown_word_with_cr_round_trips() {
    let e = Command::parse(b"FOO\r BAR").expect_err("unknown");
    let r = Reply::Error(e.reply());
    assert_eq!(Reply::parse(&r.to_line()), Ok(r));
}

/// control/src/config.rs `secs` (fixed): `heartbeat_timeout = 1e-10` was
/// accepted and became a zero Duration (artifacts/config_parser/heartbeat-1e-10).
#[test]
fn sub_nanosecond_timeout_is_refused() {
    use clap::Parser;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "heartbeat_timeout = 1e-10\ndb = \"x.db\"\n").expect("write");
    let cli = whelm_control::cli::Cli::try_parse_from([
        std::ffi::OsStr::new("whelm-control"),
        std::ffi::OsStr::new("--config"),
        p.as_os_str(),
    ])
    .expect("cli");
    if let Ok(c) = whelm_control::config::Config::from_cli(&cli) {
        panic!("loaded heartbeat_timeout {:?}", c.machine.heartbeat_timeout);
    }
}

/// control/src/dsn.rs `Display for MysqlDsn` (fixed): a DSN without a
/// password prints as a URL that parses back to the same DSN (user and
/// database used to be printed without percent-encoding)
/// (artifacts/config_parser/dsn-user-percent).
#[test]
fn dsn_display_parses_back() {
    use whelm_control::dsn::MysqlDsn;
    for s in [
        "us%r@tcp(host)/whelm",
        "a@b@tcp(host)/whelm",
        "u@tcp(host)/db/x",
    ] {
        let Ok(d) = MysqlDsn::parse(s) else { continue };
        assert_eq!(MysqlDsn::parse(&d.to_string()), Ok(d), "{s}");
    }
}
