//! CPU affinity of the load generator (`sched_setaffinity` through nix).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Pins the calling thread to `core`. Returns why not, as text, on failure
/// (the run then reports that the generator was not pinned).
pub fn pin_current_thread(core: usize) -> Result<(), String> {
    sched_setaffinity(Pid::from_raw(0), &set_of(&[core])?).map_err(|e| format!("core {core}: {e}"))
}

/// The allowed cores not in `server`; empty when the server has them all.
pub fn other_cores(server: &[usize]) -> Vec<usize> {
    allowed_cores()
        .into_iter()
        .filter(|c| !server.contains(c))
        .collect()
}

fn set_of(cores: &[usize]) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    for &c in cores {
        set.set(c).map_err(|e| format!("core {c}: {e}"))?;
    }
    Ok(set)
}

/// Restricts the calling thread (and threads it starts later) to the
/// allowed cores not in `server`, so that the bench's own helpers do not
/// preempt the server under test. Nothing to do when there are none.
pub fn keep_off(server: &[usize]) -> Result<(), String> {
    let others = other_cores(server);
    if others.is_empty() {
        return Ok(());
    }
    sched_setaffinity(Pid::from_raw(0), &set_of(&others)?)
        .map_err(|e| format!("cores {others:?}: {e}"))
}

/// The same for every thread process `pid` has now (a thread started later
/// inherits its creator's cores).
pub fn keep_process_off(pid: u32, server: &[usize]) -> Result<(), String> {
    let others = other_cores(server);
    if others.is_empty() {
        return Ok(());
    }
    let set = set_of(&others)?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        sched_setaffinity(Pid::from_raw(tid), &set)
            .map_err(|e| format!("thread {tid} to cores {others:?}: {e}"))?;
    }
    Ok(())
}

/// Cores this process may run on.
pub fn allowed_cores() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Parses a core list such as `0`, `0,2` or `0-3`.
pub fn parse_core_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad core list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| bad())?;
                let b: usize = b.parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("empty core list {s:?}"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The generator's core: the first allowed core not in `relay`, or `None`
/// when every allowed core is the relay's.
pub fn generator_core(relay: &[usize]) -> Option<usize> {
    other_cores(relay).first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_core_list("0").unwrap(), [0]);
        assert_eq!(parse_core_list("3,0-2,2").unwrap(), [0, 1, 2, 3]);
        assert!(parse_core_list("2-1").is_err());
        assert!(parse_core_list("x").is_err());
        assert!(parse_core_list("").is_err());
        assert!(!allowed_cores().is_empty());
    }
}
