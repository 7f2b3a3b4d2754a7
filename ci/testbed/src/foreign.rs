//! Foreign disks: every kind of content a farmer's disk may hold, written
//! onto a testbed disk with the real tools (or, where the kernel is needed
//! to make it, with our own small writer of the on-disk format).
//!
//! Storage tests use these to show that a disk holding any of them is
//! classed foreign and left byte-identical. Limits: md superblocks are
//! written by hand (creating a real array needs the md kernel module, which
//! a test host may lack); the fields blkid checks are set, the rest is zero.

use std::path::Path;

use crate::cmd::{self, CmdError};
use crate::disk::{Disk, DiskError};

/// One kind of foreign content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    Ext4,
    Xfs,
    Ntfs,
    Exfat,
    Vfat,
    Swap,
    Luks2,
    Lvm2,
    Md10,
    Md12,
    Iso9660,
    /// Another system's btrfs (not a Grove label).
    Btrfs,
    /// An MBR partition table with one partition.
    Mbr,
    /// A GPT partition table with one partition.
    Gpt,
    Bcache,
    F2fs,
}

/// Why foreign content could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ForeignError {
    #[error("could not write {kind:?} on {device}")]
    Tool {
        kind: Foreign,
        device: String,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("could not write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Foreign {
    /// Every kind, in one list.
    pub const ALL: [Foreign; 16] = [
        Foreign::Ext4,
        Foreign::Xfs,
        Foreign::Ntfs,
        Foreign::Exfat,
        Foreign::Vfat,
        Foreign::Swap,
        Foreign::Luks2,
        Foreign::Lvm2,
        Foreign::Md10,
        Foreign::Md12,
        Foreign::Iso9660,
        Foreign::Btrfs,
        Foreign::Mbr,
        Foreign::Gpt,
        Foreign::Bcache,
        Foreign::F2fs,
    ];

    /// Writes this kind of content onto `disk`, whose image lives in a
    /// directory the caller owns (scratch files go next to it).
    pub fn write(self, disk: &Disk) -> Result<(), ForeignError> {
        let dev = disk.path();
        let d = dev.as_os_str();
        let tool = |program: &str, args: &[&std::ffi::OsStr]| {
            cmd::run(program, args)
                .map(drop)
                .map_err(|source| ForeignError::Tool {
                    kind: self,
                    device: dev.display().to_string(),
                    source,
                })
        };
        let input = |program: &str, args: &[&std::ffi::OsStr], text: &[u8]| {
            cmd::run_with_input(program, args, text)
                .map(drop)
                .map_err(|source| ForeignError::Tool {
                    kind: self,
                    device: dev.display().to_string(),
                    source,
                })
        };
        let scratch = disk.file().with_extension("scratch");
        match self {
            Foreign::Ext4 => disk.format_ext4_with_file("farmer.txt", b"the farmer's data")?,
            Foreign::Xfs => tool("mkfs.xfs", &["-q".as_ref(), "-f".as_ref(), d])?,
            Foreign::Ntfs => tool(
                "mkfs.ntfs",
                &["-F".as_ref(), "-Q".as_ref(), "-q".as_ref(), d],
            )?,
            Foreign::Exfat => tool("mkfs.exfat", &[d])?,
            Foreign::Vfat => tool("mkfs.vfat", &["-n".as_ref(), "PHOTOS".as_ref(), d])?,
            Foreign::Swap => tool("mkswap", &[d])?,
            Foreign::Luks2 => {
                write_file(&scratch, b"passphrase")?;
                tool(
                    "cryptsetup",
                    &[
                        "luksFormat".as_ref(),
                        "--type".as_ref(),
                        "luks2".as_ref(),
                        "--batch-mode".as_ref(),
                        "--pbkdf".as_ref(),
                        "pbkdf2".as_ref(),
                        "--pbkdf-force-iterations".as_ref(),
                        "1000".as_ref(),
                        "--key-file".as_ref(),
                        scratch.as_os_str(),
                        d,
                    ],
                )?
            }
            Foreign::Lvm2 => tool("pvcreate", &["-ff".as_ref(), "-y".as_ref(), d])?,
            Foreign::Md10 => write_md(disk, MdVersion::V10)?,
            Foreign::Md12 => write_md(disk, MdVersion::V12)?,
            Foreign::Iso9660 => {
                write_file(&scratch, b"a file on a CD image")?;
                let iso = disk.file().with_extension("iso");
                tool(
                    "xorriso",
                    &[
                        "-as".as_ref(),
                        "mkisofs".as_ref(),
                        "-quiet".as_ref(),
                        "-o".as_ref(),
                        iso.as_os_str(),
                        scratch.as_os_str(),
                    ],
                )?;
                let bytes = std::fs::read(&iso).map_err(|source| ForeignError::Io {
                    path: iso.display().to_string(),
                    source,
                })?;
                disk.write_at(0, &bytes)?;
            }
            Foreign::Btrfs => tool(
                "mkfs.btrfs",
                &[
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "-L".as_ref(),
                    "backup".as_ref(),
                    d,
                ],
            )?,
            Foreign::Mbr => input(
                "sfdisk",
                &["--quiet".as_ref(), "--wipe=always".as_ref(), d],
                b"label: dos\nstart=2048, type=83\n",
            )?,
            Foreign::Gpt => input(
                "sfdisk",
                &["--quiet".as_ref(), "--wipe=always".as_ref(), d],
                b"label: gpt\nstart=2048\n",
            )?,
            Foreign::Bcache => tool("make-bcache", &["-B".as_ref(), d])?,
            Foreign::F2fs => tool("mkfs.f2fs", &["-q".as_ref(), "-f".as_ref(), d])?,
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ForeignError> {
    std::fs::write(path, bytes).map_err(|source| ForeignError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[derive(Debug, Clone, Copy)]
enum MdVersion {
    /// Superblock near the end of the device.
    V10,
    /// Superblock 4 KiB from the start.
    V12,
}

/// Writes an md 1.x superblock (a RAID 1 member of two disks).
fn write_md(disk: &Disk, version: MdVersion) -> Result<(), ForeignError> {
    const MAX_DEV: usize = 4;
    let sectors = disk.size_bytes() >> 9;
    let offset = match version {
        MdVersion::V10 => ((sectors - 16) & !7) << 9,
        MdVersion::V12 => 4096,
    };
    let mut sb = vec![0u8; 256 + 2 * MAX_DEV];
    let put32 = |sb: &mut [u8], at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |sb: &mut [u8], at: usize, v: u64| sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut sb, 0, 0xa92b_4efc); // magic
    put32(&mut sb, 4, 1); // major version
    for (i, b) in sb[16..32].iter_mut().enumerate() {
        *b = i as u8 + 0x40; // set uuid
    }
    sb[32..40].copy_from_slice(b"farmer:0"); // set name
    put64(&mut sb, 64, 1_700_000_000); // ctime
    put32(&mut sb, 72, 1); // level
    put64(&mut sb, 80, 1000); // size
    put32(&mut sb, 92, 2); // raid disks
    let data_offset = match version {
        MdVersion::V10 => 0,
        MdVersion::V12 => 2048,
    };
    put64(&mut sb, 128, data_offset);
    put64(&mut sb, 136, 1000); // data size
    put64(&mut sb, 144, offset >> 9); // super offset, in sectors
    put32(&mut sb, 220, MAX_DEV as u32);
    let sum: u64 = sb
        .chunks(4)
        .map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let folded = (sum & 0xffff_ffff) + (sum >> 32);
    put32(&mut sb, 216, folded as u32);
    disk.write_at(offset, &sb)?;
    Ok(())
}
