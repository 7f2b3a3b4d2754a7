//! Volumes: `volumes/<name>` subvolumes, each limited by its qgroup.
//!
//! The limit (`btrfs qgroup limit`) is the volume's size, so a write past it
//! fails with `EDQUOT`; growing raises it. A subvolume is deleted with its
//! qgroup: the kernel drops a subvolume's qgroup once the cleaner has freed
//! it, and [`remove`] waits for that and destroys it if it is still there,
//! so `btrfs qgroup show` keeps no stale entry. Limits: the btrfs tool is
//! the interface (btrfs-progs 6.x output, `-re --raw`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::pool::{Pool, VOLUMES_DIR};
use crate::types::ResourceName;
use grove_daemon::cmd::{self, CmdError, CmdFailure};

use super::{Found, Kind, Qgroup, TEMP_PREFIX, VolumeError};

/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

/// First id of a subvolume (lower ids are btrfs's own trees).
const FIRST_SUBVOLUME_ID: u64 = 256;

fn btrfs(op: &'static str, path: &Path, args: &[&std::ffi::OsStr]) -> Result<String, VolumeError> {
    cmd::run("btrfs", args).map_err(|source| VolumeError::Tool {
        op,
        path: path.to_owned(),
        source,
    })
}

fn is_subvolume(meta: &std::fs::Metadata) -> bool {
    meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INO
}

/// Level-0 qgroups of the pool, by subvolume id.
fn qgroups(pool: &Pool) -> Result<HashMap<u64, Qgroup>, VolumeError> {
    let mount = pool.mount_point.as_os_str();
    let out = btrfs(
        "read the qgroups of",
        &pool.mount_point,
        &[
            "qgroup".as_ref(),
            "show".as_ref(),
            "-re".as_ref(),
            "--raw".as_ref(),
            mount,
        ],
    )?;
    Ok(super::parse_qgroups(&out))
}

pub(super) fn scan(pool: &Pool) -> Result<Vec<Found>, VolumeError> {
    let dir = pool.mount_point.join(VOLUMES_DIR);
    let entries = super::named_entries(&dir)?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let by_path: HashMap<String, (u64, Option<u64>)> = qgroups(pool)?
        .into_values()
        .map(|q| (q.path, (q.referenced, q.limit)))
        .collect();
    Ok(entries
        .into_iter()
        .filter(|(_, meta)| is_subvolume(meta))
        .map(|(name, _)| {
            let (used, limit) = by_path
                .get(&format!("{VOLUMES_DIR}/{name}"))
                .copied()
                .unwrap_or((0, None));
            if limit.is_none() {
                tracing::warn!(volume = %name, pool = %pool.label(), "volume without a qgroup limit: size 0 until ensured");
            }
            Found {
                path: dir.join(name.as_str()),
                size: limit.unwrap_or(0),
                used,
                name,
            }
        })
        .collect())
}

/// Checks that `source` can be snapshotted into a volume on `pool`: an
/// absolute path with no symbolic link on the way, the root of a btrfs
/// subvolume of its own. That it is on the pool's filesystem, the snapshot
/// itself tells (`EXDEV`).
fn check_source(source: &Path) -> Result<(), VolumeError> {
    let refuse = |why: String| VolumeError::SnapshotSource {
        path: source.to_owned(),
        why,
    };
    if !source.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    match std::fs::canonicalize(source) {
        Ok(real) if real == source => {}
        Ok(real) => {
            return Err(refuse(format!(
                "the path leads elsewhere ({}) through a symbolic link or '..'",
                real.display()
            )));
        }
        Err(e) => return Err(refuse(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(source).map_err(|e| refuse(e.to_string()))?;
    if !is_subvolume(&meta) {
        return Err(refuse("not the root of a subvolume".into()));
    }
    if btrfs(
        "read the subvolume",
        source,
        &["subvolume".as_ref(), "show".as_ref(), source.as_os_str()],
    )
    .is_err()
    {
        return Err(refuse("not a btrfs subvolume".into()));
    }
    Ok(())
}

pub(super) fn make(
    pool: &Pool,
    name: &ResourceName,
    size: u64,
    snapshot_of: Option<&Path>,
) -> Result<(), VolumeError> {
    if let Some(source) = snapshot_of {
        check_source(source)?;
    }
    let dir = pool.mount_point.join(VOLUMES_DIR);
    let tmp_name = format!("{TEMP_PREFIX}{name}");
    let tmp = dir.join(&tmp_name);
    if let Ok(meta) = std::fs::symlink_metadata(&tmp)
        && is_subvolume(&meta)
    {
        delete(pool, &tmp)?;
    }
    match snapshot_of {
        Some(source) => btrfs(
            "snapshot into",
            &tmp,
            &[
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                source.as_os_str(),
                tmp.as_os_str(),
            ],
        )
        .map_err(|e| match e {
            VolumeError::Tool { source: cmd, .. } if cross_device(&cmd) => {
                VolumeError::SnapshotSource {
                    path: source.to_owned(),
                    why: format!("it is not on pool {}: {cmd}", pool.label()),
                }
            }
            other => other,
        })?,
        None => btrfs(
            "create the subvolume",
            &tmp,
            &["subvolume".as_ref(), "create".as_ref(), tmp.as_os_str()],
        )?,
    };
    let finished = limit(&tmp, size).and_then(|()| super::publish(&dir, &tmp_name, name));
    if let Err(e) = finished {
        if let Err(cleanup) = delete(pool, &tmp) {
            tracing::warn!(error = %cleanup, path = %tmp.display(), "a failed volume is left under its temporary name until the next start");
        }
        return Err(e);
    }
    Ok(())
}

fn limit(path: &Path, size: u64) -> Result<(), VolumeError> {
    btrfs(
        "limit the qgroup of",
        path,
        &[
            "qgroup".as_ref(),
            "limit".as_ref(),
            size.to_string().as_ref(),
            path.as_os_str(),
        ],
    )
    .map(drop)
}

pub(super) fn grow(pool: &Pool, name: &ResourceName, size: u64) -> Result<(), VolumeError> {
    limit(&super::path_of(pool, Kind::Volume, name), size)
}

pub(super) fn remove(pool: &Pool, name: &ResourceName) -> Result<bool, VolumeError> {
    let path = super::path_of(pool, Kind::Volume, name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if is_subvolume(&meta) => {
            delete(pool, &path)?;
            Ok(true)
        }
        // Not a subvolume: not a volume, never touched.
        Ok(_) | Err(_) => Ok(false),
    }
}

/// Deletes the subvolume at `path` and its qgroup. Blocking.
fn delete(pool: &Pool, path: &Path) -> Result<(), VolumeError> {
    let out = btrfs(
        "read the subvolume id of",
        path,
        &[
            "inspect-internal".as_ref(),
            "rootid".as_ref(),
            path.as_os_str(),
        ],
    )?;
    let id: u64 = out
        .trim()
        .parse()
        .map_err(|source| VolumeError::SubvolumeId {
            path: path.to_owned(),
            text: out.trim().to_owned(),
            source,
        })?;
    if id < FIRST_SUBVOLUME_ID {
        return Err(VolumeError::NotASubvolume {
            path: path.to_owned(),
            id,
        });
    }
    match delete_by_id(pool, id) {
        Err(VolumeError::Tool { source, .. }) if not_empty(&source) => {
            for nested in delete_nested(pool, path)? {
                forget_qgroup(pool, nested)?;
            }
            delete_by_id(pool, id)?;
        }
        other => other?,
    }
    forget_qgroup(pool, id)
}

/// Deletes the subvolume `id` by its id: no path inside a volume, which its
/// tenant may have changed, is ever followed.
fn delete_by_id(pool: &Pool, id: u64) -> Result<(), VolumeError> {
    let id_text = id.to_string();
    btrfs(
        "delete a subvolume of",
        &pool.mount_point,
        &[
            "subvolume".as_ref(),
            "delete".as_ref(),
            "--commit-after".as_ref(),
            "--subvolid".as_ref(),
            id_text.as_ref(),
            pool.mount_point.as_os_str(),
        ],
    )
    .map(drop)
}

fn cross_device(e: &CmdError) -> bool {
    matches!(e.failure(), CmdFailure::Failed { stderr, .. } if stderr.contains("cross-device"))
}

fn not_empty(e: &CmdError) -> bool {
    matches!(e.failure(), CmdFailure::Failed { stderr, .. } if stderr.contains("Directory not empty"))
}

/// Deletes every subvolume made inside the subvolume at `path` (a tenant
/// may make them in a volume), innermost first; answers their ids. Which
/// ones are inside is the kernel's answer for each id
/// (`subvolid-resolve`), never a path read from a listing, so a subvolume
/// named to look like another line of it changes nothing.
fn delete_nested(pool: &Pool, path: &Path) -> Result<Vec<u64>, VolumeError> {
    let rel = path
        .strip_prefix(&pool.mount_point)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned();
    let inside = format!("{rel}/");
    let mount = pool.mount_point.as_os_str();
    let listing = btrfs(
        "list the subvolumes of",
        &pool.mount_point,
        &["subvolume".as_ref(), "list".as_ref(), mount],
    )?;
    let mut ids: Vec<u64> = listing
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ID ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .filter(|id: &u64| *id >= FIRST_SUBVOLUME_ID)
        .filter(|id| {
            let id_text = id.to_string();
            cmd::run(
                "btrfs",
                &[
                    "inspect-internal".as_ref(),
                    "subvolid-resolve".as_ref(),
                    id_text.as_ref(),
                    mount,
                ],
            )
            .is_ok_and(|resolved| resolved.trim_end_matches('\n').starts_with(&inside))
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut deleted = Vec::new();
    // Innermost first: a subvolume with others inside refuses, and goes in
    // a later round.
    while !ids.is_empty() {
        let before = deleted.len();
        let mut left = Vec::new();
        for id in ids {
            match delete_by_id(pool, id) {
                Ok(()) => deleted.push(id),
                Err(VolumeError::Tool { ref source, .. }) if not_empty(source) => left.push(id),
                Err(e) => return Err(e),
            }
        }
        if deleted.len() == before {
            return Err(VolumeError::NestedStuck {
                path: path.to_owned(),
                ids: left,
            });
        }
        ids = left;
    }
    Ok(deleted)
}

/// Waits until the deleted subvolume `id` is cleaned, then destroys its
/// qgroup unless the kernel already has.
fn forget_qgroup(pool: &Pool, id: u64) -> Result<(), VolumeError> {
    let mount = pool.mount_point.as_os_str();
    let id_text = id.to_string();
    btrfs(
        "wait for the cleaner on",
        &pool.mount_point,
        &[
            "subvolume".as_ref(),
            "sync".as_ref(),
            mount,
            id_text.as_ref(),
        ],
    )?;
    let qgroup = format!("0/{id}");
    match cmd::run(
        "btrfs",
        &[
            "qgroup".as_ref(),
            "destroy".as_ref(),
            qgroup.as_ref(),
            mount,
        ],
    ) {
        Ok(_) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(source) => Err(VolumeError::Tool {
            op: "destroy the qgroup of",
            path: pool.mount_point.join(&qgroup),
            source,
        }),
    }
}

fn gone(e: &CmdError) -> bool {
    matches!(e.failure(), CmdFailure::Failed { stderr, .. } if stderr.contains("No such file or directory"))
}

pub(super) fn sweep(pool: &Pool) -> Result<Vec<PathBuf>, VolumeError> {
    let mut removed = Vec::new();
    for tmp in super::leftovers(&pool.mount_point.join(VOLUMES_DIR))? {
        match std::fs::symlink_metadata(&tmp) {
            Ok(meta) if is_subvolume(&meta) => {
                tracing::info!(path = %tmp.display(), "removing a volume a crash left half made");
                delete(pool, &tmp)?;
                removed.push(tmp);
            }
            _ => tracing::warn!(path = %tmp.display(), "not a subvolume: left alone"),
        }
    }
    for (id, q) in qgroups(pool)? {
        if id >= FIRST_SUBVOLUME_ID && q.path == "<stale>" {
            tracing::info!(qgroup = %format!("0/{id}"), pool = %pool.label(), "removing the qgroup of a deleted subvolume");
            forget_qgroup(pool, id)?;
            removed.push(pool.mount_point.join(format!("0/{id}")));
        }
    }
    Ok(removed)
}
