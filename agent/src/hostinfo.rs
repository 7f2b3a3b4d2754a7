//! Facts about the host for `/v1/node`, and how busy it and the daemons are.
//!
//! `sysinfo` reads the kernel's numbers; [`Sampler`] keeps one
//! `sysinfo::System` between samples, because a CPU share is the difference
//! between two readings: the first sample has no CPU usage, every later one
//! has the share since the one before. Memory is what the kernel reports as
//! available; a daemon's memory is its resident set. Limits: sampling is
//! blocking (it reads `/proc`), so callers run it off the async workers; a
//! fact that cannot be read is left empty rather than failing the report.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sysinfo::{CpuRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub count: usize,
    pub model: String,
    /// Share of all CPUs busy since the previous sample, 0 to 100; none on
    /// the first sample.
    #[serde(default)]
    pub usage_percent: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl Memory {
    /// What is not available: used by processes and the kernel.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub cpu: Cpu,
    pub memory: Memory,
    pub uptime_secs: f64,
}

/// How much one process uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Share of one CPU since the previous sample (can pass 100 with
    /// several threads busy); none on the first sample of this process.
    pub cpu_percent: Option<f32>,
    /// CPU time used since the process started.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub rss_bytes: u64,
}

/// Successive samples of the host and of chosen processes.
#[derive(Debug)]
pub struct Sampler {
    system: System,
    /// Whether the CPU counters have been read once already.
    primed: bool,
    /// The processes seen in the previous sample.
    seen: Vec<Pid>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_list(CpuRefreshKind::nothing());
        Self {
            system,
            primed: false,
            seen: Vec::new(),
        }
    }

    /// The host's facts now, and the usage of each of `pids` still alive.
    /// Blocking.
    pub fn sample(&mut self, pids: &[u32]) -> (HostInfo, HashMap<u32, ProcessUsage>) {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let wanted: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let cpus = self.system.cpus();
        let host = HostInfo {
            hostname: System::host_name().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            cpu: Cpu {
                count: cpus.len(),
                model: cpus
                    .first()
                    .map(|c| c.brand().trim().to_owned())
                    .unwrap_or_default(),
                usage_percent: self.primed.then(|| self.system.global_cpu_usage()),
            },
            memory: Memory {
                total_bytes: self.system.total_memory(),
                available_bytes: self.system.available_memory(),
            },
            uptime_secs: System::uptime() as f64,
        };
        let usage = wanted
            .iter()
            .filter_map(|pid| {
                let p = self.system.process(*pid)?;
                let usage = ProcessUsage {
                    cpu_percent: self.seen.contains(pid).then(|| p.cpu_usage()),
                    cpu_seconds: p.accumulated_cpu_time() as f64 / 1000.0,
                    rss_bytes: p.memory(),
                };
                Some((pid.as_u32(), usage))
            })
            .collect();
        self.primed = true;
        self.seen = wanted;
        (host, usage)
    }
}

impl HostInfo {
    /// The host's facts now, without CPU usage (that needs two samples).
    /// Blocking.
    pub fn read() -> Self {
        Sampler::new().sample(&[]).0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn reads_this_host() {
        let info = HostInfo::read();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(info.hostname, hostname.trim());
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(info.kernel, release.trim());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let processors = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(info.cpu.count, processors);
        assert!(info.memory.total_bytes > 0);
        assert!(info.memory.available_bytes <= info.memory.total_bytes);
        assert!(info.uptime_secs > 0.0);
        assert_eq!(info.cpu.usage_percent, None);
    }

    #[test]
    fn a_busy_process_shows_cpu_and_memory_from_the_second_sample() {
        let me = std::process::id();
        let mut sampler = Sampler::new();
        let (_, first) = sampler.sample(&[me]);
        assert_eq!(first[&me].cpu_percent, None);
        assert!(first[&me].rss_bytes > 0);
        // Burn CPU on this thread for a while, then sample again.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(400) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (host, second) = sampler.sample(&[me, u32::MAX - 1]);
        let usage = second[&me];
        let cpu = usage.cpu_percent.unwrap();
        assert!(cpu > 20.0, "a spinning thread shows as busy: {cpu}");
        assert!(usage.cpu_seconds >= 0.2, "{usage:?}");
        assert!(host.cpu.usage_percent.is_some());
        assert!(!second.contains_key(&(u32::MAX - 1)), "no such process");
    }
}
