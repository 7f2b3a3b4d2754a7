//! What the engine records of each deployment beside its wire text: where
//! it stands, what it holds, and the job in progress.
//!
//! A job is written before its first step and cleared in the same
//! transaction as its last result, so after a crash the store says exactly
//! which version the deployment must be driven to.

use serde::{Deserialize, Serialize};

use crate::api::{DeploymentState, Failure};
use crate::capacity::Allocation;
use crate::store::DeploymentRecord;

/// The engine's record of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    pub state: DeploymentState,
    /// What the version the node stands on holds.
    pub allocation: Allocation,
    pub failure: Option<Failure>,
    pub job: Option<Job>,
}

/// Work in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Make `target`; `previous_running` says whether the stored version
    /// runs (and is what a failure rolls back to) or nothing does.
    Apply {
        target: DeploymentRecord,
        allocation: Allocation,
        previous_running: bool,
    },
    /// `failed` failed: undo it, back to the stored version or to nothing.
    RollBack {
        failed: DeploymentRecord,
        failure: Failure,
        previous_running: bool,
    },
    /// The contract is cancelled: remove the stored version and `also`
    /// (a version that was being applied or rolled back).
    Remove { also: Option<DeploymentRecord> },
}
