//! A node's disk: a sparse image file on a loop device, with the
//! rotational flag the spec asked for, plus helpers that put known content
//! on it from the host.
//!
//! The image lives in the node's run directory and is attached with
//! `losetup`; the rotational flag is written to sysfs and read back, since
//! storaged classifies disks by it. A filesystem's content is copied in by
//! `mkfs.ext4 -d` from a staging directory, never written through a mount:
//! any child another thread of the test forks meanwhile holds a copy of
//! every open descriptor until it execs, and one on a file of a temporary
//! mount keeps that mount busy. Limits: a detached disk cannot be
//! re-attached (a busy one is emptied to show no media), and the content
//! helpers overwrite the whole disk. A disk can also arrive while
//! its node runs ([`Disk::attach_image`]), or under a chosen name
//! ([`Disk::attach_image_at`], a hot swap).

use std::fs::{File, OpenOptions};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cmd::{self, CmdError};
use crate::loopdev::{self, Detached, LoopError};
use crate::spec::DiskSpec;

const MIB: u64 = 1024 * 1024;

/// A disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("could not create image {file}")]
    Image {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loop device for {file}")]
    Loop {
        file: PathBuf,
        #[source]
        source: LoopError,
    },
    #[error("could not set {path}")]
    SetRotational {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} reads `{got}` after writing `{wanted}`: the kernel ignored the rotational flag"
    )]
    RotationalIgnored {
        path: PathBuf,
        wanted: &'static str,
        got: String,
    },
    #[error("`{name}` is not a relative path inside the filesystem")]
    BadName { name: String },
    #[error("{device} is detached")]
    Detached { device: PathBuf },
    #[error("could not make a filesystem on {device}")]
    Mkfs {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("could not write a partition table on {device}")]
    Partition {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not remove the staging directory {dir}")]
    Unstage {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One attached disk.
#[derive(Debug)]
pub struct Disk {
    device: PathBuf,
    file: PathBuf,
    rotational: bool,
    size_bytes: u64,
    attached: AtomicBool,
}

impl Disk {
    /// Creates the sparse image `file`, attaches it and sets its rotational
    /// flag.
    pub fn create(file: PathBuf, spec: DiskSpec) -> Result<Disk, DiskError> {
        let size_bytes = spec.size_mb * MIB;
        let image = |source| DiskError::Image {
            file: file.clone(),
            source,
        };
        File::create(&file)
            .and_then(|f| f.set_len(size_bytes))
            .map_err(image)?;
        let device = loopdev::attach(&file).map_err(|source| DiskError::Loop {
            file: file.clone(),
            source,
        })?;
        let disk = Disk {
            device,
            file,
            rotational: spec.rotational,
            size_bytes,
            attached: AtomicBool::new(true),
        };
        disk.set_rotational()?;
        Ok(disk)
    }

    /// Attaches an existing image (a copy of another node's disk, a disk
    /// prepared off-line) to a free loop device.
    pub fn attach_image(file: PathBuf, rotational: bool) -> Result<Disk, DiskError> {
        Self::attach_image_at(file, rotational, None)
    }

    /// Attaches an existing image at `device`, a loop device another disk
    /// just left (a hot swap: a new disk under an old name); any free one
    /// without `at`.
    pub fn attach_image_at(
        file: PathBuf,
        rotational: bool,
        at: Option<&Path>,
    ) -> Result<Disk, DiskError> {
        let loop_error = |source| DiskError::Loop {
            file: file.clone(),
            source,
        };
        let size_bytes = std::fs::metadata(&file)
            .map_err(|source| DiskError::Image {
                file: file.clone(),
                source,
            })?
            .len();
        let device = match at {
            Some(device) => {
                loopdev::attach_at(device, &file).map_err(loop_error)?;
                device.to_owned()
            }
            None => loopdev::attach(&file).map_err(loop_error)?,
        };
        let disk = Disk {
            device,
            file,
            rotational,
            size_bytes,
            attached: AtomicBool::new(true),
        };
        disk.set_rotational()?;
        Ok(disk)
    }

    /// Writes `bytes` at `offset` of the device, synced.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        use std::os::unix::fs::FileExt;
        self.ensure_attached()?;
        let fail = |source| DiskError::Write {
            path: self.device.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .open(&self.device)
            .map_err(fail)?;
        file.write_all_at(bytes, offset).map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    fn set_rotational(&self) -> Result<(), DiskError> {
        let path = loopdev::sys_dir(&self.device).join("queue/rotational");
        let wanted = if self.rotational { "1" } else { "0" };
        std::fs::write(&path, wanted).map_err(|source| DiskError::SetRotational {
            path: path.clone(),
            source,
        })?;
        let got = std::fs::read_to_string(&path).map_err(|source| DiskError::SetRotational {
            path: path.clone(),
            source,
        })?;
        if got.trim() != wanted {
            return Err(DiskError::RotationalIgnored {
                path,
                wanted,
                got: got.trim().to_owned(),
            });
        }
        Ok(())
    }

    /// The block device, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The image file on the host.
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn rotational(&self) -> bool {
        self.rotational
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// False once [`Disk::detach`] has run.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// Pulls the disk: detaches the loop device, so the node sees it
    /// vanish. A device still in use (a pool mounted inside the node) cannot
    /// leave at once: its image is then emptied so it reports no media, and
    /// the kernel frees it when the last user lets go. Either way the disk
    /// stays gone; its contents may be lost.
    pub fn detach(&self) -> Result<Detached, DiskError> {
        let loop_error = |source| DiskError::Loop {
            file: self.file.clone(),
            source,
        };
        let outcome = loopdev::detach_once(&self.device, &self.file).map_err(loop_error)?;
        self.attached.store(false, Ordering::SeqCst);
        if outcome == Detached::Autoclear {
            self.empty_media()?;
        }
        Ok(outcome)
    }

    /// Empties the image and makes the device see it: it reports no media.
    fn empty_media(&self) -> Result<(), DiskError> {
        OpenOptions::new()
            .write(true)
            .open(&self.file)
            .and_then(|f| f.set_len(0))
            .map_err(|source| DiskError::Image {
                file: self.file.clone(),
                source,
            })?;
        loopdev::set_capacity(&self.device).map_err(|source| DiskError::Loop {
            file: self.file.clone(),
            source,
        })
    }

    /// Pulls the disk but keeps its loop device: the image is emptied so the
    /// device reports no media, and the device stays attached until the
    /// farm is torn down. Unlike [`Disk::detach`], the device's number is
    /// never freed while the node still follows it, so another farm's new
    /// disk cannot appear under it. Its contents are lost.
    pub fn pull(&self) -> Result<(), DiskError> {
        self.empty_media()?;
        self.attached.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Makes an ext4 filesystem holding one file `name` (relative, may hold
    /// directories) with `contents`. The filesystem is never mounted:
    /// `mkfs.ext4 -d` copies the file in from a staging directory next to
    /// the image, removed again afterwards.
    pub fn format_ext4_with_file(&self, name: &str, contents: &[u8]) -> Result<(), DiskError> {
        let inside = Path::new(name);
        if name.is_empty()
            || !inside
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(DiskError::BadName {
                name: name.to_owned(),
            });
        }
        self.ensure_attached()?;
        let staging = self.file.with_extension("content");
        let made = stage(&staging, inside, contents).and_then(|()| {
            cmd::run(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-d".as_ref(),
                    staging.as_os_str(),
                    self.device.as_os_str(),
                ],
            )
            .map(drop)
            .map_err(|source| DiskError::Mkfs {
                device: self.device.clone(),
                source,
            })
        });
        let unstaged = std::fs::remove_dir_all(&staging).map_err(|source| DiskError::Unstage {
            dir: staging.clone(),
            source,
        });
        made.and(unstaged)
    }

    /// Writes an empty GPT partition table (no partitions) with `sfdisk`.
    pub fn write_empty_gpt(&self) -> Result<(), DiskError> {
        self.ensure_attached()?;
        cmd::run_with_input(
            "sfdisk",
            &[
                "--quiet".as_ref(),
                "--wipe=always".as_ref(),
                self.device.as_os_str(),
            ],
            b"label: gpt\n",
        )
        .map(drop)
        .map_err(|source| DiskError::Partition {
            device: self.device.clone(),
            source,
        })
    }

    fn ensure_attached(&self) -> Result<(), DiskError> {
        if self.is_attached() {
            Ok(())
        } else {
            Err(DiskError::Detached {
                device: self.device.clone(),
            })
        }
    }
}

/// Makes `dir` afresh holding only the file `inside` with `contents`; a
/// staging directory left by an earlier failure goes first, so nothing
/// stale reaches the new filesystem.
fn stage(dir: &Path, inside: &Path, contents: &[u8]) -> Result<(), DiskError> {
    if let Err(source) = std::fs::remove_dir_all(dir)
        && source.kind() != std::io::ErrorKind::NotFound
    {
        return Err(DiskError::Unstage {
            dir: dir.to_owned(),
            source,
        });
    }
    let path = dir.join(inside);
    let fail = |source| DiskError::Write {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(&path, contents).map_err(fail)
}
