//! A progress line on stderr for runs longer than a few seconds: redrawn in
//! place on a terminal, one line per run otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

/// Runs shorter than this (s) draw no bar.
const MIN_SECONDS: f64 = 3.0;
const WIDTH: usize = 30;

/// Progress of a sequence of runs.
#[derive(Debug)]
pub struct Progress {
    total_runs: usize,
    run_seconds: f64,
    tty: bool,
    state: Mutex<(usize, String, Instant)>,
}

impl Progress {
    /// Progress over `total_runs` runs of about `run_seconds` each.
    pub fn new(total_runs: usize, run_seconds: f64) -> Progress {
        Progress {
            total_runs,
            run_seconds,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new((0, String::new(), Instant::now())),
        }
    }

    /// A new run starts.
    pub fn start_run(&self, index: usize, label: &str) {
        if let Ok(mut s) = self.state.lock() {
            *s = (index, label.to_string(), Instant::now());
        }
        if !self.tty {
            eprintln!("run {}/{}: {label}", index + 1, self.total_runs);
        }
    }

    /// The current run is `fraction` done.
    pub fn update(&self, fraction: f64) {
        if !self.tty || self.run_seconds * self.total_runs as f64 <= MIN_SECONDS {
            return;
        }
        let Ok(s) = self.state.lock() else {
            return;
        };
        let overall = (s.0 as f64 + fraction.clamp(0.0, 1.0)) / self.total_runs.max(1) as f64;
        let filled = (overall * WIDTH as f64) as usize;
        let left = (1.0 - overall) * self.total_runs as f64 * self.run_seconds;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:3.0}% run {}/{} {:<40} ~{:.0}s left ",
            "#".repeat(filled.min(WIDTH)),
            " ".repeat(WIDTH - filled.min(WIDTH)),
            overall * 100.0,
            s.0 + 1,
            self.total_runs,
            s.1,
            left
        );
        let _ = err.flush();
    }

    /// All runs are done: end the progress line.
    pub fn finish(&self) {
        if self.tty && self.run_seconds * self.total_runs as f64 > MIN_SECONDS {
            eprintln!();
        }
    }
}
