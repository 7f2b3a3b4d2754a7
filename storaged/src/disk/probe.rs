//! Signature probing: what is on a disk, before anything is written to it.
//!
//! Uses util-linux's `blkid -p` (low-level superblock and partition-table
//! probing, bypassing the cache) at the whole device and again at the usual
//! partition offsets (sector 63, 1 MiB), so a filesystem whose partition
//! table was lost is still found; the backup GPT header in the disk's last
//! sector is checked by our own code, since blkid only trusts it behind a
//! protective MBR. [`find_data`] then reads the first and last MiB and 64
//! blocks spread over the disk: a disk holding data that no prober
//! recognizes is never mistaken for a blank one. Limits: sampling reads 64
//! blocks, not every block; data that misses all of them is not seen.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Why a disk could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run blkid on {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blkid failed on {path} (exit {code:?}): {stderr}")]
    Failed {
        path: PathBuf,
        code: Option<i32>,
        stderr: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The signatures found on a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signatures {
    /// Partition table type (`gpt`, `dos`).
    pub pttype: Option<String>,
    /// Filesystem or container type (`ext4`, `btrfs`, `LVM2_member`, ...).
    pub fstype: Option<String>,
    /// What blkid says the signature is for (`filesystem`, `raid`,
    /// `crypto`, `other`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Where the signature was found, when not at the start of the disk
    /// (a filesystem at 1 MiB whose partition table is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Signatures {
    pub fn is_empty(&self) -> bool {
        self.pttype.is_none() && self.fstype.is_none()
    }
}

/// Byte offsets where a partition usually starts: sector 63 (old DOS
/// alignment) and 1 MiB (every tool since).
pub const PARTITION_OFFSETS: [u64; 2] = [63 * 512, 1 << 20];

/// Probes `path`: the whole device, then the usual partition offsets, then
/// the backup GPT header. The first finding wins. Blocking.
pub fn probe(path: &Path, size_bytes: u64) -> Result<Signatures, ProbeError> {
    std::fs::File::open(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let whole = blkid(path, None)?;
    if !whole.is_empty() {
        return Ok(whole);
    }
    for offset in PARTITION_OFFSETS.into_iter().filter(|&o| o < size_bytes) {
        let mut found = blkid(path, Some(offset))?;
        if !found.is_empty() {
            found.offset = Some(offset);
            return Ok(found);
        }
    }
    if let Some(offset) = backup_gpt(path, size_bytes)? {
        return Ok(Signatures {
            pttype: Some("gpt".to_owned()),
            offset: Some(offset),
            ..Signatures::default()
        });
    }
    Ok(Signatures::default())
}

/// `blkid -p` at the start of the device or at `offset`.
///
/// blkid exits 2 both for "nothing found" and for a device it cannot open,
/// so [`probe`] opens the device first: only a readable device can be
/// reported as carrying no signature.
fn blkid(path: &Path, offset: Option<u64>) -> Result<Signatures, ProbeError> {
    let mut command = Command::new("blkid");
    command.args(["-p", "-o", "export"]);
    if let Some(offset) = offset {
        command.arg("-O").arg(offset.to_string());
    }
    let out = command
        .arg(path)
        .output()
        .map_err(|source| ProbeError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    match out.status.code() {
        Some(0) => Ok(parse_export(&String::from_utf8_lossy(&out.stdout))),
        // blkid's documented "nothing found".
        Some(2) => Ok(Signatures::default()),
        code => Err(ProbeError::Failed {
            path: path.to_owned(),
            code,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
    }
}

/// The offset of a backup GPT header ("EFI PART") in the last logical
/// sector, for 512-byte and 4 KiB sectors.
fn backup_gpt(path: &Path, size_bytes: u64) -> Result<Option<u64>, ProbeError> {
    let read_err = |source| ProbeError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    for sector in [512u64, 4096] {
        if size_bytes < sector {
            continue;
        }
        let offset = size_bytes - sector;
        let mut magic = [0u8; 8];
        file.read_exact_at(&mut magic, offset).map_err(read_err)?;
        if &magic == b"EFI PART" {
            return Ok(Some(offset));
        }
    }
    Ok(None)
}

/// Parses `blkid -o export` output.
pub fn parse_export(text: &str) -> Signatures {
    let mut sig = Signatures::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = Some(value.to_owned());
        match key {
            "PTTYPE" => sig.pttype = value,
            "TYPE" => sig.fstype = value,
            "USAGE" => sig.usage = value,
            "LABEL" => sig.label = value,
            "UUID" => sig.uuid = value,
            _ => {}
        }
    }
    sig
}

/// How much of each end of the disk [`find_data`] reads.
pub const EDGE: u64 = 1 << 20;
/// How many blocks [`find_data`] samples between the edges.
pub const SAMPLES: u64 = 64;
/// The size of one sampled block.
pub const SAMPLE_BYTES: u64 = 4096;

/// The offsets [`find_data`] samples: `SAMPLES` blocks evenly spread over
/// the disk, the middle among them.
pub fn sample_offsets(size_bytes: u64) -> Vec<u64> {
    let blocks = size_bytes / SAMPLE_BYTES;
    if blocks == 0 {
        return Vec::new();
    }
    let mut out: Vec<u64> = (0..SAMPLES)
        .map(|i| (blocks * i / SAMPLES) * SAMPLE_BYTES)
        .collect();
    out.dedup();
    out
}

/// The offset of the first non-zero byte found in the first or last MiB of
/// `path`, or in one of the sampled blocks; `None` if every byte read is
/// zero. Blocking.
pub fn find_data(path: &Path, size_bytes: u64) -> Result<Option<u64>, ProbeError> {
    let read_err = |source| ProbeError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let edge = EDGE.min(size_bytes);
    let mut buf = vec![0u8; edge as usize];
    let mut regions = vec![(0, edge)];
    regions.push((size_bytes - edge, edge));
    regions.extend(
        sample_offsets(size_bytes)
            .into_iter()
            .map(|o| (o, SAMPLE_BYTES.min(size_bytes - o))),
    );
    for (offset, len) in regions {
        let chunk = &mut buf[..len as usize];
        file.read_exact_at(chunk, offset).map_err(read_err)?;
        if let Some(at) = chunk.iter().position(|&b| b != 0) {
            return Ok(Some(offset + at as u64));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkid_export() {
        let s = parse_export(
            "DEVNAME=/dev/loop0\nLABEL=grove-abc\nUUID=0796-99c4\nUUID_SUB=41\nBLOCK_SIZE=4096\nTYPE=btrfs\nUSAGE=filesystem\n",
        );
        assert_eq!(s.fstype.as_deref(), Some("btrfs"));
        assert_eq!(s.usage.as_deref(), Some("filesystem"));
        assert_eq!(s.label.as_deref(), Some("grove-abc"));
        assert_eq!(s.uuid.as_deref(), Some("0796-99c4"));
        assert!(s.pttype.is_none());
        let gpt = parse_export("DEVNAME=/dev/loop0\nPTUUID=38a2\nPTTYPE=gpt\n");
        assert_eq!(gpt.pttype.as_deref(), Some("gpt"));
        assert!(!gpt.is_empty());
        assert!(parse_export("").is_empty());
    }

    #[test]
    fn samples_are_spread_over_the_disk_and_include_the_middle() {
        let size = 1u64 << 30;
        let offsets = sample_offsets(size);
        assert_eq!(offsets.len(), SAMPLES as usize);
        assert!(offsets.contains(&(size / 2)), "{offsets:?}");
        assert!(offsets.iter().all(|o| o % SAMPLE_BYTES == 0 && *o < size));
        assert!(sample_offsets(100).is_empty());
    }

    /// A sparse file of `size` bytes, all zero, in a directory of its own.
    fn sparse_image(size: u64) -> (tempfile::TempDir, std::path::PathBuf, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(size).expect("sparse");
        (dir, path, f)
    }

    #[test]
    fn data_is_found_at_either_end_or_in_the_middle() {
        let size = 64 * EDGE;
        let (_dir, path, f) = sparse_image(size);
        assert_eq!(find_data(&path, size).unwrap(), None);
        // One byte at a time: at the tail, the head, then the middle.
        for at in [size - 10, 100, size / 2 + 7] {
            f.write_at(b"x", at).unwrap();
            assert_eq!(find_data(&path, size).unwrap(), Some(at), "at {at}");
            f.write_at(b"\0", at).expect("clear");
        }
        assert!(find_data(Path::new("/nonexistent/disk"), size).is_err());
    }

    #[test]
    fn a_backup_gpt_header_alone_is_found() {
        let size = 8 * EDGE;
        let (_dir, path, f) = sparse_image(size);
        assert_eq!(backup_gpt(&path, size).unwrap(), None);
        f.write_at(b"EFI PART", size - 512).expect("backup header");
        assert_eq!(backup_gpt(&path, size).unwrap(), Some(size - 512));
    }

    #[test]
    fn probing_a_missing_device_is_an_error() {
        assert!(probe(Path::new("/nonexistent/disk"), 1 << 30).is_err());
    }
}
