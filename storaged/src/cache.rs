//! The system cache: a subvolume `cache` on a pool, mounted at
//! `/var/cache/grove`, where the node keeps its state.
//!
//! The cache stays on the pool that has it across reboots. A new one goes on
//! the SSD pool with the most free space; with no SSD it goes on an HDD and
//! the status says degraded; with no pool at all nothing is mounted and the
//! status says node state will not survive a reboot.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use crate::mounts::{self, MountError};
use crate::pool::Pool;
use crate::pool::kind::DiskKind;
use crate::types::PoolLabel;
use grove_daemon::cmd::{self, CmdError};

/// The cache subvolume's name on its pool.
pub const SUBVOLUME: &str = "cache";

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the cache subvolume on pool {pool}: {source}")]
    Create {
        pool: PoolLabel,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Where the cache is, and whether that is as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub mount_point: PathBuf,
    pub pool: Option<PoolLabel>,
    pub kind: Option<DiskKind>,
    /// Why the cache is not on an SSD pool, if it is not.
    pub degraded: Option<String>,
}

/// Puts the cache on a pool and mounts it at `cache_dir`. Blocking.
/// `free` gives each pool's free bytes.
pub fn ensure(
    pools: &[Pool],
    cache_dir: &Path,
    free: impl Fn(&Pool) -> u64,
) -> Result<CacheStatus, CacheError> {
    let rank = |p: &&Pool| (p.kind() == DiskKind::Ssd, free(p));
    let healthy = || pools.iter().filter(|p| p.is_healthy());
    let chosen = healthy()
        .filter(|p| p.mount_point.join(SUBVOLUME).exists())
        .max_by_key(rank)
        .or_else(|| healthy().max_by_key(rank));
    let Some(pool) = chosen else {
        return Ok(CacheStatus {
            mount_point: cache_dir.to_owned(),
            pool: None,
            kind: None,
            degraded: Some(
                "no pool: node state is kept in memory and will not survive a reboot".to_owned(),
            ),
        });
    };
    let subvolume = pool.mount_point.join(SUBVOLUME);
    if !subvolume.exists() {
        cmd::run(
            "btrfs",
            &[
                "subvolume".as_ref(),
                "create".as_ref(),
                subvolume.as_os_str(),
            ],
        )
        .map_err(|source| CacheError::Create {
            pool: pool.label().clone(),
            source,
        })?;
    }
    if !mounts::is_mount_point(&mounts::table()?, cache_dir) {
        mounts::mount(&subvolume, cache_dir, None, MsFlags::MS_BIND, None)?;
    }
    Ok(CacheStatus {
        mount_point: cache_dir.to_owned(),
        pool: Some(pool.label().clone()),
        kind: Some(pool.kind()),
        degraded: (pool.kind() == DiskKind::Hdd)
            .then(|| "no SSD pool: the cache is on an HDD and will be slow".to_owned()),
    })
}
