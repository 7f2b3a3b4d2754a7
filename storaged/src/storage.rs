//! The node's storage: disks, pools, the cache, volumes and vdisks, behind
//! one lock.
//!
//! Every operation is blocking (tools, syscalls, disk I/O) and is called from
//! a blocking thread; the lock is a plain mutex held only there, never across
//! an await. Boot handles the disks in parallel, one thread each: probing,
//! latency checks and `mkfs` on four disks take the time of one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cache::{self, CacheError, CacheStatus};
use crate::cmd::{self, CmdError};
use crate::disk::classify::{self, DiskClass, Findings};
use crate::disk::discover::{self, BlockDevice, DiscoverError};
use crate::disk::probe::{self, ProbeError, Signatures};
use crate::mounts::{self, MountEntry};
use crate::pool::kind::DiskKind;
use crate::pool::{self, Pool, PoolError, PoolState};
use crate::types::{DiskSerial, PoolLabel, ResourceName};
use crate::volume::{self, Resource, ResourceKind, VolumeError};

/// Share of each pool kept free for btrfs metadata and the cache.
pub const RESERVE_PERCENT: u64 = 5;

/// Why a storage operation failed. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("{kind} size must be more than 0 bytes")]
    ZeroSize { kind: &'static str },
    #[error("a {kind} named {name} already exists on pool {pool}")]
    Duplicate {
        kind: &'static str,
        name: ResourceName,
        pool: PoolLabel,
    },
    #[error("no {kind} named {name}")]
    NotFound {
        kind: &'static str,
        name: ResourceName,
    },
    #[error(
        "no pool has room for {requested} bytes; the largest free space is {largest} bytes{on}"
    )]
    NoSpace {
        requested: u64,
        largest: u64,
        on: String,
    },
    #[error("no disk with serial {0}")]
    UnknownDisk(DiskSerial),
    #[error("disk {serial} is {class} and cannot be wiped: {reason}")]
    NotWipeable {
        serial: DiskSerial,
        class: &'static str,
        reason: String,
    },
    #[error("the {kind} {name} is on pool {pool}, which is broken")]
    PoolBroken {
        kind: &'static str,
        name: ResourceName,
        pool: PoolLabel,
    },
    #[error("cannot wipe {device}: {source}")]
    Wipe {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// Where storaged looks and puts things.
#[derive(Debug, Clone)]
pub struct Layout {
    pub sys: PathBuf,
    pub dev: PathBuf,
    /// Only these devices, when set (the testbed); all of them otherwise.
    pub devices: Option<Vec<PathBuf>>,
    pub pools_dir: PathBuf,
    pub cache_dir: PathBuf,
}

/// One disk as `/v1/disks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    #[serde(flatten)]
    pub device: BlockDevice,
    pub signatures: Signatures,
    #[serde(flatten)]
    pub class: DiskClass,
    pub pool: Option<PoolLabel>,
    /// The medium the node booted from: mounted at `/` or `/boot`, or
    /// carrying a Grove boot image's label. Never written.
    pub boot_medium: bool,
    /// Why the disk could not be probed or pooled, if so.
    pub error: Option<String>,
}

/// Labels of the filesystems on a Grove boot image.
pub const BOOT_LABEL_PREFIX: &str = "GROVE";

/// One pool as `/v1/pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub label: PoolLabel,
    pub uuid: String,
    pub serial: DiskSerial,
    pub device: PathBuf,
    pub kind: DiskKind,
    pub verdict: pool::kind::KindVerdict,
    #[serde(flatten)]
    pub state: PoolState,
    pub mount_point: PathBuf,
    pub size_bytes: u64,
    pub reserved_bytes: u64,
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    pub cache: bool,
}

/// Totals for one disk kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCapacity {
    pub total_bytes: u64,
    pub reserved_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// `/v1/capacity`: what the node offers, for registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub ssd: KindCapacity,
    pub hdd: KindCapacity,
    pub cache: CacheStatus,
    pub broken_pools: Vec<PoolLabel>,
}

#[derive(Debug)]
struct Inner {
    disks: Vec<Disk>,
    pools: Vec<Pool>,
    cache: CacheStatus,
}

/// The node's storage.
#[derive(Debug)]
pub struct Storage {
    layout: Layout,
    inner: Mutex<Inner>,
}

impl Storage {
    /// Finds every disk, pools the blank ones, mounts ours, wipes the foreign
    /// ones the farmer named, and mounts the cache. Blocking.
    pub fn boot(layout: Layout, wipe: &[DiskSerial]) -> Result<Self, StorageError> {
        let devices = discover_devices(&layout)?;
        let table = mounts::table().map_err(CacheError::from)?;
        let wipe: HashSet<&DiskSerial> = wipe.iter().collect();
        let results: Vec<(Disk, Option<Pool>)> = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .into_iter()
                .map(|d| {
                    let (table, layout, wipe) = (&table, &layout, &wipe);
                    s.spawn(move || bring_up(d, table, layout, wipe))
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| match h.join() {
                    Ok(r) => Some(r),
                    Err(_panic) => {
                        tracing::error!("a disk thread panicked; that disk is left alone");
                        None
                    }
                })
                .collect()
        });
        let mut disks = Vec::new();
        let mut pools = Vec::new();
        for (disk, pool) in results {
            disks.push(disk);
            pools.extend(pool);
        }
        let inner = Inner {
            cache: cache::ensure(&pools, &layout.cache_dir, free_bytes)?,
            disks,
            pools,
        };
        for pool in &inner.pools {
            if let Err(e) = volume::reconcile(pool) {
                tracing::warn!(pool = %pool.label(), error = %e, "could not finish interrupted work");
            }
        }
        Ok(Self {
            layout,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn disks(&self) -> Vec<Disk> {
        self.lock().disks.clone()
    }

    pub fn pools(&self) -> Vec<PoolReport> {
        let inner = self.lock();
        inner
            .pools
            .iter()
            .map(|p| {
                let allocated = allocated_bytes(p);
                let reserved = reserve(p);
                PoolReport {
                    label: p.label().clone(),
                    uuid: p.meta.uuid.clone(),
                    serial: p.meta.serial.clone(),
                    device: p.device_path.clone(),
                    kind: p.kind(),
                    verdict: p.meta.verdict.clone(),
                    state: p.state.clone(),
                    mount_point: p.mount_point.clone(),
                    size_bytes: p.size_bytes,
                    reserved_bytes: reserved,
                    allocated_bytes: allocated,
                    free_bytes: free_bytes(p),
                    cache: inner.cache.pool.as_ref() == Some(p.label()),
                }
            })
            .collect()
    }

    pub fn capacity(&self) -> Capacity {
        let inner = self.lock();
        let mut ssd = KindCapacity::default();
        let mut hdd = KindCapacity::default();
        for p in inner.pools.iter().filter(|p| p.is_healthy()) {
            let c = match p.kind() {
                DiskKind::Ssd => &mut ssd,
                DiskKind::Hdd => &mut hdd,
            };
            c.total_bytes += p.size_bytes;
            c.reserved_bytes += reserve(p);
            c.used_bytes += allocated_bytes(p);
            c.free_bytes += free_bytes(p);
        }
        Capacity {
            ssd,
            hdd,
            cache: inner.cache.clone(),
            broken_pools: inner
                .pools
                .iter()
                .filter(|p| !p.is_healthy())
                .map(|p| p.label().clone())
                .collect(),
        }
    }

    pub fn cache(&self) -> CacheStatus {
        self.lock().cache.clone()
    }

    /// Every volume or vdisk.
    pub fn list(&self, kind: ResourceKind) -> Vec<Resource> {
        let inner = self.lock();
        inner
            .pools
            .iter()
            .flat_map(volume::list)
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// Creates a volume or vdisk on the pool with the most free space that
    /// fits it; with `kind_filter`, only on pools of that kind.
    pub fn create(
        &self,
        kind: ResourceKind,
        name: &ResourceName,
        size_bytes: u64,
        kind_filter: Option<DiskKind>,
    ) -> Result<Resource, StorageError> {
        if size_bytes == 0 {
            return Err(StorageError::ZeroSize {
                kind: kind.as_str(),
            });
        }
        let inner = self.lock();
        if let Some((pool, _)) = find(&inner.pools, kind, name) {
            return Err(StorageError::Duplicate {
                kind: kind.as_str(),
                name: name.clone(),
                pool: pool.label().clone(),
            });
        }
        let candidates = inner
            .pools
            .iter()
            .filter(|p| p.is_healthy() && kind_filter.is_none_or(|k| p.kind() == k));
        let best = candidates.max_by_key(|p| free_bytes(p));
        let pool = match best {
            Some(p) if free_bytes(p) >= size_bytes => p,
            other => {
                return Err(StorageError::NoSpace {
                    requested: size_bytes,
                    largest: other.map(free_bytes).unwrap_or(0),
                    on: other
                        .map(|p| format!(" on pool {}", p.label()))
                        .unwrap_or_default(),
                });
            }
        };
        volume::create(pool, kind, name, size_bytes)?;
        volume::list(pool)
            .into_iter()
            .find(|r| r.kind == kind && &r.name == name)
            .ok_or_else(|| StorageError::NotFound {
                kind: kind.as_str(),
                name: name.clone(),
            })
    }

    pub fn delete(&self, kind: ResourceKind, name: &ResourceName) -> Result<(), StorageError> {
        let inner = self.lock();
        let (pool, _) = find(&inner.pools, kind, name).ok_or_else(|| StorageError::NotFound {
            kind: kind.as_str(),
            name: name.clone(),
        })?;
        if !pool.is_healthy() {
            return Err(StorageError::PoolBroken {
                kind: kind.as_str(),
                name: name.clone(),
                pool: pool.label().clone(),
            });
        }
        volume::remove(pool, kind, name)?;
        Ok(())
    }

    /// Wipes a foreign disk on the farmer's request and makes it a pool.
    pub fn wipe(&self, serial: &DiskSerial) -> Result<Disk, StorageError> {
        let mut inner = self.lock();
        let index = inner
            .disks
            .iter()
            .position(|d| &d.device.serial == serial)
            .ok_or_else(|| StorageError::UnknownDisk(serial.clone()))?;
        let disk = inner.disks[index].clone();
        let refuse = |class: &'static str, reason: String| StorageError::NotWipeable {
            serial: serial.clone(),
            class,
            reason,
        };
        if disk.boot_medium {
            return Err(refuse(
                "the boot medium",
                "the node booted from it".to_owned(),
            ));
        }
        match &disk.class {
            DiskClass::Foreign { .. } => {}
            DiskClass::Blank => return Err(refuse("blank", "it is already blank".to_owned())),
            DiskClass::Ours { label, .. } => {
                return Err(refuse("a Grove pool", format!("it holds pool {label}")));
            }
            DiskClass::Unusable { reason } => return Err(refuse("unusable", reason.clone())),
        }
        let table = mounts::table().map_err(CacheError::from)?;
        let wipe: HashSet<&DiskSerial> = std::iter::once(serial).collect();
        let (disk, pool) = bring_up(disk.device, &table, &self.layout, &wipe);
        inner.disks[index] = disk.clone();
        if let Some(pool) = pool {
            inner.pools.push(pool);
            if inner.cache.pool.is_none() || inner.cache.degraded.is_some() {
                let (pools, dir) = (&inner.pools, &self.layout.cache_dir);
                let status = cache::ensure(pools, dir, free_bytes)?;
                inner.cache = status;
            }
        }
        match &disk.error {
            Some(e) => Err(refuse("foreign", e.clone())),
            None => Ok(disk),
        }
    }

    /// Marks pools whose disk has gone as broken and detaches them; answers
    /// the labels newly broken. Cheap: reads one sysfs file per pool.
    pub fn check_health(&self) -> Vec<PoolLabel> {
        let mut inner = self.lock();
        let mut newly = Vec::new();
        for pool in inner.pools.iter_mut().filter(|p| p.is_healthy()) {
            let size = std::fs::read_to_string(
                self.layout
                    .sys
                    .join("block")
                    .join(&pool.device)
                    .join("size"),
            );
            let reason = match size.as_deref().map(str::trim) {
                Err(_) => Some(format!("disk {} is gone", pool.device)),
                Ok("0") => Some(format!("disk {} has no media", pool.device)),
                Ok(_) => None,
            };
            if let Some(reason) = reason {
                tracing::error!(pool = %pool.label(), reason = %reason, "pool broken");
                if let Err(e) = mounts::detach(&pool.mount_point) {
                    tracing::warn!(pool = %pool.label(), error = %e, "cannot detach the broken pool");
                }
                pool.state = PoolState::Broken {
                    reason,
                    since_ms: pool::now_ms(),
                };
                newly.push(pool.label().clone());
            }
        }
        if let Some(cache_pool) = inner.cache.pool.clone()
            && newly.contains(&cache_pool)
        {
            inner.cache.degraded = Some(format!("the cache pool {cache_pool} is broken"));
        }
        newly
    }
}

fn discover_devices(layout: &Layout) -> Result<Vec<BlockDevice>, StorageError> {
    let Some(wanted) = &layout.devices else {
        return Ok(discover::scan(&layout.sys, &layout.dev)?);
    };
    let mut out = Vec::new();
    for path in wanted {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_missing| path.clone());
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match discover::read(&layout.sys, &layout.dev, &name)? {
            Some(d) => out.push(d),
            None => tracing::warn!(device = %path.display(), "configured disk is missing"),
        }
    }
    Ok(out)
}

/// Probes one disk and brings it up: pool, mount, wipe, or leave alone.
fn bring_up(
    device: BlockDevice,
    table: &[MountEntry],
    layout: &Layout,
    wipe: &HashSet<&DiskSerial>,
) -> (Disk, Option<Pool>) {
    let mut disk = Disk {
        signatures: Signatures::default(),
        class: DiskClass::Foreign {
            reason: "not probed".to_owned(),
        },
        pool: None,
        boot_medium: false,
        error: None,
        device,
    };
    let result = (|| -> Result<Option<Pool>, StorageError> {
        let (signatures, class) = inspect(&disk.device, table, layout)?;
        disk.boot_medium = is_boot_medium(&disk.device, &signatures, table, layout);
        disk.signatures = signatures;
        disk.class = class;
        if disk.boot_medium {
            return Ok(None);
        }
        if matches!(disk.class, DiskClass::Foreign { .. }) && wipe.contains(&disk.device.serial) {
            tracing::warn!(serial = %disk.device.serial, device = %disk.device.path.display(), "wiping on the farmer's request");
            wipe_device(&disk.device.path, disk.device.size_bytes)?;
            if let Some(fresh) = discover::read(&layout.sys, &layout.dev, &disk.device.name)? {
                disk.device = fresh;
            }
            let (signatures, class) = inspect(&disk.device, table, layout)?;
            disk.signatures = signatures;
            disk.class = class;
        }
        Ok(match &disk.class {
            DiskClass::Blank => Some(pool::create(&disk.device, &layout.pools_dir)?),
            DiskClass::Ours { label, uuid } => {
                Some(pool::open(&disk.device, label, uuid, &layout.pools_dir)?)
            }
            DiskClass::Foreign { reason } => {
                tracing::info!(serial = %disk.device.serial, reason = %reason, "foreign disk left alone");
                None
            }
            DiskClass::Unusable { .. } => None,
        })
    })();
    match result {
        Ok(pool) => {
            disk.pool = pool.as_ref().map(|p| p.label().clone());
            if let Some(p) = &pool {
                disk.class = DiskClass::Ours {
                    label: p.label().clone(),
                    uuid: p.meta.uuid.clone(),
                };
            }
            (disk, pool)
        }
        Err(e) => {
            tracing::error!(serial = %disk.device.serial, error = %e, "disk not brought up");
            disk.error = Some(e.to_string());
            (disk, None)
        }
    }
}

fn inspect(
    device: &BlockDevice,
    table: &[MountEntry],
    layout: &Layout,
) -> Result<(Signatures, DiskClass), StorageError> {
    let signatures = probe::probe(&device.path)?;
    let edges = probe::has_data_at_edges(&device.path, device.size_bytes)?;
    let mounted_at = mounted_elsewhere(device, table, layout);
    let class = classify::classify(&Findings {
        device,
        signatures: &signatures,
        mounted_at: mounted_at.as_deref(),
        data_at_edges: edges,
    });
    Ok((signatures, class))
}

/// The mounts of the disk or any partition of it.
fn mounts_of<'a>(
    device: &BlockDevice,
    table: &'a [MountEntry],
    layout: &Layout,
) -> impl Iterator<Item = &'a MountEntry> {
    let block = layout.sys.join("block").join(&device.name);
    let mut devs = vec![read_dev(&block)];
    devs.extend(device.partitions.iter().map(|p| read_dev(&block.join(p))));
    table
        .iter()
        .filter(move |m| devs.iter().flatten().any(|d| d == &m.dev))
}

/// Where the disk or a partition of it is mounted outside Grove's pools.
fn mounted_elsewhere(
    device: &BlockDevice,
    table: &[MountEntry],
    layout: &Layout,
) -> Option<String> {
    mounts_of(device, table, layout)
        .find(|m| {
            !m.mount_point.starts_with(&layout.pools_dir) && m.mount_point != layout.cache_dir
        })
        .map(|m| m.mount_point.display().to_string())
}

/// Whether the node booted from this disk.
fn is_boot_medium(
    device: &BlockDevice,
    signatures: &Signatures,
    table: &[MountEntry],
    layout: &Layout,
) -> bool {
    let system = ["/", "/boot", "/boot/efi"].map(Path::new);
    mounts_of(device, table, layout).any(|m| system.contains(&m.mount_point.as_path()))
        || signatures
            .label
            .as_deref()
            .is_some_and(|l| l.starts_with(BOOT_LABEL_PREFIX))
}

fn read_dev(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("dev"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Erases every signature, then zeroes both ends so the disk reads blank.
fn wipe_device(path: &Path, size_bytes: u64) -> Result<(), StorageError> {
    cmd::run("wipefs", ["-a".as_ref(), path.as_os_str()]).map_err(|source| StorageError::Wipe {
        device: path.to_owned(),
        source,
    })?;
    let io = |source: std::io::Error| StorageError::Wipe {
        device: path.to_owned(),
        source: CmdError::spawn("zero the disk's first and last MiB".to_owned(), source),
    };
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    let zeros = vec![0u8; probe::EDGE.min(size_bytes) as usize];
    file.write_all_at(&zeros, 0).map_err(io)?;
    file.write_all_at(&zeros, size_bytes.saturating_sub(zeros.len() as u64))
        .map_err(io)?;
    file.sync_all().map_err(io)
}

fn find<'a>(
    pools: &'a [Pool],
    kind: ResourceKind,
    name: &ResourceName,
) -> Option<(&'a Pool, volume::Record)> {
    pools.iter().find_map(|p| {
        volume::records(p)
            .into_iter()
            .find(|r| r.kind == kind && &r.name == name)
            .map(|r| (p, r))
    })
}

fn reserve(pool: &Pool) -> u64 {
    pool.size_bytes / 100 * RESERVE_PERCENT
}

fn allocated_bytes(pool: &Pool) -> u64 {
    volume::records(pool).iter().map(|r| r.size_bytes).sum()
}

fn free_bytes(pool: &Pool) -> u64 {
    if !pool.is_healthy() {
        return 0;
    }
    pool.size_bytes
        .saturating_sub(reserve(pool))
        .saturating_sub(allocated_bytes(pool))
}
