//! The node's client for the embedded registry's HTTP API.
//!
//! Every write is signed with the node's key (target
//! [`crate::auth::REGISTRY`]), as the registry requires; reads are plain.
//! A write is signed afresh on every attempt, so a retry never looks like
//! a replay.

use ed25519_dalek::SigningKey;
use grove_daemon::client::{ClientError, SocketClient};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::embedded::{ContractRequest, ContractUpdate, TwinView};
use super::model::{
    ContractResources, ContractResourcesReport, DeploymentHash, Farm, MeshInfo, Node, NodeContract,
    NodeRegistration, Twin, TwinKey, UptimeReport,
};

/// A registry at `http://host:port`, written to as one node.
#[derive(Clone)]
pub struct EmbeddedClient {
    reader: RegistryReader,
    key: SigningKey,
}

/// The reads, which need no key.
impl std::ops::Deref for EmbeddedClient {
    type Target = RegistryReader;

    fn deref(&self) -> &RegistryReader {
        &self.reader
    }
}

impl std::fmt::Debug for EmbeddedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedClient")
            .field("registry", &self.reader)
            .field("key", &"<secret>")
            .finish()
    }
}

impl EmbeddedClient {
    /// `url` is `http://host:port`; anything else is refused. Writes are
    /// signed with `key`, the node's chain key.
    pub fn new(url: &str, key: SigningKey) -> Option<Self> {
        Some(Self {
            reader: RegistryReader::new(url)?,
            key,
        })
    }

    /// The account writes are signed by.
    pub fn account(&self) -> String {
        crate::identity::keys::ss58(
            &self.key.verifying_key().to_bytes(),
            crate::identity::keys::SS58_PREFIX,
        )
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let encode = |source| ClientError::Encode {
            path: self.reader.http.path().to_owned(),
            source,
        };
        let bytes = serde_json::to_vec(body).map_err(encode)?;
        let nonce = crate::auth::nonce().map_err(|source| ClientError::Connect {
            path: self.reader.http.path().to_owned(),
            source,
        })?;
        let headers = crate::auth::sign(
            &self.key,
            crate::auth::Request {
                target: crate::auth::REGISTRY,
                method: "POST",
                path,
                body: &bytes,
            },
            (crate::clock::unix_ms() / 1000) as i64,
            &nonce,
        );
        self.reader
            .http
            .call_with_headers(Method::POST, path, &headers, bytes)
            .await
    }

    /// The twin of this client's account, made if missing.
    pub async fn ensure_twin(&self) -> Result<Twin, ClientError> {
        self.write(
            "/v1/twins",
            &json!({ "account": self.account(), "relay": null }),
        )
        .await
    }

    pub async fn register(
        &self,
        registration: &NodeRegistration,
        mesh: Option<&MeshInfo>,
    ) -> Result<Node, ClientError> {
        let mut body =
            serde_json::to_value(registration).map_err(|source| ClientError::Encode {
                path: self.reader.http.path().to_owned(),
                source,
            })?;
        body["mesh"] = serde_json::to_value(mesh).unwrap_or_default();
        self.write("/v1/nodes", &body).await
    }

    pub async fn report_uptime(
        &self,
        node: u32,
        report: &UptimeReport,
    ) -> Result<bool, ClientError> {
        self.write(&format!("/v1/nodes/{node}/uptime"), report)
            .await
    }

    /// Twin `twin_id` (this client's account) makes a node contract.
    pub async fn create_contract(
        &self,
        twin_id: u32,
        node_id: u32,
        hash: &DeploymentHash,
        public_ips: u32,
    ) -> Result<NodeContract, ClientError> {
        let request = ContractRequest {
            twin_id,
            node_id,
            deployment_hash: hash.to_string(),
            public_ips,
        };
        self.write("/v1/contracts", &request).await
    }

    /// The owner sets contract `id`'s deployment hash.
    pub async fn update_contract(
        &self,
        id: u64,
        hash: &DeploymentHash,
    ) -> Result<NodeContract, ClientError> {
        let update = ContractUpdate {
            deployment_hash: hash.to_string(),
        };
        self.write(&format!("/v1/contracts/{id}"), &update).await
    }

    /// The owner cancels contract `id`.
    pub async fn cancel_contract(&self, id: u64) -> Result<NodeContract, ClientError> {
        self.write(&format!("/v1/contracts/{id}/cancel"), &json!({}))
            .await
    }

    /// The node reports what its contracts use; answers how many the
    /// registry stored.
    pub async fn report_contract_resources(
        &self,
        node: u32,
        reports: &[ContractResources],
    ) -> Result<usize, ClientError> {
        self.write(&format!("/v1/nodes/{node}/contracts/resources"), &reports)
            .await
    }
}

fn none_if_missing<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

/// A registry at `http://host:port`, read by anyone: its reads need no key.
#[derive(Debug, Clone)]
pub struct RegistryReader {
    http: SocketClient,
}

impl RegistryReader {
    /// `url` is `http://host:port`; anything else is refused.
    pub fn new(url: &str) -> Option<Self> {
        let address = url.strip_prefix("http://")?.trim_end_matches('/');
        (!address.is_empty() && !address.contains('/')).then(|| Self {
            http: SocketClient::tcp(address).with_timeout(std::time::Duration::from_secs(5)),
        })
    }

    /// The farm, or `None` when the registry has no such farm.
    pub async fn farm(&self, id: u32) -> Result<Option<Farm>, ClientError> {
        none_if_missing(self.http.get(&format!("/v1/farms/{id}")).await)
    }
    pub async fn twin(&self, id: u32) -> Result<Twin, ClientError> {
        self.http.get(&format!("/v1/twins/{id}")).await
    }
    /// Every twin the registry holds.
    pub async fn twins(&self) -> Result<Vec<Twin>, ClientError> {
        self.http.get("/v1/twins").await
    }
    pub async fn nodes(&self, farm: u32) -> Result<Vec<Node>, ClientError> {
        self.http.get(&format!("/v1/nodes?farm_id={farm}")).await
    }
    pub async fn uptime(&self, node: u32) -> Result<Vec<UptimeReport>, ClientError> {
        self.http.get(&format!("/v1/nodes/{node}/uptime")).await
    }

    /// Contract `id`, or `None` when the registry has none.
    pub async fn contract(&self, id: u64) -> Result<Option<NodeContract>, ClientError> {
        none_if_missing(self.http.get(&format!("/v1/contracts/{id}")).await)
    }

    /// The active (Created or GracePeriod) contracts on `node`.
    pub async fn node_contracts(&self, node: u32) -> Result<Vec<NodeContract>, ClientError> {
        self.http.get(&format!("/v1/nodes/{node}/contracts")).await
    }

    /// The last resources report for contract `id`.
    pub async fn contract_resources(
        &self,
        id: u64,
    ) -> Result<Option<ContractResourcesReport>, ClientError> {
        none_if_missing(
            self.http
                .get(&format!("/v1/contracts/{id}/resources"))
                .await,
        )
    }

    /// Twin `id` with its account key, or `None` when there is no such
    /// twin. The key is derived from the twin's account here: a served
    /// `account_key` that is not that account's is refused, never used.
    pub async fn twin_key(&self, id: u32) -> Result<Option<TwinKey>, ClientError> {
        let Some(view) =
            none_if_missing(self.http.get::<TwinView>(&format!("/v1/twins/{id}")).await)?
        else {
            return Ok(None);
        };
        let lie = |message: String| ClientError::Status {
            path: self.http.path().to_owned(),
            status: StatusCode::BAD_GATEWAY,
            message,
        };
        if view.twin.id != id {
            return Err(lie(format!(
                "asked for twin {id}, the registry answered twin {}",
                view.twin.id
            )));
        }
        let key = TwinKey::of(&view.twin).ok_or_else(|| {
            lie(format!(
                "twin {id}'s account {:?} is not an account",
                view.twin.account
            ))
        })?;
        if view.account_key.as_deref() != Some(key.account_key.as_str()) {
            return Err(lie(format!(
                "twin {id}: the served account key is not the key of its account {}",
                view.twin.account
            )));
        }
        Ok(Some(key))
    }
}

/// The mesh details of `nodes` whose WireGuard key is the one derived from
/// their twin's account; a served key that differs is replaced by the
/// derived one (and logged), a node whose twin is unknown is left out.
pub fn derive_peer_keys(nodes: Vec<Node>, twins: &[Twin]) -> Vec<MeshInfo> {
    nodes
        .into_iter()
        .filter_map(|n| {
            let mut mesh = n.mesh?;
            let account = twins
                .iter()
                .find(|t| t.id == n.registration.twin_id)
                .map(|t| t.account.as_str());
            let Some(derived) = account.and_then(super::embedded::wireguard_key_of) else {
                tracing::warn!(
                    node = n.id,
                    twin = n.registration.twin_id,
                    "peer left out: its twin's account is unknown or not an account"
                );
                return None;
            };
            if mesh.public_key != derived {
                tracing::warn!(node = n.id, served = %mesh.public_key, %derived,
                    "the registry served a mesh key that is not the node's; using the derived one");
                mesh.public_key = derived;
            }
            Some(mesh)
        })
        .collect()
}
