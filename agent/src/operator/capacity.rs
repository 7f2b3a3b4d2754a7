//! What the node offers, per resource, for `/v1/capacity` and registration:
//! `cru` (CPU threads), `mru` (memory bytes), `sru` (SSD bytes) and `hru`
//! (HDD bytes), each as total, reserved for the system, used and free.
//!
//! Memory keeps a system reserve of a tenth, at least 2 GiB (never more than
//! the whole); disks keep what storaged reserves. Workloads' use of CPU and
//! memory is counted by provisiond and is zero until it reports.

use serde::{Deserialize, Serialize};
use storaged::report::Capacity as StorageCapacity;

use crate::hostinfo::HostInfo;

/// Memory the node keeps for itself at the least.
pub const MIN_MEMORY_RESERVE: u64 = 2 << 30;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub total: u64,
    pub reserved: u64,
    pub used: u64,
    pub free: u64,
}

impl Resource {
    fn new(total: u64, reserved: u64, used: u64) -> Self {
        let reserved = reserved.min(total);
        Self {
            total,
            reserved,
            used,
            free: total.saturating_sub(reserved).saturating_sub(used),
        }
    }
}

/// `GET /v1/capacity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub cru: Resource,
    pub mru: Resource,
    pub sru: Resource,
    pub hru: Resource,
}

/// `GET /v1/capacity`: the node's resources, with what deployments hold
/// counted in CPU and memory, and provisiond's own view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityReport {
    #[serde(flatten)]
    pub node: NodeCapacity,
    /// What deployments hold: provisiond's capacity (used and free per
    /// resource, pools, WireGuard ports in use) and the deployments by
    /// state; `null` while provisiond does not answer.
    pub deployments: Option<super::snapshot::DeploymentFacts>,
}

/// The node's capacity with what provisiond says deployments hold: their
/// cores and memory are the `used` of CPU and memory.
pub fn with_deployments(
    mut node: NodeCapacity,
    deployments: Option<&super::snapshot::DeploymentFacts>,
) -> CapacityReport {
    if let Some(d) = deployments {
        let used = &d.capacity.used;
        node.cru = Resource::new(node.cru.total, node.cru.reserved, used.cru);
        node.mru = Resource::new(node.mru.total, node.mru.reserved, used.mru);
    }
    CapacityReport {
        node,
        deployments: deployments.cloned(),
    }
}

pub fn node_capacity(host: &HostInfo, storage: Option<&StorageCapacity>) -> NodeCapacity {
    let memory = host.memory.total_bytes;
    let memory_reserve = (memory / 10).max(MIN_MEMORY_RESERVE);
    let disk = |k: Option<&storaged::report::KindCapacity>| match k {
        Some(k) => Resource::new(k.total_bytes, k.reserved_bytes, k.used_bytes),
        None => Resource::default(),
    };
    NodeCapacity {
        cru: Resource::new(host.cpu.count as u64, 0, 0),
        mru: Resource::new(memory, memory_reserve, 0),
        sru: disk(storage.map(|s| &s.ssd)),
        hru: disk(storage.map(|s| &s.hdd)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostinfo::{Cpu, Memory};

    #[test]
    fn memory_reserve_is_a_tenth_at_least_two_gib_at_most_all() {
        let host = |gib: u64| HostInfo {
            cpu: Cpu {
                count: 8,
                ..Cpu::default()
            },
            memory: Memory {
                total_bytes: gib << 30,
                available_bytes: 0,
            },
            ..HostInfo::default()
        };
        assert_eq!(node_capacity(&host(64), None).mru.reserved, (64 << 30) / 10);
        assert_eq!(node_capacity(&host(8), None).mru.reserved, 2 << 30);
        let tiny = node_capacity(&host(1), None);
        assert_eq!((tiny.mru.reserved, tiny.mru.free), (1 << 30, 0));
        assert_eq!(node_capacity(&host(8), None).cru.total, 8);
        assert_eq!(node_capacity(&host(8), None).sru, Resource::default());
    }
}
