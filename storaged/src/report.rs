//! What storaged's API answers and takes: disks, pools, capacity, the
//! node's identity.
//!
//! Plain data shared by the daemon, its typed client
//! ([`crate::client::StoragedClient`]) and every caller, kept apart from
//! the storage logic so a caller reads the shapes without the machinery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cache::CacheStatus;
use crate::disk::classify::DiskClass;
use crate::disk::discover::BlockDevice;
use crate::disk::probe::Signatures;
use crate::pool::PoolState;
use crate::pool::kind::{DiskKind, KindVerdict};
use crate::types::{DiskSerial, PoolLabel};

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

/// One pool as `/v1/pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub label: PoolLabel,
    pub uuid: String,
    pub serial: DiskSerial,
    pub device: PathBuf,
    pub kind: DiskKind,
    pub verdict: KindVerdict,
    #[serde(flatten)]
    pub state: PoolState,
    pub mount_point: PathBuf,
    pub size_bytes: u64,
    pub reserved_bytes: u64,
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    pub cache: bool,
    /// The chain account of the node that made (or adopted) the pool.
    pub account: Option<String>,
    /// Made on this machine.
    pub this_machine: bool,
    /// Of this node: this machine's and of the settled account. Only such
    /// pools hold the cache, volumes and workloads.
    pub this_node: bool,
    /// "another node's pool (account X)", for a pool of another identity.
    pub another_node: Option<String>,
}

impl PoolReport {
    /// Mounted and usable (not broken).
    pub fn is_mounted(&self) -> bool {
        self.state == PoolState::Mounted
    }
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

/// `/v1/identity`: the account storaged holds the node to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    pub settled: bool,
    pub account: Option<String>,
    /// This machine's id, as recorded on the pools it makes: what the
    /// farmer's signed choice names while the node has no account.
    #[serde(default)]
    pub machine: Option<String>,
}

/// The farmer's answer to a node waiting for its identity
/// (`POST /v1/identity/choice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentityChoice {
    /// Take the identity another machine's pools hold, and those pools.
    Adopt(String),
    /// Start as a new node with this new account, on this machine's blank
    /// pools only.
    Fresh(String),
}

/// `POST /v1/identity`: the node's account as the agent settled it, or
/// `null` for a node that has none yet (waiting for the farmer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    pub account: Option<String>,
}
