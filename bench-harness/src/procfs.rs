//! CPU time and memory of processes and threads, from /proc.
//!
//! CPU times come from `utime + stime` of `/proc/PID/stat` (a whole
//! process) or `/proc/thread-self/stat` (the calling thread), in clock
//! ticks of 1/100 s (Linux's USER_HZ): precise to 10 ms, which is why
//! utilisation is computed over whole runs, not per packet.

use std::io;
use std::time::Duration;

use serde::Serialize;

/// Linux's USER_HZ: the unit of the times in /proc/*/stat.
pub const TICKS_PER_SEC: u64 = 100;

fn parse_stat_cpu(text: &str) -> io::Result<Duration> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let rest = text.rfind(')').map(|i| &text[i + 1..]).ok_or_else(|| io::Error::other("malformed stat"))?;
    let mut f = rest.split_ascii_whitespace();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime = f.nth(11).and_then(|s| s.parse::<u64>().ok());
    let stime = f.next().and_then(|s| s.parse::<u64>().ok());
    match (utime, stime) {
        (Some(u), Some(s)) => Ok(Duration::from_millis((u + s) * 1000 / TICKS_PER_SEC)),
        _ => Err(io::Error::other("malformed stat")),
    }
}

/// CPU time (user + system) of process `pid`, all its threads included.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// CPU time of this whole process.
pub fn self_cpu() -> io::Result<Duration> {
    parse_stat_cpu(&std::fs::read_to_string("/proc/self/stat")?)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> io::Result<Duration> {
    parse_stat_cpu(&std::fs::read_to_string("/proc/thread-self/stat")?)
}

/// Resident memory of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// VmRSS: resident now, KiB.
    pub rss_kib: u64,
    /// VmHWM: peak resident, KiB.
    pub hwm_kib: u64,
}

fn parse_status(text: &str) -> Memory {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") }
}

/// VmRSS and VmHWM of process `pid`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    Ok(parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status"))?))
}

/// One reading of a process's CPU time and memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSample {
    /// CPU time so far.
    pub cpu: Duration,
    /// Memory now.
    pub memory: Memory,
}

/// Reads process `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    Ok(ProcSample { cpu: process_cpu(pid)?, memory: memory(pid)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_cpu(line).unwrap(), Duration::from_millis(3800));
        assert!(parse_stat_cpu("garbage").is_err());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let s = sample(pid).unwrap();
        assert!(s.memory.rss_kib > 0 && s.memory.hwm_kib >= s.memory.rss_kib);
        thread_cpu().unwrap();
        self_cpu().unwrap();
        assert_eq!(parse_status("VmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n"), Memory { rss_kib: 1024, hwm_kib: 2048 });
    }
}
