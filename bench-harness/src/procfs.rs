//! CPU time and memory of processes and threads, from /proc.
//!
//! CPU times come from `utime + stime` of `/proc/PID/stat` (a whole
//! process) or `/proc/thread-self/stat` (the calling thread), in clock
//! ticks of 1/100 s (Linux's USER_HZ): precise to 10 ms, which is why
//! utilisation is computed over whole runs, not per packet.
//!
//! The whole machine's CPU time comes from the first (`cpu`) line of
//! `/proc/stat`: every core's busy jiffies (user, nice, system, irq,
//! softirq — idle, iowait and steal are not work done here; guest time is
//! already inside user), in the same ticks. Whatever a run costs on any
//! core — the server's threads, the kernel's softirq work for loopback on
//! the other core, the generator — is in it.

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

/// One reading of the whole machine's CPU time (all cores), from the
/// `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineSample {
    /// Busy time of all cores together: user + nice + system + irq +
    /// softirq, in ticks of 1/[`TICKS_PER_SEC`] s.
    pub busy_ticks: u64,
    /// Every tick counted, busy or not (idle, iowait and steal too).
    pub total_ticks: u64,
    /// Cores listed (`cpuN` lines).
    pub cores: usize,
}

impl MachineSample {
    /// Busy CPU time from `earlier` to `self`, all cores together.
    pub fn busy_since(&self, earlier: &MachineSample) -> Duration {
        Duration::from_millis(self.busy_ticks.saturating_sub(earlier.busy_ticks) * 1000 / TICKS_PER_SEC)
    }

    /// Busy share of all cores from `earlier` to `self`, percent (of every
    /// core together: 100 is all of them busy).
    pub fn busy_percent_since(&self, earlier: &MachineSample) -> f64 {
        let total = self.total_ticks.saturating_sub(earlier.total_ticks);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / total as f64
    }
}

fn parse_proc_stat(text: &str) -> io::Result<MachineSample> {
    let bad = || io::Error::other("malformed /proc/stat");
    let line = text.lines().find(|l| l.starts_with("cpu ")).ok_or_else(bad)?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let f: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().map_err(|_| bad()))
        .collect::<io::Result<_>>()?;
    if f.len() < 7 {
        return Err(bad());
    }
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    // guest and guest_nice are already counted in user and nice.
    let total = f.iter().take(8).sum();
    let cores = text
        .lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    Ok(MachineSample { busy_ticks: busy, total_ticks: total, cores: cores.max(1) })
}

/// The whole machine's CPU time so far (`/proc/stat`).
pub fn machine() -> io::Result<MachineSample> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_busy_time_of_all_cores() {
        let text = "cpu  803092 98110 349720 648156 145528 11 70620 4833 7 0\n\
                    cpu0 400000 49000 170000 320000 70000 5 35000 2400 0 0\n\
                    cpu1 403092 49110 179720 328156 75528 6 35620 2433 7 0\n\
                    intr 1 2 3\nctxt 5\n";
        let s = parse_proc_stat(text).unwrap();
        // user + nice + system + irq + softirq; not idle, iowait, steal.
        assert_eq!(s.busy_ticks, 803_092 + 98_110 + 349_720 + 11 + 70_620);
        assert_eq!(s.total_ticks, s.busy_ticks + 648_156 + 145_528 + 4_833);
        assert_eq!(s.cores, 2);
        let later = MachineSample { busy_ticks: s.busy_ticks + 150, total_ticks: s.total_ticks + 200, cores: 2 };
        assert_eq!(later.busy_since(&s), Duration::from_millis(1500));
        assert_eq!(later.busy_percent_since(&s), 75.0);
        assert_eq!(s.busy_since(&later), Duration::ZERO);
        // Older kernels' seven fields are enough; fewer, or text, are not.
        assert_eq!(parse_proc_stat("cpu 1 2 3 4 5 6 7\n").unwrap().busy_ticks, 1 + 2 + 3 + 6 + 7);
        assert!(parse_proc_stat("cpu 1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu a b c d e f g\n").is_err());
        assert!(parse_proc_stat("intr 1\n").is_err());
    }

    #[test]
    fn reads_this_machine() {
        let a = machine().unwrap();
        let b = machine().unwrap();
        assert!(a.cores >= 1 && a.busy_ticks > 0 && b.total_ticks >= a.total_ticks);
    }

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
