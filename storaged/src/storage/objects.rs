//! The node's volumes and vdisks across its pools: which pool may take
//! them, names unique on the node, sizes that only grow, space checked.
//!
//! The pools are the truth: each call looks at them again (one
//! `btrfs qgroup show` per pool holding volumes) and keeps what it saw, so
//! a pool that breaks later is still reported with what it held. All of it
//! runs under the storage lock on a blocking thread, one change at a time.

use std::path::Path;

use crate::pool::{Pool, PoolState};
use crate::types::{PoolLabel, ResourceName};
use crate::volume::{self, Found, Kind, PoolObjects, Removed, VdiskView, VolumeError, VolumeView};

use super::{Inner, Storage, StorageError, reserve};

/// One pool's objects as a listing sees them; `broken` says why the pool
/// could not be looked at now (then they are as last seen).
struct Looked {
    pool: PoolLabel,
    objects: PoolObjects,
    broken: Option<String>,
}

impl Looked {
    /// Refuses to touch `name` of `kind` on this pool while it is broken.
    fn usable_for(&self, kind: Kind, name: &ResourceName) -> Result<(), VolumeError> {
        match &self.broken {
            Some(why) => Err(VolumeError::OnUnusablePool {
                kind: kind.as_str(),
                name: name.clone(),
                pool: self.pool.clone(),
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The objects on pool `label` (which is `pool`) when it takes new ones,
/// or why it does not.
fn new_room<'a>(
    inner: &Inner,
    pool: &Pool,
    label: &PoolLabel,
    looked: &'a [Looked],
) -> Result<&'a PoolObjects, String> {
    if let Some(why) = unusable(inner, pool) {
        return Err(why);
    }
    match looked.iter().find(|l| &l.pool == label) {
        Some(Looked {
            objects,
            broken: None,
            ..
        }) => Ok(objects),
        Some(Looked {
            broken: Some(why), ..
        }) => Err(why.clone()),
        None => Err("it was not looked at".to_owned()),
    }
}

/// Why `pool` takes no new volumes or vdisks, or `None` when it does: the
/// decision is [`Inner::own`]'s, the one rule for what is this node's.
fn unusable(inner: &Inner, pool: &Pool) -> Option<String> {
    (!inner.own(pool)).then(|| why_not_own(&inner.settled, pool))
}

/// In words, why a pool is not this node's.
fn why_not_own(settled: &Option<Option<String>>, pool: &Pool) -> String {
    if let PoolState::Broken { reason, .. } = &pool.state {
        return format!("it is broken: {reason}");
    }
    let theirs = pool.meta.account.as_deref().unwrap_or("unknown");
    if pool.other_machine {
        return format!("it is another machine's pool (account {theirs})");
    }
    match settled {
        None => "the node's identity is not settled yet".to_owned(),
        Some(None) => "the node has no identity yet".to_owned(),
        Some(Some(ours)) if pool.meta.account.as_deref() != Some(ours.as_str()) => {
            format!("it is another node's pool (account {theirs})")
        }
        Some(Some(_)) => "it is not this node's pool".to_owned(),
    }
}

/// After a pool is mounted: removes what a crash left half made, and notes
/// what the pool holds. Only on this machine's pools.
pub(super) fn clean_up(inner: &mut Inner, pool: &Pool) {
    if pool.other_machine || !pool.is_healthy() {
        return;
    }
    match volume::sweep(pool) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(pool = %pool.label(), removed = ?removed, "removed what a crash left half made");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(pool = %pool.label(), error = %e, "cannot remove what a crash left half made");
        }
    }
    match volume::scan(pool) {
        Ok(objects) => {
            inner.seen.insert(pool.label().clone(), objects);
        }
        Err(e) => {
            tracing::warn!(pool = %pool.label(), error = %e, "cannot look at the pool's volumes and vdisks")
        }
    }
}

/// Looks at every pool of this node now; a broken pool of this machine
/// (or one that cannot be read) shows what it held when last seen.
fn look(inner: &mut Inner) -> Vec<Looked> {
    let mut out = Vec::new();
    for pool in inner.pools.iter().filter(|p| !p.other_machine) {
        let label = pool.label().clone();
        let last = || inner.seen.get(&label).cloned().unwrap_or_default();
        match unusable(inner, pool) {
            None => match volume::scan(pool) {
                Ok(objects) => out.push(Looked {
                    pool: label,
                    objects,
                    broken: None,
                }),
                Err(e) => out.push(Looked {
                    objects: last(),
                    pool: label,
                    broken: Some(format!("it cannot be read: {e}")),
                }),
            },
            Some(why) if !pool.is_healthy() => out.push(Looked {
                objects: last(),
                pool: label,
                broken: Some(why),
            }),
            // Healthy but of another identity: its objects are not ours.
            Some(_) => {}
        }
    }
    for l in out.iter().filter(|l| l.broken.is_none()) {
        inner.seen.insert(l.pool.clone(), l.objects.clone());
    }
    out
}

fn pool_of<'a>(inner: &'a Inner, label: &PoolLabel) -> Result<&'a Pool, VolumeError> {
    inner
        .pools
        .iter()
        .find(|p| p.label() == label)
        .ok_or_else(|| VolumeError::UnknownPool {
            pool: label.clone(),
        })
}

/// Refuses `needed` more bytes on `pool` unless they fit its free space.
fn check_room(
    pool: &Pool,
    objects: &PoolObjects,
    kind: Kind,
    name: &ResourceName,
    needed: u64,
) -> Result<(), VolumeError> {
    let reserved = reserve(pool);
    let free = pool
        .size_bytes
        .saturating_sub(reserved)
        .saturating_sub(objects.allocated());
    if needed > free {
        return Err(VolumeError::NoRoom {
            kind: kind.as_str(),
            name: name.clone(),
            pool: pool.label().clone(),
            needed,
            free,
            size: pool.size_bytes,
            reserved,
        });
    }
    Ok(())
}

impl Storage {
    /// `name` of `kind` on pool `label` with `size` bytes: made when absent,
    /// unchanged when so, grown when asked larger. Blocking.
    pub(crate) fn ensure(
        &self,
        kind: Kind,
        name: &ResourceName,
        label: &PoolLabel,
        size: u64,
        snapshot_of: Option<&Path>,
    ) -> Result<(PoolLabel, Found), StorageError> {
        if let (Kind::Vdisk, Some(source)) = (kind, snapshot_of) {
            return Err(VolumeError::SnapshotSource {
                path: source.to_owned(),
                why: "a vdisk cannot start as a snapshot; a volume can".into(),
            }
            .into());
        }
        if size == 0 {
            return Err(VolumeError::ZeroSize {
                kind: kind.as_str(),
            }
            .into());
        }
        let mut inner = self.lock();
        let looked = look(&mut inner);
        let existing = looked
            .iter()
            .find_map(|l| l.objects.find(kind, name).map(|f| (l, f)));
        let pool = match existing {
            Some((l, found)) => {
                if &l.pool != label {
                    return Err(VolumeError::OtherPool {
                        kind: kind.as_str(),
                        name: name.clone(),
                        on: l.pool.clone(),
                        asked: label.clone(),
                    }
                    .into());
                }
                l.usable_for(kind, name)?;
                if size == found.size {
                    return Ok((l.pool.clone(), found.clone()));
                }
                if size < found.size {
                    return Err(VolumeError::OnlyGrows {
                        kind: kind.as_str(),
                        name: name.clone(),
                        has: found.size,
                        asked: size,
                    }
                    .into());
                }
                let pool = pool_of(&inner, label)?;
                check_room(pool, &l.objects, kind, name, size - found.size)?;
                volume::grow(pool, kind, name, size)?;
                tracing::info!(kind = kind.as_str(), name = %name, pool = %label, from = found.size, to = size, "grown");
                pool
            }
            None => {
                let pool = pool_of(&inner, label)?;
                let objects = new_room(&inner, pool, label, &looked).map_err(|why| {
                    VolumeError::Unusable {
                        kind: kind.as_str(),
                        pool: label.clone(),
                        why,
                    }
                })?;
                check_room(pool, objects, kind, name, size)?;
                volume::make(pool, kind, name, size, snapshot_of)?;
                tracing::info!(kind = kind.as_str(), name = %name, pool = %label, size, "made");
                pool
            }
        };
        let pool = pool.clone();
        let objects = volume::scan(&pool)?;
        let found = objects.find(kind, name).cloned();
        inner.seen.insert(label.clone(), objects);
        let found = found.ok_or_else(|| VolumeError::Unusable {
            kind: kind.as_str(),
            pool: label.clone(),
            why: format!("{} {name} is not there after it was made", kind.as_str()),
        })?;
        Ok((label.clone(), found))
    }

    /// Removes `name` of `kind` wherever it is. Blocking.
    pub(crate) fn remove(&self, kind: Kind, name: &ResourceName) -> Result<Removed, StorageError> {
        let mut inner = self.lock();
        let looked = look(&mut inner);
        let Some(l) = looked.iter().find(|l| l.objects.find(kind, name).is_some()) else {
            return Ok(Removed {
                name: name.to_string(),
                existed: false,
            });
        };
        l.usable_for(kind, name)?;
        let pool = pool_of(&inner, &l.pool)?.clone();
        let existed = volume::remove(&pool, kind, name)?;
        tracing::info!(kind = kind.as_str(), name = %name, pool = %pool.label(), "removed");
        match volume::scan(&pool) {
            Ok(objects) => {
                inner.seen.insert(pool.label().clone(), objects);
            }
            Err(e) => {
                tracing::warn!(pool = %pool.label(), error = %e, "cannot look at the pool after a delete")
            }
        }
        Ok(Removed {
            name: name.to_string(),
            existed,
        })
    }

    fn listing(&self, kind: Kind) -> Vec<(PoolLabel, Found, Option<String>)> {
        let mut inner = self.lock();
        look(&mut inner)
            .into_iter()
            .flat_map(|l| {
                let Looked {
                    pool,
                    objects,
                    broken,
                } = l;
                objects
                    .of(kind)
                    .iter()
                    .map(|f| (pool.clone(), f.clone(), broken.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every volume of this node, those on broken pools as last seen.
    pub fn volumes(&self) -> Vec<VolumeView> {
        self.listing(Kind::Volume)
            .into_iter()
            .map(|(p, f, b)| volume_view(p, f, b))
            .collect()
    }

    /// Every vdisk of this node, those on broken pools as last seen.
    pub fn vdisks(&self) -> Vec<VdiskView> {
        self.listing(Kind::Vdisk)
            .into_iter()
            .map(|(p, f, b)| vdisk_view(p, f, b))
            .collect()
    }
}

pub(crate) fn volume_view(pool: PoolLabel, f: Found, broken: Option<String>) -> VolumeView {
    VolumeView {
        name: f.name.to_string(),
        pool: pool.to_string(),
        size: f.size,
        used: f.used,
        path: f.path,
        broken,
    }
}

pub(crate) fn vdisk_view(pool: PoolLabel, f: Found, broken: Option<String>) -> VdiskView {
    VdiskView {
        name: f.name.to_string(),
        pool: pool.to_string(),
        size: f.size,
        path: f.path,
        broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolMeta;
    use crate::pool::kind::{DiskKind, KindVerdict};

    fn pool(account: Option<&str>, other_machine: bool, state: PoolState) -> Pool {
        Pool {
            meta: PoolMeta {
                label: "grove-abc".parse().expect("label"),
                uuid: "u".to_owned(),
                serial: "s".parse().expect("serial"),
                verdict: KindVerdict {
                    kind: DiskKind::Ssd,
                    reported_rotational: false,
                    median_read_us: 1,
                    note: None,
                },
                created_at_ms: 0,
                machine: None,
                account: account.map(str::to_owned),
            },
            device: "loop0".to_owned(),
            device_path: "/dev/loop0".into(),
            size_bytes: 1000,
            mount_point: "/nonexistent".into(),
            state,
            other_machine,
        }
    }

    #[test]
    fn the_refusal_says_why_a_pool_is_not_this_nodes() {
        let ours = Some(Some("A".to_owned()));
        let broken = PoolState::Broken {
            reason: "its disk d is gone".to_owned(),
            since_ms: 0,
        };
        type Settled = Option<Option<String>>;
        let cases: Vec<(Settled, Pool, &str)> = vec![
            (
                ours.clone(),
                pool(Some("B"), false, PoolState::Mounted),
                "another node's pool (account B)",
            ),
            (
                ours.clone(),
                pool(Some("A"), true, PoolState::Mounted),
                "another machine's pool (account A)",
            ),
            (
                ours.clone(),
                pool(Some("A"), false, broken),
                "broken: its disk d is gone",
            ),
            (
                None,
                pool(Some("A"), false, PoolState::Mounted),
                "not settled",
            ),
            (
                Some(None),
                pool(None, false, PoolState::Mounted),
                "no identity",
            ),
        ];
        for (settled, p, needle) in cases {
            let got = why_not_own(&settled, &p);
            assert!(got.contains(needle), "{got}");
        }
    }

    #[test]
    fn room_is_size_less_reserve_less_allocation() {
        let p = pool(Some("A"), false, PoolState::Mounted);
        let name: ResourceName = "x".parse().expect("name");
        let objects = PoolObjects {
            volumes: vec![Found {
                name: "v".parse().expect("name"),
                size: 600,
                used: 0,
                path: "/v".into(),
            }],
            vdisks: Vec::new(),
        };
        // 1000 bytes, 5 % reserved (0 when rounded down per 100), 600 given.
        let free = 1000 - reserve(&p) - 600;
        assert!(check_room(&p, &objects, Kind::Vdisk, &name, free).is_ok());
        let err = check_room(&p, &objects, Kind::Vdisk, &name, free + 1).expect_err("too big");
        let text = err.to_string();
        assert!(text.contains(&format!("{free} bytes free")), "{text}");
        assert!(text.contains(&format!("needs {}", free + 1)), "{text}");
    }
}
