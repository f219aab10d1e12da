//! Placeholder until its issue lands.
fn main() {
    eprintln!("whelm-bench: not built yet");
    std::process::exit(1);
}
