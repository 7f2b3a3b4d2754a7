//! The typed client for `provisiond`'s socket API; the shapes are in
//! [`crate::api`].

use grove_daemon::client::ClientError;

use crate::api::{CapacityView, ChangeView, ContractUsage, DeploymentView, NodeFacts, Submission};

grove_daemon::daemon_client!(
    /// A client for `provisiond`.
    ProvisiondClient,
    crate::NAME
);

impl ProvisiondClient {
    /// Submits a new deployment (`POST /v1/deployments`); answers once it
    /// is admitted, before its workloads are made.
    pub async fn deploy(&self, s: &Submission) -> Result<DeploymentView, ClientError> {
        self.socket.post("/v1/deployments", s).await
    }

    /// Submits an update (`PUT /v1/deployments/{contract_id}`).
    pub async fn update(
        &self,
        contract_id: u64,
        s: &Submission,
    ) -> Result<DeploymentView, ClientError> {
        self.socket
            .put(&format!("/v1/deployments/{contract_id}"), s)
            .await
    }

    /// Every deployment, or those of `twin`.
    pub async fn deployments(&self, twin: Option<u32>) -> Result<Vec<DeploymentView>, ClientError> {
        match twin {
            Some(t) => self.socket.get(&format!("/v1/deployments?twin={t}")).await,
            None => self.socket.get("/v1/deployments").await,
        }
    }

    pub async fn deployment(&self, contract_id: u64) -> Result<DeploymentView, ClientError> {
        self.socket
            .get(&format!("/v1/deployments/{contract_id}"))
            .await
    }

    /// The deployment's history, oldest first.
    /// The output of workload `name` (a container's stdout and stderr),
    /// its last 256 KiB.
    pub async fn logs(&self, contract_id: u64, name: &str) -> Result<String, ClientError> {
        self.socket
            .get_text(&format!(
                "/v1/deployments/{contract_id}/workloads/{name}/logs"
            ))
            .await
    }

    pub async fn changes(&self, contract_id: u64) -> Result<Vec<ChangeView>, ClientError> {
        self.socket
            .get(&format!("/v1/deployments/{contract_id}/changes"))
            .await
    }

    /// The contract was cancelled: remove its deployment.
    pub async fn remove(&self, contract_id: u64) -> Result<DeploymentView, ClientError> {
        self.socket
            .delete(&format!("/v1/deployments/{contract_id}"))
            .await
    }

    pub async fn capacity(&self) -> Result<CapacityView, ClientError> {
        self.socket.get("/v1/capacity").await
    }

    /// What each contract uses, for `reportContractResources`.
    pub async fn usage(&self) -> Result<Vec<ContractUsage>, ClientError> {
        self.socket.get("/v1/usage").await
    }

    /// Tells provisiond the node's id on the registry.
    pub async fn set_node(&self, node_id: u32) -> Result<NodeFacts, ClientError> {
        self.socket.put("/v1/node", &NodeFacts { node_id }).await
    }
}
