//! Pools: one btrfs filesystem per disk, mounted at `/mnt/pools/<label>`.
//!
//! [`create`] turns a blank disk into a pool; [`open`] mounts an existing
//! one. Both end in the same idempotent `ensure_layout`, so a crash halfway
//! through creating a pool is repaired by the next start rather than leaving
//! a half-made pool. The pool's metadata (its SSD/HDD verdict, its disk
//! serial) lives on the pool itself, in `.grove/pool.json`, written
//! atomically.

pub mod kind;

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use crate::disk::discover::BlockDevice;
use crate::disk::guard::{GuardError, Pinned};
use crate::mounts::{self, MountError};
use crate::types::{DiskSerial, PoolLabel};
use grove_daemon::cmd::{self, CmdError};
use grove_daemon::fsutil::DirError;
use kind::{DiskKind, KindVerdict, LatencyError};

/// Directory on each pool holding Grove's own metadata.
pub const META_DIR: &str = ".grove";
/// Subvolume-holding directory for volumes.
pub const VOLUMES_DIR: &str = "volumes";
/// NOCOW directory for vdisk files.
pub const VDISKS_DIR: &str = "vdisks";

/// Why a pool could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Latency(#[from] LatencyError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("cannot make a filesystem on {device}: {source}")]
    Mkfs {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("cannot probe {device} after mkfs: {source}")]
    Probe {
        device: PathBuf,
        #[source]
        source: crate::disk::probe::ProbeError,
    },
    #[error("{device} did not read back as pool {label} after mkfs")]
    NotCreated { device: PathBuf, label: PoolLabel },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot set up pool {label}: {source}")]
    Layout {
        label: PoolLabel,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Dir(#[from] grove_daemon::fsutil::DirError),
    #[error(transparent)]
    Meta(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot encode pool metadata: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot draw a random pool label: {0}")]
    Random(#[source] std::io::Error),
}

/// Stored on the pool in `.grove/pool.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMeta {
    pub label: PoolLabel,
    pub uuid: String,
    /// The serial of the disk the pool was made on.
    pub serial: DiskSerial,
    pub verdict: KindVerdict,
    pub created_at_ms: u64,
    /// The machine that made the pool (or adopted it), as the node's
    /// machine id reads; `None` on pools made before it was recorded.
    #[serde(default)]
    pub machine: Option<String>,
    /// The chain account of the node that made the pool (or adopted it),
    /// once the node's identity was settled.
    #[serde(default)]
    pub account: Option<String>,
}

/// Whether a pool is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PoolState {
    Mounted,
    Broken { reason: String, since_ms: u64 },
}

/// A pool as storaged holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub meta: PoolMeta,
    /// Kernel name of its disk, like `sdb`.
    pub device: String,
    pub device_path: PathBuf,
    pub size_bytes: u64,
    pub mount_point: PathBuf,
    pub state: PoolState,
    /// Made on another machine: mounted read-only, never written, never
    /// used for the cache, volumes or workloads.
    pub other_machine: bool,
}

impl Pool {
    pub fn kind(&self) -> DiskKind {
        self.meta.verdict.kind
    }

    pub fn label(&self) -> &PoolLabel {
        &self.meta.label
    }

    pub fn is_healthy(&self) -> bool {
        self.state == PoolState::Mounted
    }
}

/// Makes a pool on the pinned `disk`, which the caller has classified
/// blank. Without discard (`-K`): a disk's old blocks stay recoverable until
/// they are overwritten. Blocking.
pub fn create(pinned: &Pinned, pools_dir: &Path, machine: Option<&str>) -> Result<Pool, PoolError> {
    pinned.ensure_unused()?;
    let disk = pinned.device();
    let median = kind::probe_latency_us(&disk.path, disk.size_bytes)?;
    let verdict = kind::judge(disk.rotational, median);
    let label = random_label()?;
    // No --force: mkfs.btrfs refuses a device that carries a filesystem, a
    // last guard should classification ever be wrong.
    cmd::run(
        "mkfs.btrfs",
        &[
            "-q".as_ref(),
            "-K".as_ref(),
            "-L".as_ref(),
            label.as_str().as_ref(),
            "-m".as_ref(),
            "single".as_ref(),
            "-d".as_ref(),
            "single".as_ref(),
            disk.path.as_os_str(),
        ],
    )
    .map_err(|source| PoolError::Mkfs {
        device: disk.path.clone(),
        source,
    })?;
    let sig = crate::disk::probe::probe(&disk.path, disk.size_bytes).map_err(|source| {
        PoolError::Probe {
            device: disk.path.clone(),
            source,
        }
    })?;
    let uuid = match (sig.label.as_deref(), sig.uuid) {
        (Some(l), Some(uuid)) if l == label.as_str() => uuid,
        _ => {
            return Err(PoolError::NotCreated {
                device: disk.path.clone(),
                label,
            });
        }
    };
    let meta = PoolMeta {
        label,
        uuid,
        serial: disk.serial.clone(),
        verdict,
        created_at_ms: now_ms(),
        machine: machine.map(str::to_owned),
        account: None,
    };
    open_with(disk, meta, pools_dir)
}

/// Mounts the existing pool `label` on `disk`. A pool another machine made
/// is remounted read-only at once and never written. Blocking.
pub fn open(
    disk: &BlockDevice,
    label: &PoolLabel,
    uuid: &str,
    pools_dir: &Path,
    machine: Option<&str>,
) -> Result<Pool, PoolError> {
    let mount_point = pools_dir.join(label.as_str());
    mount_if_needed(&disk.path, &mount_point)?;
    let meta = match read_meta(&mount_point) {
        Some(meta)
            if meta.uuid == uuid
                && meta.machine.is_some()
                && machine.is_some()
                && meta.machine.as_deref() != machine =>
        {
            mounts::mount(
                &disk.path,
                &mount_point,
                Some("btrfs"),
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOATIME,
                None,
            )?;
            return Ok(Pool {
                device: disk.name.clone(),
                device_path: disk.path.clone(),
                size_bytes: disk.size_bytes,
                mount_point,
                state: PoolState::Mounted,
                other_machine: true,
                meta,
            });
        }
        // A pool from before machines were recorded is this machine's.
        Some(mut meta) if meta.uuid == uuid => {
            if meta.machine.is_none() {
                meta.machine = machine.map(str::to_owned);
            }
            meta
        }
        // Missing or stale metadata (a crash right after mkfs, or a pool
        // copied with dd): measure again and rewrite it.
        _ => {
            let median = kind::probe_latency_us(&disk.path, disk.size_bytes)?;
            PoolMeta {
                label: label.clone(),
                uuid: uuid.to_owned(),
                serial: disk.serial.clone(),
                verdict: kind::judge(disk.rotational, median),
                created_at_ms: now_ms(),
                machine: machine.map(str::to_owned),
                account: None,
            }
        }
    };
    open_with(disk, meta, pools_dir)
}

/// Records the node's account on a pool of this machine (once the node's
/// identity is settled). Blocking.
pub fn record_account(pool: &mut Pool, account: &str) -> Result<(), PoolError> {
    let mut meta = pool.meta.clone();
    meta.account = Some(account.to_owned());
    replace_meta(pool, meta)
}

/// Writes `meta` as the pool's record (atomically), then holds it.
fn replace_meta(pool: &mut Pool, meta: PoolMeta) -> Result<(), PoolError> {
    let bytes = serde_json::to_vec_pretty(&meta).map_err(PoolError::Encode)?;
    grove_daemon::fsutil::write_atomic(
        &pool.mount_point.join(META_DIR).join("pool.json"),
        &bytes,
        0o644,
    )?;
    pool.meta = meta;
    Ok(())
}

/// Makes another machine's pool this machine's: the node adopted the
/// identity it holds. Remounted read-write, the machine recorded. Blocking.
pub fn adopt(pool: &mut Pool, machine: Option<&str>) -> Result<(), PoolError> {
    mounts::mount(
        &pool.device_path,
        &pool.mount_point,
        Some("btrfs"),
        MsFlags::MS_REMOUNT | MsFlags::MS_NOATIME,
        None,
    )?;
    let mut meta = pool.meta.clone();
    meta.machine = machine.map(str::to_owned);
    replace_meta(pool, meta)?;
    pool.other_machine = false;
    Ok(())
}

fn open_with(disk: &BlockDevice, meta: PoolMeta, pools_dir: &Path) -> Result<Pool, PoolError> {
    let mount_point = pools_dir.join(meta.label.as_str());
    mount_if_needed(&disk.path, &mount_point)?;
    ensure_layout(&mount_point, &meta)?;
    Ok(Pool {
        device: disk.name.clone(),
        device_path: disk.path.clone(),
        size_bytes: disk.size_bytes,
        mount_point,
        state: PoolState::Mounted,
        other_machine: false,
        meta,
    })
}

fn mount_if_needed(device: &Path, mount_point: &Path) -> Result<(), PoolError> {
    if !mounts::is_mount_point(&mounts::table()?, mount_point) {
        mounts::mount(
            device,
            mount_point,
            Some("btrfs"),
            MsFlags::MS_NOATIME,
            Some("space_cache=v2"),
        )?;
    }
    Ok(())
}

/// Quotas on, the volume and vdisk directories, metadata: each step is
/// skipped when already done.
fn ensure_layout(mount_point: &Path, meta: &PoolMeta) -> Result<(), PoolError> {
    let layout = |source| PoolError::Layout {
        label: meta.label.clone(),
        source,
    };
    let meta_dir = mount_point.join(META_DIR);
    let meta_file = meta_dir.join("pool.json");
    let quota_marker = meta_dir.join("quota");
    mkdir(&meta_dir)?;
    if !quota_marker.exists() {
        cmd::run(
            "btrfs",
            &["quota".as_ref(), "enable".as_ref(), mount_point.as_os_str()],
        )
        .map_err(layout)?;
        grove_daemon::fsutil::write_atomic(&quota_marker, b"enabled\n", 0o644)?;
    }
    mkdir(&mount_point.join(VOLUMES_DIR))?;
    let vdisks = mount_point.join(VDISKS_DIR);
    if !vdisks.exists() {
        let tmp = mount_point.join(".vdisks.tmp");
        mkdir(&tmp)?;
        // New files in a NOCOW directory are NOCOW: vdisks never fragment
        // through copy-on-write.
        cmd::run("chattr", &["+C".as_ref(), tmp.as_os_str()]).map_err(layout)?;
        std::fs::rename(&tmp, &vdisks).map_err(|source| DirError {
            path: vdisks.clone(),
            source,
        })?;
    }
    if read_meta(mount_point).as_ref() != Some(meta) {
        let bytes = serde_json::to_vec_pretty(meta).map_err(PoolError::Encode)?;
        grove_daemon::fsutil::write_atomic(&meta_file, &bytes, 0o644)?;
    }
    Ok(())
}

fn read_meta(mount_point: &Path) -> Option<PoolMeta> {
    let bytes = std::fs::read(mount_point.join(META_DIR).join("pool.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn mkdir(path: &Path) -> Result<(), DirError> {
    grove_daemon::fsutil::ensure_dir(path, None)
}

fn random_label() -> Result<PoolLabel, PoolError> {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(PoolError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", PoolLabel::PREFIX)
        .parse()
        .map_err(|e: crate::types::NameError| {
            PoolError::Random(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_labels_are_valid_and_differ() {
        let a = random_label().expect("label");
        let b = random_label().expect("label");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("grove-"));
    }
}
