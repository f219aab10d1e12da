//! `whelm-bench`: see the library's module map (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    whelm_bench::cli::main()
}
