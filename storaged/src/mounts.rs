//! The mount table, from `/proc/self/mountinfo`, and mount/unmount calls.
//!
//! Mounts are matched by device number (`major:minor`), not by path, so a
//! disk mounted under any name is recognized. Mounting goes straight to the
//! `mount(2)` syscall: no helper process, no fork.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read the mount table {path}: {source}")]
    Table {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {source_path} on {target}: {errno}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("cannot unmount {target}: {errno}")]
    Unmount {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub dev: String,
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                dev: l.get(2)?.to_string(),
                root: unescape(l.get(3)?),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table of this mount namespace.
pub fn table() -> Result<Vec<MountEntry>, MountError> {
    let path = Path::new("/proc/self/mountinfo");
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .map_err(|source| MountError::Table {
            path: path.to_owned(),
            source,
        })
}

pub fn is_mount_point(table: &[MountEntry], path: &Path) -> bool {
    table.iter().any(|m| m.mount_point == path)
}

/// Mounts `source` (a device, or a directory with `bind`) on `target`,
/// creating `target` first.
pub fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|e| MountError::MountPoint {
        path: target.to_owned(),
        source: e,
    })?;
    nix::mount::mount(Some(source), target, fstype, flags, data).map_err(|errno| {
        MountError::Mount {
            source_path: source.to_owned(),
            target: target.to_owned(),
            errno,
        }
    })
}

/// Detaches `target` lazily: it disappears now and is released when no
/// longer busy. Used for pools whose disk has gone.
pub fn detach(target: &Path) -> Result<(), MountError> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|errno| MountError::Unmount {
        target: target.to_owned(),
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 30 7:3 / /mnt/pools/grove-ab rw,noatime shared:5 - btrfs /dev/loop3 rw,space_cache=v2\n\
                    41 30 7:3 /cache /var/cache/grove rw - btrfs /dev/loop3 rw\n\
                    42 30 0:50 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        let t = parse(text);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].dev, "7:3");
        assert_eq!(t[1].mount_point, PathBuf::from("/mnt/pools/grove-ab"));
        assert_eq!(t[1].fstype, "btrfs");
        assert_eq!(t[2].root, "/cache");
        assert_eq!(t[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(is_mount_point(&t, Path::new("/var/cache/grove")));
        assert!(!is_mount_point(&t, Path::new("/var/cache")));
    }

    #[test]
    fn the_live_table_has_a_root() {
        let t = table().expect("mountinfo");
        assert!(is_mount_point(&t, Path::new("/")));
    }
}
