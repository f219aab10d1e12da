//! Placeholder until its issue lands.
fn main() {
    eprintln!("whelm-control: not built yet");
    std::process::exit(1);
}
