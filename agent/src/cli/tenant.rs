//! `agent tenant`: a tenant's command line, for someone who holds a twin
//! key (made with `agent sign new-key`).
//!
//! Every command takes the twin key (`--key`), the registry (`--registry`:
//! `http://HOST:PORT` for the embedded registry, `ws(s)://` for TFChain)
//! and the node's operator API (`--node http://HOST:PORT`); the node's id
//! and account are read from the node itself (`/v1/chain`, `/v1/node`).
//!
//! - `deploy FILE`: fills in the twin (made on the registry if missing)
//!   and, where the file has none, a signature requirement of that twin
//!   alone; hashes the deployment, creates the node contract with the hash
//!   (the contract id is not part of the hash), sets the contract id,
//!   signs, sends it, and follows it until every workload is `ok`, or one
//!   fails (then prints the node's own reason and exits non-zero). A
//!   deployment the node refuses, or whose first version fails, has its
//!   contract cancelled again, so it costs nothing further.
//! - `update FILE`: the same for a new version of a deployment (the file
//!   holds its `contract_id`, or `--contract`): the contract's hash is
//!   updated first, and set back if the node refuses the update.
//! - `get ID`, `list`, `cancel ID` (cancels the contract and follows the
//!   node until the deployment is removed).
//!
//! Requests to the node are signed as the twin for that node ([`crate::auth`]),
//! with the twin named in `x-grove-twin`. Nothing printed holds a private
//! key: the node's answers have them blanked, and the signed deployment is
//! never printed.

#![allow(
    clippy::print_stdout,
    reason = "a command line prints its progress as it goes"
)]

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use grove_daemon::client::{ClientError, SocketClient};
use hyper::{Method, StatusCode};
use provisiond::api::{DeploymentState, DeploymentView};
use provisiond::deployment::Deployment;
use serde_json::{Value, json};

use crate::provision::api::HEADER_TWIN;
use crate::registry::tenant::{Tenant, TenantError};

/// How long a deployment may take to settle before the command gives up
/// waiting (it keeps running on the node).
pub const WAIT: Duration = Duration::from_secs(600);

/// Why a tenant's command failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantCliError {
    #[error(transparent)]
    Key(#[from] super::sign::SignError),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Deployment(String),
    #[error(transparent)]
    Invalid(#[from] provisiond::deployment::DeploymentError),
    #[error("{0:?} is not a node address: give http://HOST:PORT")]
    NodeUrl(String),
    #[error("the node at {node}: {source}")]
    Node {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error("the node refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the node has no {0} yet (is it registered?)")]
    NodeFacts(&'static str),
    #[error(transparent)]
    Registry(#[from] TenantError),
    #[error("{0} has no twin on the registry yet: `deploy` makes one")]
    NoTwin(String),
    #[error("contract {0} does not exist on the registry")]
    NoContract(u64),
    #[error("cannot draw a nonce: {0}")]
    Random(#[source] std::io::Error),
    #[error("{0}")]
    Failed(String),
    #[error("not settled after {0} s; the node keeps working on it")]
    Timeout(u64),
}

/// One node, as the tenant talks to it.
#[derive(Debug)]
pub struct NodeApi {
    address: String,
    http: SocketClient,
    key: SigningKey,
    twin: u32,
    /// The node's account: requests are signed for it.
    account: String,
}

impl NodeApi {
    /// The node at `url`, talked to as `twin` with `key`.
    pub async fn connect(url: &str, key: SigningKey, twin: u32) -> Result<Self, TenantCliError> {
        let address = super::status::parse_address(url)
            .map_err(|_bad| TenantCliError::NodeUrl(url.to_owned()))?;
        let http = SocketClient::tcp(&address).with_timeout(Duration::from_secs(20));
        let node: Value = http
            .get("/v1/node")
            .await
            .map_err(|source| TenantCliError::Node {
                node: address.clone(),
                source,
            })?;
        let account = node["identity"]["account"]
            .as_str()
            .ok_or(TenantCliError::NodeFacts("identity"))?
            .to_owned();
        Ok(Self {
            address,
            http,
            key,
            twin,
            account,
        })
    }

    /// The node's id on the registry.
    pub async fn node_id(&self) -> Result<u32, TenantCliError> {
        let chain: Value = self
            .http
            .get("/v1/chain")
            .await
            .map_err(|source| self.node_error(source))?;
        chain["node_id"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(TenantCliError::NodeFacts("node id"))
    }

    fn node_error(&self, source: ClientError) -> TenantCliError {
        TenantCliError::Node {
            node: self.address.clone(),
            source,
        }
    }

    /// One signed request; the answer's JSON, or the node's refusal in its
    /// own words.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<Value, TenantCliError> {
        let nonce = crate::auth::nonce().map_err(TenantCliError::Random)?;
        let mut headers = crate::auth::sign(
            &self.key,
            crate::auth::Request {
                target: &self.account,
                method: method.as_str(),
                path,
                body,
            },
            (crate::clock::unix_ms() / 1000) as i64,
            &nonce,
        );
        headers.push((HEADER_TWIN, self.twin.to_string()));
        headers.push(("content-type", "application/json".to_owned()));
        let (status, answer) = self
            .http
            .raw_with_headers(method, path, &headers, Some(body.to_vec()))
            .await
            .map_err(|source| self.node_error(source))?;
        let value: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        Err(TenantCliError::Refused { status, message })
    }

    pub async fn deployment(&self, id: u64) -> Result<DeploymentView, TenantCliError> {
        let v = self
            .call(Method::GET, &format!("/v1/deployments/{id}"), b"")
            .await?;
        decode(v)
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentView>, TenantCliError> {
        decode(self.call(Method::GET, "/v1/deployments", b"").await?)
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, TenantCliError> {
    serde_json::from_value(v).map_err(|e| {
        TenantCliError::Deployment(format!("the node's answer is not understood: {e}"))
    })
}

/// The twin key at `path`.
pub fn load_key(path: &Path) -> Result<SigningKey, TenantCliError> {
    Ok(super::sign::signing_key(path)?)
}

/// The deployment in `path`, filled in for `twin` (its id, and a signature
/// requirement of `twin` alone where the file has none) and contract
/// `contract_id`: the JSON text to hash and sign.
pub fn prepare(text: &str, twin: u32, contract_id: u64) -> Result<String, TenantCliError> {
    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| TenantCliError::Deployment(format!("the deployment is not JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(TenantCliError::Deployment(
            "the deployment is not a JSON object".to_owned(),
        ));
    };
    object.insert("twin_id".to_owned(), json!(twin));
    object.insert("contract_id".to_owned(), json!(contract_id));
    for (key, default) in [
        ("metadata", json!("")),
        ("description", json!("")),
        ("expiration", json!(0)),
    ] {
        object.entry(key).or_insert(default);
    }
    let requirement = object
        .entry("signature_requirement")
        .or_insert_with(|| json!({}));
    let asks = requirement["requests"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    if !asks {
        *requirement = json!({
            "requests": [{"twin_id": twin, "required": true, "weight": 1}],
            "weight_required": 1,
            "signatures": [],
            "signature_style": "",
        });
    }
    if let Some(workloads) = object.get_mut("workloads").and_then(Value::as_array_mut) {
        for w in workloads.iter_mut().filter_map(Value::as_object_mut) {
            for (key, default) in [
                ("version", json!(0)),
                ("metadata", json!("")),
                ("description", json!("")),
            ] {
                w.entry(key).or_insert(default);
            }
        }
    }
    Ok(value.to_string())
}

/// The contract hash of the deployment text.
fn chain_hash(text: &str) -> Result<[u8; 32], TenantCliError> {
    Deployment::parse(text.as_bytes())
        .map(|d| d.hash().chain_hash())
        .map_err(TenantCliError::Invalid)
}

fn sign(text: &str, twin: u32, key: &SigningKey) -> Result<String, TenantCliError> {
    Ok(provisiond::deployment::sign::sign_ed25519(text, twin, key)?)
}

fn read(path: &Path) -> Result<String, TenantCliError> {
    std::fs::read_to_string(path).map_err(|e| TenantCliError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Where the command talks: the registry and the node, as the twin.
#[derive(Debug)]
pub struct Session {
    pub tenant: Tenant,
    pub node: NodeApi,
    pub twin: u32,
    pub key: SigningKey,
}

impl Session {
    /// Connects to the registry and to the node; `make_twin`: the twin is
    /// made where it is missing (a deploy), else it must exist (reads and
    /// cancels never make one).
    pub async fn open(
        key: &Path,
        registry: &str,
        node: &str,
        make_twin: bool,
    ) -> Result<Self, TenantCliError> {
        let key = load_key(key)?;
        let tenant = Tenant::connect(registry, key.clone()).await?;
        let twin = if make_twin {
            tenant.ensure_twin().await?
        } else {
            tenant
                .twin_id()
                .await?
                .ok_or_else(|| TenantCliError::NoTwin(tenant.account()))?
        };
        let node = NodeApi::connect(node, key.clone(), twin).await?;
        Ok(Self {
            tenant,
            node,
            twin,
            key,
        })
    }

    /// `deploy FILE`: the contract, then the deployment; answers the
    /// contract id once the node admitted it.
    pub async fn deploy(&self, file: &Path) -> Result<u64, TenantCliError> {
        let text = prepare(&read(file)?, self.twin, 0)?;
        let hash = chain_hash(&text)?;
        let node_id = self.node.node_id().await?;
        let contract = self.tenant.create_node_contract(node_id, hash, 0).await?;
        println!("contract {contract} created on node {node_id}");
        let signed = sign(&prepare(&text, self.twin, contract)?, self.twin, &self.key)?;
        if let Err(e) = self
            .node
            .call(Method::POST, "/v1/deployments", signed.as_bytes())
            .await
        {
            // The node will never serve it: the contract is cancelled so it
            // costs nothing further.
            match self.tenant.cancel_contract(contract).await {
                Ok(()) => println!("contract {contract} cancelled again"),
                Err(c) => println!("contract {contract} could not be cancelled: {c}"),
            }
            return Err(e);
        }
        println!("deployment sent to node {node_id}");
        Ok(contract)
    }

    /// `update FILE`: the contract's new hash, then the new version.
    pub async fn update(&self, file: &Path, contract: Option<u64>) -> Result<u64, TenantCliError> {
        let raw = read(file)?;
        let from_file = serde_json::from_str::<Value>(&raw)
            .ok()
            .and_then(|v| v["contract_id"].as_u64())
            .filter(|id| *id > 0);
        let contract = contract.or(from_file).ok_or_else(|| {
            TenantCliError::Deployment(
                "name the contract: contract_id in the file, or --contract".to_owned(),
            )
        })?;
        let old = self
            .tenant
            .contract(contract)
            .await?
            .ok_or(TenantCliError::NoContract(contract))?;
        let text = prepare(&raw, self.twin, contract)?;
        let hash = chain_hash(&text)?;
        self.tenant.update_node_contract(contract, hash).await?;
        let signed = sign(&text, self.twin, &self.key)?;
        if let Err(e) = self
            .node
            .call(
                Method::PUT,
                &format!("/v1/deployments/{contract}"),
                signed.as_bytes(),
            )
            .await
        {
            match self
                .tenant
                .update_node_contract(contract, old.deployment_hash.0)
                .await
            {
                Ok(()) => println!("contract {contract}'s hash set back"),
                Err(c) => println!("contract {contract}'s hash could not be set back: {c}"),
            }
            return Err(e);
        }
        println!("update sent");
        Ok(contract)
    }

    /// Follows contract `id`'s deployment until it settles: `Ok` once
    /// every workload is `ok`, the node's reason when a version failed.
    pub async fn follow(&self, id: u64, wait: Duration) -> Result<DeploymentView, TenantCliError> {
        let until = tokio::time::Instant::now() + wait;
        let mut shown = String::new();
        loop {
            let view = self.node.deployment(id).await?;
            let line = progress(&view);
            if line != shown {
                println!("{line}");
                shown = line;
            }
            match view.state {
                DeploymentState::Ok => return Ok(view),
                DeploymentState::Error | DeploymentState::Unchanged => {
                    let reason = view
                        .failure
                        .as_ref()
                        .map(|f| format!("workload '{}' failed: {}", f.workload, f.message))
                        .unwrap_or_else(|| format!("the deployment is {:?}", view.state));
                    return Err(TenantCliError::Failed(reason));
                }
                DeploymentState::Deleted | DeploymentState::Deleting => {
                    return Err(TenantCliError::Failed(
                        "the deployment was removed (its contract was cancelled)".to_owned(),
                    ));
                }
                DeploymentState::Deploying | DeploymentState::Updating => {}
            }
            if tokio::time::Instant::now() >= until {
                return Err(TenantCliError::Timeout(wait.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A first version that failed leaves nothing on the node: its
    /// contract is cancelled so it costs nothing further.
    pub async fn abandon(&self, id: u64) {
        match self.tenant.cancel_contract(id).await {
            Ok(()) => println!("contract {id} cancelled: nothing of it runs on the node"),
            Err(e) => println!("contract {id} could not be cancelled: {e}"),
        }
    }

    /// `cancel ID`: cancels the contract and follows the node until the
    /// deployment is removed.
    pub async fn cancel(&self, id: u64, wait: Duration) -> Result<(), TenantCliError> {
        self.tenant.cancel_contract(id).await?;
        println!("contract {id} cancelled");
        let until = tokio::time::Instant::now() + wait;
        loop {
            match self.node.deployment(id).await {
                Ok(v) if v.state == DeploymentState::Deleted => {
                    println!("deployment {id} removed from the node");
                    return Ok(());
                }
                Ok(v) => println!("{}", progress(&v)),
                Err(TenantCliError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {
                    println!("the node holds no deployment of contract {id}");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= until {
                return Err(TenantCliError::Timeout(wait.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One line: the deployment's state and each workload's.
pub fn progress(view: &DeploymentView) -> String {
    let state = serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let workloads: Vec<String> = view.deployment["workloads"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|w| {
                    format!(
                        "{}={}",
                        w["name"].as_str().unwrap_or("?"),
                        w["result"]["state"].as_str().unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "contract {} version {}: {state} [{}]",
        view.contract_id,
        view.version,
        workloads.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const BARE: &str = r#"{"version":0,"workloads":[
        {"name":"d","type":"zmount","data":{"size":1073741824}}]}"#;

    #[test]
    fn a_bare_deployment_is_filled_in_for_its_twin_and_the_contract_is_not_in_the_hash() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let first = prepare(BARE, 12, 0).expect("prepared");
        let d = Deployment::parse(first.as_bytes()).expect("parses");
        assert_eq!((d.twin_id, d.contract_id), (12, 0));
        let requests = &d.signature_requirement.requests;
        assert_eq!(requests.len(), 1);
        assert_eq!((requests[0].twin_id, requests[0].required), (12, true));
        let with_contract = prepare(&first, 12, 44).expect("prepared");
        assert_eq!(
            chain_hash(&first).expect("hash"),
            chain_hash(&with_contract).expect("hash")
        );
        let signed = sign(&with_contract, 12, &key).expect("signed");
        let d = Deployment::parse(signed.as_bytes()).expect("parses");
        assert_eq!(d.contract_id, 44);
        let keys: BTreeMap<u32, [u8; 32]> = [(12, key.verifying_key().to_bytes())].into();
        assert_eq!(d.verify(&keys).expect("verifies"), 1);
    }

    #[test]
    fn a_file_that_is_not_a_deployment_is_refused_by_what_is_wrong() {
        assert!(matches!(
            prepare("[1]", 1, 0),
            Err(TenantCliError::Deployment(m)) if m.contains("not a JSON object")
        ));
        assert!(matches!(
            prepare("{", 1, 0),
            Err(TenantCliError::Deployment(m)) if m.contains("not JSON")
        ));
        let unknown = prepare(
            r#"{"version":0,"workloads":[{"name":"x","type":"teleport","data":{}}]}"#,
            1,
            0,
        )
        .expect("prepared");
        assert!(matches!(
            chain_hash(&unknown),
            Err(TenantCliError::Invalid(e)) if e.to_string().contains("teleport")
        ));
    }
}
