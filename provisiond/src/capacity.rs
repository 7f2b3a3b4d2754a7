//! Capacity accounting: what the node has, what its deployments hold, and
//! whether one more fits, whole, before anything is made.
//!
//! The node offers CRU (cores), MRU (memory), SRU (SSD pools) and HRU (HDD
//! pools), less a system reserve: MRU max(10 %, 2 GiB), and on each pool what
//! the system holds there (the cache on its SSD pool). Disks and volumes are
//! placed on one pool each, so a deployment fits only when each of them finds
//! a single pool with room: a refusal gives the numbers asked, free, and the
//! largest single pool. CPU is shared as in zos: a machine may not ask more
//! cores than the node has, but the sum over machines is not capped.
//!
//! Running a workload costs the node memory beyond the workload's own: a
//! machine's QEMU process (its devices, buffers and, under TCG, its
//! translation cache) and a container's kernel objects (namespaces, veth,
//! cgroups). That overhead is held beside the workload's MRU, so a machine
//! that would fit only without it is refused up front, but it is not billed:
//! the chain is told the MRU the tenant asked. `ci/bench compute` measures
//! both figures. This is a pure ledger; the engine feeds it the pools
//! storaged reports.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::deployment::Deployment;
use crate::deployment::workload::WorkloadData;

/// A GiB, in bytes.
pub const GIB: u64 = 1 << 30;
/// A MiB, in bytes.
const MIB: u64 = 1 << 20;

/// The memory a machine's QEMU spends beside the guest's: about 92 MiB
/// measured for an idle TCG guest, whose translation cache is capped at
/// 64 MiB (`tb-size`), rounded up.
pub const MACHINE_OVERHEAD: u64 = 160 * MIB;
/// The memory a container costs the node outside its cgroup: its
/// namespaces, veth pair and cgroups.
pub const CONTAINER_OVERHEAD: u64 = 4 * MIB;

/// The kind of disk a pool is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Ssd,
    Hdd,
}

impl PoolKind {
    fn unit(self) -> &'static str {
        match self {
            PoolKind::Ssd => "SRU",
            PoolKind::Hdd => "HRU",
        }
    }
}

/// One storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub label: String,
    pub kind: PoolKind,
    /// Bytes.
    pub size: u64,
    /// Bytes the system holds on it (the cache).
    pub system: u64,
}

/// What the node has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub cores: u64,
    /// Bytes of memory.
    pub memory: u64,
    pub pools: Vec<Pool>,
}

/// CRU, MRU, SRU and HRU; MRU, SRU and HRU in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cru: u64,
    pub mru: u64,
    pub sru: u64,
    pub hru: u64,
}

impl Resources {
    fn add(&mut self, other: &Resources) {
        self.cru = self.cru.saturating_add(other.cru);
        self.mru = self.mru.saturating_add(other.mru);
        self.sru = self.sru.saturating_add(other.sru);
        self.hru = self.hru.saturating_add(other.hru);
    }

    fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cru: self.cru.saturating_sub(other.cru),
            mru: self.mru.saturating_sub(other.mru),
            sru: self.sru.saturating_sub(other.sru),
            hru: self.hru.saturating_sub(other.hru),
        }
    }
}

/// One disk a workload needs on a single pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub workload: String,
    pub kind: PoolKind,
    pub size: u64,
}

/// What a deployment asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    pub cru: u64,
    pub mru: u64,
    /// The largest machine, in cores.
    pub max_machine_cores: u64,
    /// The memory the node spends running the workloads, beside `mru`.
    pub overhead: u64,
    pub disks: Vec<Disk>,
}

impl Demand {
    /// What `deployment`'s workloads ask: zmounts, volumes and machine root
    /// disks on SSD, zdb namespaces on HDD, machines' cores and memory.
    pub fn of(deployment: &Deployment) -> Demand {
        let mut demand = Demand::default();
        for w in &deployment.workloads {
            let mut disk = |kind, size| {
                demand.disks.push(Disk {
                    workload: w.name.to_string(),
                    kind,
                    size,
                })
            };
            match &w.data {
                WorkloadData::Zmount(d) => disk(PoolKind::Ssd, d.size),
                WorkloadData::Volume(d) => disk(PoolKind::Ssd, d.size),
                WorkloadData::Zdb(d) => disk(PoolKind::Hdd, d.size),
                WorkloadData::Zmachine(m) => {
                    disk(PoolKind::Ssd, m.root_size());
                    let cores = u64::from(m.compute_capacity.cpu);
                    demand.cru = demand.cru.saturating_add(cores);
                    demand.mru = demand.mru.saturating_add(m.compute_capacity.memory);
                    demand.max_machine_cores = demand.max_machine_cores.max(cores);
                    demand.overhead = demand.overhead.saturating_add(MACHINE_OVERHEAD);
                }
                WorkloadData::Container(c) => {
                    disk(PoolKind::Ssd, c.size);
                    let cores = u64::from(c.compute_capacity.cpu);
                    demand.cru = demand.cru.saturating_add(cores);
                    demand.mru = demand.mru.saturating_add(c.compute_capacity.memory);
                    demand.max_machine_cores = demand.max_machine_cores.max(cores);
                    demand.overhead = demand.overhead.saturating_add(CONTAINER_OVERHEAD);
                }
                WorkloadData::Network(_)
                | WorkloadData::Ip(_)
                | WorkloadData::GatewayNameProxy(_)
                | WorkloadData::GatewayFqdnProxy(_) => {}
            }
        }
        demand
    }

    /// Adds the disks of `removed` workloads that still exist while an
    /// update runs: removals come last, so the update must fit beside them.
    pub fn with_kept(mut self, current: &Allocation, removed: &[String]) -> Demand {
        for placed in &current.disks {
            if removed.contains(&placed.disk.workload) {
                self.disks.push(placed.disk.clone());
            }
        }
        self
    }
}

/// One pool's bytes, for `/v1/capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    pub label: String,
    pub kind: PoolKind,
    pub size: u64,
    /// Kept by the system (the cache).
    pub system: u64,
    /// Held by deployments.
    pub used: u64,
    pub free: u64,
}

/// A disk on its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub disk: Disk,
    pub pool: String,
}

/// What one deployment holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub cru: u64,
    pub mru: u64,
    /// Memory held beside `mru`, not billed (see the module's header).
    #[serde(default)]
    pub overhead: u64,
    pub disks: Vec<Placed>,
}

impl Allocation {
    /// All the memory the deployment holds: its MRU and the overhead.
    pub fn memory(&self) -> u64 {
        self.mru.saturating_add(self.overhead)
    }

    /// What the deployment is billed for.
    pub fn resources(&self) -> Resources {
        let mut out = Resources {
            cru: self.cru,
            mru: self.mru,
            ..Resources::default()
        };
        for placed in &self.disks {
            match placed.disk.kind {
                PoolKind::Ssd => out.sru = out.sru.saturating_add(placed.disk.size),
                PoolKind::Hdd => out.hru = out.hru.saturating_add(placed.disk.size),
            }
        }
        out
    }
}

/// Bytes, for people: `10 GiB`, `1.5 GiB`, `300 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = u128::from(self.0);
        let gib = u128::from(GIB);
        if b >= gib {
            // Tenths of a GiB, rounded down.
            let tenths = b * 10 / gib;
            if tenths % 10 == 0 && b % gib == 0 {
                write!(f, "{} GiB", tenths / 10)
            } else {
                write!(f, "{}.{} GiB", tenths / 10, tenths % 10)
            }
        } else if b >= 1 << 20 {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// Why a deployment does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "the deployment asks {asked} of {unit}, {free} is free (largest single pool: {largest_pool})"
    )]
    Storage {
        unit: &'static str,
        asked: Bytes,
        free: Bytes,
        largest_pool: Bytes,
    },
    #[error(
        "workload '{workload}' asks {asked} of {unit} on one pool; {free} is free in all, the largest single pool has {largest_pool}"
    )]
    NoSinglePool {
        workload: String,
        unit: &'static str,
        asked: Bytes,
        free: Bytes,
        largest_pool: Bytes,
    },
    #[error(
        "the deployment asks {asked} of MRU and the node needs {overhead} more to run it; \
         {free} is free"
    )]
    Memory {
        asked: Bytes,
        overhead: Bytes,
        free: Bytes,
    },
    #[error("a machine asks {asked} cores, the node has {cores}")]
    Cores { asked: u64, cores: u64 },
}

/// The node's capacity and what each deployment holds.
#[derive(Debug, Clone)]
pub struct Ledger {
    node: Node,
    held: BTreeMap<u64, Allocation>,
}

impl Ledger {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            held: BTreeMap::new(),
        }
    }

    /// The memory the system keeps: max(10 %, 2 GiB).
    pub fn memory_reserve(&self) -> u64 {
        (self.node.memory / 10).max(2 * GIB).min(self.node.memory)
    }

    /// All the node has.
    pub fn total(&self) -> Resources {
        self.with_pools(self.node.cores, self.node.memory, |pool| pool.size)
    }

    /// What the system keeps: memory, and what it holds on the pools.
    pub fn reserved(&self) -> Resources {
        self.with_pools(0, self.memory_reserve(), |pool| pool.system)
    }

    /// `cru` and `mru`, with `bytes` of each pool added to SRU or HRU by
    /// its kind.
    fn with_pools(&self, cru: u64, mru: u64, bytes: impl Fn(&Pool) -> u64) -> Resources {
        let mut sum = Resources {
            cru,
            mru,
            ..Resources::default()
        };
        for pool in &self.node.pools {
            let on = match pool.kind {
                PoolKind::Ssd => &mut sum.sru,
                PoolKind::Hdd => &mut sum.hru,
            };
            *on = on.saturating_add(bytes(pool));
        }
        sum
    }

    /// What the deployments hold.
    pub fn used(&self) -> Resources {
        let mut used = Resources::default();
        for allocation in self.held.values() {
            used.add(&allocation.resources());
        }
        used
    }

    /// The memory the node spends running the deployments, beside their
    /// MRU.
    pub fn overhead(&self) -> u64 {
        self.held
            .values()
            .map(|a| a.overhead)
            .fold(0, u64::saturating_add)
    }

    /// What deployments may still take (CRU: cores not held by any machine;
    /// MRU: less the overhead too).
    pub fn free(&self) -> Resources {
        let mut free = self.total().minus(&self.reserved()).minus(&self.used());
        free.mru = free.mru.saturating_sub(self.overhead());
        free
    }

    /// What one deployment holds.
    pub fn allocation(&self, contract: u64) -> Option<&Allocation> {
        self.held.get(&contract)
    }

    /// Free bytes of each pool, leaving out `except`'s disks (a deployment
    /// being replaced).
    fn pool_free(&self, except: Option<u64>) -> BTreeMap<String, (PoolKind, u64)> {
        let mut free: BTreeMap<String, (PoolKind, u64)> = self
            .node
            .pools
            .iter()
            .map(|p| (p.label.clone(), (p.kind, p.size.saturating_sub(p.system))))
            .collect();
        for (contract, allocation) in &self.held {
            if Some(*contract) == except {
                continue;
            }
            for placed in &allocation.disks {
                if let Some((_, bytes)) = free.get_mut(&placed.pool) {
                    *bytes = bytes.saturating_sub(placed.disk.size);
                }
            }
        }
        free
    }

    /// Places `demand` for `contract` (replacing what it holds, for an
    /// update), or says why it does not fit. Changes nothing.
    pub fn plan(&self, contract: u64, demand: &Demand) -> Result<Allocation, CapacityError> {
        if demand.max_machine_cores > self.node.cores {
            return Err(CapacityError::Cores {
                asked: demand.max_machine_cores,
                cores: self.node.cores,
            });
        }
        let current = self.held.get(&contract);
        let held_mru = current.map_or(0, Allocation::memory);
        let free_mru = self.free().mru.saturating_add(held_mru);
        if demand.mru.saturating_add(demand.overhead) > free_mru {
            return Err(CapacityError::Memory {
                asked: Bytes(demand.mru),
                overhead: Bytes(demand.overhead),
                free: Bytes(free_mru),
            });
        }
        let mut pools = self.pool_free(Some(contract));
        for kind in [PoolKind::Ssd, PoolKind::Hdd] {
            let asked: u64 = demand
                .disks
                .iter()
                .filter(|d| d.kind == kind)
                .map(|d| d.size)
                .fold(0, u64::saturating_add);
            let (free, largest) = totals(&pools, kind);
            if asked > free {
                return Err(CapacityError::Storage {
                    unit: kind.unit(),
                    asked: Bytes(asked),
                    free: Bytes(free),
                    largest_pool: Bytes(largest),
                });
            }
        }
        // A disk that exists stays on its pool; new ones go, largest first,
        // to the pool of their kind with the most room.
        let mut disks: Vec<&Disk> = demand.disks.iter().collect();
        disks.sort_by_key(|d| std::cmp::Reverse(d.size));
        let mut placed = Vec::with_capacity(disks.len());
        for disk in disks {
            let existing = current.and_then(|a| {
                a.disks
                    .iter()
                    .find(|p| p.disk.workload == disk.workload && p.disk.kind == disk.kind)
            });
            let pool = match existing {
                Some(p) => Some(p.pool.clone()),
                None => pools
                    .iter()
                    .filter(|(_, (kind, _))| *kind == disk.kind)
                    .max_by_key(|(_, (_, bytes))| *bytes)
                    .map(|(label, _)| label.clone()),
            };
            let room = pool.as_ref().and_then(|p| pools.get_mut(p));
            match (pool, room) {
                (Some(label), Some((_, bytes))) if *bytes >= disk.size => {
                    *bytes -= disk.size;
                    placed.push(Placed {
                        disk: disk.clone(),
                        pool: label,
                    });
                }
                _ => {
                    let (free, largest) = totals(&pools, disk.kind);
                    return Err(CapacityError::NoSinglePool {
                        workload: disk.workload.clone(),
                        unit: disk.kind.unit(),
                        asked: Bytes(disk.size),
                        free: Bytes(free),
                        largest_pool: Bytes(largest),
                    });
                }
            }
        }
        Ok(Allocation {
            cru: demand.cru,
            mru: demand.mru,
            overhead: demand.overhead,
            disks: placed,
        })
    }

    /// What the node has.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Each pool: its size, what the system keeps, what deployments hold,
    /// and what is free.
    pub fn pools(&self) -> Vec<PoolUsage> {
        let free = self.pool_free(None);
        self.node
            .pools
            .iter()
            .map(|p| {
                let free = free.get(&p.label).map_or(0, |(_, bytes)| *bytes);
                PoolUsage {
                    label: p.label.clone(),
                    kind: p.kind,
                    size: p.size,
                    system: p.system,
                    used: p.size.saturating_sub(p.system).saturating_sub(free),
                    free,
                }
            })
            .collect()
    }

    /// Records what `contract` holds (reserved at admission).
    pub fn hold(&mut self, contract: u64, allocation: Allocation) {
        self.held.insert(contract, allocation);
    }

    /// Frees what `contract` held.
    pub fn release(&mut self, contract: u64) -> Option<Allocation> {
        self.held.remove(&contract)
    }
}

fn totals(pools: &BTreeMap<String, (PoolKind, u64)>, kind: PoolKind) -> (u64, u64) {
    pools
        .values()
        .filter(|(k, _)| *k == kind)
        .fold((0, 0), |(sum, largest), (_, bytes)| {
            (sum.saturating_add(*bytes), largest.max(*bytes))
        })
}

#[cfg(test)]
mod tests;
