//! The node's storage: disks, pools, the cache, volumes and vdisks, behind
//! one lock.
//!
//! Every operation is blocking (tools, syscalls, disk I/O) and is called from
//! a blocking thread; the lock is a plain mutex held only there, never across
//! an await. Boot handles the disks in parallel, one thread each: probing,
//! latency checks and `mkfs` on four disks take the time of one. Disks come
//! and go while the node runs: [`Storage::rescan`] compares sysfs with what
//! is known, by kernel name *and* serial and size, brings new disks up as at
//! boot and breaks the pools of departed ones. Every write to a disk goes
//! through a [`Pinned`] device, checked at that moment to still be the disk
//! that was looked at. Disk changes (rescans, wipes) run one at a time.

mod objects;

pub(crate) use objects::{vdisk_view, volume_view};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cache::{self, CacheError, CacheStatus};
use crate::disk::classify::{self, DiskClass, Findings};
use crate::disk::discover::{self, BlockDevice, DiscoverError};
use crate::disk::guard::{self, GuardError, Pinned};
use crate::disk::probe::{self, ProbeError, Signatures};
use crate::mounts::{self, MountEntry};
use crate::pool::kind::DiskKind;
use crate::pool::{self, Pool, PoolError, PoolState};
use crate::report::{Capacity, Disk, IdentityChoice, IdentityState, KindCapacity, PoolReport};
use crate::types::{DiskSerial, PoolLabel};
use crate::volume::{self, PoolObjects, VolumeError};
use grove_daemon::cmd::{self, CmdError};

/// Share of each pool kept free for btrfs metadata and the cache.
pub const RESERVE_PERCENT: u64 = 5;

/// Why a storage operation failed. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error("no disk with serial {0}")]
    UnknownDisk(DiskSerial),
    #[error("disk {serial} is {class} and cannot be wiped: {reason}")]
    NotWipeable {
        serial: DiskSerial,
        class: &'static str,
        reason: String,
    },
    #[error("cannot wipe {device}: {source}")]
    Wipe {
        device: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("disk {serial} still does not read blank after wiping: {class:?}")]
    NotBlankAfterWipe {
        serial: DiskSerial,
        class: DiskClass,
    },
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("the node's identity is already settled as {was}; {asked} was asked")]
    Settled { was: String, asked: String },
    #[error("the node is not waiting for the farmer's choice: {why}")]
    NotWaiting { why: String },
    #[error("no pool attached holds account {account}; the accounts found are: {found}")]
    NoPoolOf { account: String, found: String },
    #[error(
        "no blank disk to keep a new identity on: every pool attached is another node's; attach a blank disk, then ask again"
    )]
    NoBlankPool,
    #[error("account {account} is already on pool {pool}: a fresh identity must be new")]
    NotFresh { account: String, pool: PoolLabel },
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
    /// This machine's id, recorded on every pool it makes; `None` when the
    /// machine has no readable id.
    pub machine: Option<String>,
}

/// What a rescan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Disks that appeared, by serial.
    pub arrived: Vec<DiskSerial>,
    /// Disks that left, by serial.
    pub departed: Vec<DiskSerial>,
    /// Pools that broke because their disk left.
    pub broken: Vec<PoolLabel>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.arrived.is_empty() && self.departed.is_empty() && self.broken.is_empty()
    }
}

/// Labels of the filesystems on a Grove boot image.
pub const BOOT_LABEL_PREFIX: &str = "GROVE";

/// The GPT name of a Grove USB stick's ESP (`image/usb`), where its boot
/// slots live: the disk that has it is the boot medium.
pub const BOOT_PARTITION_NAME: &str = "grove-esp";

#[derive(Debug)]
struct Inner {
    disks: Vec<Disk>,
    pools: Vec<Pool>,
    cache: CacheStatus,
    /// The node's account once the agent settled it (`Some(None)`: settled
    /// with no identity, waiting for the farmer).
    settled: Option<Option<String>>,
    /// The volumes and vdisks of each pool of this machine as last looked
    /// at, shown for a pool that broke since.
    seen: HashMap<PoolLabel, PoolObjects>,
}

impl Inner {
    /// A pool of this node: this machine's, and of the settled account.
    fn own(&self, pool: &Pool) -> bool {
        let account = self.settled.as_ref().and_then(Option::as_ref);
        pool.is_healthy()
            && !pool.other_machine
            && account.is_some()
            && pool.meta.account.as_ref() == account
    }

    fn own_pools(&self) -> Vec<Pool> {
        self.pools.iter().filter(|p| self.own(p)).cloned().collect()
    }
}

/// The cache status before the node's identity is settled.
fn unsettled_cache(cache_dir: &Path, why: &str) -> CacheStatus {
    CacheStatus {
        mount_point: cache_dir.to_owned(),
        pool: None,
        kind: None,
        degraded: Some(why.to_owned()),
    }
}

/// The node's storage.
#[derive(Debug)]
pub struct Storage {
    layout: Layout,
    inner: Mutex<Inner>,
    /// Held by whatever adds, removes or rewrites a disk.
    changes: Mutex<()>,
    settled_tx: tokio::sync::watch::Sender<bool>,
}

impl Storage {
    /// Finds every disk, pools the blank ones, mounts ours, wipes the foreign
    /// ones the farmer named, and mounts the cache. Blocking.
    pub fn boot(layout: Layout, wipe: &[DiskSerial]) -> Result<Self, StorageError> {
        let devices = discover_devices(&layout)?;
        let table = mounts::table().map_err(CacheError::from)?;
        let results = bring_up_all(devices, &table, &layout, wipe);
        let mut disks = Vec::new();
        let mut pools = Vec::new();
        for (disk, pool) in results {
            disks.push(disk);
            pools.extend(pool);
        }
        let mut inner = Inner {
            seen: HashMap::new(),
            cache: unsettled_cache(
                &layout.cache_dir,
                "the node's identity is not settled yet: no cache",
            ),
            disks,
            pools,
            settled: None,
        };
        for pool in inner.pools.clone() {
            objects::clean_up(&mut inner, &pool);
        }
        Ok(Self {
            layout,
            inner: Mutex::new(inner),
            changes: Mutex::new(()),
            settled_tx: tokio::sync::watch::Sender::new(false),
        })
    }

    fn one_change(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
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
                // A broken pool cannot be looked at: what it held when last seen.
                let allocated = match inner.seen.get(p.label()) {
                    Some(seen) if !p.is_healthy() => seen.allocated(),
                    _ => allocated_bytes(p),
                };
                let reserved = reserve(p);
                let this_node = inner.own(p);
                let settled = inner.settled.as_ref().and_then(Option::as_ref);
                let another = match (&p.meta.account, settled) {
                    _ if p.other_machine => Some(p.meta.account.as_deref().unwrap_or("unknown")),
                    (Some(theirs), Some(ours)) if theirs != ours => Some(theirs.as_str()),
                    _ => None,
                }
                .map(|account| format!("another node's pool (account {account})"));
                PoolReport {
                    account: p.meta.account.clone(),
                    this_machine: !p.other_machine,
                    this_node,
                    another_node: another,
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
                    free_bytes: if this_node { free_bytes(p) } else { 0 },
                    cache: inner.cache.pool.as_ref() == Some(p.label()),
                }
            })
            .collect()
    }

    pub fn capacity(&self) -> Capacity {
        let inner = self.lock();
        let mut ssd = KindCapacity::default();
        let mut hdd = KindCapacity::default();
        for p in inner.pools.iter().filter(|p| inner.own(p)) {
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
                .filter(|p| !p.is_healthy() && !p.other_machine)
                .map(|p| p.label().clone())
                .collect(),
        }
    }

    pub fn cache(&self) -> CacheStatus {
        self.lock().cache.clone()
    }

    /// Wipes a foreign disk on the farmer's request and makes it a pool.
    ///
    /// The disk is looked up by serial in what `/v1/disks` shows, then
    /// re-read from sysfs and re-probed with the device held open: unless
    /// its serial, size, signatures and class are still what was shown,
    /// nothing is written (gone: [`GuardError::Vanished`]; anything else:
    /// [`GuardError::Changed`], naming both).
    pub fn wipe(&self, serial: &DiskSerial) -> Result<Disk, StorageError> {
        let _one = self.one_change();
        let shown = self
            .lock()
            .disks
            .iter()
            .find(|d| &d.device.serial == serial)
            .cloned()
            .ok_or_else(|| StorageError::UnknownDisk(serial.clone()))?;
        let refuse = |class: &'static str, reason: String| StorageError::NotWipeable {
            serial: serial.clone(),
            class,
            reason,
        };
        if shown.boot_medium {
            return Err(refuse(
                "the boot medium",
                "the node booted from it".to_owned(),
            ));
        }
        match &shown.class {
            DiskClass::Foreign { .. } => {}
            DiskClass::Blank => return Err(refuse("blank", "it is already blank".to_owned())),
            DiskClass::Ours { label, .. } => {
                return Err(refuse("a Grove pool", format!("it holds pool {label}")));
            }
            DiskClass::Unusable { reason } => return Err(refuse("unusable", reason.clone())),
        }
        let layout = &self.layout;
        let pinned = Pinned::open(&layout.sys, &layout.dev, &shown.device)?;
        let table = mounts::table().map_err(CacheError::from)?;
        let (signatures, class) = inspect(pinned.device(), &table, layout)?;
        if signatures != shown.signatures || class != shown.class {
            return Err(GuardError::Changed {
                serial: serial.clone(),
                device: shown.device.path.clone(),
                was: format!(
                    "{} with {}",
                    guard::describe(&shown.device),
                    words(&shown.class)
                ),
                now: format!(
                    "{} with {}",
                    guard::describe(pinned.device()),
                    words(&class)
                ),
            }
            .into());
        }
        let (disk, pool) = bring_up_pinned(pinned, &table, layout, true);
        let mut inner = self.lock();
        match inner.disks.iter_mut().find(|d| &d.device.serial == serial) {
            Some(entry) => *entry = disk.clone(),
            None => inner.disks.push(disk.clone()),
        }
        if let Some(pool) = pool {
            adopt_new_pool(&mut inner, pool, &layout.cache_dir)?;
        }
        match &disk.error {
            Some(e) => Err(refuse("foreign", e.clone())),
            None => Ok(disk),
        }
    }

    /// Follows the disks: a disk that left (gone from sysfs, no media, or
    /// another disk under its name) leaves the list and breaks its pool; a
    /// new one is brought up as at boot. Blocking; cheap when nothing
    /// changed (a few sysfs reads per disk).
    pub fn rescan(&self) -> Result<Changes, StorageError> {
        let _one = self.one_change();
        let current = discover_devices(&self.layout)?;
        let same = |d: &BlockDevice, k: &BlockDevice| {
            d.name == k.name && d.serial == k.serial && d.size_bytes == k.size_bytes
        };
        let mut changes = Changes::default();
        let arrived: Vec<BlockDevice> = {
            let mut inner = self.lock();
            let (kept, departed): (Vec<Disk>, Vec<Disk>) = std::mem::take(&mut inner.disks)
                .into_iter()
                .partition(|d| current.iter().any(|c| same(c, &d.device)));
            inner.disks = kept;
            for disk in departed {
                tracing::warn!(serial = %disk.device.serial, device = %disk.device.path.display(), "disk left");
                if let Some(label) = &disk.pool
                    && let Some(pool) = inner.pools.iter_mut().find(|p| p.label() == label)
                    && pool.is_healthy()
                {
                    break_pool(pool, format!("its disk {} is gone", disk.device.serial));
                    changes.broken.push(label.clone());
                }
                changes.departed.push(disk.device.serial);
            }
            if let Some(cache_pool) = inner.cache.pool.clone()
                && changes.broken.contains(&cache_pool)
            {
                inner.cache.degraded = Some(format!("the cache pool {cache_pool} is broken"));
            }
            current
                .into_iter()
                .filter(|c| !inner.disks.iter().any(|d| same(c, &d.device)))
                .collect()
        };
        if arrived.is_empty() {
            return Ok(changes);
        }
        let table = mounts::table().map_err(CacheError::from)?;
        let results = bring_up_all(arrived, &table, &self.layout, &[]);
        let mut inner = self.lock();
        for (disk, pool) in results {
            tracing::info!(serial = %disk.device.serial, device = %disk.device.path.display(), class = ?disk.class, "disk arrived");
            changes.arrived.push(disk.device.serial.clone());
            inner.disks.push(disk);
            if let Some(pool) = pool {
                objects::clean_up(&mut inner, &pool);
                adopt_new_pool(&mut inner, pool, &self.layout.cache_dir)?;
            }
        }
        inner
            .disks
            .sort_by(|a, b| a.device.name.cmp(&b.device.name));
        Ok(changes)
    }

    /// What storaged holds the node's identity to be.
    pub fn identity(&self) -> IdentityState {
        let inner = self.lock();
        IdentityState {
            settled: inner.settled.is_some(),
            account: inner.settled.clone().flatten(),
            machine: self.layout.machine.clone(),
        }
    }

    /// Settles the node's identity, once: pools of this machine without an
    /// account take `account`; another machine's pools of `account` are
    /// adopted (the agent adopted their identity); the cache goes on a pool
    /// of that account only; every other pool is another node's. `None`: the node has no
    /// identity yet (it waits for the farmer), so no cache. Asking again
    /// for the same answer changes nothing; a different one is refused.
    /// Blocking.
    pub fn settle(&self, account: Option<String>) -> Result<IdentityState, StorageError> {
        let _one = self.one_change();
        let mut inner = self.lock();
        if let Some(was) = &inner.settled {
            if was == &account {
                drop(inner);
                return Ok(self.identity());
            }
            return Err(StorageError::Settled {
                was: was.clone().unwrap_or_else(|| "no identity".to_owned()),
                asked: account.unwrap_or_else(|| "no identity".to_owned()),
            });
        }
        inner.settled = Some(account.clone());
        match &account {
            Some(account) => self.take_account(&mut inner, account)?,
            None => {
                inner.cache = unsettled_cache(
                    &self.layout.cache_dir,
                    "the node has no identity: waiting for the farmer's choice",
                );
            }
        }
        tracing::info!(account = ?account, cache_pool = ?inner.cache.pool, "node identity settled");
        drop(inner);
        let _ = self.settled_tx.send(true);
        Ok(self.identity())
    }

    /// The farmer's signed choice for a node that waits (settled with no
    /// identity): adopt the account another machine's pools hold, or start
    /// fresh with a new account on this machine's blank pools. Checked
    /// whole before anything is written; another node's pools are never
    /// written unless adopted by name. The same choice again, once taken,
    /// changes nothing. Blocking.
    pub fn choose(&self, choice: &IdentityChoice) -> Result<IdentityState, StorageError> {
        let _one = self.one_change();
        let mut inner = self.lock();
        let account = match choice {
            IdentityChoice::Adopt(a) | IdentityChoice::Fresh(a) => a,
        };
        match &inner.settled {
            Some(None) => {}
            Some(Some(was)) if was == account => {
                drop(inner);
                return Ok(self.identity());
            }
            Some(Some(was)) => {
                return Err(StorageError::NotWaiting {
                    why: format!("its identity is account {was}"),
                });
            }
            None => {
                return Err(StorageError::NotWaiting {
                    why: "its identity is not settled yet".to_owned(),
                });
            }
        }
        let healthy = || inner.pools.iter().filter(|p| p.is_healthy());
        match choice {
            IdentityChoice::Adopt(_) => {
                if !healthy().any(|p| p.other_machine && p.meta.account.as_ref() == Some(account)) {
                    let mut found: Vec<String> = healthy()
                        .filter(|p| p.other_machine)
                        .map(|p| {
                            p.meta
                                .account
                                .clone()
                                .unwrap_or_else(|| "unknown".to_owned())
                        })
                        .collect();
                    found.sort();
                    found.dedup();
                    return Err(StorageError::NoPoolOf {
                        account: account.clone(),
                        found: grove_daemon::text::list_or_none(&found),
                    });
                }
            }
            IdentityChoice::Fresh(_) => {
                if let Some(p) = inner
                    .pools
                    .iter()
                    .find(|p| p.meta.account.as_ref() == Some(account))
                {
                    return Err(StorageError::NotFresh {
                        account: account.clone(),
                        pool: p.label().clone(),
                    });
                }
                if !healthy().any(|p| !p.other_machine && p.meta.account.is_none()) {
                    return Err(StorageError::NoBlankPool);
                }
            }
        }
        tracing::warn!(choice = ?choice, "the farmer chose the node's identity");
        inner.settled = Some(Some(account.clone()));
        self.take_account(&mut inner, account)?;
        tracing::info!(account = %account, cache_pool = ?inner.cache.pool, "node identity settled");
        drop(inner);
        Ok(self.identity())
    }

    /// The node is `account`: pools of this machine without an account take
    /// it; another machine's pools of `account` are adopted (the node took
    /// their identity); the cache goes on a pool of that account only.
    fn take_account(&self, inner: &mut Inner, account: &str) -> Result<(), StorageError> {
        for pool in inner
            .pools
            .iter_mut()
            .filter(|p| p.is_healthy() && !p.other_machine && p.meta.account.is_none())
        {
            pool::record_account(pool, account)?;
        }
        for pool in inner.pools.iter_mut().filter(|p| {
            p.is_healthy() && p.other_machine && p.meta.account.as_deref() == Some(account)
        }) {
            tracing::warn!(pool = %pool.label(), account = %account, "pool adopted with its identity");
            pool::adopt(pool, self.layout.machine.as_deref())?;
        }
        let own = inner.own_pools();
        inner.cache = cache::ensure(&own, &self.layout.cache_dir, free_bytes)?;
        Ok(())
    }

    /// Trips once the node's identity is settled.
    pub fn settled_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.settled_tx.subscribe()
    }
}

/// A pool made or mounted while the node runs joins the list; once the
/// identity is settled a pool of this machine takes the account, and the
/// cache is set up if it had nowhere to go.
fn adopt_new_pool(inner: &mut Inner, mut pool: Pool, cache_dir: &Path) -> Result<(), StorageError> {
    if let Some(Some(account)) = &inner.settled
        && !pool.other_machine
        && pool.meta.account.is_none()
    {
        pool::record_account(&mut pool, account)?;
    }
    add_pool(inner, pool);
    if inner.cache.pool.is_none() && inner.settled.as_ref().is_some_and(Option::is_some) {
        let own = inner.own_pools();
        if !own.is_empty() {
            inner.cache = cache::ensure(&own, cache_dir, free_bytes)?;
        }
    }
    Ok(())
}

/// A pool joins the list, taking the place of a broken entry of the same
/// label (its disk came back).
fn add_pool(inner: &mut Inner, pool: Pool) {
    match inner.pools.iter_mut().find(|p| p.label() == pool.label()) {
        Some(old) => *old = pool,
        None => inner.pools.push(pool),
    }
}

fn break_pool(pool: &mut Pool, reason: String) {
    tracing::error!(pool = %pool.label(), reason = %reason, "pool broken");
    if let Err(e) = mounts::detach(&pool.mount_point) {
        tracing::warn!(pool = %pool.label(), error = %e, "cannot detach the broken pool");
    }
    pool.state = PoolState::Broken {
        reason,
        since_ms: pool::now_ms(),
    };
}

/// A class in words, for errors.
fn words(class: &DiskClass) -> String {
    match class {
        DiskClass::Blank => "nothing on it".to_owned(),
        DiskClass::Ours { label, .. } => format!("Grove pool {label}"),
        DiskClass::Foreign { reason } | DiskClass::Unusable { reason } => reason.clone(),
    }
}

/// Brings up every device in parallel, one thread each.
fn bring_up_all(
    devices: Vec<BlockDevice>,
    table: &[MountEntry],
    layout: &Layout,
    wipe: &[DiskSerial],
) -> Vec<(Disk, Option<Pool>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .into_iter()
            .map(|d| {
                let named = wipe.contains(&d.serial);
                s.spawn(move || bring_up(d, table, layout, named))
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
    })
}

/// The disks to consider: every whole device, or only the configured ones
/// (a configured directory stands for the devices its entries link to).
/// A device without media (size 0) is not a disk.
fn discover_devices(layout: &Layout) -> Result<Vec<BlockDevice>, StorageError> {
    let Some(wanted) = &layout.devices else {
        let mut all = discover::scan(&layout.sys, &layout.dev)?;
        all.retain(|d| d.size_bytes > 0);
        return Ok(all);
    };
    let mut paths = Vec::new();
    for path in wanted {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut inside: Vec<PathBuf> =
                    entries.filter_map(Result::ok).map(|e| e.path()).collect();
                inside.sort();
                paths.extend(inside);
            }
            Err(_not_a_directory) => paths.push(path.clone()),
        }
    }
    let mut out: Vec<BlockDevice> = Vec::new();
    for path in paths {
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_missing| path.clone());
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match discover::read(&layout.sys, &layout.dev, &name)? {
            Some(d) if d.size_bytes > 0 && !out.iter().any(|o| o.name == d.name) => out.push(d),
            Some(_) => {}
            None => tracing::debug!(device = %path.display(), "configured disk is missing"),
        }
    }
    Ok(out)
}

/// Probes one disk and brings it up: pool, mount, wipe (when `wipe`
/// names it), or leave alone.
fn bring_up(
    device: BlockDevice,
    table: &[MountEntry],
    layout: &Layout,
    wipe: bool,
) -> (Disk, Option<Pool>) {
    match Pinned::open(&layout.sys, &layout.dev, &device) {
        Ok(pinned) => bring_up_pinned(pinned, table, layout, wipe),
        Err(e) => {
            tracing::warn!(serial = %device.serial, error = %e, "disk not brought up");
            let disk = Disk {
                error: Some(e.to_string()),
                ..unprobed(device)
            };
            (disk, None)
        }
    }
}

/// `device` as reported before anything is known of it: foreign, not
/// probed, in no pool.
fn unprobed(device: BlockDevice) -> Disk {
    Disk {
        signatures: Signatures::default(),
        class: DiskClass::Foreign {
            reason: "not probed".to_owned(),
        },
        pool: None,
        boot_medium: false,
        error: None,
        device,
    }
}

/// [`bring_up`] for a disk already held open and checked.
fn bring_up_pinned(
    pinned: Pinned,
    table: &[MountEntry],
    layout: &Layout,
    wipe: bool,
) -> (Disk, Option<Pool>) {
    let mut disk = unprobed(pinned.device().clone());
    let result = (|| -> Result<Option<Pool>, StorageError> {
        let (signatures, class) = inspect(&disk.device, table, layout)?;
        disk.boot_medium = is_boot_medium(&disk.device, &signatures, table, layout);
        disk.signatures = signatures;
        disk.class = class;
        if disk.boot_medium {
            return Ok(None);
        }
        if matches!(disk.class, DiskClass::Foreign { .. }) && wipe {
            tracing::warn!(serial = %disk.device.serial, device = %disk.device.path.display(), "wiping on the farmer's request");
            wipe_device(&pinned)?;
            let (signatures, class) = inspect(&disk.device, table, layout)?;
            disk.signatures = signatures;
            disk.class = class;
            if disk.class != DiskClass::Blank {
                return Err(StorageError::NotBlankAfterWipe {
                    serial: disk.device.serial.clone(),
                    class: disk.class.clone(),
                });
            }
        }
        Ok(match &disk.class {
            DiskClass::Blank => Some(pool::create(
                &pinned,
                &layout.pools_dir,
                layout.machine.as_deref(),
            )?),
            DiskClass::Ours { label, uuid } => Some(pool::open(
                &disk.device,
                label,
                uuid,
                &layout.pools_dir,
                layout.machine.as_deref(),
            )?),
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
    let signatures = probe::probe(&device.path, device.size_bytes)?;
    let data_at = if signatures.is_empty() {
        probe::find_data(&device.path, device.size_bytes)?
    } else {
        None
    };
    let mounted_at = mounted_elsewhere(device, table, layout);
    let class = classify::classify(&Findings {
        device,
        signatures: &signatures,
        mounted_at: mounted_at.as_deref(),
        data_at,
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
        || device
            .partition_names
            .iter()
            .any(|n| n == BOOT_PARTITION_NAME)
}

fn read_dev(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("dev"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Erases every signature, then zeroes both ends, the usual partition
/// offsets and the sampled blocks, so the disk reads blank. Writes only
/// through the pinned device; `wipefs` runs on the pinned name.
fn wipe_device(pinned: &Pinned) -> Result<(), StorageError> {
    let device = pinned.device();
    pinned.ensure_unused()?;
    cmd::run("wipefs", &["-a".as_ref(), device.path.as_os_str()]).map_err(|source| {
        StorageError::Wipe {
            device: device.path.clone(),
            source,
        }
    })?;
    let size = device.size_bytes;
    let edge = probe::EDGE.min(size);
    // The first MiB, and the next one: a filesystem at 1 MiB keeps its
    // superblock just past it.
    pinned.zero(0, 2 * edge)?;
    pinned.zero(size.saturating_sub(edge), edge)?;
    for offset in probe::sample_offsets(size) {
        pinned.zero(offset, probe::SAMPLE_BYTES)?;
    }
    pinned.sync()?;
    Ok(())
}

fn reserve(pool: &Pool) -> u64 {
    pool.size_bytes / 100 * RESERVE_PERCENT
}

/// What the pool's volumes and vdisks were given; all of the pool when it
/// cannot be looked at, so nothing more is placed on it.
fn allocated_bytes(pool: &Pool) -> u64 {
    match volume::scan(pool) {
        Ok(objects) => objects.allocated(),
        Err(e) => {
            tracing::debug!(pool = %pool.label(), error = %e, "cannot look at the pool's volumes and vdisks");
            pool.size_bytes
        }
    }
}

fn free_bytes(pool: &Pool) -> u64 {
    if !pool.is_healthy() {
        return 0;
    }
    pool.size_bytes
        .saturating_sub(reserve(pool))
        .saturating_sub(allocated_bytes(pool))
}
