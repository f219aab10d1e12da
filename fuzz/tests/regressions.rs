//! One test per bug the targets found. Open bugs (see `src/known.rs`) are
//! `#[ignore]`d until the fix lands in the crate that owns the code; run
//! them with `cargo test --manifest-path fuzz/Cargo.toml -- --ignored`.

use whelm_shared::ovp::{HEADER_LEN, StationId};
use whelm_shared::station::{Message, Outgoing, Reassembler};

/// Bug::CobsLimit (shared/src/station.rs, `Reassembler::push`): the
/// largest text `Outgoing::text` frames must reassemble.
#[test]
#[ignore = "open: shared/src/station.rs Reassembler::push limits the COBS-encoded length to MAX_MESSAGE_LEN"]
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

/// The artifact through the target body with the open-bug checks on.
#[test]
#[ignore = "open: see text_up_to_the_ipv4_limit_reassembles"]
fn artifact_text_65400_strict() {
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/artifacts/station_reassembly/text-65400"
    ))
    .expect("artifact");
    // SAFETY: set_var is unsafe because another thread may read the
    // environment at the same time; the other test of this binary does not
    // read it, and the value is the same whoever reads it.
    unsafe { std::env::set_var("WHELM_FUZZ_STRICT", "1") };
    whelm_fuzz::station_reassembly::run(&data);
}

/// Bug::TrailingCr (shared/src/line.rs, `Command::parse`, `Reply::parse`):
/// a parsed command or reply re-parses from its `to_line` unchanged.
#[test]
#[ignore = "open: shared/src/line.rs strips one \\r only, a second one stays in the argument"]
fn trailing_cr_round_trips() {
    use whelm_shared::line::{Command, Reply};
    for line in [
        &b"AUTH x\r\r"[..],
        b"MSG 2 hi\r\r\n",
        b"X\r\r",
        b"FOO\r BAR",
    ] {
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

/// Bug::SubNanosecond (control/src/config.rs, `secs`): a duration below
/// one nanosecond must be refused, not loaded as zero.
#[test]
#[ignore = "open: control/src/config.rs secs() checks the f64, not the Duration it becomes"]
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
    match whelm_control::config::Config::from_cli(&cli) {
        Err(_) => {}
        Ok(c) => panic!("loaded heartbeat_timeout {:?}", c.machine.heartbeat_timeout),
    }
}
