//! The shapes of provisiond's socket API, shared by the server, its typed
//! client ([`crate::client::ProvisiondClient`]) and the agent.
//!
//! The agent is the only process that talks to the registry: it hands
//! provisiond each deployment with the contract and the twins' keys it
//! fetched ([`Submission`]). Answers never hold a WireGuard private key or
//! any other secret of a deployment: [`DeploymentView::deployment`] is the
//! client's JSON with those values blanked and the node's results filled in.

use serde::{Deserialize, Serialize};

use crate::capacity::{PoolUsage, Resources};

/// The body of `POST /v1/deployments` and `PUT /v1/deployments/{contract_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The client's JSON text, byte for byte: the hash and the signatures
    /// are checked on it.
    pub deployment: String,
    /// The registry's contract of the deployment's contract id (`None`:
    /// not found).
    pub contract: Option<ContractFacts>,
    /// The account keys of every twin in the signature requirement.
    pub twins: Vec<TwinKeyFacts>,
}

/// A node contract as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractFacts {
    pub contract_id: u64,
    pub node_id: u32,
    pub twin_id: u32,
    /// `Created`, `GracePeriod` or `Deleted`.
    pub state: String,
    /// The 32 ASCII characters of the hex MD5 the contract holds.
    pub deployment_hash: String,
}

/// A twin's account key, hex of 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinKeyFacts {
    pub twin_id: u32,
    pub account_key: String,
}

/// `PUT /v1/node`: the node's id on the registry, once the agent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub node_id: u32,
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentState {
    /// Its first version is being made.
    Deploying,
    /// Every workload of its version is made.
    Ok,
    /// Its first version failed and was rolled back: nothing of it runs.
    Error,
    /// An update is being applied; the previous version runs.
    Updating,
    /// An update failed and was rolled back; the previous version runs.
    Unchanged,
    /// Its contract was cancelled; its workloads are being removed.
    Deleting,
    /// Removed; kept for its history.
    Deleted,
}

/// The workload that made a version fail, and the node's own reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub version: u32,
    pub workload: String,
    pub message: String,
}

/// A deployment as the node holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub contract_id: u64,
    pub twin_id: u32,
    /// The version shown: the one being applied while deploying or
    /// updating, else the one the node stands on.
    pub version: u32,
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The deployment in zos's shape, each workload's `result` filled in,
    /// secrets blanked.
    pub deployment: serde_json::Value,
}

impl DeploymentView {
    /// The result of workload `name`, in zos's shape.
    pub fn result(&self, name: &str) -> Option<&serde_json::Value> {
        self.deployment["workloads"]
            .as_array()?
            .iter()
            .find(|w| w["name"] == name)
            .map(|w| &w["result"])
    }

    /// The state of workload `name` (`init`, `ok`, `error`, `unchanged`,
    /// `deleted`).
    pub fn workload_state(&self, name: &str) -> Option<&str> {
        self.result(name)?["state"].as_str()
    }
}

/// One entry of a deployment's history.
pub type ChangeView = crate::store::Change;

/// `GET /v1/capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityView {
    pub total: Resources,
    /// What the system keeps (memory reserve, the cache).
    pub reserved: Resources,
    /// What deployments hold, as billed.
    pub used: Resources,
    /// Memory the node spends running the deployments beside their MRU
    /// (QEMU, containers' kernel objects): held, not billed.
    #[serde(default)]
    pub overhead: u64,
    pub free: Resources,
    pub pools: Vec<PoolUsage>,
    /// The WireGuard listen ports of the deployments' networks.
    pub wireguard_ports: Vec<u16>,
}

/// What one contract uses, for `reportContractResources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractUsage {
    pub contract_id: u64,
    pub cru: u64,
    pub mru: u64,
    pub sru: u64,
    pub hru: u64,
    pub public_ips: u32,
}
