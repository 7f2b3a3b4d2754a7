//! Volumes (btrfs subvolume + qgroup limit) and vdisks (preallocated NOCOW
//! files) on a pool.
//!
//! Every resource is recorded first as an intent file in the pool's
//! `.grove/<kind>/<name>.json`, then made. [`reconcile`] finishes or rolls
//! back whatever a crash interrupted: an intent without its subvolume or file
//! is dropped (nothing was stored in it yet), a subvolume without its limit
//! gets it, a short vdisk is preallocated again.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::fcntl::FallocateFlags;
use serde::{Deserialize, Serialize};

use crate::cmd::{self, CmdError};
use crate::pool::{META_DIR, Pool, VDISKS_DIR, VOLUMES_DIR, now_ms};
use crate::types::{PoolLabel, ResourceName};

/// Which of the two resource kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Volume,
    Vdisk,
}

impl ResourceKind {
    fn dir(self) -> &'static str {
        match self {
            ResourceKind::Volume => VOLUMES_DIR,
            ResourceKind::Vdisk => VDISKS_DIR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Volume => "volume",
            ResourceKind::Vdisk => "vdisk",
        }
    }
}

/// Why a volume or vdisk operation failed on a pool.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot create {kind} {name} on pool {pool}: {source}")]
    Tool {
        kind: &'static str,
        name: ResourceName,
        pool: PoolLabel,
        #[source]
        source: CmdError,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot preallocate vdisk {path}: {errno}")]
    Fallocate {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error(transparent)]
    Record(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot encode the record of {name}: {source}")]
    Encode {
        name: ResourceName,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read quota usage on pool {pool}: {source}")]
    Usage {
        pool: PoolLabel,
        #[source]
        source: CmdError,
    },
}

/// The record kept for each resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: ResourceName,
    pub kind: ResourceKind,
    pub size_bytes: u64,
    pub created_at_ms: u64,
}

/// A volume or vdisk as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: ResourceName,
    pub kind: ResourceKind,
    pub pool: PoolLabel,
    pub size_bytes: u64,
    /// Bytes written (volumes: the qgroup's referenced bytes; vdisks: the
    /// preallocated size).
    pub used_bytes: u64,
    pub path: PathBuf,
}

fn record_dir(pool: &Pool, kind: ResourceKind) -> PathBuf {
    pool.mount_point.join(META_DIR).join(kind.dir())
}

fn record_path(pool: &Pool, kind: ResourceKind, name: &ResourceName) -> PathBuf {
    record_dir(pool, kind).join(format!("{name}.json"))
}

pub fn data_path(pool: &Pool, kind: ResourceKind, name: &ResourceName) -> PathBuf {
    pool.mount_point.join(kind.dir()).join(name.as_str())
}

/// Every record on `pool`.
pub fn records(pool: &Pool) -> Vec<Record> {
    let mut out = Vec::new();
    for kind in [ResourceKind::Volume, ResourceKind::Vdisk] {
        let Ok(entries) = std::fs::read_dir(record_dir(pool, kind)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if r.kind == kind => out.push(r),
                Ok(_) | Err(_) => tracing::warn!(
                    record = %entry.path().display(),
                    "ignoring an unreadable resource record"
                ),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Creates a resource on `pool`. Blocking. The caller has checked the name
/// is free and the size fits.
pub fn create(
    pool: &Pool,
    kind: ResourceKind,
    name: &ResourceName,
    size_bytes: u64,
) -> Result<(), VolumeError> {
    let record = Record {
        name: name.clone(),
        kind,
        size_bytes,
        created_at_ms: now_ms(),
    };
    let dir = record_dir(pool, kind);
    std::fs::create_dir_all(&dir).map_err(|source| VolumeError::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(&record).map_err(|source| VolumeError::Encode {
        name: name.clone(),
        source,
    })?;
    grove_daemon::fsutil::write_atomic(&record_path(pool, kind, name), &bytes, 0o644)?;
    let made = match kind {
        ResourceKind::Volume => make_volume(pool, name, size_bytes),
        ResourceKind::Vdisk => make_vdisk(pool, name, size_bytes),
    };
    if made.is_err() {
        // Roll back so a failed create leaves nothing behind.
        if let Err(e) = remove(pool, kind, name) {
            tracing::warn!(error = %e, name = %name, "rollback of a failed create was incomplete");
        }
    }
    made
}

fn make_volume(pool: &Pool, name: &ResourceName, size_bytes: u64) -> Result<(), VolumeError> {
    let path = data_path(pool, ResourceKind::Volume, name);
    let tool = |source| VolumeError::Tool {
        kind: "volume",
        name: name.clone(),
        pool: pool.label().clone(),
        source,
    };
    if !path.exists() {
        cmd::run(
            "btrfs",
            ["subvolume".as_ref(), "create".as_ref(), path.as_os_str()],
        )
        .map_err(tool)?;
    }
    cmd::run(
        "btrfs",
        [
            "qgroup".as_ref(),
            "limit".as_ref(),
            size_bytes.to_string().as_ref(),
            path.as_os_str(),
        ],
    )
    .map_err(tool)?;
    Ok(())
}

fn make_vdisk(pool: &Pool, name: &ResourceName, size_bytes: u64) -> Result<(), VolumeError> {
    let path = data_path(pool, ResourceKind::Vdisk, name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| VolumeError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
    nix::fcntl::fallocate(file.as_fd(), FallocateFlags::empty(), 0, size_bytes as i64).map_err(
        |errno| VolumeError::Fallocate {
            path: path.clone(),
            errno,
        },
    )?;
    file.sync_all().map_err(|source| VolumeError::Io {
        op: "sync",
        path,
        source,
    })
}

/// Deletes a resource and its record. Blocking. Missing pieces are fine.
pub fn remove(pool: &Pool, kind: ResourceKind, name: &ResourceName) -> Result<(), VolumeError> {
    let path = data_path(pool, kind, name);
    if path.exists() {
        match kind {
            ResourceKind::Volume => {
                cmd::run(
                    "btrfs",
                    ["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()],
                )
                .map_err(|source| VolumeError::Tool {
                    kind: "volume",
                    name: name.clone(),
                    pool: pool.label().clone(),
                    source,
                })?;
            }
            ResourceKind::Vdisk => {
                std::fs::remove_file(&path).map_err(|source| VolumeError::Io {
                    op: "remove",
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    let record = record_path(pool, kind, name);
    match std::fs::remove_file(&record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VolumeError::Io {
            op: "remove",
            path: record,
            source,
        }),
    }
}

/// Finishes or rolls back what a crash interrupted. Blocking.
pub fn reconcile(pool: &Pool) -> Result<(), VolumeError> {
    for r in records(pool) {
        let path = data_path(pool, r.kind, &r.name);
        match (r.kind, path.exists()) {
            (_, false) => {
                tracing::info!(name = %r.name, kind = r.kind.as_str(), "dropping an unfinished create");
                remove(pool, r.kind, &r.name)?;
            }
            (ResourceKind::Volume, true) => make_volume(pool, &r.name, r.size_bytes)?,
            (ResourceKind::Vdisk, true) => {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < r.size_bytes {
                    make_vdisk(pool, &r.name, r.size_bytes)?;
                }
            }
        }
    }
    Ok(())
}

/// Referenced bytes per volume name on `pool`, from its qgroups. Blocking.
pub fn volume_usage(pool: &Pool) -> Result<HashMap<String, u64>, VolumeError> {
    let out = cmd::run(
        "btrfs",
        [
            "qgroup".as_ref(),
            "show".as_ref(),
            "-re".as_ref(),
            "--raw".as_ref(),
            pool.mount_point.as_os_str(),
        ],
    )
    .map_err(|source| VolumeError::Usage {
        pool: pool.label().clone(),
        source,
    })?;
    Ok(parse_qgroups(&out))
}

/// Parses `btrfs qgroup show -re --raw` into path-name → referenced bytes
/// for subvolumes under `volumes/`.
fn parse_qgroups(text: &str) -> HashMap<String, u64> {
    let prefix = format!("{VOLUMES_DIR}/");
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (rfer, path) = (cols.get(1)?, cols.get(5)?);
            let name = path.strip_prefix(&prefix)?;
            Some((name.to_owned(), rfer.parse().ok()?))
        })
        .collect()
}

/// Lists the resources of `pool` with their usage. Blocking.
pub fn list(pool: &Pool) -> Vec<Resource> {
    let usage = if pool.is_healthy() {
        volume_usage(pool).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no volume usage");
            HashMap::new()
        })
    } else {
        HashMap::new()
    };
    records(pool)
        .into_iter()
        .map(|r| Resource {
            used_bytes: match r.kind {
                ResourceKind::Volume => usage.get(r.name.as_str()).copied().unwrap_or(0),
                ResourceKind::Vdisk => r.size_bytes,
            },
            path: data_path(pool, r.kind, &r.name),
            pool: pool.label().clone(),
            size_bytes: r.size_bytes,
            kind: r.kind,
            name: r.name,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qgroup_output() {
        let text = "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n\
                    --------    ----------    ---------  --------------  -------------   ---- \n\
                    0/5              16384        16384            none           none   <toplevel>\n\
                    0/256          5259264      5259264        52428800           none   volumes/a\n\
                    0/257            16384        16384            none           none   cache\n";
        let u = parse_qgroups(text);
        assert_eq!(u.len(), 1);
        assert_eq!(u.get("a"), Some(&5259264));
    }
}

// The socket API of volumes and vdisks by name, as provisiond's drivers
// call it (`PUT`/`DELETE /v1/volumes/{name}`, `PUT`/`DELETE
// /v1/vdisks/{name}`). Minimal: the shapes and the client only; the
// handlers come with storaged's volume work.

/// `PUT /v1/volumes/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRequest {
    /// The pool's label.
    pub pool: String,
    /// Bytes.
    pub size: u64,
}

/// A volume as storaged answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub pool: String,
    pub size: u64,
    pub used: u64,
    pub path: PathBuf,
}

/// `PUT /v1/vdisks/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskRequest {
    pub pool: String,
    pub size: u64,
}

/// A vdisk as storaged answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskView {
    pub name: String,
    pub pool: String,
    pub size: u64,
    pub path: PathBuf,
}

/// What a `DELETE` of a volume or vdisk answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub name: String,
    pub existed: bool,
}
