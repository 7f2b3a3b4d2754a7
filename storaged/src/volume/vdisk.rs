//! Vdisks: `vdisks/<name>` files, NOCOW and preallocated, mode 0600.
//!
//! The empty file gets `chattr +C` before any byte is in it (the attribute
//! only holds for a file without data; the pool's `vdisks` directory has it
//! too, so new files inherit it), then `fallocate` reserves every byte, so a
//! guest never meets a full pool halfway through its disk. Growing
//! preallocates the new tail; a vdisk never shrinks.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::FallocateFlags;

use crate::pool::{Pool, VDISKS_DIR};
use crate::types::ResourceName;
use grove_daemon::cmd;

use super::{Found, Kind, TEMP_PREFIX, VolumeError};

pub(super) fn scan(pool: &Pool) -> Result<Vec<Found>, VolumeError> {
    let dir = pool.mount_point.join(VDISKS_DIR);
    Ok(super::named_entries(&dir)?
        .into_iter()
        .filter(|(_, meta)| meta.is_file())
        .map(|(name, meta)| Found {
            path: dir.join(name.as_str()),
            size: meta.len(),
            used: meta.len(),
            name,
        })
        .collect())
}

/// Reserves `0..size` of the file at `path`, growing its length to `size`.
fn preallocate(file: &std::fs::File, path: &Path, size: u64) -> Result<(), VolumeError> {
    let len = i64::try_from(size).map_err(|source| VolumeError::TooLarge {
        path: path.to_owned(),
        size,
        source,
    })?;
    nix::fcntl::fallocate(file, FallocateFlags::empty(), 0, len).map_err(|errno| {
        VolumeError::Sys {
            op: "preallocate",
            path: path.to_owned(),
            errno,
        }
    })?;
    file.sync_all().map_err(|source| VolumeError::Io {
        op: "sync",
        path: path.to_owned(),
        source,
    })
}

pub(super) fn make(pool: &Pool, name: &ResourceName, size: u64) -> Result<(), VolumeError> {
    let dir = pool.mount_point.join(VDISKS_DIR);
    let tmp_name = format!("{TEMP_PREFIX}{name}");
    let tmp = dir.join(&tmp_name);
    if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
        remove_file(&tmp)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| VolumeError::Io {
            op: "create",
            path: tmp.clone(),
            source,
        })?;
    let finished = cmd::run("chattr", &["+C".as_ref(), tmp.as_os_str()])
        .map_err(|source| VolumeError::Tool {
            op: "make NOCOW",
            path: tmp.clone(),
            source,
        })
        .and_then(|_| preallocate(&file, &tmp, size))
        .and_then(|()| super::publish(&dir, &tmp_name, name));
    if let Err(e) = finished {
        if let Err(cleanup) = remove_file(&tmp) {
            tracing::warn!(error = %cleanup, path = %tmp.display(), "a failed vdisk is left under its temporary name until the next start");
        }
        return Err(e);
    }
    Ok(())
}

pub(super) fn grow(pool: &Pool, name: &ResourceName, size: u64) -> Result<(), VolumeError> {
    let path = super::path_of(pool, Kind::Vdisk, name);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| VolumeError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
    preallocate(&file, &path, size)
}

pub(super) fn remove(pool: &Pool, name: &ResourceName) -> Result<bool, VolumeError> {
    let path = super::path_of(pool, Kind::Vdisk, name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => {
            remove_file(&path)?;
            Ok(true)
        }
        // Not a regular file: not a vdisk, never touched.
        Ok(_) | Err(_) => Ok(false),
    }
}

/// Removes the file at `path` and commits the pool's transaction
/// (`syncfs`): the removal is durable, and btrfs hands its space back now
/// rather than at its next periodic commit, so what the accounting calls
/// free is free.
fn remove_file(path: &Path) -> Result<(), VolumeError> {
    std::fs::remove_file(path).map_err(|source| VolumeError::Io {
        op: "remove",
        path: path.to_owned(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    nix::unistd::syncfs(super::open_dir(dir)?).map_err(|errno| VolumeError::Sys {
        op: "commit the removal of",
        path: path.to_owned(),
        errno,
    })
}

pub(super) fn sweep(pool: &Pool) -> Result<Vec<PathBuf>, VolumeError> {
    let mut removed = Vec::new();
    for tmp in super::leftovers(&pool.mount_point.join(VDISKS_DIR))? {
        if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file()) {
            tracing::info!(path = %tmp.display(), "removing a vdisk a crash left half made");
            remove_file(&tmp)?;
            removed.push(tmp);
        } else {
            tracing::warn!(path = %tmp.display(), "not a regular file: left alone");
        }
    }
    Ok(removed)
}
