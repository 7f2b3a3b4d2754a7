//! Facts about the host for `/v1/node`: hostname, kernel, CPUs, memory,
//! uptime.
//!
//! Everything is read from a `/proc` root given as a parameter, so tests feed
//! it a fixture tree. A fact that cannot be read is left empty rather than
//! failing the whole report.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub count: usize,
    pub model: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub cpu: Cpu,
    pub memory: Memory,
    pub uptime_secs: f64,
}

impl HostInfo {
    /// Reads the host facts under `proc` (normally `/proc`).
    pub fn read(proc: &Path) -> Self {
        let text = |rel: &str| std::fs::read_to_string(proc.join(rel)).unwrap_or_default();
        let cpuinfo = text("cpuinfo");
        let meminfo = text("meminfo");
        Self {
            hostname: text("sys/kernel/hostname").trim().to_owned(),
            kernel: text("sys/kernel/osrelease").trim().to_owned(),
            cpu: parse_cpuinfo(&cpuinfo),
            memory: Memory {
                total_bytes: meminfo_kib(&meminfo, "MemTotal") * 1024,
                available_bytes: meminfo_kib(&meminfo, "MemAvailable") * 1024,
            },
            uptime_secs: text("uptime")
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
        }
    }
}

fn parse_cpuinfo(text: &str) -> Cpu {
    let field = |line: &str, key: &str| -> Option<String> {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    };
    Cpu {
        count: text
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count(),
        model: text
            .lines()
            .find_map(|l| field(l, "model name"))
            .unwrap_or_default(),
    }
}

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_proc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::create_dir_all(p.join("sys/kernel")).expect("mkdir");
        std::fs::write(p.join("sys/kernel/hostname"), "node-1\n").expect("w");
        std::fs::write(p.join("sys/kernel/osrelease"), "6.1.0-grove\n").expect("w");
        std::fs::write(
            p.join("cpuinfo"),
            "processor\t: 0\nmodel name\t: Test CPU @ 3GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 3GHz\n",
        )
        .expect("w");
        std::fs::write(
            p.join("meminfo"),
            "MemTotal:       16384 kB\nMemFree:  100 kB\nMemAvailable:    8192 kB\n",
        )
        .expect("w");
        std::fs::write(p.join("uptime"), "1234.56 999.00\n").expect("w");
        let info = HostInfo::read(p);
        assert_eq!(info.hostname, "node-1");
        assert_eq!(info.kernel, "6.1.0-grove");
        assert_eq!(info.cpu.count, 2);
        assert_eq!(info.cpu.model, "Test CPU @ 3GHz");
        assert_eq!(info.memory.total_bytes, 16384 * 1024);
        assert_eq!(info.memory.available_bytes, 8192 * 1024);
        assert!((info.uptime_secs - 1234.56).abs() < 1e-9);
    }

    #[test]
    fn missing_proc_gives_empty_facts() {
        let info = HostInfo::read(Path::new("/nonexistent"));
        assert_eq!(info, HostInfo::default());
    }
}
