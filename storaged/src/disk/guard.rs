//! The check before every write to a disk: the device is still the disk
//! that was looked at.
//!
//! [`Pinned::open`] opens the device by its kernel name, then checks through
//! the open descriptor that sysfs still describes the same disk (device
//! number, serial, size). While the descriptor is held the kernel cannot
//! give the name to another disk (a detached loop device stays bound, a
//! pulled SCSI disk keeps its name until its last user closes it), so what
//! is probed afterwards, and written, is that disk and no other. Limits: a
//! disk whose serial is derived from its kernel name (no hardware serial, no
//! WWN, not a loop device) cannot be told from a newcomer of the same size
//! by sysfs alone; its signatures still have to match.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::discover::{self, BlockDevice, DiscoverError};
use crate::types::DiskSerial;

/// Why a disk may not be written.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("disk {serial} is gone: no disk is at {device} any more")]
    Vanished { serial: DiskSerial, device: PathBuf },
    #[error("disk {serial} changed: {device} was {was}, and is now {now}")]
    Changed {
        serial: DiskSerial,
        device: PathBuf,
        was: String,
        now: String,
    },
    #[error("disk {serial} at {device} is in use (mounted or held by the kernel): {source}")]
    Busy {
        serial: DiskSerial,
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open disk {serial} at {device}: {source}")]
    Open {
        serial: DiskSerial,
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("cannot write to disk {serial} at {device}: {source}")]
    Write {
        serial: DiskSerial,
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A disk held open and checked to be the one expected.
#[derive(Debug)]
pub struct Pinned {
    file: File,
    device: BlockDevice,
}

/// One line describing a disk, for "changed" errors.
pub fn describe(d: &BlockDevice) -> String {
    format!("disk {} ({} bytes)", d.serial, d.size_bytes)
}

impl Pinned {
    /// Opens `expected` read-write and checks that it still is that disk.
    /// Blocking.
    pub fn open(sys: &Path, dev: &Path, expected: &BlockDevice) -> Result<Self, GuardError> {
        let vanished = || GuardError::Vanished {
            serial: expected.serial.clone(),
            device: expected.path.clone(),
        };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&expected.path)
            .or_else(|e| match e.raw_os_error() {
                // Write-protected media (a boot stick, a CD) are still
                // probed; any write to them fails later, as it must.
                Some(nix::libc::EROFS | nix::libc::EACCES | nix::libc::EPERM) => {
                    std::fs::File::open(&expected.path)
                }
                _ => Err(e),
            });
        let file = match opened {
            Ok(f) => f,
            Err(e) if gone(&e) => return Err(vanished()),
            Err(source) => {
                return Err(GuardError::Open {
                    serial: expected.serial.clone(),
                    device: expected.path.clone(),
                    source,
                });
            }
        };
        let rdev = file
            .metadata()
            .map_err(|source| GuardError::Open {
                serial: expected.serial.clone(),
                device: expected.path.clone(),
                source,
            })?
            .rdev();
        let now = discover::read(sys, dev, &expected.name)?
            .filter(|d| d.size_bytes > 0)
            .ok_or_else(vanished)?;
        let sysfs_dev = std::fs::read_to_string(sys.join("block").join(&expected.name).join("dev"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let opened = format!("{}:{}", major(rdev), minor(rdev));
        if sysfs_dev != opened {
            return Err(GuardError::Changed {
                serial: expected.serial.clone(),
                device: expected.path.clone(),
                was: format!("device number {opened}"),
                now: format!("device number {sysfs_dev:?}"),
            });
        }
        if now.serial != expected.serial || now.size_bytes != expected.size_bytes {
            return Err(GuardError::Changed {
                serial: expected.serial.clone(),
                device: expected.path.clone(),
                was: describe(expected),
                now: describe(&now),
            });
        }
        Ok(Self { file, device: now })
    }

    /// Fails with [`GuardError::Busy`] while the disk is mounted or claimed
    /// (an exclusive open, released at once); run before writing.
    pub fn ensure_unused(&self) -> Result<(), GuardError> {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&self.device.path)
        {
            Ok(_released) => Ok(()),
            Err(source) => Err(GuardError::Busy {
                serial: self.device.serial.clone(),
                device: self.device.path.clone(),
                source,
            }),
        }
    }

    /// The disk as sysfs describes it now.
    pub fn device(&self) -> &BlockDevice {
        &self.device
    }

    /// Writes zeros over `len` bytes at `offset`, through the pinned
    /// descriptor.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), GuardError> {
        let zeros = vec![0u8; len.min(self.device.size_bytes.saturating_sub(offset)) as usize];
        self.file
            .write_all_at(&zeros, offset)
            .map_err(|source| self.write_error(source))
    }

    pub fn sync(&self) -> Result<(), GuardError> {
        self.file
            .sync_all()
            .map_err(|source| self.write_error(source))
    }

    fn write_error(&self, source: std::io::Error) -> GuardError {
        GuardError::Write {
            serial: self.device.serial.clone(),
            device: self.device.path.clone(),
            source,
        }
    }
}

fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(nix::libc::ENXIO | nix::libc::ENODEV))
}

/// The major number of a Linux `dev_t`.
fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// The minor number of a Linux `dev_t`.
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_the_kernel_encodes_them() {
        // /dev/loop5 is 7:5, an NVMe disk 259:0, a SCSI disk past 255 8:300.
        assert_eq!((major(0x705), minor(0x705)), (7, 5));
        assert_eq!((major(0x1_0300), minor(0x1_0300)), (259, 0));
        assert_eq!((major(0x10_082c), minor(0x10_082c)), (8, 300));
    }

    #[test]
    fn a_missing_disk_is_vanished_not_an_error_of_another_kind() {
        let sys = tempfile::tempdir().unwrap();
        let expected = BlockDevice {
            name: "sdz".into(),
            path: PathBuf::from("/nonexistent/sdz"),
            size_bytes: 1 << 30,
            rotational: false,
            removable: false,
            transport: discover::Transport::Other,
            model: String::new(),
            serial: "GONE1".parse().expect("serial"),
            serial_source: discover::SerialSource::Hardware,
            partitions: vec![],
            partition_names: vec![],
            holders: vec![],
        };
        let err = Pinned::open(sys.path(), Path::new("/nonexistent"), &expected)
            .expect_err("no such disk");
        assert!(matches!(err, GuardError::Vanished { .. }), "{err}");
        assert!(err.to_string().contains("GONE1"), "{err}");
    }
}
