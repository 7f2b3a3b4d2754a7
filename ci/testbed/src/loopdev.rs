//! Loop devices: attach a file, tell what backs a device, detach only
//! what is ours.
//!
//! Attaching goes through `losetup --find --show`, which copes with other
//! processes racing for free devices; what a device is backed by is read
//! from sysfs, and a device is only ever detached while it is still backed
//! by the file (or directory of files) the caller names, so a number reused
//! by another farm is left alone. Limits: a device held open by a mount in
//! a dying namespace may end up with autoclear set rather than detached at
//! once; the kernel frees it when the last user goes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::{self, CmdError};
use crate::wait::wait_until;

/// How long to keep trying to detach a busy device.
const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

/// A loop device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("could not attach {file} to a loop device")]
    Attach {
        file: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("`losetup --show` printed `{output}` for {file}, not a device")]
    AttachOutput { file: PathBuf, output: String },
    #[error("could not detach {device}")]
    Detach {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("could not re-read the size of {device}")]
    Capacity {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("{device} is still attached to {backing} after {DETACH_TIMEOUT:?}, without autoclear")]
    Busy { device: PathBuf, backing: String },
}

/// How a detach ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The device is free.
    Gone,
    /// Still in use; the kernel detaches it when the last user closes it.
    Autoclear,
}

/// Attaches `file` to a free loop device, returning `/dev/loopN`.
pub fn attach(file: &Path) -> Result<PathBuf, LoopError> {
    let out = cmd::run(
        "losetup",
        &[
            "--find".as_ref(),
            "--show".as_ref(),
            "--direct-io=off".as_ref(),
            file.as_os_str(),
        ],
    )
    .map_err(|source| LoopError::Attach {
        file: file.to_owned(),
        source,
    })?;
    let device = out.trim();
    if !device.starts_with("/dev/loop") {
        return Err(LoopError::AttachOutput {
            file: file.to_owned(),
            output: device.to_owned(),
        });
    }
    Ok(PathBuf::from(device))
}

/// Attaches `file` to the free loop device `device` (a disk arriving under
/// a name another disk just left).
pub fn attach_at(device: &Path, file: &Path) -> Result<(), LoopError> {
    cmd::run(
        "losetup",
        &[
            "--direct-io=off".as_ref(),
            device.as_os_str(),
            file.as_os_str(),
        ],
    )
    .map(drop)
    .map_err(|source| LoopError::Attach {
        file: file.to_owned(),
        source,
    })
}

/// `loopN` of `/dev/loopN`.
pub fn kernel_name(device: &Path) -> String {
    device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `/sys/block/loopN`.
pub fn sys_dir(device: &Path) -> PathBuf {
    Path::new("/sys/block").join(kernel_name(device))
}

/// The file backing `device`, as the kernel reports it (with a
/// ` (deleted)` suffix once unlinked); `None` if it is not attached.
pub fn backing(device: &Path) -> Option<String> {
    std::fs::read_to_string(sys_dir(device).join("loop/backing_file"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
}

fn autoclear(device: &Path) -> bool {
    std::fs::read_to_string(sys_dir(device).join("loop/autoclear")).is_ok_and(|s| s.trim() == "1")
}

/// Every attached loop device and its backing file.
pub fn list() -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, String)> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let device = Path::new("/dev").join(&name);
            name.starts_with("loop")
                .then(|| backing(&device).map(|b| (device, b)))
                .flatten()
        })
        .collect();
    found.sort();
    found
}

/// Whether `backing` (as the kernel reports it) is `owned` or lies under it.
pub fn backed_by(backing: &str, owned: &Path) -> bool {
    let file = backing.strip_suffix(" (deleted)").unwrap_or(backing);
    Path::new(file).starts_with(owned)
}

/// One detach attempt: `Gone` when the device is free (or no longer
/// ours), `Autoclear` when it is still in use and the kernel will free it
/// once released.
pub fn detach_once(device: &Path, owned: &Path) -> Result<Detached, LoopError> {
    let ours = || backing(device).filter(|b| backed_by(b, owned));
    let Some(backing) = ours() else {
        return Ok(Detached::Gone);
    };
    let result = cmd::run("losetup", &["-d".as_ref(), device.as_os_str()]);
    if ours().is_none() {
        return Ok(Detached::Gone);
    }
    if autoclear(device) {
        return Ok(Detached::Autoclear);
    }
    Err(match result {
        Err(source) => LoopError::Detach {
            device: device.to_owned(),
            source,
        },
        Ok(_) => LoopError::Busy {
            device: device.to_owned(),
            backing,
        },
    })
}

/// Makes `device` re-read its backing file's size (`losetup -c`).
pub fn set_capacity(device: &Path) -> Result<(), LoopError> {
    cmd::run("losetup", &["-c".as_ref(), device.as_os_str()])
        .map(drop)
        .map_err(|source| LoopError::Capacity {
            device: device.to_owned(),
            source,
        })
}

/// Detaches `device` if it is still backed by `owned` (a file, or a
/// directory of files), retrying while it is busy.
pub fn detach(device: &Path, owned: &Path) -> Result<Detached, LoopError> {
    let ours = || backing(device).filter(|b| backed_by(b, owned));
    let mut failure = None;
    let finished = wait_until(DETACH_TIMEOUT, Duration::from_millis(50), || {
        if ours().is_none() {
            return true;
        }
        if !autoclear(device) {
            match cmd::run("losetup", &["-d".as_ref(), device.as_os_str()]) {
                Ok(_) => failure = None,
                Err(e) => failure = Some(e),
            }
        }
        ours().is_none()
    });
    if finished {
        return Ok(Detached::Gone);
    }
    match ours() {
        None => Ok(Detached::Gone),
        Some(_) if autoclear(device) => Ok(Detached::Autoclear),
        Some(backing) => Err(match failure {
            Some(source) => LoopError::Detach {
                device: device.to_owned(),
                source,
            },
            None => LoopError::Busy {
                device: device.to_owned(),
                backing,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_by_path_prefix() {
        let dir = Path::new("/var/tmp/grove-testbed/abcdef");
        assert!(backed_by("/var/tmp/grove-testbed/abcdef/n0/disk0.img", dir));
        assert!(backed_by(
            "/var/tmp/grove-testbed/abcdef/n0/disk0.img (deleted)",
            dir
        ));
        assert!(!backed_by(
            "/var/tmp/grove-testbed/abcdef0/n0/disk0.img",
            dir
        ));
        assert!(!backed_by("/var/tmp/other.img", dir));
        let file = Path::new("/var/tmp/grove-testbed/abcdef/n0/disk0.img");
        assert!(backed_by(
            "/var/tmp/grove-testbed/abcdef/n0/disk0.img",
            file
        ));
        assert!(!backed_by(
            "/var/tmp/grove-testbed/abcdef/n0/disk1.img",
            file
        ));
    }

    #[test]
    fn kernel_names() {
        assert_eq!(kernel_name(Path::new("/dev/loop12")), "loop12");
        assert_eq!(
            sys_dir(Path::new("/dev/loop3")),
            PathBuf::from("/sys/block/loop3")
        );
    }
}
