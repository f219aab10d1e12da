//! CPU time and memory of a process (or one thread) from /proc.
//!
//! CPU: utime + stime (fields 14 and 15 of `/proc/<pid>/stat`, all threads
//! of the process), in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux:
//! 10 ms resolution, so windows of seconds are needed). Memory: `VmRSS` of
//! `/proc/<pid>/status`.

use std::path::Path;

use anyhow::{Context, bail};

/// Clock ticks per second of `/proc/*/stat` times.
pub fn ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// utime + stime of the process or thread whose stat file is `path`, in ns.
pub fn cpu_ns_of(path: &Path) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_stat_cpu_ticks(&s)
        .map(|t| t.saturating_mul(1_000_000_000 / ticks_per_second()))
        .with_context(|| format!("parsing {}", path.display()))
}

/// utime + stime of process `pid`, in ns.
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    cpu_ns_of(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime of the calling thread, in ns.
pub fn thread_cpu_ns() -> anyhow::Result<u64> {
    cpu_ns_of(Path::new("/proc/thread-self/stat"))
}

/// utime + stime in ticks from the text of a stat file. The command name
/// (field 2) may contain spaces and parentheses: fields are counted after
/// its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("no ')' after the command name");
    };
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        f.get(n - 3)
            .with_context(|| format!("field {n} missing"))?
            .parse::<u64>()
            .with_context(|| format!("field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident set size of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&s).with_context(|| format!("no VmRSS in {path}"))
}

/// `VmRSS:  1234 kB` -> 1234.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let s = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 37 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_stat_cpu_ticks(s).unwrap(), 287);
        assert!(parse_stat_cpu_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn parses_rss_and_reads_self() {
        assert_eq!(parse_vm_rss("Name: x\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_ns(me).unwrap();
        thread_cpu_ns().unwrap();
    }
}
