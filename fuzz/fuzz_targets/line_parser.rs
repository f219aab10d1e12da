#![no_main]
//! cargo-fuzz entry point; the target's body and its properties are
//! `whelm_fuzz::line_parser::run` (src/line_parser.rs), which tests/replay.rs also runs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    whelm_fuzz::line_parser::run(data);
});
