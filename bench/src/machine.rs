//! What the report says about where it ran: git commit, cores, kernel, CPU.

use std::process::Command;

/// The machine and source a report belongs to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// `git rev-parse HEAD` in the current directory, if available.
    pub git_commit: Option<String>,
    /// Whether `git status --porcelain` showed local changes.
    pub git_dirty: Option<bool>,
    /// Online CPUs.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// First `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Host name.
    pub hostname: String,
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    /// Probes the machine (a few small reads and two git calls).
    pub fn probe() -> Machine {
        let uname = nix::sys::utsname::uname().ok();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        // The checkout of the current directory, else the one the
        // executable was built in (target/<profile>/ lies inside it).
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_string_lossy().into_owned()));
        let dirs: Vec<String> = [Some(".".to_string()), exe_dir]
            .into_iter()
            .flatten()
            .collect();
        let git = |args: &[&str]| {
            dirs.iter().find_map(|d| {
                let mut a = vec!["-C", d.as_str()];
                a.extend_from_slice(args);
                run("git", &a)
            })
        };
        Machine {
            git_commit: git(&["rev-parse", "HEAD"]),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty()),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: uname.as_ref().map_or_else(
                || "unknown".into(),
                |u| u.release().to_string_lossy().into(),
            ),
            cpu_model,
            hostname: uname.as_ref().map_or_else(
                || "unknown".into(),
                |u| u.nodename().to_string_lossy().into(),
            ),
        }
    }
}
