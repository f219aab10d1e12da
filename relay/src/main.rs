//! Placeholder until its issue lands.
fn main() {
    eprintln!("whelm-relay: not built yet");
    std::process::exit(1);
}
