//! The embedded registry: TFChain's data model on one machine, for a
//! farm's first steps, the sandbox and the tests. It is not a chain: one
//! process, one JSON state file, no consensus, no fees. `agent registry
//! --listen ADDR --state FILE --farm NAME --farmer ACCOUNT` runs it; one
//! instance serves a whole farm over HTTP.
//!
//! It keeps TFChain's trust model: every write is signed (see
//! [`crate::auth`], target [`crate::auth::REGISTRY`]) by the account it
//! concerns, as an extrinsic is. A twin is created by its account; a node
//! is registered and updated by its twin's account, and its mesh key must
//! be the one derived from that account; uptime is reported by the node's
//! account; a farm is created by its owner, who must be one of the
//! registry's farmers; a node contract is made, updated and cancelled by
//! the account of the twin that owns it, and its resources are reported by
//! its node's account. Entries are checked before they are stored (keys,
//! endpoints, how many interfaces, body size), writes are rate-limited per
//! account, and a replayed write is refused. Every change is written to
//! the state file atomically before it is answered. Limits: as on TFChain,
//! any twin may register a node in any farm; used nonces are kept in
//! memory, so after a restart writes signed before it are refused (the
//! nodes sign again); contracts are never billed, so none enters a grace
//! period, and farms have no public IPs to rent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::{Deserialize, Serialize};

use super::model::{
    ContractResources, ContractResourcesReport, ContractState, DeploymentHash, Farm, Interface,
    MeshInfo, Node, NodeContract, NodeRegistration, Twin, TwinKey, UptimeReport,
};
use crate::auth::{self, AuthError, NonceStore, Presented, Verified};

/// The largest request body the registry reads, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// How many interfaces a node may register.
pub const MAX_INTERFACES: usize = 16;
/// How many addresses one interface, or mesh endpoints one node, may have.
pub const MAX_ADDRESSES: usize = 16;
/// Writes one account may make in a burst, and per second after it.
pub const RATE_BURST: f64 = 30.0;
pub const RATE_PER_SEC: f64 = 5.0;
/// How many contracts one resources report may name.
pub const MAX_RESOURCE_REPORTS: usize = 256;

/// Why the registry refused a request or could not keep its state.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no farm with id {0}")]
    NoFarm(u32),
    #[error("no twin with id {0}")]
    NoTwin(u32),
    #[error("no node with id {0}")]
    NoNode(u32),
    #[error("no contract with id {0}")]
    NoContract(u64),
    #[error("contract {id}: {why}")]
    ContractConflict { id: u64, why: String },
    #[error("bad request: {0}")]
    Bad(String),
    #[error("registry writes must be signed by the account they concern: {0}")]
    Unsigned(#[source] AuthError),
    #[error("{signer} may not {what}")]
    Forbidden { signer: String, what: String },
    #[error("farm name {name:?} is taken by farm {id}")]
    FarmTaken { name: String, id: u32 },
    #[error("too many writes from {0}; try again in a second")]
    RateLimited(String),
    #[error("{0:?} is not an SS58 account; a farmer is an account, never a bare name")]
    NotAnAccount(String),
    #[error("--farm needs --farmer ACCOUNT: who owns the farm")]
    NoFarmer,
    #[error("cannot read the registry state {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Save(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot encode the registry state: {0}")]
    Encode(#[source] serde_json::Error),
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = match &self {
            RegistryError::NoFarm(_)
            | RegistryError::NoTwin(_)
            | RegistryError::NoNode(_)
            | RegistryError::NoContract(_) => StatusCode::NOT_FOUND,
            RegistryError::ContractConflict { .. } => StatusCode::CONFLICT,
            RegistryError::Bad(_) | RegistryError::NotAnAccount(_) | RegistryError::NoFarmer => {
                StatusCode::BAD_REQUEST
            }
            RegistryError::Unsigned(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            RegistryError::Forbidden { .. } => StatusCode::FORBIDDEN,
            RegistryError::FarmTaken { .. } => StatusCode::CONFLICT,
            RegistryError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            RegistryError::Load { .. } | RegistryError::Save(_) | RegistryError::Encode(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// Everything the registry holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    pub twins: BTreeMap<u32, Twin>,
    pub farms: BTreeMap<u32, Farm>,
    pub nodes: BTreeMap<u32, Node>,
    pub uptime: BTreeMap<u32, Vec<UptimeReport>>,
    /// Node contracts by id; a cancelled one stays, `Deleted`.
    #[serde(default)]
    pub contracts: BTreeMap<u64, NodeContract>,
    /// The last resources report per contract.
    #[serde(default)]
    pub contract_resources: BTreeMap<u64, ContractResourcesReport>,
}

/// A token bucket per account.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The registry with its state file.
#[derive(Debug)]
pub struct Embedded {
    path: PathBuf,
    state: Mutex<RegistryState>,
    /// Accounts that may create farms.
    farmers: Vec<String>,
    nonces: NonceStore,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Refuses `what` for node `node` unless `v` is signed by the node's own
/// account.
fn signed_by_node(
    s: &RegistryState,
    v: &Verified,
    node: u32,
    what: &str,
) -> Result<(), RegistryError> {
    let twin = s
        .nodes
        .get(&node)
        .map(|n| n.registration.twin_id)
        .ok_or(RegistryError::NoNode(node))?;
    if twin_account(s, twin)? != v.signer {
        return Err(forbidden(v, format!("{what} for node {node}")));
    }
    Ok(())
}

/// Adds the record `make` builds under the next free id of `map`.
fn insert_next<V: Clone>(map: &mut BTreeMap<u32, V>, make: impl FnOnce(u32) -> V) -> V {
    let id = map.keys().next_back().map_or(1, |k| k + 1);
    let record = make(id);
    map.insert(id, record.clone());
    record
}

fn now() -> u64 {
    crate::clock::unix_ms() / 1000
}

/// The WireGuard public key a node with chain account `account` has.
pub fn wireguard_key_of(account: &str) -> Option<String> {
    auth::account_key(account).map(|k| crate::identity::keys::wireguard_public_key(&k))
}

fn bad(what: impl Into<String>) -> RegistryError {
    RegistryError::Bad(what.into())
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), RegistryError> {
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(bad(format!("{field}: at most {max} printable characters")));
    }
    Ok(())
}

fn check_interface(index: usize, i: &Interface) -> Result<(), RegistryError> {
    if i.name.is_empty() || i.name.len() > 15 || i.name.contains(['/', ' ']) {
        return Err(bad(format!(
            "interfaces[{index}].name {:?} is not an interface name",
            i.name
        )));
    }
    let mac_ok = i.mac.is_empty()
        || (i.mac.len() == 17
            && i.mac.split(':').count() == 6
            && i.mac
                .split(':')
                .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())));
    if !mac_ok {
        return Err(bad(format!(
            "interfaces[{index}].mac {:?} is not a MAC address",
            i.mac
        )));
    }
    if i.ips.len() > MAX_ADDRESSES {
        return Err(bad(format!(
            "interfaces[{index}].ips: at most {MAX_ADDRESSES} addresses"
        )));
    }
    for ip in &i.ips {
        let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "0"));
        let prefix_ok = prefix.parse::<u8>().is_ok_and(|p| p <= 128);
        if addr.parse::<std::net::IpAddr>().is_err() || !prefix_ok {
            return Err(bad(format!(
                "interfaces[{index}].ips: {ip:?} is not an address"
            )));
        }
    }
    Ok(())
}

/// Checks a node's registration and mesh details for the twin `account`.
fn check_node(
    registration: &NodeRegistration,
    mesh: Option<&MeshInfo>,
    account: &str,
) -> Result<(), RegistryError> {
    if registration.interfaces.len() > MAX_INTERFACES {
        return Err(bad(format!(
            "interfaces: at most {MAX_INTERFACES}, not {}",
            registration.interfaces.len()
        )));
    }
    for (index, i) in registration.interfaces.iter().enumerate() {
        check_interface(index, i)?;
    }
    check_text("serial_number", &registration.serial_number, 64)?;
    let Some(mesh) = mesh else {
        return Ok(());
    };
    let expected =
        wireguard_key_of(account).ok_or_else(|| RegistryError::NotAnAccount(account.to_owned()))?;
    if mesh.public_key != expected {
        return Err(bad(format!(
            "mesh.public_key {:?} is not the WireGuard key of account {account} ({expected})",
            mesh.public_key
        )));
    }
    if mesh.endpoints.len() > MAX_ADDRESSES {
        return Err(bad(format!("mesh.endpoints: at most {MAX_ADDRESSES}")));
    }
    for e in &mesh.endpoints {
        let ok = e.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0);
        if !ok {
            return Err(bad(format!("mesh.endpoints: {e:?} is not ip:port")));
        }
    }
    if mesh.public_endpoint && mesh.endpoints.is_empty() {
        return Err(bad("mesh: a public endpoint needs at least one endpoint"));
    }
    Ok(())
}

fn forbidden(v: &Verified, what: String) -> RegistryError {
    RegistryError::Forbidden {
        signer: v.signer.clone(),
        what,
    }
}

fn twin_account(s: &RegistryState, id: u32) -> Result<&str, RegistryError> {
    s.twins
        .get(&id)
        .map(|t| t.account.as_str())
        .ok_or(RegistryError::NoTwin(id))
}

impl Embedded {
    /// Opens the state at `path`, empty if the file does not exist yet;
    /// `farmers` may create farms.
    pub fn open(path: &Path, farmers: &[String]) -> Result<Self, RegistryError> {
        for farmer in farmers {
            if auth::account_key(farmer).is_none() {
                return Err(RegistryError::NotAnAccount(farmer.clone()));
            }
        }
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Load {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryState::default(),
            Err(e) => {
                return Err(RegistryError::Load {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(state),
            farmers: farmers.to_vec(),
            nonces: NonceStore::in_memory(now() as i64),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Applies `change` and saves; nothing changes if saving fails.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut RegistryState) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.clone();
        let out = change(&mut next)?;
        if next != *guard {
            let bytes = serde_json::to_vec(&next).map_err(RegistryError::Encode)?;
            grove_daemon::fsutil::write_atomic(&self.path, &bytes, 0o644)?;
            *guard = next;
        }
        Ok(out)
    }

    pub fn snapshot(&self) -> RegistryState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes one write from `account`'s bucket, at time `now`.
    fn admit(&self, account: &str, now: Instant) -> Result<(), RegistryError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Full buckets carry nothing worth keeping.
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * RATE_PER_SEC < RATE_BURST
            });
        }
        let bucket = buckets.entry(account.to_owned()).or_insert(Bucket {
            tokens: RATE_BURST,
            at: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.at).as_secs_f64() * RATE_PER_SEC)
            .min(RATE_BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(RegistryError::RateLimited(account.to_owned()));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Checks a signed write to `path` with `body`; answers who signed it.
    /// The nonce is spent only once the write is authorized.
    pub fn authenticate(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, RegistryError> {
        let request = auth::Request {
            target: auth::REGISTRY,
            method: "POST",
            path,
            body,
        };
        let verified = auth::verify(request, Presented::from_headers(headers), now() as i64)
            .map_err(RegistryError::Unsigned)?;
        self.admit(&verified.signer, Instant::now())?;
        Ok(verified)
    }

    fn spend(&self, v: &Verified) -> Result<(), RegistryError> {
        self.nonces
            .spend(v, now() as i64)
            .map_err(RegistryError::Unsigned)
    }

    /// The twin of `account`, made if missing. Unsigned: for the registry's
    /// own farmers at start.
    pub fn ensure_twin(&self, account: &str, relay: Option<String>) -> Result<Twin, RegistryError> {
        if auth::account_key(account).is_none() {
            return Err(RegistryError::NotAnAccount(account.to_owned()));
        }
        if let Some(relay) = &relay {
            check_text("relay", relay, 253)?;
        }
        self.change(|s| {
            let known = s.twins.values().find(|t| t.account == account).cloned();
            Ok(known.unwrap_or_else(|| {
                let account = account.to_owned();
                insert_next(&mut s.twins, |id| Twin { id, account, relay })
            }))
        })
    }

    /// `POST /v1/twins`, signed by the twin's account.
    pub fn signed_twin(
        &self,
        v: &Verified,
        account: &str,
        relay: Option<String>,
    ) -> Result<Twin, RegistryError> {
        if v.signer != account {
            return Err(forbidden(v, format!("create the twin of {account}")));
        }
        self.spend(v)?;
        self.ensure_twin(account, relay)
    }

    /// Creates farm `name` owned by `twin_id`. Unsigned: for the registry's
    /// own farmers at start.
    pub fn create_farm(&self, name: &str, twin_id: u32) -> Result<Farm, RegistryError> {
        self.change(|s| Self::farm_in(s, name, twin_id))
    }

    fn farm_in(s: &mut RegistryState, name: &str, twin_id: u32) -> Result<Farm, RegistryError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!(
                "farm name {name:?}: 1 to 64 letters, digits, - or _"
            )));
        }
        if !s.twins.contains_key(&twin_id) {
            return Err(RegistryError::NoTwin(twin_id));
        }
        if let Some(f) = s.farms.values().find(|f| f.name == name) {
            if f.twin_id != twin_id {
                return Err(RegistryError::FarmTaken {
                    name: name.to_owned(),
                    id: f.id,
                });
            }
            return Ok(f.clone());
        }
        Ok(insert_next(&mut s.farms, |id| Farm {
            id,
            name: name.to_owned(),
            twin_id,
        }))
    }

    /// `POST /v1/farms`, signed by the owner, one of the registry's farmers.
    pub fn signed_farm(
        &self,
        v: &Verified,
        name: &str,
        twin_id: u32,
    ) -> Result<Farm, RegistryError> {
        self.change(|s| {
            let owner = twin_account(s, twin_id)?;
            if owner != v.signer {
                return Err(forbidden(v, format!("create a farm for twin {twin_id}")));
            }
            if !self.farmers.contains(&v.signer) {
                return Err(forbidden(
                    v,
                    "create farms: this registry's farmers are given with --farmer".to_owned(),
                ));
            }
            self.spend(v)?;
            Self::farm_in(s, name, twin_id)
        })
    }

    /// Creates the node of `registration.twin_id`, or updates it, signed
    /// by that twin's account.
    pub fn register_node(
        &self,
        v: &Verified,
        registration: NodeRegistration,
        mesh: Option<MeshInfo>,
    ) -> Result<Node, RegistryError> {
        self.change(|s| {
            if !s.farms.contains_key(&registration.farm_id) {
                return Err(RegistryError::NoFarm(registration.farm_id));
            }
            let account = twin_account(s, registration.twin_id)?;
            if account != v.signer {
                return Err(forbidden(
                    v,
                    format!("register the node of twin {}", registration.twin_id),
                ));
            }
            check_node(&registration, mesh.as_ref(), account)?;
            self.spend(v)?;
            let existing = s
                .nodes
                .values()
                .find(|n| n.registration.twin_id == registration.twin_id)
                .map(|n| n.id);
            let id = existing.unwrap_or_else(|| s.nodes.keys().next_back().map_or(1, |k| k + 1));
            let created_at = s.nodes.get(&id).map_or_else(now, |n| n.created_at);
            let node = Node {
                id,
                registration,
                mesh,
                created_at,
                updated_at: now(),
            };
            if s.nodes.get(&id).map(|n| (&n.registration, &n.mesh))
                != Some((&node.registration, &node.mesh))
            {
                s.nodes.insert(id, node);
            }
            s.nodes.get(&id).cloned().ok_or(RegistryError::NoNode(id))
        })
    }

    /// Records an uptime report signed by the node's account; a sequence
    /// number already seen is a no-op.
    pub fn report_uptime(
        &self,
        v: &Verified,
        node: u32,
        report: UptimeReport,
    ) -> Result<bool, RegistryError> {
        self.change(|s| {
            signed_by_node(s, v, node, "report uptime")?;
            self.spend(v)?;
            let reports = s.uptime.entry(node).or_default();
            if reports.last().is_some_and(|r| r.seq >= report.seq) {
                return Ok(false);
            }
            reports.push(report);
            Ok(true)
        })
    }
}

impl Embedded {
    /// `POST /v1/contracts`: twin `twin_id` makes a node contract on
    /// `node_id` for a deployment with hash `hash`, signed by the twin's
    /// account. As on TFChain, a node holds at most one active contract
    /// per hash.
    pub fn create_contract(
        &self,
        v: &Verified,
        request: &ContractRequest,
    ) -> Result<NodeContract, RegistryError> {
        let hash = DeploymentHash::parse(&request.deployment_hash).map_err(RegistryError::Bad)?;
        self.change(|s| {
            let owner = twin_account(s, request.twin_id)?;
            if owner != v.signer {
                return Err(forbidden(
                    v,
                    format!("make a contract for twin {}", request.twin_id),
                ));
            }
            let node = s
                .nodes
                .get(&request.node_id)
                .ok_or(RegistryError::NoNode(request.node_id))?;
            if request.public_ips > 0 {
                return Err(bad(format!(
                    "public_ips: farm {} has no public IPs on this registry; ask for 0",
                    node.registration.farm_id
                )));
            }
            if let Some(c) = active_with_hash(s, request.node_id, &hash) {
                return Err(RegistryError::ContractConflict {
                    id: c,
                    why: format!(
                        "node {} already has this active contract for hash {hash}",
                        request.node_id
                    ),
                });
            }
            self.spend(v)?;
            let contract_id = s.contracts.keys().next_back().map_or(1, |k| k + 1);
            let contract = NodeContract {
                contract_id,
                node_id: request.node_id,
                twin_id: request.twin_id,
                deployment_hash: hash,
                public_ips: request.public_ips,
                state: ContractState::Created,
            };
            s.contracts.insert(contract_id, contract.clone());
            Ok(contract)
        })
    }

    /// The contract `id` and its owner's account, for a write by `v`.
    fn owned<'a>(
        s: &'a RegistryState,
        v: &Verified,
        id: u64,
        what: &str,
    ) -> Result<&'a NodeContract, RegistryError> {
        let contract = s.contracts.get(&id).ok_or(RegistryError::NoContract(id))?;
        if twin_account(s, contract.twin_id)? != v.signer {
            return Err(forbidden(
                v,
                format!("{what} contract {id}: it is twin {}'s", contract.twin_id),
            ));
        }
        Ok(contract)
    }

    /// `POST /v1/contracts/{id}`: the owner sets a new deployment hash.
    /// As on TFChain only a contract in state Created is updated.
    pub fn update_contract(
        &self,
        v: &Verified,
        id: u64,
        request: &ContractUpdate,
    ) -> Result<NodeContract, RegistryError> {
        let hash = DeploymentHash::parse(&request.deployment_hash).map_err(RegistryError::Bad)?;
        self.change(|s| {
            let contract = Self::owned(s, v, id, "update")?.clone();
            if contract.state != ContractState::Created {
                return Err(RegistryError::ContractConflict {
                    id,
                    why: format!(
                        "is {}: only a contract in state Created is updated",
                        contract.state.as_str()
                    ),
                });
            }
            if let Some(other) = active_with_hash(s, contract.node_id, &hash)
                && other != id
            {
                return Err(RegistryError::ContractConflict {
                    id,
                    why: format!(
                        "node {} already has active contract {other} for hash {hash}",
                        contract.node_id
                    ),
                });
            }
            self.spend(v)?;
            let updated = NodeContract {
                deployment_hash: hash,
                ..contract
            };
            s.contracts.insert(id, updated.clone());
            Ok(updated)
        })
    }

    /// `POST /v1/contracts/{id}/cancel`: the owner cancels; the contract
    /// turns `Deleted` (TFChain's `NodeContractCanceled`). Cancelling a
    /// cancelled contract changes nothing and answers it.
    pub fn cancel_contract(&self, v: &Verified, id: u64) -> Result<NodeContract, RegistryError> {
        self.change(|s| {
            let contract = Self::owned(s, v, id, "cancel")?.clone();
            self.spend(v)?;
            let cancelled = NodeContract {
                state: ContractState::Deleted,
                ..contract
            };
            s.contracts.insert(id, cancelled.clone());
            Ok(cancelled)
        })
    }

    /// `POST /v1/nodes/{node}/contracts/resources`, signed by the node's
    /// account: the last report per contract is kept. As on TFChain, a
    /// contract that is not (or no longer) there is skipped, and one on
    /// another node is refused; answers how many were stored.
    pub fn report_contract_resources(
        &self,
        v: &Verified,
        node: u32,
        reports: &[ContractResources],
    ) -> Result<usize, RegistryError> {
        if reports.len() > MAX_RESOURCE_REPORTS {
            return Err(bad(format!(
                "at most {MAX_RESOURCE_REPORTS} contracts per report"
            )));
        }
        self.change(|s| {
            signed_by_node(s, v, node, "report contract resources")?;
            for r in reports {
                if let Some(c) = s.contracts.get(&r.contract_id)
                    && c.node_id != node
                {
                    return Err(forbidden(
                        v,
                        format!(
                            "report resources of contract {} of node {}",
                            r.contract_id, c.node_id
                        ),
                    ));
                }
            }
            self.spend(v)?;
            let mut stored = 0;
            for r in reports {
                let active = s
                    .contracts
                    .get(&r.contract_id)
                    .is_some_and(|c| c.state.is_active());
                if active {
                    s.contract_resources.insert(
                        r.contract_id,
                        ContractResourcesReport {
                            node_id: node,
                            used: r.used,
                            at: now(),
                        },
                    );
                    stored += 1;
                }
            }
            Ok(stored)
        })
    }
}

/// The active contract on `node` with `hash`, if any.
fn active_with_hash(s: &RegistryState, node: u32, hash: &DeploymentHash) -> Option<u64> {
    s.contracts
        .values()
        .find(|c| c.node_id == node && c.deployment_hash == *hash && c.state.is_active())
        .map(|c| c.contract_id)
}

/// Body of `POST /v1/contracts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractRequest {
    pub twin_id: u32,
    pub node_id: u32,
    /// 32 lowercase hex characters.
    pub deployment_hash: String,
    pub public_ips: u32,
}

/// Body of `POST /v1/contracts/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractUpdate {
    pub deployment_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwinRequest {
    account: String,
    relay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FarmRequest {
    name: String,
    twin_id: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    #[serde(flatten)]
    pub registration: NodeRegistration,
    pub mesh: Option<MeshInfo>,
}

#[derive(Debug, Deserialize)]
struct NodeQuery {
    farm_id: Option<u32>,
    twin_id: Option<u32>,
}

type Shared = Arc<Embedded>;

/// `GET /v1/twins/{id}`: the twin and its account key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwinView {
    #[serde(flatten)]
    pub twin: Twin,
    /// Hex of the account's 32-byte public key; `null` for a twin whose
    /// account is not one (a state file edited by hand).
    pub account_key: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
}

/// Runs one signed write off the async workers: it fsyncs.
async fn write<T: Send + 'static>(
    registry: Shared,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    apply: impl FnOnce(&Embedded, &Verified, &[u8]) -> Result<T, RegistryError> + Send + 'static,
) -> Result<Json<T>, RegistryError> {
    tokio::task::spawn_blocking(move || {
        let verified = registry.authenticate(&path, &headers, &body)?;
        apply(&registry, &verified, &body)
    })
    .await
    .unwrap_or_else(|e| Err(bad(format!("the write did not finish: {e}"))))
    .map(Json)
}

/// A signed write at the fixed `path`: `apply` gets the body.
fn signed<T: Serialize + Send + 'static>(
    path: &'static str,
    apply: fn(&Embedded, &Verified, &[u8]) -> Result<T, RegistryError>,
) -> MethodRouter<Shared> {
    post(
        move |State(r): State<Shared>, headers: HeaderMap, body: Bytes| async move {
            write(r, path.into(), headers, body, apply).await
        },
    )
}

/// A signed write on the object `id` names, at `{prefix}/{id}{suffix}`:
/// the path signed is the one made from the parsed id.
fn signed_on<Id, T>(
    prefix: &'static str,
    suffix: &'static str,
    apply: fn(&Embedded, &Verified, Id, &[u8]) -> Result<T, RegistryError>,
) -> MethodRouter<Shared>
where
    Id: serde::de::DeserializeOwned + std::fmt::Display + Copy + Send + 'static,
    T: Serialize + Send + 'static,
{
    post(
        move |State(r): State<Shared>,
              UrlPath(id): UrlPath<Id>,
              headers: HeaderMap,
              body: Bytes| async move {
            let path = format!("{prefix}/{id}{suffix}");
            write(r, path, headers, body, move |r, v, body| {
                apply(r, v, id, body)
            })
            .await
        },
    )
}

/// A read of the one object `id` names; `missing` when there is none.
fn one<Id, V>(
    pick: fn(&RegistryState, Id) -> Option<V>,
    missing: fn(Id) -> RegistryError,
) -> MethodRouter<Shared>
where
    Id: serde::de::DeserializeOwned + Copy + Send + 'static,
    V: Serialize + Send + 'static,
{
    get(
        move |State(r): State<Shared>, UrlPath(id): UrlPath<Id>| async move {
            pick(&r.snapshot(), id).map(Json).ok_or_else(|| missing(id))
        },
    )
}

pub fn routes(registry: Shared) -> Router {
    Router::new()
        .route(
            "/v1/twins",
            signed("/v1/twins", |r, v, body| {
                let t: TwinRequest = parse(body)?;
                r.signed_twin(v, &t.account, t.relay)
            })
            .get(|State(r): State<Shared>| async move {
                Json(r.snapshot().twins.into_values().collect::<Vec<Twin>>())
            }),
        )
        .route(
            "/v1/twins/{id}",
            get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    let twin = r
                        .snapshot()
                        .twins
                        .get(&id)
                        .cloned()
                        .ok_or(RegistryError::NoTwin(id))?;
                    let account_key = TwinKey::of(&twin).map(|k| k.account_key);
                    Ok::<_, RegistryError>(Json(TwinView { twin, account_key }))
                },
            ),
        )
        .route(
            "/v1/contracts",
            signed("/v1/contracts", |r, v, body| {
                r.create_contract(v, &parse::<ContractRequest>(body)?)
            }),
        )
        .route(
            "/v1/contracts/{id}",
            signed_on("/v1/contracts", "", |r, v, id, body| {
                r.update_contract(v, id, &parse::<ContractUpdate>(body)?)
            })
            .merge(one(
                |s, id| s.contracts.get(&id).cloned(),
                RegistryError::NoContract,
            )),
        )
        .route(
            "/v1/contracts/{id}/cancel",
            signed_on("/v1/contracts", "/cancel", |r, v, id, _| {
                r.cancel_contract(v, id)
            }),
        )
        .route(
            "/v1/contracts/{id}/resources",
            one(
                |s, id| s.contract_resources.get(&id).copied(),
                RegistryError::NoContract,
            ),
        )
        .route(
            "/v1/nodes/{id}/contracts",
            get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    let s = r.snapshot();
                    if !s.nodes.contains_key(&id) {
                        return Err(RegistryError::NoNode(id));
                    }
                    Ok(Json(
                        s.contracts
                            .into_values()
                            .filter(|c| c.node_id == id && c.state.is_active())
                            .collect::<Vec<NodeContract>>(),
                    ))
                },
            ),
        )
        .route(
            "/v1/nodes/{id}/contracts/resources",
            signed_on("/v1/nodes", "/contracts/resources", |r, v, id, body| {
                let reports: Vec<ContractResources> = parse(body)?;
                r.report_contract_resources(v, id, &reports)
            }),
        )
        .route(
            "/v1/farms",
            signed("/v1/farms", |r, v, body| {
                let f: FarmRequest = parse(body)?;
                r.signed_farm(v, &f.name, f.twin_id)
            }),
        )
        .route(
            "/v1/farms/{id}",
            one(|s, id| s.farms.get(&id).cloned(), RegistryError::NoFarm),
        )
        .route(
            "/v1/nodes",
            signed("/v1/nodes", |r, v, body| {
                let n: NodeRequest = parse(body)?;
                r.register_node(v, n.registration, n.mesh)
            })
            .get(
                |State(r): State<Shared>, Query(q): Query<NodeQuery>| async move {
                    let nodes: Vec<Node> = r
                        .snapshot()
                        .nodes
                        .into_values()
                        .filter(|n| q.farm_id.is_none_or(|f| n.registration.farm_id == f))
                        .filter(|n| q.twin_id.is_none_or(|t| n.registration.twin_id == t))
                        .collect();
                    Json(nodes)
                },
            ),
        )
        .route(
            "/v1/nodes/{id}",
            one(|s, id| s.nodes.get(&id).cloned(), RegistryError::NoNode),
        )
        .route(
            "/v1/nodes/{id}/uptime",
            signed_on("/v1/nodes", "/uptime", |r, v, id, body| {
                r.report_uptime(v, id, parse::<UptimeReport>(body)?)
            })
            .get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    Json(r.snapshot().uptime.get(&id).cloned().unwrap_or_default())
                },
            ),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(registry)
}

/// Serves the registry on `listen` until `shutdown` trips. The farms
/// named in `farms` are made, owned by the first of `farmers`.
pub async fn serve(
    state: &Path,
    listen: SocketAddr,
    farms: &[String],
    farmers: &[String],
    shutdown: grove_daemon::shutdown::Shutdown,
) -> Result<(), ServeError> {
    // Opening the state and making the farms write files: off the async
    // workers.
    let (path, farms, farmers) = (state.to_owned(), farms.to_vec(), farmers.to_vec());
    let registry = tokio::task::spawn_blocking(move || {
        let registry = Embedded::open(&path, &farmers)?;
        if !farms.is_empty() {
            let account = farmers.first().ok_or(RegistryError::NoFarmer)?;
            let owner = registry.ensure_twin(account, None)?;
            for name in &farms {
                let farm = registry.create_farm(name, owner.id)?;
                tracing::info!(farm = farm.id, name = %farm.name, owner = %account, "farm ready");
            }
        }
        Ok::<_, RegistryError>(registry)
    })
    .await??;
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, state = %state.display(), "embedded registry serving");
    axum::serve(listener, routes(registry))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })
}

/// Why the registry could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("opening the registry's state failed: {0}")]
    Open(#[from] tokio::task::JoinError),
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl grove_daemon::cli::Failure for ServeError {
    fn is_config(&self) -> bool {
        matches!(
            self,
            ServeError::Registry(RegistryError::NotAnAccount(_) | RegistryError::NoFarmer)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::{account, key};
    use crate::registry::model::Resources;
    use ed25519_dalek::SigningKey;

    fn registration(farm_id: u32, twin_id: u32) -> NodeRegistration {
        NodeRegistration {
            farm_id,
            twin_id,
            resources: Resources {
                hru: 1,
                sru: 2,
                cru: 3,
                mru: 4,
            },
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                ips: vec!["10.0.0.5/24".into()],
            }],
            serial_number: "S1".into(),
            virtualized: true,
            secure_boot: false,
        }
    }

    fn mesh(k: &SigningKey) -> MeshInfo {
        MeshInfo {
            public_key: crate::identity::keys::wireguard_public_key(&k.verifying_key()),
            endpoints: vec!["10.0.0.5:51820".into()],
            public_endpoint: true,
        }
    }

    fn headers(k: &SigningKey, path: &str, body: &[u8]) -> HeaderMap {
        let nonce = crate::auth::nonce().expect("nonce");
        let mut map = HeaderMap::new();
        let signed = auth::sign(
            k,
            auth::Request {
                target: auth::REGISTRY,
                method: "POST",
                path,
                body,
            },
            now() as i64,
            &nonce,
        );
        for (name, value) in signed {
            map.insert(name, value.parse().expect("a header value"));
        }
        map
    }

    /// Signs `body` for `path` with `k` and has the registry check it.
    fn signed(r: &Embedded, k: &SigningKey, path: &str, body: &[u8]) -> Verified {
        r.authenticate(path, &headers(k, path, body), body)
            .expect("a signed write")
    }

    struct Farmed {
        _dir: tempfile::TempDir,
        path: PathBuf,
        r: Embedded,
        farm: Farm,
    }

    fn farmed(farmer: &SigningKey) -> Farmed {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let r = Embedded::open(&path, &[account(farmer)]).expect("open");
        let owner = r.ensure_twin(&account(farmer), None).expect("twin");
        let farm = r.create_farm("farm-one", owner.id).expect("farm");
        Farmed {
            _dir: dir,
            path,
            r,
            farm,
        }
    }

    fn twin_of(r: &Embedded, k: &SigningKey) -> Twin {
        let v = signed(r, k, "/v1/twins", b"t");
        r.signed_twin(&v, &account(k), None).expect("twin")
    }

    fn node_of(r: &Embedded, k: &SigningKey, farm: u32) -> Node {
        let twin = twin_of(r, k);
        let v = signed(r, k, "/v1/nodes", b"n");
        r.register_node(&v, registration(farm, twin.id), Some(mesh(k)))
            .expect("node")
    }

    fn uptime(seq: u64) -> UptimeReport {
        UptimeReport {
            seq,
            uptime: 10,
            timestamp: 100,
        }
    }

    #[test]
    fn registering_twice_updates_and_state_survives_a_restart() {
        let (farmer, node_key) = (key(1), key(2));
        let f = farmed(&farmer);
        let node = node_of(&f.r, &node_key, f.farm.id);
        assert_eq!(twin_of(&f.r, &node_key).id, node.registration.twin_id);
        let mut changed = registration(f.farm.id, node.registration.twin_id);
        changed.resources.sru = 99;
        let v = signed(&f.r, &node_key, "/v1/nodes", b"update");
        let again = f.r.register_node(&v, changed, None).expect("update");
        assert_eq!(again.id, node.id);
        assert_eq!(again.registration.resources.sru, 99);
        let path = format!("/v1/nodes/{}/uptime", node.id);
        let v = signed(&f.r, &node_key, &path, b"1");
        assert!(f.r.report_uptime(&v, node.id, uptime(1)).expect("up"));
        let v = signed(&f.r, &node_key, &path, b"1 again");
        assert!(!f.r.report_uptime(&v, node.id, uptime(1)).expect("dup"));
        let Farmed { path, r, .. } = f;
        drop(r);
        let reopened = Embedded::open(&path, &[]).expect("reopen");
        let s = reopened.snapshot();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.uptime[&node.id].len(), 1);
    }

    #[test]
    fn no_one_writes_for_another_account_and_refused_writes_change_nothing() {
        let (farmer, victim, attacker) = (key(1), key(2), key(3));
        let f = farmed(&farmer);
        let node = node_of(&f.r, &victim, f.farm.id);
        let attacker_twin = twin_of(&f.r, &attacker);
        let before = f.r.snapshot();

        // Unsigned, and signed for another path or body.
        let e =
            f.r.authenticate("/v1/nodes", &HeaderMap::new(), b"x")
                .expect_err("unsigned");
        assert!(
            matches!(e, RegistryError::Unsigned(AuthError::Missing(_))),
            "{e}"
        );
        let e =
            f.r.authenticate("/v1/nodes", &headers(&attacker, "/v1/nodes", b"x"), b"y")
                .expect_err("changed body");
        assert!(
            matches!(e, RegistryError::Unsigned(AuthError::BadSignature)),
            "{e}"
        );

        // Overwrite the victim's node, with the attacker's key.
        let mut hijack = registration(f.farm.id, node.registration.twin_id);
        hijack.interfaces.clear();
        let v = signed(&f.r, &attacker, "/v1/nodes", b"hijack");
        let e =
            f.r.register_node(&v, hijack, Some(mesh(&attacker)))
                .expect_err("another's node");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");

        // Join with a mesh key that is not the account's.
        let v = signed(&f.r, &attacker, "/v1/nodes", b"join");
        let e =
            f.r.register_node(
                &v,
                registration(f.farm.id, attacker_twin.id),
                Some(mesh(&victim)),
            )
            .expect_err("a key not its own");
        assert!(e.to_string().contains("is not the WireGuard key"), "{e}");

        // Forge the victim's uptime.
        let path = format!("/v1/nodes/{}/uptime", node.id);
        let v = signed(&f.r, &attacker, &path, b"forged");
        let e =
            f.r.report_uptime(&v, node.id, uptime(u64::MAX))
                .expect_err("forged uptime");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");

        // Squat the farm's name, or make a farm without being a farmer.
        let v = signed(&f.r, &attacker, "/v1/farms", b"squat");
        let e =
            f.r.signed_farm(&v, "farm-one", attacker_twin.id)
                .expect_err("not a farmer");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        let v = signed(&f.r, &attacker, "/v1/farms", b"claim");
        let e =
            f.r.signed_farm(&v, "farm-one", before.farms[&f.farm.id].twin_id)
                .expect_err("the farmer's twin");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        // A twin for another account.
        let v = signed(&f.r, &attacker, "/v1/twins", b"twin");
        let e =
            f.r.signed_twin(&v, &account(&key(9)), None)
                .expect_err("another's twin");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");

        // Malformed entries, signed by the right account.
        let bad_entries: Vec<(NodeRegistration, Option<MeshInfo>, &str)> = vec![
            (
                NodeRegistration {
                    interfaces: vec![registration(1, 1).interfaces[0].clone(); MAX_INTERFACES + 1],
                    ..registration(f.farm.id, attacker_twin.id)
                },
                None,
                "interfaces: at most",
            ),
            (
                NodeRegistration {
                    interfaces: vec![Interface {
                        name: "eth0/../x".into(),
                        mac: String::new(),
                        ips: vec![],
                    }],
                    ..registration(f.farm.id, attacker_twin.id)
                },
                None,
                "not an interface name",
            ),
            (
                registration(f.farm.id, attacker_twin.id),
                Some(MeshInfo {
                    public_key: "not a key".into(),
                    ..mesh(&attacker)
                }),
                "is not the WireGuard key",
            ),
            (
                registration(f.farm.id, attacker_twin.id),
                Some(MeshInfo {
                    endpoints: vec!["host:1".into()],
                    ..mesh(&attacker)
                }),
                "is not ip:port",
            ),
        ];
        for (reg, m, why) in bad_entries {
            let v = signed(&f.r, &attacker, "/v1/nodes", why.as_bytes());
            let e = f.r.register_node(&v, reg, m).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        let mut expected = before.clone();
        expected.twins = f.r.snapshot().twins;
        assert_eq!(
            f.r.snapshot(),
            expected,
            "a refused write changed the registry"
        );
        assert_eq!(f.r.snapshot().twins, before.twins);
    }

    #[test]
    fn a_replayed_write_is_refused_and_writes_are_rate_limited() {
        let (farmer, node_key) = (key(1), key(2));
        let f = farmed(&farmer);
        let node = node_of(&f.r, &node_key, f.farm.id);
        let path = format!("/v1/nodes/{}/uptime", node.id);
        let body = b"{}";
        let h = headers(&node_key, &path, body);
        let v = f.r.authenticate(&path, &h, body).expect("signed");
        assert!(f.r.report_uptime(&v, node.id, uptime(5)).expect("first"));
        let v =
            f.r.authenticate(&path, &h, body)
                .expect("the signature still verifies");
        let e =
            f.r.report_uptime(&v, node.id, uptime(5))
                .expect_err("replay");
        assert!(
            matches!(e, RegistryError::Unsigned(AuthError::Replay(_))),
            "{e}"
        );

        // A burst, then the refill rate; each account has its own bucket.
        let stranger = account(&key(4));
        let t0 = Instant::now();
        for i in 0..RATE_BURST as usize {
            assert!(f.r.admit(&stranger, t0).is_ok(), "write {i} of the burst");
        }
        assert!(matches!(
            f.r.admit(&stranger, t0),
            Err(RegistryError::RateLimited(who)) if who == stranger
        ));
        let later = t0 + std::time::Duration::from_secs(1);
        for i in 0..RATE_PER_SEC as usize {
            assert!(
                f.r.admit(&stranger, later).is_ok(),
                "write {i} a second later"
            );
        }
        assert!(f.r.admit(&stranger, later).is_err());
        // Another account is not held back by the stranger's writes.
        signed(&f.r, &node_key, "/v1/twins", b"t");
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef";
    const HASH2: &str = "fedcba9876543210fedcba9876543210";

    fn contract_request(twin_id: u32, node_id: u32, hash: &str) -> ContractRequest {
        ContractRequest {
            twin_id,
            node_id,
            deployment_hash: hash.to_owned(),
            public_ips: 0,
        }
    }

    /// Makes a contract of `tenant` on `node`, signed by `tenant`.
    fn contract_of(r: &Embedded, tenant: &SigningKey, node: u32, hash: &str) -> NodeContract {
        let twin = twin_of(r, tenant);
        let v = signed(r, tenant, "/v1/contracts", hash.as_bytes());
        r.create_contract(&v, &contract_request(twin.id, node, hash))
            .expect("contract")
    }

    #[test]
    fn a_twin_makes_updates_and_cancels_its_contract_and_it_survives_a_restart() {
        let (farmer, node_key, tenant) = (key(1), key(2), key(5));
        let f = farmed(&farmer);
        let node = node_of(&f.r, &node_key, f.farm.id);
        let c = contract_of(&f.r, &tenant, node.id, HASH);
        assert_eq!(c.contract_id, 1);
        assert_eq!(c.node_id, node.id);
        assert_eq!(c.twin_id, twin_of(&f.r, &tenant).id);
        assert_eq!(c.deployment_hash.to_string(), HASH);
        assert_eq!(&c.deployment_hash.0, HASH.as_bytes());
        assert_eq!(c.state, ContractState::Created);
        assert_eq!(f.r.snapshot().contracts[&1], c);

        let path = "/v1/contracts/1";
        let v = signed(&f.r, &tenant, path, b"u");
        let updated =
            f.r.update_contract(
                &v,
                1,
                &ContractUpdate {
                    deployment_hash: HASH2.into(),
                },
            )
            .expect("update");
        assert_eq!(updated.deployment_hash.to_string(), HASH2);
        assert_eq!(updated.state, ContractState::Created);

        // The node reports what the contract uses; the last report is kept.
        let used = |cru| ContractResources {
            contract_id: 1,
            used: crate::registry::model::Resources {
                cru,
                ..Default::default()
            },
        };
        let rpath = format!("/v1/nodes/{}/contracts/resources", node.id);
        for cru in [1, 2] {
            let v = signed(&f.r, &node_key, &rpath, &[cru as u8]);
            assert_eq!(
                f.r.report_contract_resources(&v, node.id, &[used(cru)])
                    .expect("report"),
                1
            );
        }
        assert_eq!(f.r.snapshot().contract_resources[&1].used.cru, 2);

        let v = signed(&f.r, &tenant, "/v1/contracts/1/cancel", b"c");
        let cancelled = f.r.cancel_contract(&v, 1).expect("cancel");
        assert_eq!(cancelled.state, ContractState::Deleted);
        assert_eq!(cancelled.deployment_hash.to_string(), HASH2);
        // Cancelling again answers the same and changes nothing.
        let before = f.r.snapshot();
        let v = signed(&f.r, &tenant, "/v1/contracts/1/cancel", b"c2");
        assert_eq!(f.r.cancel_contract(&v, 1).expect("again"), cancelled);
        assert_eq!(f.r.snapshot(), before);
        // A report for a cancelled contract is skipped, as on TFChain.
        let v = signed(&f.r, &node_key, &rpath, b"late");
        assert_eq!(
            f.r.report_contract_resources(&v, node.id, &[used(9)])
                .expect("report"),
            0
        );
        // A new contract gets a new id, never the cancelled one's; the
        // cancelled contract's hash may be used again.
        let again = contract_of(&f.r, &tenant, node.id, HASH2);
        assert_eq!(again.contract_id, 2);

        let Farmed { path, r, .. } = f;
        let kept = r.snapshot();
        drop(r);
        let reopened = Embedded::open(&path, &[]).expect("reopen");
        assert_eq!(reopened.snapshot(), kept, "the state survives a restart");
        assert_eq!(
            reopened.snapshot().contracts[&1].state,
            ContractState::Deleted
        );
        assert_eq!(reopened.snapshot().contract_resources[&1].used.cru, 2);
    }

    #[test]
    fn a_state_file_from_before_contracts_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, br#"{"twins":{},"farms":{},"nodes":{},"uptime":{}}"#).unwrap();
        let r = Embedded::open(&path, &[]).expect("open");
        assert!(r.snapshot().contracts.is_empty());
    }

    #[test]
    fn contract_writes_by_anyone_but_the_owner_or_with_bad_input_change_nothing() {
        let (farmer, node_key, tenant, stranger) = (key(1), key(2), key(5), key(6));
        let f = farmed(&farmer);
        let node = node_of(&f.r, &node_key, f.farm.id);
        let other_node = node_of(&f.r, &key(7), f.farm.id);
        let c = contract_of(&f.r, &tenant, node.id, HASH);
        let tenant_twin = twin_of(&f.r, &tenant);
        let stranger_twin = twin_of(&f.r, &stranger);
        let mine = contract_of(&f.r, &stranger, node.id, HASH2);
        let v = signed(&f.r, &tenant, "/v1/contracts/9/cancel", b"x");
        let before = f.r.snapshot();

        // A stranger makes a contract in the tenant's name.
        let v2 = signed(&f.r, &stranger, "/v1/contracts", b"1");
        let e =
            f.r.create_contract(&v2, &contract_request(tenant_twin.id, node.id, HASH2))
                .expect_err("for another twin");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        // Unknown twin, unknown node, bad hashes, public IPs.
        let bad_creates: Vec<(ContractRequest, &str)> = vec![
            (contract_request(99, node.id, HASH2), "no twin with id 99"),
            (
                contract_request(stranger_twin.id, 77, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                "no node with id 77",
            ),
            (
                contract_request(stranger_twin.id, node.id, "0123456789abcdef"),
                "not 16 characters",
            ),
            (
                contract_request(
                    stranger_twin.id,
                    node.id,
                    "0123456789ABCDEF0123456789ABCDEF",
                ),
                "32 lowercase hex characters (0-9, a-f)",
            ),
            (
                contract_request(
                    stranger_twin.id,
                    node.id,
                    "0123456789abcdef0123456789abcdeg",
                ),
                "32 lowercase hex characters (0-9, a-f)",
            ),
            (
                ContractRequest {
                    public_ips: 1,
                    ..contract_request(
                        stranger_twin.id,
                        node.id,
                        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    )
                },
                "has no public IPs",
            ),
            (
                contract_request(stranger_twin.id, node.id, HASH),
                "already has this active contract",
            ),
        ];
        for (request, why) in bad_creates {
            let v = signed(&f.r, &stranger, "/v1/contracts", why.as_bytes());
            let e = f.r.create_contract(&v, &request).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }

        // Update or cancel another twin's contract; a contract of another
        // node's... the owner is what counts, whoever signs.
        let update = |hash: &str| ContractUpdate {
            deployment_hash: hash.to_owned(),
        };
        for signer in [&stranger, &node_key, &farmer] {
            let v = signed(&f.r, signer, "/v1/contracts/1", b"u");
            let e =
                f.r.update_contract(
                    &v,
                    c.contract_id,
                    &update("cccccccccccccccccccccccccccccccc"),
                )
                .expect_err("not the owner");
            assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
            let v = signed(&f.r, signer, "/v1/contracts/1/cancel", b"c");
            let e =
                f.r.cancel_contract(&v, c.contract_id)
                    .expect_err("not the owner");
            assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        }
        // The tenant on another twin's contract.
        let v3 = signed(&f.r, &tenant, "/v1/contracts/2/cancel", b"c");
        let e =
            f.r.cancel_contract(&v3, mine.contract_id)
                .expect_err("another twin's");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        // Unknown contract, bad hash, and a hash another active contract
        // on the node holds.
        let e = f.r.cancel_contract(&v, 9).expect_err("unknown");
        assert!(matches!(e, RegistryError::NoContract(9)), "{e}");
        for (hash, why) in [
            ("xyz", "not 3 characters"),
            (HASH2, "already has active contract 2"),
        ] {
            let v = signed(&f.r, &tenant, "/v1/contracts/1", why.as_bytes());
            let e =
                f.r.update_contract(&v, c.contract_id, &update(hash))
                    .expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        // Resources: by a stranger, for another node's contract, for an
        // unknown node.
        let used = |contract_id| ContractResources {
            contract_id,
            used: crate::registry::model::Resources::default(),
        };
        let rpath = format!("/v1/nodes/{}/contracts/resources", node.id);
        let v4 = signed(&f.r, &stranger, &rpath, b"r");
        let e =
            f.r.report_contract_resources(&v4, node.id, &[used(1)])
                .expect_err("stranger");
        assert!(matches!(e, RegistryError::Forbidden { .. }), "{e}");
        let opath = format!("/v1/nodes/{}/contracts/resources", other_node.id);
        let v5 = signed(&f.r, &key(7), &opath, b"r");
        let e =
            f.r.report_contract_resources(&v5, other_node.id, &[used(1)])
                .expect_err("another node's contract");
        assert!(e.to_string().contains("of node"), "{e}");
        let v6 = signed(&f.r, &node_key, "/v1/nodes/55/contracts/resources", b"r");
        let e =
            f.r.report_contract_resources(&v6, 55, &[used(1)])
                .expect_err("no node");
        assert!(matches!(e, RegistryError::NoNode(55)), "{e}");

        assert_eq!(
            f.r.snapshot(),
            before,
            "a refused write changed the registry"
        );

        // A replayed cancel: the first one takes, the replay is refused.
        let path = "/v1/contracts/1/cancel";
        let h = headers(&tenant, path, b"{}");
        let v = f.r.authenticate(path, &h, b"{}").expect("signed");
        f.r.cancel_contract(&v, c.contract_id).expect("cancel");
        let after = f.r.snapshot();
        let v = f.r.authenticate(path, &h, b"{}").expect("still verifies");
        let e = f.r.cancel_contract(&v, c.contract_id).expect_err("replay");
        assert!(
            matches!(e, RegistryError::Unsigned(AuthError::Replay(_))),
            "{e}"
        );
        // A cancelled contract is not updated.
        let v = signed(&f.r, &tenant, "/v1/contracts/1", b"late");
        let e =
            f.r.update_contract(
                &v,
                c.contract_id,
                &update("dddddddddddddddddddddddddddddddd"),
            )
            .expect_err("cancelled");
        assert!(e.to_string().contains("is Deleted"), "{e}");
        assert!(matches!(e, RegistryError::ContractConflict { .. }), "{e}");
        assert_eq!(f.r.snapshot(), after);
    }

    #[test]
    fn a_farmer_is_an_account_never_a_bare_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(&dir.path().join("r.json"), &["farmer-1".to_owned()])
            .expect_err("a bare name");
        assert!(matches!(e, RegistryError::NotAnAccount(_)), "{e}");
        let r = Embedded::open(&dir.path().join("r.json"), &[]).expect("open");
        assert!(matches!(
            r.ensure_twin("farmer-1", None),
            Err(RegistryError::NotAnAccount(_))
        ));
    }
}
