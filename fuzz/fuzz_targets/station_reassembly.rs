#![no_main]
//! cargo-fuzz entry point; the target's body and its properties are
//! `whelm_fuzz::station_reassembly::run` (src/station_reassembly.rs), which tests/replay.rs also runs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    whelm_fuzz::station_reassembly::run(data);
});
