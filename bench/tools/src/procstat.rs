//! CPU accounting from `/proc`, taken at the start and the end of the measured window:
//! the server's and the client's CPU time (sum over `/proc/<pid>/task/*/schedstat`,
//! nanoseconds, so a 5 s run is not rounded to 10 ms ticks) and the whole machine's busy
//! time (`/proc/stat`), from which the other processes' share is derived so that a run
//! disturbed by a neighbour can be spotted.

use std::fs;
use std::io;

/// The first field of a `schedstat` file: time spent on the CPU, in nanoseconds.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Busy clock ticks from the aggregate `cpu ` line of `/proc/stat`:
/// user + nice + system + irq + softirq + steal (idle and iowait excluded; guest time is
/// already counted in user and nice).
pub fn parse_stat_busy_ticks(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|w| w.parse().ok()).collect::<Option<_>>()?;
    if f.len() < 8 {
        return None;
    }
    let (user, nice, system, irq, softirq, steal) = (f[0], f[1], f[2], f[5], f[6], f[7]);
    Some(user + nice + system + irq + softirq + steal)
}

/// CPU nanoseconds of every live thread of `pid` ("self" for this process). Threads
/// that exit between the listing and the read are skipped; a missing process is an error.
pub fn task_cpu_ns(pid: &str) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = fs::read_to_string(&path) {
            total += parse_schedstat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path:?}")))?;
        }
    }
    Ok(total)
}

pub fn machine_busy_ticks() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_stat_busy_ticks(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat has no cpu line"))
}

/// One reading of all three counters.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    pub server_ns: Option<u64>,
    pub client_ns: u64,
    pub busy_ticks: u64,
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>) -> io::Result<CpuSnapshot> {
        let server_ns = match server_pid {
            Some(pid) => Some(task_cpu_ns(&pid.to_string()).map_err(|e| io::Error::new(e.kind(), format!("server pid {pid}: {e}")))?),
            None => None,
        };
        Ok(CpuSnapshot { server_ns, client_ns: task_cpu_ns("self")?, busy_ticks: machine_busy_ticks()? })
    }
}

/// The CPU used between two snapshots, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUsage {
    pub server_s: Option<f64>,
    pub client_s: f64,
    pub machine_busy_s: f64,
    /// max(0, machine busy - server - client): everything else on the machine.
    pub others_s: f64,
}

impl CpuUsage {
    pub fn between(start: &CpuSnapshot, end: &CpuSnapshot, ticks_per_sec: f64) -> CpuUsage {
        let ns = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
        let server_s = match (start.server_ns, end.server_ns) {
            (Some(a), Some(b)) => Some(ns(a, b)),
            _ => None,
        };
        let client_s = ns(start.client_ns, end.client_ns);
        let machine_busy_s = end.busy_ticks.saturating_sub(start.busy_ticks) as f64 / ticks_per_sec;
        let others_s = (machine_busy_s - server_s.unwrap_or(0.0) - client_s).max(0.0);
        CpuUsage { server_s, client_s, machine_busy_s, others_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123456789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn stat_busy_sums_the_busy_columns() {
        let text = "cpu  100 2 30 5000 7 4 5 6 0 0\ncpu0 50 1 15 2500 3 2 2 3 0 0\nintr 1 2 3\n";
        // user 100 + nice 2 + system 30 + irq 4 + softirq 5 + steal 6; idle/iowait excluded.
        assert_eq!(parse_stat_busy_ticks(text), Some(147));
        assert_eq!(parse_stat_busy_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_stat_busy_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn usage_between_snapshots() {
        let a = CpuSnapshot { server_ns: Some(1_000_000_000), client_ns: 0, busy_ticks: 100 };
        let b = CpuSnapshot { server_ns: Some(3_000_000_000), client_ns: 500_000_000, busy_ticks: 400 };
        let u = CpuUsage::between(&a, &b, 100.0);
        assert_eq!(u, CpuUsage { server_s: Some(2.0), client_s: 0.5, machine_busy_s: 3.0, others_s: 0.5 });
        // Tick granularity can make busy time smaller than the exact per-task sums.
        let c = CpuSnapshot { busy_ticks: 300, ..b };
        assert_eq!(CpuUsage::between(&a, &c, 100.0).others_s, 0.0);
    }

    #[test]
    fn reads_this_process() {
        assert!(task_cpu_ns("self").unwrap() > 0);
        assert!(machine_busy_ticks().unwrap() > 0);
    }
}
