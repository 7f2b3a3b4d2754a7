//! The registry's data model, as TFChain's `tfgridModule` has it: twins,
//! farms, nodes with their resources and interfaces, and uptime reports.
//!
//! Field names follow the chain's (`hru`, `sru`, `cru`, `mru`; `farm_id`,
//! `twin_id`), so the embedded registry and TFChain carry the same facts.

use serde::{Deserialize, Serialize};

/// `resources{hru,sru,cru,mru}` in bytes (cru: threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub hru: u64,
    pub sru: u64,
    pub cru: u64,
    pub mru: u64,
}

/// One interface of a node, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    pub id: u32,
    /// SS58 account.
    pub account: String,
    pub relay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farm {
    pub id: u32,
    pub name: String,
    pub twin_id: u32,
}

/// What a node registers and updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub farm_id: u32,
    pub twin_id: u32,
    pub resources: Resources,
    pub interfaces: Vec<Interface>,
    pub serial_number: String,
    pub virtualized: bool,
    pub secure_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: u32,
    #[serde(flatten)]
    pub registration: NodeRegistration,
    /// The node's WireGuard public key and mesh endpoint, for its peers.
    pub mesh: Option<MeshInfo>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// How the region's other nodes reach this one over `mesh0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInfo {
    pub public_key: String,
    pub endpoints: Vec<String>,
    pub public_endpoint: bool,
}

/// `reportUptimeV2(uptime, timestampHint)`, with the node's own sequence
/// number so a retried report is recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UptimeReport {
    pub seq: u64,
    /// Seconds since the node booted.
    pub uptime: u64,
    /// Unix seconds when the node made the report.
    pub timestamp: u64,
}
