#![no_main]
//! cargo-fuzz entry point; the target's body and its properties are
//! `whelm_fuzz::channel_decoder::run` (src/channel_decoder.rs), which tests/replay.rs also runs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    whelm_fuzz::channel_decoder::run(data);
});
