//! The synchronous checks a deployment passes before anything is touched.
//!
//! In order, cheapest first: the wire format and every field, the workload
//! types this node can run, the contract id, the version rules, the twins'
//! signatures, the chain contract (a node contract for this node, owned by
//! the deployment's twin, in state Created, holding exactly the computed
//! hash), and capacity. The caller fetches the contract and the keys; this
//! module decides, changes nothing, and says which rule refused.

use crate::capacity::{Allocation, CapacityError, Demand, Ledger};
use crate::deployment::signature::{SignatureError, TwinKeys};
use crate::deployment::workload::WorkloadType;
use crate::deployment::{Deployment, DeploymentError, DeploymentHash};
use crate::update::{Step, UpdateError, plan_create, plan_update};

/// A contract's state, as TFChain names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractState {
    Created,
    GracePeriod,
    Deleted,
}

/// What the node needs to know of a node contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    pub contract_id: u64,
    pub node_id: u32,
    pub twin_id: u32,
    pub state: ContractState,
    /// The 32 bytes the contract stores: the ASCII of the hex MD5.
    pub deployment_hash: [u8; 32],
}

/// Why a deployment is refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    #[error("the deployment has no contract_id: create its contract first")]
    NoContractId,
    #[error("a new deployment has version 0, this one has {0}")]
    FirstVersion(u32),
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("contract {0} does not exist")]
    NoContract(u64),
    #[error("contract {contract} is for node {node}, not this node ({this})")]
    OtherNode { contract: u64, node: u32, this: u32 },
    #[error("contract {contract} is owned by twin {owner}, the deployment is of twin {twin}")]
    OtherTwin {
        contract: u64,
        owner: u32,
        twin: u32,
    },
    #[error("contract {contract} is {state:?}, not Created")]
    NotCreated { contract: u64, state: ContractState },
    #[error("contract {contract} holds another deployment hash than this deployment's {hash}")]
    OtherHash { contract: u64, hash: DeploymentHash },
    #[error(transparent)]
    Capacity(#[from] CapacityError),
}

/// What the node knows when it checks a deployment.
#[derive(Debug)]
pub struct Checks<'a, K> {
    pub node_id: u32,
    pub supported: &'a [WorkloadType],
    pub keys: &'a K,
    pub ledger: &'a Ledger,
}

/// A deployment that passed every check, with its plan.
#[derive(Debug)]
pub struct Admitted {
    pub deployment: Deployment,
    pub hash: DeploymentHash,
    pub steps: Vec<Step>,
    pub allocation: Allocation,
}

impl<K: TwinKeys> Checks<'_, K> {
    /// Checks a new deployment; `contract` is the chain's contract of its id.
    pub fn create(
        &self,
        wire: &[u8],
        contract: Option<&Contract>,
    ) -> Result<Admitted, AdmissionError> {
        let deployment = self.parse(wire)?;
        if deployment.version != 0 {
            return Err(AdmissionError::FirstVersion(deployment.version));
        }
        let hash = self.authorise(&deployment, contract)?;
        let allocation = self
            .ledger
            .plan(deployment.contract_id, &Demand::of(&deployment))?;
        Ok(Admitted {
            steps: plan_create(&deployment),
            deployment,
            hash,
            allocation,
        })
    }

    /// Checks an update of `current`; `contract` is the chain's contract.
    pub fn update(
        &self,
        current: &Deployment,
        wire: &[u8],
        contract: Option<&Contract>,
    ) -> Result<Admitted, AdmissionError> {
        let deployment = self.parse(wire)?;
        let steps = plan_update(current, &deployment)?;
        let hash = self.authorise(&deployment, contract)?;
        let removed: Vec<String> = current
            .workloads
            .iter()
            .filter(|w| deployment.workload(w.name.as_str()).is_none())
            .map(|w| w.name.to_string())
            .collect();
        let held = self
            .ledger
            .allocation(deployment.contract_id)
            .cloned()
            .unwrap_or_default();
        let demand = Demand::of(&deployment).with_kept(&held, &removed);
        let allocation = self.ledger.plan(deployment.contract_id, &demand)?;
        Ok(Admitted {
            deployment,
            hash,
            steps,
            allocation,
        })
    }

    fn parse(&self, wire: &[u8]) -> Result<Deployment, AdmissionError> {
        let deployment = Deployment::parse(wire)?;
        deployment.ensure_supported(self.supported)?;
        if deployment.contract_id == 0 {
            return Err(AdmissionError::NoContractId);
        }
        Ok(deployment)
    }

    fn authorise(
        &self,
        deployment: &Deployment,
        contract: Option<&Contract>,
    ) -> Result<DeploymentHash, AdmissionError> {
        let hash = deployment.hash();
        deployment.verify(self.keys)?;
        let id = deployment.contract_id;
        let contract = contract
            .filter(|c| c.contract_id == id)
            .ok_or(AdmissionError::NoContract(id))?;
        if contract.node_id != self.node_id {
            return Err(AdmissionError::OtherNode {
                contract: id,
                node: contract.node_id,
                this: self.node_id,
            });
        }
        if contract.twin_id != deployment.twin_id {
            return Err(AdmissionError::OtherTwin {
                contract: id,
                owner: contract.twin_id,
                twin: deployment.twin_id,
            });
        }
        if contract.state != ContractState::Created {
            return Err(AdmissionError::NotCreated {
                contract: id,
                state: contract.state,
            });
        }
        if contract.deployment_hash != hash.chain_hash() {
            return Err(AdmissionError::OtherHash { contract: id, hash });
        }
        Ok(hash)
    }
}

#[cfg(test)]
mod tests;
