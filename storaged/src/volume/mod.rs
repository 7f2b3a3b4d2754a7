//! Volumes (a btrfs subvolume with a qgroup limit) and vdisks (a
//! preallocated NOCOW file) on a pool, and the shapes of their API.
//!
//! The pool is the only record: a volume is `volumes/<name>` with the limit
//! as its size, a vdisk is `vdisks/<name>` with its length as its size, so a
//! restart of storaged loses nothing and there is no second record to
//! disagree. Each is made under a temporary name (`.new-<name>`, never a
//! valid name), fully set up, then renamed into place without replacing
//! anything; [`sweep`] removes such leftovers of a crash at start, and only
//! them. Limits: a vdisk grown by a crash-interrupted `fallocate` may keep a
//! part of its new tail; the size it reports is then its length, which the
//! next ensure grows again.

mod subvolume;
mod vdisk;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pool::{Pool, VDISKS_DIR, VOLUMES_DIR};
use crate::types::{PoolLabel, ResourceName};
use grove_daemon::cmd::CmdError;

/// The prefix of the temporary name an object is made under. A leading dot
/// makes it an invalid [`ResourceName`], so it never counts as an object.
pub const TEMP_PREFIX: &str = ".new-";

/// `PUT /v1/volumes/{name}` and `PUT /v1/vdisks/{name}`: on which pool,
/// how large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRequest {
    /// The pool's label.
    pub pool: String,
    /// Bytes.
    pub size: u64,
    /// A new volume starts as a writable snapshot of this subvolume (an
    /// unpacked container image), which must be on the same pool; the
    /// limit then counts what the snapshot shares with it. Ignored when
    /// the volume exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_of: Option<PathBuf>,
}

/// `PUT /v1/volumes/{name}`.
pub type VolumeRequest = ObjectRequest;

/// `PUT /v1/vdisks/{name}`.
pub type VdiskRequest = ObjectRequest;

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub pool: String,
    /// The qgroup limit, bytes.
    pub size: u64,
    /// The qgroup's referenced bytes.
    pub used: u64,
    pub path: PathBuf,
    /// Why the pool cannot be looked at (it broke or vanished): the volume
    /// is shown as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

/// A vdisk as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdiskView {
    pub name: String,
    pub pool: String,
    /// The file's length, bytes.
    pub size: u64,
    pub path: PathBuf,
    /// As [`VolumeView::broken`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

/// What a delete did: `existed: false` when there was nothing to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub name: String,
    pub existed: bool,
}

/// Which of the two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Volume,
    Vdisk,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Vdisk => "vdisk",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Volume => VOLUMES_DIR,
            Kind::Vdisk => VDISKS_DIR,
        }
    }
}

/// Why a volume or vdisk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("a {kind} size must be more than 0 bytes")]
    ZeroSize { kind: &'static str },
    #[error("{name}: a {kind} only grows: has {has} bytes, asked {asked}")]
    OnlyGrows {
        kind: &'static str,
        name: ResourceName,
        has: u64,
        asked: u64,
    },
    #[error("the {kind} {name} is on pool {on}, not on pool {asked}")]
    OtherPool {
        kind: &'static str,
        name: ResourceName,
        on: PoolLabel,
        asked: PoolLabel,
    },
    #[error("no pool {pool} on this node")]
    UnknownPool { pool: PoolLabel },
    #[error("pool {pool} takes no {kind}: {why}")]
    Unusable {
        kind: &'static str,
        pool: PoolLabel,
        why: String,
    },
    #[error("the {kind} {name} is on pool {pool}, which cannot be changed: {why}")]
    OnUnusablePool {
        kind: &'static str,
        name: ResourceName,
        pool: PoolLabel,
        why: String,
    },
    #[error(
        "pool {pool} has {free} bytes free (of {size}, {reserved} reserved); the {kind} {name} needs {needed} more"
    )]
    NoRoom {
        kind: &'static str,
        name: ResourceName,
        pool: PoolLabel,
        needed: u64,
        free: u64,
        size: u64,
        reserved: u64,
    },
    #[error("cannot {op} {path}: {source}")]
    Tool {
        op: &'static str,
        path: PathBuf,
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
    #[error("cannot {op} {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("cannot read the subvolume id of {path} from {text:?}: {source}")]
    SubvolumeId {
        path: PathBuf,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("cannot preallocate {size} bytes for {path}: {source}")]
    TooLarge {
        path: PathBuf,
        size: u64,
        #[source]
        source: std::num::TryFromIntError,
    },
    #[error("the subvolumes {ids:?} inside {path} cannot be deleted")]
    NestedStuck { path: PathBuf, ids: Vec<u64> },
    #[error("{path} is not a subvolume of its own (id {id})")]
    NotASubvolume { path: PathBuf, id: u64 },
    #[error("cannot snapshot {path}: {why}")]
    SnapshotSource { path: PathBuf, why: String },
}

/// One object found on a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: ResourceName,
    pub size: u64,
    /// Volumes: the qgroup's referenced bytes; vdisks: the size.
    pub used: u64,
    pub path: PathBuf,
}

/// Everything on one pool, as last looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolObjects {
    pub volumes: Vec<Found>,
    pub vdisks: Vec<Found>,
}

impl PoolObjects {
    pub fn of(&self, kind: Kind) -> &[Found] {
        match kind {
            Kind::Volume => &self.volumes,
            Kind::Vdisk => &self.vdisks,
        }
    }

    pub fn find(&self, kind: Kind, name: &ResourceName) -> Option<&Found> {
        self.of(kind).iter().find(|f| &f.name == name)
    }

    /// Bytes given to the pool's objects: volume limits and vdisk lengths.
    pub fn allocated(&self) -> u64 {
        self.volumes
            .iter()
            .chain(&self.vdisks)
            .map(|f| f.size)
            .fold(0, u64::saturating_add)
    }
}

/// Where an object of `kind` named `name` lives on `pool`.
pub fn path_of(pool: &Pool, kind: Kind, name: &ResourceName) -> PathBuf {
    pool.mount_point.join(kind.dir()).join(name.as_str())
}

/// Looks at everything on `pool`. Blocking.
pub fn scan(pool: &Pool) -> Result<PoolObjects, VolumeError> {
    Ok(PoolObjects {
        volumes: subvolume::scan(pool)?,
        vdisks: vdisk::scan(pool)?,
    })
}

/// Makes the object, which the caller has checked is absent and fits.
/// Blocking. On failure nothing is left under the object's name.
pub fn make(
    pool: &Pool,
    kind: Kind,
    name: &ResourceName,
    size: u64,
    snapshot_of: Option<&Path>,
) -> Result<(), VolumeError> {
    match kind {
        Kind::Volume => subvolume::make(pool, name, size, snapshot_of),
        Kind::Vdisk => vdisk::make(pool, name, size),
    }
}

/// Grows the object to `size`, larger than it is. Blocking.
pub fn grow(pool: &Pool, kind: Kind, name: &ResourceName, size: u64) -> Result<(), VolumeError> {
    match kind {
        Kind::Volume => subvolume::grow(pool, name, size),
        Kind::Vdisk => vdisk::grow(pool, name, size),
    }
}

/// Removes the object; `false` when it was not there. Blocking.
pub fn remove(pool: &Pool, kind: Kind, name: &ResourceName) -> Result<bool, VolumeError> {
    match kind {
        Kind::Volume => subvolume::remove(pool, name),
        Kind::Vdisk => vdisk::remove(pool, name),
    }
}

/// Removes what a crash left: objects under a temporary name, and qgroups
/// of deleted subvolumes. Nothing else is touched. Answers the paths it
/// removed. Blocking.
pub fn sweep(pool: &Pool) -> Result<Vec<PathBuf>, VolumeError> {
    let mut removed = subvolume::sweep(pool)?;
    removed.extend(vdisk::sweep(pool)?);
    Ok(removed)
}

/// The temporary names in `dir`.
fn leftovers(dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(VolumeError::Io {
                op: "read",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| VolumeError::Io {
            op: "read",
            path: dir.to_owned(),
            source,
        })?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The entries of `dir` whose names are valid object names, with their
/// metadata (not followed through links).
fn named_entries(dir: &Path) -> Result<Vec<(ResourceName, std::fs::Metadata)>, VolumeError> {
    let io = |source| VolumeError::Io {
        op: "read",
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<ResourceName>().ok())
        else {
            continue;
        };
        let meta = entry.metadata().map_err(io)?;
        out.push((name, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Renames `tmp` to `name` inside `dir`, never replacing anything, and
/// makes the rename durable.
fn publish(dir: &Path, tmp: &str, name: &ResourceName) -> Result<(), VolumeError> {
    let handle = open_dir(dir)?;
    nix::fcntl::renameat2(
        &handle,
        tmp,
        &handle,
        name.as_str(),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|errno| VolumeError::Sys {
        op: "rename into place",
        path: dir.join(name.as_str()),
        errno,
    })?;
    sync_dir(&handle, dir)
}

fn open_dir(dir: &Path) -> Result<File, VolumeError> {
    File::open(dir).map_err(|source| VolumeError::Io {
        op: "open",
        path: dir.to_owned(),
        source,
    })
}

fn sync_dir(handle: &File, dir: &Path) -> Result<(), VolumeError> {
    handle.sync_all().map_err(|source| VolumeError::Io {
        op: "sync",
        path: dir.to_owned(),
        source,
    })
}

/// A level-0 qgroup: one subvolume's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Qgroup {
    referenced: u64,
    limit: Option<u64>,
    /// As btrfs shows it: relative to the pool, or `<stale>` once the
    /// subvolume is deleted.
    path: String,
}

/// Level-0 qgroups of `btrfs qgroup show -re --raw`, by subvolume id.
fn parse_qgroups(text: &str) -> HashMap<u64, Qgroup> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let id = cols.first()?.strip_prefix("0/")?.parse().ok()?;
            let referenced = cols.get(1)?.parse().ok()?;
            let limit = cols.get(3)?.parse().ok();
            let path = cols.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            Some((
                id,
                Qgroup {
                    referenced,
                    limit,
                    path,
                },
            ))
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
                    0/257            16384        16384            none           none   cache\n\
                    0/258                0            0        10000000           none   <stale>\n\
                    1/100                0            0            none           none   \n";
        let q = parse_qgroups(text);
        assert_eq!(q.len(), 4);
        let q = |id, referenced, limit, path: &str| {
            assert_eq!(
                q.get(&id),
                Some(&Qgroup {
                    referenced,
                    limit,
                    path: path.to_owned()
                }),
                "0/{id}"
            );
        };
        q(256, 5259264, Some(52428800), "volumes/a");
        q(257, 16384, None, "cache");
        q(258, 0, Some(10000000), "<stale>");
    }

    #[test]
    fn temporary_names_are_never_object_names() {
        for name in ["a", "c1-disk", "_"] {
            let tmp = format!("{TEMP_PREFIX}{name}");
            assert!(tmp.parse::<ResourceName>().is_err(), "{tmp}");
        }
    }

    #[test]
    fn allocation_sums_limits_and_lengths() {
        let f = |n: &str, size| Found {
            name: n.parse().expect("name"),
            size,
            used: 0,
            path: PathBuf::from(n),
        };
        let objects = PoolObjects {
            volumes: vec![f("a", 10), f("b", 5)],
            vdisks: vec![f("c", 7)],
        };
        assert_eq!(objects.allocated(), 22);
        assert!(
            objects
                .find(Kind::Vdisk, &"c".parse().expect("name"))
                .is_some()
        );
        assert!(
            objects
                .find(Kind::Volume, &"c".parse().expect("name"))
                .is_none()
        );
    }
}
