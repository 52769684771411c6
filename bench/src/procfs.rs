//! What `/proc` says about a process: CPU time used, resident memory and open file
//! descriptors. The harness charges
//! CPU to the server processes only (never to itself).

/// Clock ticks per second of `/proc/<pid>/stat` times (Linux's USER_HZ).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time (user + system) a process has used, in microseconds.
pub(crate) fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / TICKS_PER_SECOND)
}

/// Resident set size, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors (entries of `/proc/<pid>/fd`).
pub(crate) fn open_fds(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// CPU used by a set of processes between two points.
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    start: u64,
}

impl CpuMeter {
    pub(crate) fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: total(pids),
        }
    }

    /// Microseconds of CPU used since `start`.
    pub(crate) fn elapsed_micros(&self) -> u64 {
        total(&self.pids).saturating_sub(self.start)
    }
}

fn total(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| cpu_micros(*pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_micros(me).is_some());
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        // stdin, stdout and stderr at least.
        assert!(open_fds(me).is_some_and(|fds| fds >= 3));
    }
}
