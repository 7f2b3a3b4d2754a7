//! Assertions that the contract tests against the embedded registry and
//! against TFChain share.

use agent::chain::backend::{Backend, BackendError};
use agent::registry::model::{ContractResources, Resources};

/// `other`, as node `node`, reports resources for contract `contract_id`,
/// which is not on that node, and is refused for good with `kind`.
pub async fn assert_report_refused(other: &Backend, node: u32, contract_id: u64, kind: &str) {
    let e = other
        .report_contract_resources(
            node,
            &[ContractResources {
                contract_id,
                used: Resources::default(),
            }],
        )
        .await
        .expect_err("another node's contract");
    assert!(
        matches!(&e, BackendError::Permanent { kind: got, .. } if got == kind),
        "{e:?}"
    );
}
