//! The node's contracts as the registry holds them, followed: each one
//! that appears or changes (hash, state) and each one that goes away
//! (cancelled, deleted for lack of funds) is sent to the caller, within
//! seconds.
//!
//! On TFChain the watcher follows the contract events of finalized blocks
//! (`ContractCreated`, `ContractUpdated`, `NodeContractCanceled`, grace
//! period started and ended) and reads the node's active contracts again
//! on each one; it also reads them on every (re)connection and every
//! [`TFCHAIN_RESYNC`], so an event missed while disconnected is made up
//! for. The embedded registry has no events: the watcher reads the list
//! every [`EMBEDDED_POLL`]. The watcher has its own connection (a second
//! [`Backend`]), so the chain task's reports never wait on it. Contracts
//! the registry lists for another node, or dead, are left out (see
//! [`Backend::node_contracts`]).

use std::collections::BTreeMap;
use std::time::Duration;

use grove_daemon::shutdown::Shutdown;

use super::backend::Backend;
use crate::registry::model::NodeContract;

/// How often the embedded registry's list is read.
pub const EMBEDDED_POLL: Duration = Duration::from_secs(2);
/// How often TFChain's list is read when no event came.
pub const TFCHAIN_RESYNC: Duration = Duration::from_secs(30);
/// The longest wait before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A change of one of the node's contracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractChange {
    /// New, or its hash or state changed (Created or GracePeriod).
    Active(NodeContract),
    /// No longer active on the node: cancelled, or removed. The contract
    /// as last seen.
    Gone(NodeContract),
}

/// What the node knows of its active contracts.
#[derive(Debug, Default)]
pub struct Known {
    contracts: BTreeMap<u64, NodeContract>,
}

impl Known {
    /// The changes from what was known to `now`, the registry's list; `now`
    /// becomes what is known.
    pub fn update(&mut self, now: Vec<NodeContract>) -> Vec<ContractChange> {
        let now: BTreeMap<u64, NodeContract> =
            now.into_iter().map(|c| (c.contract_id, c)).collect();
        let mut changes: Vec<ContractChange> = self
            .contracts
            .values()
            .filter(|c| !now.contains_key(&c.contract_id))
            .cloned()
            .map(ContractChange::Gone)
            .collect();
        changes.extend(
            now.values()
                .filter(|c| self.contracts.get(&c.contract_id) != Some(*c))
                .cloned()
                .map(ContractChange::Active),
        );
        self.contracts = now;
        changes
    }
}

/// Follows node `node_id`'s contracts on `backend` until `shutdown` trips
/// or the receiver goes away.
pub async fn watch(
    mut backend: Backend,
    node_id: u32,
    to: tokio::sync::mpsc::Sender<ContractChange>,
    shutdown: Shutdown,
) {
    let poll = if backend.is_tfchain() {
        TFCHAIN_RESYNC
    } else {
        EMBEDDED_POLL
    };
    let mut known = Known::default();
    let mut backoff = Duration::from_secs(1);
    loop {
        let connected = tokio::select! {
            c = backend.connect() => c,
            () = shutdown.wait() => return,
        };
        if let Err(e) = connected {
            tracing::warn!(node = node_id, error = %e, "contract watch: cannot connect");
        } else if follow(&backend, node_id, poll, &mut known, &to, &shutdown).await {
            return;
        } else {
            backoff = Duration::from_secs(1);
        }
        backend.disconnect();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the list on every event and every `poll`, on one connection;
/// true when the watch is over (shutdown, or no receiver), false when the
/// connection failed.
async fn follow(
    backend: &Backend,
    node_id: u32,
    poll: Duration,
    known: &mut Known,
    to: &tokio::sync::mpsc::Sender<ContractChange>,
    shutdown: &Shutdown,
) -> bool {
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    let follower = backend.follow_contract_events(node_id, tx);
    tokio::pin!(follower);
    loop {
        let read = tokio::select! {
            r = backend.node_contracts(node_id) => r,
            () = shutdown.wait() => return true,
        };
        match read {
            Ok(list) => {
                for change in known.update(list) {
                    tracing::info!(node = node_id, change = ?change, "contract change");
                    if to.send(change).await.is_err() {
                        return true;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(node = node_id, error = %e, "contract watch: cannot read the node's contracts");
                return false;
            }
        }
        tokio::select! {
            ended = &mut follower => {
                tracing::warn!(node = node_id, outcome = ?ended, "contract watch: the event stream ended");
                return false;
            }
            Some(event) = events.recv() => {
                tracing::debug!(node = node_id, event = ?event, "contract event");
            }
            () = tokio::time::sleep(poll) => {}
            () = shutdown.wait() => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{ContractState, DeploymentHash};

    fn contract(id: u64, hash: u8, state: ContractState) -> NodeContract {
        NodeContract {
            contract_id: id,
            node_id: 1,
            twin_id: 2,
            deployment_hash: DeploymentHash([hash; 32]),
            public_ips: 0,
            state,
        }
    }

    #[test]
    fn changes_are_the_new_the_changed_and_the_gone() {
        use ContractChange::{Active, Gone};
        let a = contract(1, b'a', ContractState::Created);
        let b = contract(2, b'b', ContractState::Created);
        let b2 = contract(2, b'c', ContractState::Created);
        let a_grace = contract(1, b'a', ContractState::GracePeriod);
        // (what the chain lists, in turn; the changes it makes).
        let steps = [
            (
                vec![a.clone(), b.clone()],
                vec![Active(a.clone()), Active(b.clone())],
            ),
            (vec![a.clone(), b], vec![]),
            (
                vec![a_grace.clone(), b2.clone()],
                vec![Active(a_grace.clone()), Active(b2.clone())],
            ),
            (vec![b2.clone()], vec![Gone(a_grace)]),
            (vec![], vec![Gone(b2)]),
        ];
        let mut known = Known::default();
        for (step, (listed, changes)) in steps.into_iter().enumerate() {
            assert_eq!(known.update(listed), changes, "step {step}");
        }
    }
}
