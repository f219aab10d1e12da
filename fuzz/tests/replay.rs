//! Replays every committed corpus file and crash artifact through the target
//! bodies, without libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`
//! (stable). A file under `corpus/<target>/` or `artifacts/<target>/` runs
//! through `whelm_fuzz::<target>::run`; any panic fails the test.

use std::path::Path;

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 5] = [
    ("ovp_validate", whelm_fuzz::ovp_validate::run),
    ("station_reassembly", whelm_fuzz::station_reassembly::run),
    ("line_parser", whelm_fuzz::line_parser::run),
    ("channel_decoder", whelm_fuzz::channel_decoder::run),
    ("config_parser", whelm_fuzz::config_parser::run),
];

fn replay(dir: &str, name: &str, body: Body) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for p in &paths {
        let data = std::fs::read(p).expect("read a corpus file");
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "{} fails its target", p.display());
    }
    paths.len()
}

#[test]
fn corpus_replays() {
    for (name, body) in TARGETS {
        let n = replay("corpus", name, body);
        assert!(n > 0, "no corpus for {name}");
    }
}

#[test]
fn artifacts_replay() {
    for (name, body) in TARGETS {
        replay("artifacts", name, body);
    }
}
