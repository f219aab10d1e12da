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

/// Time the threads of process `pid` spent runnable but waiting for a CPU
/// (second field of `/proc/<pid>/task/*/schedstat`), in ns: how much a
/// neighbour on the same core took from it. Summed over its threads.
pub fn run_queue_wait_ns(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = e
            .with_context(|| format!("listing {dir}"))?
            .path()
            .join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(&path) {
            total += parse_schedstat_wait(&s).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Run-queue wait of the calling thread, ns.
pub fn thread_run_queue_wait_ns() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    parse_schedstat_wait(&s).context("parsing /proc/thread-self/schedstat")
}

/// `run_ns wait_ns slices` -> wait_ns.
pub fn parse_schedstat_wait(s: &str) -> Option<u64> {
    s.split_whitespace().nth(1)?.parse().ok()
}

/// Receive-queue drops of every UDP socket bound to local `port` (IPv4,
/// `/proc/net/udp`, last column), summed: the server's own socket
/// overflowing, which is the server's loss, not the bench's.
pub fn udp_socket_drops(port: u16) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
    Ok(parse_udp_drops(&s, port))
}

/// Sums the drops column of the lines whose local port is `port`.
pub fn parse_udp_drops(table: &str, port: u16) -> u64 {
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            if !local.ends_with(&want) {
                return None;
            }
            f.last()?.parse::<u64>().ok()
        })
        .sum()
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
        run_queue_wait_ns(me).unwrap();
        thread_run_queue_wait_ns().unwrap();
        assert_eq!(parse_schedstat_wait("5 7 9\n"), Some(7));
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                   1: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17\n\
                   2: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 3\n\
                   3: 0100007F:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 5\n";
        assert_eq!(parse_udp_drops(udp, 0x9C40), 20);
        udp_socket_drops(1).unwrap();
    }
}
