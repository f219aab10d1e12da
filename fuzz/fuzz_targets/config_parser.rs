#![no_main]
//! cargo-fuzz entry point; the target's body and its properties are
//! `whelm_fuzz::config_parser::run` (src/config_parser.rs), which tests/replay.rs also runs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    whelm_fuzz::config_parser::run(data);
});
