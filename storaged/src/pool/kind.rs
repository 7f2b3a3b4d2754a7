//! SSD or HDD: the rotational flag, checked by a random-read latency probe.
//!
//! Some controllers (USB bridges, RAID cards, virtual disks) report the
//! wrong rotational flag. A disk counts as SSD only if it says so *and*
//! random 4 KiB reads are fast; anything else is HDD, so a spinning disk can
//! never be sold as SSD capacity. The probe reads with `O_DIRECT`, bypassing
//! the page cache, at offsets spread over the whole disk.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Median random-read latency above which a disk is treated as spinning.
pub const HDD_THRESHOLD_US: u64 = 2_000;
const READS: usize = 32;
const BLOCK: usize = 4096;

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot probe read latency of {path}: {source}")]
pub struct LatencyError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    Ssd,
    Hdd,
}

/// The verdict and the evidence for it; stored with the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindVerdict {
    pub kind: DiskKind,
    pub reported_rotational: bool,
    pub median_read_us: u64,
    /// Set when the measurement contradicts what the disk reports.
    pub note: Option<String>,
}

/// Decides the kind from the flag and the measured latency.
pub fn judge(reported_rotational: bool, median_read_us: u64) -> KindVerdict {
    let slow = median_read_us > HDD_THRESHOLD_US;
    let (kind, note) = match (reported_rotational, slow) {
        (false, false) => (DiskKind::Ssd, None),
        (false, true) => (
            DiskKind::Hdd,
            Some(format!(
                "reports non-rotational but random reads take {median_read_us} µs: treated as HDD"
            )),
        ),
        (true, false) => (
            DiskKind::Hdd,
            Some(format!(
                "reports rotational though random reads take {median_read_us} µs: kept as HDD"
            )),
        ),
        (true, true) => (DiskKind::Hdd, None),
    };
    KindVerdict {
        kind,
        reported_rotational,
        median_read_us,
        note,
    }
}

/// Median latency of random direct 4 KiB reads over `size_bytes` of `path`.
pub fn probe_latency_us(path: &Path, size_bytes: u64) -> Result<u64, LatencyError> {
    let err = |source| LatencyError {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .map_err(err)?;
    let blocks = (size_bytes / BLOCK as u64).max(1);
    let mut buf = AlignedBlock::new();
    let mut samples = Vec::with_capacity(READS);
    // A multiplicative sequence spreads offsets over the disk without an RNG
    // dependency; the seed varies per run so no cache can learn it.
    let mut x = u64::from(std::process::id()) | 1;
    for _ in 0..READS {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (x >> 11) % blocks * BLOCK as u64;
        let start = Instant::now();
        file.read_exact_at(buf.bytes_mut(), offset).map_err(err)?;
        samples.push(start.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    Ok(samples[READS / 2])
}

/// A 4 KiB buffer aligned for `O_DIRECT`.
#[repr(C, align(4096))]
struct AlignedBlock([u8; BLOCK]);

impl AlignedBlock {
    fn new() -> Box<Self> {
        Box::new(Self([0; BLOCK]))
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fast_non_rotational_disk_is_ssd() {
        assert_eq!(judge(false, 80).kind, DiskKind::Ssd);
        assert!(judge(false, 80).note.is_none());
        let liar = judge(false, 8_000);
        assert_eq!(liar.kind, DiskKind::Hdd);
        assert!(liar.note.as_deref().is_some_and(|n| n.contains("8000")));
        assert_eq!(judge(true, 8_000).kind, DiskKind::Hdd);
        assert_eq!(judge(true, 50).kind, DiskKind::Hdd);
        assert!(judge(true, 50).note.is_some());
    }

    #[test]
    fn probe_fails_cleanly_on_a_missing_device() {
        let err = probe_latency_us(Path::new("/nonexistent/disk"), 1 << 30).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/disk"), "{err}");
    }
}
