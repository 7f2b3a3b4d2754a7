//! The node on a live TFChain: its twin, its node, its uptime reports, its
//! contracts and their events; and a tenant's node contracts, sent with
//! the tenant's own key.
//!
//! `subxt` talks to the chain (RPC, metadata, nonce, mortality, fees) and
//! signs with the node's own ed25519 key as `MultiSignature::Ed25519`; the
//! calls come from [`super::calls`], checked against the runtime's metadata
//! before they are signed. A node account must hold funds before the chain
//! accepts anything from it (fees are charged up front): that refusal is
//! told apart as [`TfchainError::Unfunded`], so the node can say it waits
//! for funds. Limits: one request at a time; reads are the storage items
//! this node needs, not a general chain API.
//!
//! Every read and every submission has a deadline, so a dead connection or
//! a stalled finality shows as an error instead of a hang. A submission
//! carries an explicit nonce, remembered until its outcome is known: one
//! that timed out is looked up by that nonce before anything is sent again
//! (the account's nonce moved past it: it is in a block; it did not: the
//! same nonce is used again, so at most one of the two can ever be
//! included). A refusal names the runtime's error, so the caller can tell a
//! refusal of this input (never retried) from a passing one.

use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use subxt::dynamic::{At as _, Value};
use subxt::utils::{AccountId32, MultiSignature};
use subxt::{OnlineClient, SubstrateConfig};

use super::calls::{self, Call, Location};
use crate::registry::model::{
    ContractState, DeploymentHash, NodeContract, NodeRegistration, TwinKey,
};

/// Terms and conditions every account accepts before it gets a twin.
pub const TC_LINK: &str =
    "https://library.threefold.me/info/legal/#/legal__terms_conditions_griduser";
pub const TC_HASH: &str = "grove-node-tc-v1";

/// Why talking to TFChain failed.
#[derive(Debug, thiserror::Error)]
pub enum TfchainError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the account {account} has no funds to pay fees: send TFT to it")]
    Unfunded { account: String },
    #[error("{call} failed: {message}")]
    Call { call: String, message: String },
    #[error(transparent)]
    Encode(#[from] calls::CallError),
    #[error("cannot read {item} from the chain: {message}")]
    Read { item: &'static str, message: String },
    #[error("farm {0} does not exist on the chain")]
    NoFarm(u32),
    #[error("the connection to the chain is gone: {0}")]
    Disconnected(String),
    #[error("{call} (nonce {nonce}) was neither finalized nor refused within {secs} s")]
    Unconfirmed { call: String, nonce: u64, secs: u64 },
    #[error("the chain refused {call}: {error}")]
    Refused { call: String, error: String },
}

/// How long a read may take.
pub const READ_DEADLINE: Duration = Duration::from_secs(15);
/// How long a submission may take from signing to finality.
pub const FINALITY_DEADLINE: Duration = Duration::from_secs(60);

/// Messages that mean the connection, not the chain, failed.
fn is_connection_failure(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "background task",
        "restart required",
        "connection",
        "closed",
        "transport",
        "websocket",
        "networking",
        "timed out",
        "timeout",
    ]
    .iter()
    .any(|n| m.contains(n))
}

/// The runtime's error name in a dispatch error's text (`InvalidSRUInput`,
/// `NodeNotExists`, ...), or the whole text.
fn runtime_error_name(message: &str) -> String {
    for marker in [
        "TfgridModule::",
        "SmartContractModule::",
        "TfgridModule.",
        "name: \"",
    ] {
        if let Some(rest) = message.split(marker).nth(1) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                return name;
            }
        }
    }
    message.to_owned()
}

/// A submission whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    call: String,
    nonce: u64,
}

/// What a submission ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Finalized and succeeded.
    Finalized,
    /// An earlier submission of the same call, whose answer was lost, is in
    /// a block: nothing was sent again.
    IncludedEarlier,
}

/// What happened on the chain that concerns this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainEventKind {
    ContractCreated,
    ContractUpdated,
    NodeContractCanceled,
    ContractGracePeriodStarted,
    ContractGracePeriodEnded,
    NodePublicConfigStored,
}

/// One event about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainEvent {
    pub kind: ChainEventKind,
    pub contract_id: Option<u64>,
    pub block: u64,
}

/// The first number under a field named `name`, anywhere in `v`.
fn find_u128(v: &Value, name: &str) -> Option<u128> {
    use subxt::ext::scale_value::{Composite, ValueDef};
    match &v.value {
        ValueDef::Composite(Composite::Named(fields)) => fields.iter().find_map(|(k, f)| {
            if k == name {
                f.as_u128()
            } else {
                find_u128(f, name)
            }
        }),
        ValueDef::Composite(Composite::Unnamed(fields)) => {
            fields.iter().find_map(|f| find_u128(f, name))
        }
        ValueDef::Variant(variant) => match &variant.values {
            Composite::Named(fields) => fields.iter().find_map(|(k, f)| {
                if k == name {
                    f.as_u128()
                } else {
                    find_u128(f, name)
                }
            }),
            Composite::Unnamed(fields) => fields.iter().find_map(|f| find_u128(f, name)),
        },
        _ => None,
    }
}

/// Signs extrinsics with the node's ed25519 key.
#[derive(Debug, Clone)]
pub struct NodeSigner {
    key: SigningKey,
}

impl NodeSigner {
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }
}

impl subxt::tx::Signer<SubstrateConfig> for NodeSigner {
    fn account_id(&self) -> AccountId32 {
        AccountId32(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, payload: &[u8]) -> MultiSignature {
        MultiSignature::Ed25519(self.key.sign(payload).to_bytes())
    }
}

/// A connection to a TFChain node.
pub struct Tfchain {
    client: OnlineClient<SubstrateConfig>,
    signer: NodeSigner,
    account: String,
    pending: Mutex<Option<Pending>>,
    read_deadline: Duration,
    finality_deadline: Duration,
}

impl std::fmt::Debug for Tfchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tfchain")
            .field("account", &self.account)
            .finish()
    }
}

/// The RPC connection to `url` (`ws://` allowed) and a client over the
/// legacy RPC methods.
pub(crate) async fn connect_legacy(
    url: &str,
) -> Result<(subxt::rpcs::RpcClient, OnlineClient<SubstrateConfig>), TfchainError> {
    let connect = |message: String| TfchainError::Connect {
        url: url.to_owned(),
        message,
    };
    let rpc = if url.starts_with("ws://") {
        subxt::rpcs::RpcClient::from_insecure_url(url).await
    } else {
        subxt::rpcs::RpcClient::from_url(url).await
    }
    .map_err(|e| connect(e.to_string()))?;
    let backend = subxt::backend::LegacyBackend::builder().build(rpc.clone());
    let client = OnlineClient::<SubstrateConfig>::from_backend(std::sync::Arc::new(backend))
        .await
        .map_err(|e| connect(e.to_string()))?;
    Ok((rpc, client))
}

impl Tfchain {
    /// Connects over the legacy RPC methods, which every TFChain node (and
    /// chopsticks) serves.
    pub async fn connect(url: &str, key: SigningKey) -> Result<Self, TfchainError> {
        let (_, client) = connect_legacy(url).await?;
        let account = crate::identity::keys::ss58(
            &key.verifying_key().to_bytes(),
            crate::identity::keys::SS58_PREFIX,
        );
        Ok(Self {
            client,
            signer: NodeSigner::new(key),
            account,
            pending: Mutex::new(None),
            read_deadline: READ_DEADLINE,
            finality_deadline: FINALITY_DEADLINE,
        })
    }

    /// Connects, giving up after `deadline`.
    pub async fn connect_within(
        url: &str,
        key: SigningKey,
        deadline: Duration,
    ) -> Result<Self, TfchainError> {
        tokio::time::timeout(deadline, Self::connect(url, key))
            .await
            .unwrap_or_else(|_| {
                Err(TfchainError::Connect {
                    url: url.to_owned(),
                    message: format!("no answer within {} s", deadline.as_secs()),
                })
            })
    }

    /// Other deadlines than [`READ_DEADLINE`] and [`FINALITY_DEADLINE`].
    pub fn with_deadlines(mut self, read: Duration, finality: Duration) -> Self {
        self.read_deadline = read;
        self.finality_deadline = finality;
        self
    }

    /// The chain's genesis hash, hex: another one means the chain was reset.
    pub fn genesis(&self) -> String {
        self.client
            .genesis_hash()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A submission whose outcome is not known, carried over from an
    /// earlier connection to the same chain.
    pub fn carry_pending(&self, from: &Tfchain) {
        let pending = from
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = pending;
    }

    /// `op`, or an error once the read deadline passes.
    async fn within<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = Result<T, TfchainError>>,
    ) -> Result<T, TfchainError> {
        tokio::time::timeout(self.read_deadline, op)
            .await
            .unwrap_or_else(|_| {
                Err(TfchainError::Disconnected(format!(
                    "no answer to {what} within {} s",
                    self.read_deadline.as_secs()
                )))
            })
    }

    /// The subxt client, for reads this module does not wrap.
    pub fn client(&self) -> &OnlineClient<SubstrateConfig> {
        &self.client
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    fn account_id(&self) -> AccountId32 {
        subxt::tx::Signer::<SubstrateConfig>::account_id(&self.signer)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs, submits and waits until `call` is in a finalized block and
    /// succeeded, within the finality deadline.
    async fn submit(&self, call: &Call) -> Result<Submitted, TfchainError> {
        let label = format!("{}.{}", call.pallet, call.name);
        let classify = |message: String| {
            let lower = message.to_lowercase();
            if lower.contains("payment") || lower.contains("inability to pay") {
                TfchainError::Unfunded {
                    account: self.account.clone(),
                }
            } else if is_connection_failure(&message) {
                TfchainError::Disconnected(message)
            } else {
                TfchainError::Call {
                    call: label.clone(),
                    message,
                }
            }
        };
        let at = self
            .within("the best block", async {
                self.client
                    .at_current_block()
                    .await
                    .map_err(|e| classify(e.to_string()))
            })
            .await?;
        calls::check(call, at.metadata_ref())?;
        let account_id = self.account_id();
        let chain_nonce = self
            .within("the account nonce", async {
                at.tx()
                    .account_nonce(&account_id)
                    .await
                    .map_err(|e| classify(e.to_string()))
            })
            .await?;
        // The look-up: an earlier submission whose answer was lost.
        let earlier = self.pending().clone();
        let nonce = match earlier {
            Some(p) if chain_nonce > p.nonce => {
                *self.pending() = None;
                if p.call == label {
                    tracing::info!(call = %label, nonce = p.nonce, "an earlier submission is in a block: not sent again");
                    return Ok(Submitted::IncludedEarlier);
                }
                chain_nonce
            }
            // Not in a block: the same nonce again, so only one can be.
            Some(p) if chain_nonce == p.nonce => p.nonce,
            // The chain forgot it (reset): start from the chain's nonce.
            Some(_) => {
                *self.pending() = None;
                chain_nonce
            }
            None => chain_nonce,
        };
        let payload = subxt::dynamic::tx(call.pallet, call.name, call.fields());
        let params = subxt::config::DefaultExtrinsicParamsBuilder::<SubstrateConfig>::new()
            .nonce(nonce)
            .build();
        *self.pending() = Some(Pending {
            call: label.clone(),
            nonce,
        });
        let progress = self
            .within("the submission", async {
                at.tx()
                    .sign_and_submit_then_watch(&payload, &self.signer, params)
                    .await
                    .map_err(|e| classify(e.to_string()))
            })
            .await;
        let progress = match progress {
            Ok(p) => p,
            Err(e) => {
                // Refused by the pool (not sent) or never answered (kept
                // for the look-up).
                if !matches!(e, TfchainError::Disconnected(_)) {
                    *self.pending() = None;
                }
                return Err(e);
            }
        };
        let outcome = tokio::time::timeout(
            self.finality_deadline,
            progress.wait_for_finalized_success(),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => {
                *self.pending() = None;
                Ok(Submitted::Finalized)
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                match classify(message.clone()) {
                    TfchainError::Disconnected(m) => Err(TfchainError::Disconnected(m)),
                    other => {
                        *self.pending() = None;
                        if message.to_lowercase().contains("module") {
                            Err(TfchainError::Refused {
                                call: label,
                                error: runtime_error_name(&message),
                            })
                        } else {
                            Err(other)
                        }
                    }
                }
            }
            Err(_) => Err(TfchainError::Unconfirmed {
                call: label,
                nonce,
                secs: self.finality_deadline.as_secs(),
            }),
        }
    }

    /// One storage item at the current finalized block, decoded.
    async fn fetch(
        &self,
        pallet: &'static str,
        item: &'static str,
        key: Value,
    ) -> Result<Option<Value>, TfchainError> {
        self.fetch_keys(pallet, item, vec![key]).await
    }

    /// A storage item under `keys` (none for a plain item).
    async fn fetch_keys(
        &self,
        pallet: &'static str,
        item: &'static str,
        keys: Vec<Value>,
    ) -> Result<Option<Value>, TfchainError> {
        let err = |e: String| {
            if is_connection_failure(&e) {
                TfchainError::Disconnected(e)
            } else {
                TfchainError::Read { item, message: e }
            }
        };
        self.within(item, async {
            let at = self
                .client
                .at_current_block()
                .await
                .map_err(|e| err(e.to_string()))?;
            let address = subxt::dynamic::storage::<Vec<Value>, Value>(pallet, item);
            let value = at
                .storage()
                .try_fetch(address, keys)
                .await
                .map_err(|e| err(e.to_string()))?;
            value
                .map(|v| {
                    v.decode()
                        .map(Value::remove_context)
                        .map_err(|e| err(e.to_string()))
                })
                .transpose()
        })
        .await
    }

    /// `pallet`'s `item` under the numeric key `id`.
    async fn fetch_id(
        &self,
        pallet: &'static str,
        item: &'static str,
        id: impl Into<u128>,
    ) -> Result<Option<Value>, TfchainError> {
        self.fetch(pallet, item, Value::u128(id.into())).await
    }

    async fn read_u32(&self, item: &'static str, key: Value) -> Result<Option<u32>, TfchainError> {
        Ok(self
            .fetch("TfgridModule", item, key)
            .await?
            .and_then(|v| v.as_u128())
            .and_then(|n| u32::try_from(n).ok()))
    }

    /// The node's free balance, in the chain's smallest unit.
    pub async fn free_balance(&self) -> Result<u128, TfchainError> {
        let account = self
            .fetch("System", "Account", Value::from_bytes(self.account_id().0))
            .await?;
        Ok(account
            .as_ref()
            .and_then(|a| a.at("data"))
            .and_then(|d| d.at("free"))
            .and_then(|f| f.as_u128())
            .unwrap_or(0))
    }

    /// The node's twin, if it has one.
    pub async fn twin(&self) -> Result<Option<u32>, TfchainError> {
        let key = Value::from_bytes(self.account_id().0);
        Ok(self
            .read_u32("TwinIdByAccountID", key)
            .await?
            .filter(|id| *id != 0))
    }

    /// The node's twin, created (after accepting the terms) if missing.
    pub async fn ensure_twin(&self, relay: Option<&str>) -> Result<u32, TfchainError> {
        if let Some(id) = self.twin().await? {
            return Ok(id);
        }
        self.submit(&calls::user_accept_tc(TC_LINK, TC_HASH))
            .await?;
        if let Some(id) = self.twin().await? {
            return Ok(id);
        }
        self.submit(&calls::create_twin(relay, None)).await?;
        self.twin().await?.ok_or(TfchainError::Read {
            item: "TwinIdByAccountID",
            message: "no twin after createTwin".to_owned(),
        })
    }

    /// The node registered by `twin`, if any.
    pub async fn node_of_twin(&self, twin: u32) -> Result<Option<u32>, TfchainError> {
        Ok(self
            .read_u32("NodeIdByTwinID", Value::u128(u128::from(twin)))
            .await?
            .filter(|id| *id != 0))
    }

    /// Node `id` as the chain holds it, in Grove's terms.
    pub async fn node_record(&self, id: u32) -> Result<Option<NodeRecord>, TfchainError> {
        Ok(self.node(id).await?.map(|v| NodeRecord::from_value(&v)))
    }

    /// Creates the node, or updates it if this twin has one, whatever the
    /// chain holds; answers its id.
    pub async fn register(
        &self,
        twin: u32,
        r: &NodeRegistration,
        loc: &Location,
    ) -> Result<u32, TfchainError> {
        let farm = Value::u128(u128::from(r.farm_id));
        if self.fetch("TfgridModule", "Farms", farm).await?.is_none() {
            return Err(TfchainError::NoFarm(r.farm_id));
        }
        match self.node_of_twin(twin).await? {
            Some(node) => {
                self.submit(&calls::update_node(node, r, loc)).await?;
                Ok(node)
            }
            None => {
                self.submit(&calls::create_node(r, loc)).await?;
                self.node_of_twin(twin).await?.ok_or(TfchainError::Read {
                    item: "NodeIdByTwinID",
                    message: "no node after createNode".to_owned(),
                })
            }
        }
    }

    /// `updateNode` for node `id`.
    pub async fn update_node(
        &self,
        id: u32,
        r: &NodeRegistration,
        loc: &Location,
    ) -> Result<Submitted, TfchainError> {
        self.submit(&calls::update_node(id, r, loc)).await
    }

    /// `reportUptimeV2` with `timestamp` as the hint.
    pub async fn report_uptime(
        &self,
        uptime: u64,
        timestamp: u64,
    ) -> Result<Submitted, TfchainError> {
        self.submit(&calls::report_uptime_v2(uptime, timestamp))
            .await
    }

    /// The chain's own time (`Timestamp::Now` of the best block), in
    /// seconds.
    pub async fn chain_time(&self) -> Result<u64, TfchainError> {
        let now = self
            .fetch_keys("Timestamp", "Now", vec![])
            .await?
            .and_then(|v| v.as_u128())
            .ok_or(TfchainError::Read {
                item: "Now",
                message: "no Timestamp::Now".to_owned(),
            })?;
        Ok(u64::try_from(now / 1000).unwrap_or(u64::MAX))
    }

    /// The account that owns farm `id`, or `None` if there is no such farm.
    pub async fn farm_owner(&self, id: u32) -> Result<Option<String>, TfchainError> {
        let missing = |item: &'static str, what: &str| TfchainError::Read {
            item,
            message: what.to_owned(),
        };
        let Some(farm) = self.fetch_id("TfgridModule", "Farms", id).await? else {
            return Ok(None);
        };
        let twin = farm
            .at("twin_id")
            .and_then(|t| t.as_u128())
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| missing("Farms", "no twin_id"))?;
        let owner = self
            .twin_key(twin)
            .await?
            .ok_or_else(|| missing("Twins", "the farm's twin does not exist"))?;
        Ok(Some(owner.account))
    }

    /// The ids of the active contracts on node `id`.
    pub async fn node_contracts(&self, id: u32) -> Result<Vec<u64>, TfchainError> {
        let list = self
            .fetch_id("SmartContractModule", "ActiveNodeContracts", id)
            .await?;
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(v) = list.at(i) {
            if let Some(n) = v.as_u128().and_then(|n| u64::try_from(n).ok()) {
                out.push(n);
            }
            i += 1;
        }
        Ok(out)
    }

    /// Follows finalized blocks and sends every event about node `id`:
    /// contracts created on it, updated, cancelled, entering or leaving
    /// their grace period, and its public config. Runs
    /// until the receiver goes away or the chain connection ends.
    pub async fn follow_events(
        &self,
        id: u32,
        to: tokio::sync::mpsc::Sender<ChainEvent>,
    ) -> Result<(), TfchainError> {
        let err = |e: String| TfchainError::Read {
            item: "events",
            message: e,
        };
        let mut blocks = self
            .client
            .stream_blocks()
            .await
            .map_err(|e| err(e.to_string()))?;
        while let Some(block) = blocks.next().await {
            let block = block.map_err(|e| err(e.to_string()))?;
            let number = block.number();
            let at = block.at().await.map_err(|e| err(e.to_string()))?;
            let events = at.events().fetch().await.map_err(|e| err(e.to_string()))?;
            for event in events.iter() {
                let event = event.map_err(|e| err(e.to_string()))?;
                let kind = match (event.pallet_name(), event.event_name()) {
                    ("SmartContractModule", "ContractCreated") => ChainEventKind::ContractCreated,
                    ("SmartContractModule", "ContractUpdated") => ChainEventKind::ContractUpdated,
                    ("SmartContractModule", "NodeContractCanceled") => {
                        ChainEventKind::NodeContractCanceled
                    }
                    ("SmartContractModule", "ContractGracePeriodStarted") => {
                        ChainEventKind::ContractGracePeriodStarted
                    }
                    ("SmartContractModule", "ContractGracePeriodEnded") => {
                        ChainEventKind::ContractGracePeriodEnded
                    }
                    ("TfgridModule", "NodePublicConfigStored") => {
                        ChainEventKind::NodePublicConfigStored
                    }
                    _ => continue,
                };
                let fields = event
                    .decode_fields_unchecked_as::<subxt::ext::scale_value::Composite<()>>()
                    .map_err(|e| err(e.to_string()))?;
                // Named fields keep their names (`NodeContractCanceled
                // {contract_id, node_id, twin_id}`): the node is found by
                // name.
                let value = Value {
                    value: subxt::ext::scale_value::ValueDef::Composite(fields),
                    context: (),
                };
                let node = match kind {
                    ChainEventKind::NodePublicConfigStored => value.at(0).and_then(|v| v.as_u128()),
                    _ => find_u128(&value, "node_id"),
                };
                if node != Some(u128::from(id)) {
                    continue;
                }
                let contract_id =
                    find_u128(&value, "contract_id").and_then(|c| u64::try_from(c).ok());
                if to
                    .send(ChainEvent {
                        kind,
                        contract_id,
                        block: number,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Node contract `id`; `None` when there is none, or it is not a node
    /// contract. TFChain removes a cancelled contract from storage, so a
    /// contract once seen and now `None` is gone.
    pub async fn contract(&self, id: u64) -> Result<Option<NodeContract>, TfchainError> {
        let value = self
            .fetch_id("SmartContractModule", "Contracts", id)
            .await?;
        Ok(value.and_then(|v| node_contract(&v)))
    }

    /// The active node contracts on node `id`, read one by one.
    pub async fn active_node_contracts(&self, id: u32) -> Result<Vec<NodeContract>, TfchainError> {
        let mut out = Vec::new();
        for contract in self.node_contracts(id).await? {
            if let Some(c) = self.contract(contract).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Twin `id` and its account key.
    pub async fn twin_key(&self, id: u32) -> Result<Option<TwinKey>, TfchainError> {
        let Some(twin) = self.fetch_id("TfgridModule", "Twins", id).await? else {
            return Ok(None);
        };
        let bytes = twin
            .at("account_id")
            .map(flat_bytes)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or(TfchainError::Read {
                item: "Twins",
                message: format!("twin {id} has no 32-byte account_id"),
            })?;
        Ok(Some(TwinKey::new(id, bytes)))
    }

    /// What the node last reported contract `id` uses
    /// (`NodeContractResources`).
    pub async fn contract_resources(
        &self,
        id: u64,
    ) -> Result<Option<crate::registry::model::Resources>, TfchainError> {
        let value = self
            .fetch_id("SmartContractModule", "NodeContractResources", id)
            .await?;
        Ok(value.and_then(|v| {
            let used = v.at("used")?;
            let n = |name: &str| {
                used.at(name)
                    .and_then(|x| x.as_u128())
                    .and_then(|x| u64::try_from(x).ok())
            };
            Some(crate::registry::model::Resources {
                hru: n("hru")?,
                sru: n("sru")?,
                cru: n("cru")?,
                mru: n("mru")?,
            })
        }))
    }

    /// `reportContractResources`, signed by the node.
    pub async fn report_contract_resources(
        &self,
        uses: &[calls::ContractUse],
    ) -> Result<Submitted, TfchainError> {
        self.submit(&calls::report_contract_resources(uses)).await
    }

    /// `createNodeContract`, signed by the tenant whose key this
    /// connection holds; answers the new contract, read back by node and
    /// hash (`ContractIDByNodeIDAndHash`).
    pub async fn create_node_contract(
        &self,
        node_id: u32,
        hash: &DeploymentHash,
        deployment_data: &[u8],
        public_ips: u32,
    ) -> Result<NodeContract, TfchainError> {
        self.submit(&calls::create_node_contract(
            node_id,
            &hash.0,
            deployment_data,
            public_ips,
            None,
        ))
        .await?;
        let id = self
            .fetch_keys(
                "SmartContractModule",
                "ContractIDByNodeIDAndHash",
                vec![Value::u128(u128::from(node_id)), Value::from_bytes(hash.0)],
            )
            .await?
            .and_then(|v| v.as_u128())
            .and_then(|n| u64::try_from(n).ok())
            .filter(|id| *id != 0)
            .ok_or(TfchainError::Read {
                item: "ContractIDByNodeIDAndHash",
                message: format!(
                    "no contract on node {node_id} for hash {hash} after createNodeContract"
                ),
            })?;
        self.contract(id).await?.ok_or(TfchainError::Read {
            item: "Contracts",
            message: format!("contract {id} is not there after createNodeContract"),
        })
    }

    /// `updateNodeContract`, signed by the contract's owner.
    pub async fn update_node_contract(
        &self,
        contract_id: u64,
        hash: &DeploymentHash,
        deployment_data: &[u8],
    ) -> Result<Submitted, TfchainError> {
        self.submit(&calls::update_node_contract(
            contract_id,
            &hash.0,
            deployment_data,
        ))
        .await
    }

    /// `cancelContract`, signed by the contract's owner.
    pub async fn cancel_contract(&self, contract_id: u64) -> Result<Submitted, TfchainError> {
        self.submit(&calls::cancel_contract(contract_id)).await
    }

    /// The stored `Node` as the chain has it, for checks.
    pub async fn node(&self, id: u32) -> Result<Option<Value>, TfchainError> {
        self.fetch_id("TfgridModule", "Nodes", id).await
    }
}

/// What the chain holds about a node, in the terms Grove registers it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub farm_id: u32,
    pub twin_id: u32,
    pub resources: crate::registry::model::Resources,
    /// Interfaces as (name, mac, ips without prefix).
    pub interfaces: Vec<(String, String, Vec<String>)>,
    pub location: Location,
    pub serial_number: String,
    pub virtualized: bool,
    pub secure_boot: bool,
}

impl NodeRecord {
    fn from_value(v: &Value) -> Self {
        let num = |path: &[&str]| -> u64 {
            let mut cur = Some(v);
            for p in path {
                cur = cur.and_then(|c| c.at(*p));
            }
            cur.and_then(|c| c.as_u128())
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        let text = |x: Option<&Value>| -> String {
            x.map(|x| String::from_utf8_lossy(&flat_bytes(x)).into_owned())
                .unwrap_or_default()
        };
        let list = |x: Option<&Value>| -> Vec<Value> {
            let mut out = Vec::new();
            let Some(x) = x else { return out };
            let mut i = 0;
            while let Some(item) = x.at(i) {
                out.push(item.clone());
                i += 1;
            }
            out
        };
        let boolean = |name: &str| v.at(name).and_then(|b| b.as_bool()).unwrap_or(false);
        let location = v.at("location");
        let serial = v.at("serial_number").and_then(|s| match &s.value {
            subxt::ext::scale_value::ValueDef::Variant(var) if var.name == "Some" => {
                var.values.values().next().cloned()
            }
            _ => None,
        });
        Self {
            farm_id: u32::try_from(num(&["farm_id"])).unwrap_or(0),
            twin_id: u32::try_from(num(&["twin_id"])).unwrap_or(0),
            resources: crate::registry::model::Resources {
                hru: num(&["resources", "hru"]),
                sru: num(&["resources", "sru"]),
                cru: num(&["resources", "cru"]),
                mru: num(&["resources", "mru"]),
            },
            interfaces: list(v.at("interfaces"))
                .iter()
                .map(|i| {
                    (
                        text(i.at("name")),
                        text(i.at("mac")),
                        list(i.at("ips")).iter().map(|ip| text(Some(ip))).collect(),
                    )
                })
                .collect(),
            location: Location {
                city: text(location.and_then(|l| l.at("city"))),
                country: text(location.and_then(|l| l.at("country"))),
                latitude: text(location.and_then(|l| l.at("latitude"))),
                longitude: text(location.and_then(|l| l.at("longitude"))),
            },
            serial_number: serial.map(|s| text(Some(&s))).unwrap_or_default(),
            virtualized: boolean("virtualized"),
            secure_boot: boolean("secure_boot"),
        }
    }

    /// What the chain would hold after registering `r` at `loc`.
    pub fn wanted(r: &NodeRegistration, loc: &Location) -> Self {
        Self {
            farm_id: r.farm_id,
            twin_id: r.twin_id,
            resources: r.resources,
            interfaces: r
                .interfaces
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.mac.clone(),
                        i.ips
                            .iter()
                            .map(|ip| ip.split('/').next().unwrap_or(ip).to_owned())
                            .collect(),
                    )
                })
                .collect(),
            location: loc.clone(),
            serial_number: r.serial_number.clone(),
            virtualized: r.virtualized,
            secure_boot: r.secure_boot,
        }
    }
}

/// The bytes of a value made of (nested composites of) u8s.
fn flat_bytes<T>(v: &Value<T>) -> Vec<u8> {
    use subxt::ext::scale_value::{Composite, ValueDef};
    let mut out = Vec::new();
    fn walk<T>(v: &Value<T>, out: &mut Vec<u8>) {
        match &v.value {
            ValueDef::Composite(Composite::Named(fields)) => {
                fields.iter().for_each(|(_, f)| walk(f, out))
            }
            ValueDef::Composite(Composite::Unnamed(fields)) => {
                fields.iter().for_each(|f| walk(f, out))
            }
            ValueDef::Primitive(p) => {
                if let Some(b) = p.as_u128().and_then(|n| u8::try_from(n).ok()) {
                    out.push(b);
                }
            }
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// A stored `Contract` as a [`NodeContract`]; `None` for a name or rent
/// contract, or one whose shape is not the runtime's.
fn node_contract(v: &Value) -> Option<NodeContract> {
    use subxt::ext::scale_value::ValueDef;
    let variant = |x: &Value| match &x.value {
        ValueDef::Variant(var) => Some(var.name.clone()),
        _ => None,
    };
    let state = match variant(v.at("state")?)?.as_str() {
        "Created" => ContractState::Created,
        "GracePeriod" => ContractState::GracePeriod,
        "Deleted" => ContractState::Deleted,
        _ => return None,
    };
    let data = v.at("contract_type")?;
    if variant(data)? != "NodeContract" {
        return None;
    }
    let node = data.at(0)?;
    let hash = <[u8; 32]>::try_from(flat_bytes(node.at("deployment_hash")?)).ok()?;
    Some(NodeContract {
        contract_id: u64::try_from(v.at("contract_id")?.as_u128()?).ok()?,
        node_id: u32::try_from(node.at("node_id")?.as_u128()?).ok()?,
        twin_id: u32::try_from(v.at("twin_id")?.as_u128()?).ok()?,
        deployment_hash: DeploymentHash(hash),
        public_ips: u32::try_from(node.at("public_ips")?.as_u128()?).ok()?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(state: Value, contract_type: Value) -> Value {
        Value::named_composite([
            ("version", Value::u128(4)),
            ("state", state),
            ("contract_id", Value::u128(9)),
            ("twin_id", Value::u128(5)),
            ("contract_type", contract_type),
            ("solution_provider_id", Value::unnamed_variant("None", [])),
        ])
    }

    fn node_data(hash: &[u8]) -> Value {
        Value::unnamed_variant(
            "NodeContract",
            [Value::named_composite([
                ("node_id", Value::u128(3)),
                ("deployment_hash", Value::from_bytes(hash)),
                ("deployment_data", Value::from_bytes(b"")),
                ("public_ips", Value::u128(1)),
                ("public_ips_list", Value::unnamed_composite([])),
            ])],
        )
    }

    /// The stored `Contract` as the runtime's types decode it.
    #[test]
    fn a_stored_node_contract_reads_with_its_owner_node_hash_and_state() {
        let hash = b"0123456789abcdef0123456789abcdef";
        let created = node_contract(&stored(
            Value::unnamed_variant("Created", []),
            node_data(hash),
        ))
        .expect("a node contract");
        assert_eq!(
            created,
            NodeContract {
                contract_id: 9,
                node_id: 3,
                twin_id: 5,
                deployment_hash: DeploymentHash(*hash),
                public_ips: 1,
                state: ContractState::Created,
            }
        );
        let grace = node_contract(&stored(
            Value::unnamed_variant("GracePeriod", [Value::u128(100)]),
            node_data(hash),
        ))
        .expect("in grace");
        assert_eq!(grace.state, ContractState::GracePeriod);
        let deleted = node_contract(&stored(
            Value::unnamed_variant("Deleted", [Value::unnamed_variant("CanceledByUser", [])]),
            node_data(hash),
        ))
        .expect("deleted");
        assert_eq!(deleted.state, ContractState::Deleted);
        // Bytes that are not hex are carried as they are, never as a hash
        // some deployment could match.
        let raw = node_contract(&stored(
            Value::unnamed_variant("Created", []),
            node_data(&[0xff; 32]),
        ))
        .expect("raw bytes");
        assert!(!raw.deployment_hash.is_hex());
        assert!(raw.deployment_hash.to_string().starts_with("0x"));
    }

    #[test]
    fn a_rent_or_name_contract_or_a_short_hash_is_not_a_node_contract() {
        let rent = Value::unnamed_variant(
            "RentContract",
            [Value::named_composite([("node_id", Value::u128(3))])],
        );
        assert_eq!(
            node_contract(&stored(Value::unnamed_variant("Created", []), rent)),
            None
        );
        assert_eq!(
            node_contract(&stored(
                Value::unnamed_variant("Created", []),
                node_data(b"short")
            )),
            None
        );
    }
}
