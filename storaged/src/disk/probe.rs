//! Signature probing: what is on a disk, before anything is written to it.
//!
//! Uses util-linux's `blkid -p` (low-level superblock and partition-table
//! probing, bypassing the cache), which knows MBR, GPT, ext2/3/4, xfs, btrfs,
//! vfat, ntfs, swap, LUKS, LVM, zfs, iso9660 and many more. On top of that,
//! [`has_data_at_edges`] reads the first and last MiB, so a disk holding data
//! no prober recognizes is not mistaken for a blank one.

use std::io::{Read, Seek, SeekFrom};
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
    pub label: Option<String>,
    pub uuid: Option<String>,
}

impl Signatures {
    pub fn is_empty(&self) -> bool {
        self.pttype.is_none() && self.fstype.is_none()
    }
}

/// Probes `path` with `blkid -p`. Blocking.
///
/// blkid exits 2 both for "nothing found" and for a device it cannot open,
/// so the device is opened here first: only a readable device can be
/// reported as carrying no signature.
pub fn probe(path: &Path) -> Result<Signatures, ProbeError> {
    std::fs::File::open(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
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
            "LABEL" => sig.label = value,
            "UUID" => sig.uuid = value,
            _ => {}
        }
    }
    sig
}

/// How much of each end of the disk [`has_data_at_edges`] reads.
pub const EDGE: u64 = 1 << 20;

/// True if the first or last MiB of `path` holds any non-zero byte. Blocking.
pub fn has_data_at_edges(path: &Path, size_bytes: u64) -> Result<bool, ProbeError> {
    let read_err = |source| ProbeError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = vec![0u8; EDGE.min(size_bytes) as usize];
    file.read_exact(&mut buf).map_err(read_err)?;
    if buf.iter().any(|&b| b != 0) {
        return Ok(true);
    }
    if size_bytes > EDGE {
        file.seek(SeekFrom::Start(size_bytes - buf.len() as u64))
            .map_err(read_err)?;
        file.read_exact(&mut buf).map_err(read_err)?;
        if buf.iter().any(|&b| b != 0) {
            return Ok(true);
        }
    }
    Ok(false)
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
        assert_eq!(s.label.as_deref(), Some("grove-abc"));
        assert_eq!(s.uuid.as_deref(), Some("0796-99c4"));
        assert!(s.pttype.is_none());
        let gpt = parse_export("DEVNAME=/dev/loop0\nPTUUID=38a2\nPTTYPE=gpt\n");
        assert_eq!(gpt.pttype.as_deref(), Some("gpt"));
        assert!(!gpt.is_empty());
        assert!(parse_export("").is_empty());
    }

    #[test]
    fn edge_sniffing_sees_data_at_either_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("img");
        let size = 4 * EDGE;
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(size).expect("sparse");
        assert!(!has_data_at_edges(&path, size).expect("read"));
        use std::os::unix::fs::FileExt;
        f.write_at(b"x", size - 10).expect("write tail");
        assert!(has_data_at_edges(&path, size).expect("read"));
        f.write_at(b"\0", size - 10).expect("clear tail");
        f.write_at(b"y", 100).expect("write head");
        assert!(has_data_at_edges(&path, size).expect("read"));
        assert!(has_data_at_edges(Path::new("/nonexistent/disk"), size).is_err());
    }

    #[test]
    fn probing_a_missing_device_is_an_error() {
        assert!(probe(Path::new("/nonexistent/disk")).is_err());
    }
}
