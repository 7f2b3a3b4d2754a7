//! The node on a live TFChain: its twin, its node, its uptime reports.
//!
//! `subxt` talks to the chain (RPC, metadata, nonce, mortality, fees) and
//! signs with the node's own ed25519 key as `MultiSignature::Ed25519`; the
//! calls come from [`super::calls`], checked against the runtime's metadata
//! before they are signed. A node account must hold funds before the chain
//! accepts anything from it (fees are charged up front): that refusal is
//! told apart as [`TfchainError::Unfunded`], so the node can say it waits
//! for funds. Limits: one request at a time; reads are the storage items
//! this node needs, not a general chain API.

use ed25519_dalek::{Signer as _, SigningKey};
use subxt::dynamic::{At as _, Value};
use subxt::utils::{AccountId32, MultiSignature};
use subxt::{OnlineClient, SubstrateConfig};

use super::calls::{self, Call, Location};
use crate::registry::model::NodeRegistration;

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
}

/// What happened on the chain that concerns this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainEventKind {
    ContractCreated,
    NodeContractCanceled,
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
}

impl std::fmt::Debug for Tfchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tfchain")
            .field("account", &self.account)
            .finish()
    }
}

impl Tfchain {
    /// Connects over the legacy RPC methods, which every TFChain node (and
    /// chopsticks) serves.
    pub async fn connect(url: &str, key: SigningKey) -> Result<Self, TfchainError> {
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
        let backend = subxt::backend::LegacyBackend::builder().build(rpc);
        let client = OnlineClient::<SubstrateConfig>::from_backend(std::sync::Arc::new(backend))
            .await
            .map_err(|e| connect(e.to_string()))?;
        let account = crate::identity::keys::ss58(
            &key.verifying_key().to_bytes(),
            crate::identity::keys::SS58_PREFIX,
        );
        Ok(Self {
            client,
            signer: NodeSigner::new(key),
            account,
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

    /// Signs, submits and waits until `call` is in a finalized block and
    /// succeeded.
    async fn submit(&self, call: &Call) -> Result<(), TfchainError> {
        let label = format!("{}.{}", call.pallet, call.name);
        let fail = |message: String| {
            if message.contains("1010") || message.to_lowercase().contains("payment") {
                TfchainError::Unfunded {
                    account: self.account.clone(),
                }
            } else {
                TfchainError::Call {
                    call: label.clone(),
                    message,
                }
            }
        };
        let at = self
            .client
            .at_current_block()
            .await
            .map_err(|e| fail(e.to_string()))?;
        calls::check(call, at.metadata_ref())?;
        let payload = subxt::dynamic::tx(call.pallet, call.name, call.fields());
        let progress = at
            .tx()
            .sign_and_submit_then_watch_default(&payload, &self.signer)
            .await
            .map_err(|e| fail(e.to_string()))?;
        progress
            .wait_for_finalized_success()
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// One storage item at the current finalized block, decoded.
    async fn fetch(
        &self,
        pallet: &'static str,
        item: &'static str,
        key: Value,
    ) -> Result<Option<Value>, TfchainError> {
        let err = |e: String| TfchainError::Read { item, message: e };
        let at = self
            .client
            .at_current_block()
            .await
            .map_err(|e| err(e.to_string()))?;
        let address = subxt::dynamic::storage::<Vec<Value>, Value>(pallet, item);
        let value = at
            .storage()
            .try_fetch(address, vec![key])
            .await
            .map_err(|e| err(e.to_string()))?;
        value
            .map(|v| {
                v.decode()
                    .map(Value::remove_context)
                    .map_err(|e| err(e.to_string()))
            })
            .transpose()
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

    /// The node's twin, created (after accepting the terms) if missing.
    pub async fn ensure_twin(&self, relay: Option<&str>) -> Result<u32, TfchainError> {
        let key = Value::from_bytes(self.account_id().0);
        if let Some(id) = self.read_u32("TwinIdByAccountID", key.clone()).await? {
            return Ok(id);
        }
        self.submit(&calls::user_accept_tc(TC_LINK, TC_HASH))
            .await?;
        self.submit(&calls::create_twin(relay, None)).await?;
        self.read_u32("TwinIdByAccountID", key)
            .await?
            .ok_or(TfchainError::Read {
                item: "TwinIdByAccountID",
                message: "no twin after createTwin".to_owned(),
            })
    }

    /// Creates the node, or updates it if this twin has one.
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
        let twin_key = Value::u128(u128::from(twin));
        match self
            .read_u32("NodeIdByTwinID", twin_key.clone())
            .await?
            .filter(|id| *id != 0)
        {
            Some(node) => {
                self.submit(&calls::update_node(node, r, loc)).await?;
                Ok(node)
            }
            None => {
                self.submit(&calls::create_node(r, loc)).await?;
                self.read_u32("NodeIdByTwinID", twin_key)
                    .await?
                    .ok_or(TfchainError::Read {
                        item: "NodeIdByTwinID",
                        message: "no node after createNode".to_owned(),
                    })
            }
        }
    }

    /// `reportUptimeV2` with the node's clock as the hint.
    pub async fn report_uptime(&self, uptime: u64, timestamp: u64) -> Result<(), TfchainError> {
        self.submit(&calls::report_uptime_v2(uptime, timestamp))
            .await
    }

    /// The account that owns farm `id`, or `None` if there is no such farm.
    pub async fn farm_owner(&self, id: u32) -> Result<Option<String>, TfchainError> {
        let missing = |item: &'static str, what: &str| TfchainError::Read {
            item,
            message: what.to_owned(),
        };
        let Some(farm) = self
            .fetch("TfgridModule", "Farms", Value::u128(u128::from(id)))
            .await?
        else {
            return Ok(None);
        };
        let twin = farm
            .at("twin_id")
            .and_then(|t| t.as_u128())
            .ok_or_else(|| missing("Farms", "no twin_id"))?;
        let owner = self
            .fetch("TfgridModule", "Twins", Value::u128(twin))
            .await?
            .ok_or_else(|| missing("Twins", "the farm's twin does not exist"))?;
        let bytes = owner
            .at("account_id")
            .map(flat_bytes)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| missing("Twins", "no 32-byte account_id"))?;
        let mut account = [0u8; 32];
        account.copy_from_slice(&bytes);
        Ok(Some(crate::identity::keys::ss58(
            &account,
            crate::identity::keys::SS58_PREFIX,
        )))
    }

    /// The ids of the active contracts on node `id`.
    pub async fn node_contracts(&self, id: u32) -> Result<Vec<u64>, TfchainError> {
        let list = self
            .fetch(
                "SmartContractModule",
                "ActiveNodeContracts",
                Value::u128(u128::from(id)),
            )
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
    /// contracts created on it or cancelled, and its public config. Runs
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
                    ("SmartContractModule", "NodeContractCanceled") => {
                        ChainEventKind::NodeContractCanceled
                    }
                    ("TfgridModule", "NodePublicConfigStored") => {
                        ChainEventKind::NodePublicConfigStored
                    }
                    _ => continue,
                };
                let fields = event
                    .decode_fields_unchecked_as::<subxt::ext::scale_value::Composite<()>>()
                    .map_err(|e| err(e.to_string()))?;
                let value = Value::unnamed_composite(fields.into_values());
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

    /// The stored `Node` as the chain has it, for checks.
    pub async fn node(&self, id: u32) -> Result<Option<Value>, TfchainError> {
        self.fetch("TfgridModule", "Nodes", Value::u128(u128::from(id)))
            .await
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
