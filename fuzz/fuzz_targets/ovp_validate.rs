#![no_main]
//! cargo-fuzz entry point; the target's body and its properties are
//! `whelm_fuzz::ovp_validate::run` (src/ovp_validate.rs), which tests/replay.rs also runs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    whelm_fuzz::ovp_validate::run(data);
});
