//! The two registries behind one interface: the embedded registry and
//! TFChain.
//!
//! Both hold twins, farms, nodes and uptime. What differs is kept here: the
//! embedded registry keys everything by account over HTTP; TFChain needs a
//! funded account, terms accepted before a twin, a location on every node,
//! capacity within its rules, and an uptime hint within 60 s of chain time
//! (so a report delivered after an outage carries the uptime at delivery
//! and the time of delivery, taken from the chain when the node's clock is
//! off). Every refusal is sorted here into transient (retried with backoff)
//! and permanent for its input (never sent again as it is).

use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::registry::client::EmbeddedClient;
use crate::registry::model::{
    ContractResources, MeshInfo, NodeContract, NodeRegistration, TwinKey, UptimeReport,
};
use crate::tfchain::calls::Location;
use crate::tfchain::client::{NodeRecord, Tfchain, TfchainError};

/// The node's clock may differ this much from the chain's before the chain's
/// time is used as the uptime hint.
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// How long connecting may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

const GIB: u64 = 1 << 30;

/// Why the registry did not take something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach the registry: {0}")]
    Unreachable(String),
    #[error("farm {0} does not exist on the registry")]
    NoFarm(u32),
    #[error("waiting for funds: send TFT to {0}")]
    Unfunded(String),
    /// Worth trying again later, as it is.
    #[error("{0}")]
    Transient(String),
    /// Never taken as it is: the input must change.
    #[error("refused ({kind}): {message}")]
    Permanent { kind: String, message: String },
}

impl BackendError {
    /// The refusal's kind, for the counters.
    pub fn kind(&self) -> &str {
        match self {
            BackendError::Unreachable(_) => "unreachable",
            BackendError::NoFarm(_) => "no_farm",
            BackendError::Unfunded(_) => "unfunded",
            BackendError::Transient(_) => "transient",
            BackendError::Permanent { kind, .. } => kind,
        }
    }
}

/// What the runtime's refusal `error` means, and what to change.
pub fn explain(error: &str) -> String {
    match error {
        "InvalidSRUInput" => "TFChain refuses a node with less than 100 GiB of SSD (SRU): add SSD storage".to_owned(),
        "InvalidMRUInput" => "TFChain refuses a node with less than 2 GiB of memory (MRU)".to_owned(),
        "InvalidCRUInput" => "TFChain refuses a node without a CPU thread (CRU)".to_owned(),
        "InvalidHRUInput" => "TFChain refuses this HDD capacity (HRU)".to_owned(),
        e if e.starts_with("InvalidCity") || e.starts_with("CityName") => {
            "TFChain refuses the city: set [chain.location] city in agent.toml".to_owned()
        }
        e if e.starts_with("InvalidCountry") || e.starts_with("CountryName") => {
            "TFChain refuses the country: set [chain.location] country in agent.toml".to_owned()
        }
        e if e.starts_with("InvalidLatitude") || e.starts_with("InvalidLongitude") => {
            "TFChain refuses the coordinates: set [chain.location] latitude and longitude in agent.toml".to_owned()
        }
        "TwinNotExists" => "the node's twin does not exist on the chain".to_owned(),
        "NodeNotExists" => "the node does not exist on the chain".to_owned(),
        "FarmNotExists" => "the farm does not exist on the chain: check grove.farm".to_owned(),
        "NodeWithTwinIdExists" => "this twin already has a node on the chain".to_owned(),
        e => format!("the chain refused it with {e}"),
    }
}

/// TFChain's rules for a node, checked before anything is sent, in words.
pub fn tfchain_rules(r: &NodeRegistration) -> Result<(), BackendError> {
    let gib = |n: u64| format!("{:.1} GiB", n as f64 / GIB as f64);
    let refuse = |kind: &str, message: String| {
        Err(BackendError::Permanent {
            kind: kind.to_owned(),
            message,
        })
    };
    // (what the node has, the least the chain takes, its error, what it
    // is, what to do about it).
    let floors = [
        (
            r.resources.sru,
            100,
            "InvalidSRUInput",
            "SSD (SRU)",
            ": add SSD storage",
        ),
        (r.resources.mru, 2, "InvalidMRUInput", "memory (MRU)", ""),
    ];
    for (has, least_gib, kind, what, remedy) in floors {
        if has < least_gib * GIB {
            return refuse(
                kind,
                format!(
                    "TFChain refuses a node with less than {least_gib} GiB of {what}; this node has {}{remedy} (nothing was sent, no fee paid)",
                    gib(has)
                ),
            );
        }
    }
    if r.resources.cru < 1 {
        return refuse(
            "InvalidCRUInput",
            "TFChain refuses a node without a CPU thread (CRU = 0) (nothing was sent, no fee paid)"
                .to_owned(),
        );
    }
    Ok(())
}

impl From<TfchainError> for BackendError {
    fn from(e: TfchainError) -> Self {
        match e {
            TfchainError::Unfunded { account } => BackendError::Unfunded(account),
            TfchainError::NoFarm(id) => BackendError::NoFarm(id),
            TfchainError::Connect { .. }
            | TfchainError::Disconnected(_)
            | TfchainError::Unconfirmed { .. } => BackendError::Unreachable(e.to_string()),
            TfchainError::Read { .. } | TfchainError::Call { .. } => {
                BackendError::Transient(e.to_string())
            }
            // The next hint comes from the chain's own time.
            TfchainError::Refused { ref error, .. } if error == "InvalidTimestampHint" => {
                BackendError::Transient(e.to_string())
            }
            TfchainError::Refused { call, error } => BackendError::Permanent {
                message: format!("{call}: {}", explain(&error)),
                kind: error,
            },
            TfchainError::Encode(e) => BackendError::Permanent {
                kind: "encode".to_owned(),
                message: e.to_string(),
            },
        }
    }
}

fn embedded(e: grove_daemon::client::ClientError) -> BackendError {
    match &e {
        grove_daemon::client::ClientError::Status { status, .. } if status.is_client_error() => {
            BackendError::Permanent {
                kind: format!("http_{}", status.as_u16()),
                message: e.to_string(),
            }
        }
        _ => BackendError::Unreachable(e.to_string()),
    }
}

/// What connecting found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// The connection that was there.
    Same,
    /// A new connection to the chain the node knew (or a first one).
    New,
    /// The chain's genesis changed: it was reset, all it held is gone.
    Reset { was: String, now: String },
}

/// The node's entry on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: u32,
    /// Whether it holds what the node would register now.
    pub same: bool,
}

/// A delivered uptime report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// How far the node's clock is off the chain's (node minus chain), when
    /// the chain's time was read.
    pub skew_secs: Option<i64>,
}

/// TFChain, connected or not.
pub struct TfchainBackend {
    url: String,
    key: SigningKey,
    pub location: Location,
    chain: Option<Box<Tfchain>>,
    /// The connection that failed, kept for its unconfirmed submission.
    lost: Option<Box<Tfchain>>,
    genesis: Option<String>,
}

impl std::fmt::Debug for TfchainBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TfchainBackend")
            .field("url", &self.url)
            .field("connected", &self.chain.is_some())
            .field("genesis", &self.genesis)
            .finish()
    }
}

impl TfchainBackend {
    pub fn new(url: &str, key: SigningKey, location: Location) -> Self {
        Self {
            url: url.to_owned(),
            key,
            location,
            chain: None,
            lost: None,
            genesis: None,
        }
    }

    /// The genesis hash of the chain last connected to.
    pub fn genesis(&self) -> Option<String> {
        self.genesis.clone()
    }

    fn chain(&self) -> Result<&Tfchain, BackendError> {
        self.chain
            .as_deref()
            .ok_or_else(|| BackendError::Unreachable("not connected".to_owned()))
    }
}

/// One of the two registries.
#[derive(Debug)]
pub enum Backend {
    Embedded(Box<EmbeddedClient>),
    Tfchain(Box<TfchainBackend>),
}

impl Backend {
    /// Connects if not connected; says whether the chain is the one the
    /// node knew.
    pub async fn connect(&mut self) -> Result<Connected, BackendError> {
        let Backend::Tfchain(t) = self else {
            return Ok(Connected::Same);
        };
        if t.chain.is_some() {
            return Ok(Connected::Same);
        }
        let chain = Tfchain::connect_within(&t.url, t.key.clone(), CONNECT_DEADLINE).await?;
        let genesis = chain.genesis();
        let found = match t.genesis.replace(genesis.clone()) {
            Some(was) if was != genesis => {
                t.lost = None;
                Connected::Reset { was, now: genesis }
            }
            _ => {
                if let Some(lost) = t.lost.take() {
                    chain.carry_pending(&lost);
                }
                Connected::New
            }
        };
        t.chain = Some(Box::new(chain));
        Ok(found)
    }

    /// Drops a connection that failed; the next [`Backend::connect`] makes
    /// a new one.
    pub fn disconnect(&mut self) {
        if let Backend::Tfchain(t) = self
            && let Some(chain) = t.chain.take()
        {
            t.lost = Some(chain);
        }
    }

    pub fn is_tfchain(&self) -> bool {
        matches!(self, Backend::Tfchain(_))
    }

    /// The account that owns farm `farm_id`; needs no funds.
    pub async fn farmer(&self, farm_id: u32) -> Result<String, BackendError> {
        match self {
            Backend::Embedded(client) => {
                let farm = client
                    .farm(farm_id)
                    .await
                    .map_err(embedded)?
                    .ok_or(BackendError::NoFarm(farm_id))?;
                Ok(client.twin(farm.twin_id).await.map_err(embedded)?.account)
            }
            Backend::Tfchain(t) => t
                .chain()?
                .farm_owner(farm_id)
                .await?
                .ok_or(BackendError::NoFarm(farm_id)),
        }
    }

    /// The node's twin, made if missing.
    pub async fn twin(&self, account: &str) -> Result<u32, BackendError> {
        match self {
            Backend::Embedded(client) => {
                let twin = client.ensure_twin().await.map_err(embedded)?;
                if twin.account != account {
                    return Err(BackendError::Transient(format!(
                        "the registry answered twin {} of {}, not of {account}",
                        twin.id, twin.account
                    )));
                }
                Ok(twin.id)
            }
            Backend::Tfchain(t) => Ok(t.chain()?.ensure_twin(None).await?),
        }
    }

    /// Whether `twin` is still the twin of `account` (read only): a chain
    /// restarted empty, or a registry that lost its state, no longer has it.
    pub async fn has_twin(&self, account: &str, twin: u32) -> Result<bool, BackendError> {
        match self {
            Backend::Embedded(client) => match client.twin(twin).await {
                Ok(t) => Ok(t.account == account),
                Err(grove_daemon::client::ClientError::Status { status, .. })
                    if status == hyper::StatusCode::NOT_FOUND =>
                {
                    Ok(false)
                }
                Err(e) => Err(embedded(e)),
            },
            Backend::Tfchain(t) => Ok(t.chain()?.twin().await? == Some(twin)),
        }
    }

    /// The node's entry, and whether it holds what `wanted` and `mesh` say.
    pub async fn registered(
        &self,
        wanted: &NodeRegistration,
        mesh: Option<&MeshInfo>,
    ) -> Result<Option<Registered>, BackendError> {
        match self {
            Backend::Embedded(client) => {
                let nodes = client.nodes(wanted.farm_id).await.map_err(embedded)?;
                Ok(nodes
                    .into_iter()
                    .find(|n| n.registration.twin_id == wanted.twin_id)
                    .map(|n| Registered {
                        id: n.id,
                        same: n.registration == *wanted && n.mesh.as_ref() == mesh,
                    }))
            }
            Backend::Tfchain(t) => {
                let chain = t.chain()?;
                let Some(id) = chain.node_of_twin(wanted.twin_id).await? else {
                    return Ok(None);
                };
                let record = chain.node_record(id).await?;
                let want = NodeRecord::wanted(wanted, &t.location);
                if let Some(r) = &record
                    && *r != want
                {
                    tracing::info!(node = id, chain = ?r, node_has = ?want, "the chain's record differs from the node");
                }
                Ok(Some(Registered {
                    id,
                    same: record.as_ref() == Some(&want),
                }))
            }
        }
    }

    /// The registry's rules, checked before anything is sent.
    pub fn check(&self, r: &NodeRegistration) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(_) => Ok(()),
            Backend::Tfchain(_) => tfchain_rules(r),
        }
    }

    /// Creates the node, or updates entry `existing`; answers its id.
    pub async fn register(
        &self,
        registration: &NodeRegistration,
        mesh: Option<&MeshInfo>,
        existing: Option<u32>,
    ) -> Result<u32, BackendError> {
        self.check(registration)?;
        match self {
            Backend::Embedded(client) => client
                .register(registration, mesh)
                .await
                .map(|n| n.id)
                .map_err(embedded),
            Backend::Tfchain(t) => {
                let chain = t.chain()?;
                match existing {
                    Some(id) => {
                        chain.update_node(id, registration, &t.location).await?;
                        Ok(id)
                    }
                    None => Ok(chain
                        .register(registration.twin_id, registration, &t.location)
                        .await?),
                }
            }
        }
    }

    /// Delivers `report`. On TFChain the report proves the node is up now:
    /// it carries the uptime at delivery, and the hint is the node's clock,
    /// or the chain's when they differ by more than [`MAX_CLOCK_SKEW_SECS`].
    pub async fn report_uptime(
        &self,
        node: u32,
        report: &UptimeReport,
    ) -> Result<Delivered, BackendError> {
        match self {
            Backend::Embedded(client) => client
                .report_uptime(node, report)
                .await
                .map(|_| Delivered { skew_secs: None })
                .map_err(embedded),
            Backend::Tfchain(t) => {
                let chain = t.chain()?;
                let now = crate::clock::unix_ms() / 1000;
                let uptime = report.uptime + now.saturating_sub(report.timestamp);
                let chain_now = chain.chain_time().await?;
                let skew = i64::try_from(now).unwrap_or(i64::MAX)
                    - i64::try_from(chain_now).unwrap_or(i64::MAX);
                let hint = if skew.unsigned_abs() > MAX_CLOCK_SKEW_SECS {
                    tracing::warn!(
                        skew_secs = skew,
                        "the node's clock is off the chain's: the uptime hint is the chain's time"
                    );
                    chain_now
                } else {
                    now
                };
                chain.report_uptime(uptime, hint).await?;
                Ok(Delivered {
                    skew_secs: Some(skew),
                })
            }
        }
    }

    /// Contract `id`, or `None` when there is none (on TFChain a cancelled
    /// contract is removed from storage, so it reads as `None` there).
    pub async fn contract(&self, id: u64) -> Result<Option<NodeContract>, BackendError> {
        match self {
            Backend::Embedded(client) => client.contract(id).await.map_err(embedded),
            Backend::Tfchain(t) => Ok(t.chain()?.contract(id).await?),
        }
    }

    /// The active (Created or GracePeriod) contracts on node `node_id`.
    pub async fn node_contracts(&self, node_id: u32) -> Result<Vec<NodeContract>, BackendError> {
        let contracts = match self {
            Backend::Embedded(client) => client.node_contracts(node_id).await.map_err(embedded)?,
            Backend::Tfchain(t) => t.chain()?.active_node_contracts(node_id).await?,
        };
        // A registry that answers another node's contract, or a dead one,
        // among this node's is not believed.
        let (ours, others): (Vec<_>, Vec<_>) = contracts
            .into_iter()
            .partition(|c| c.node_id == node_id && c.state.is_active());
        for c in &others {
            tracing::warn!(
                contract = c.contract_id,
                node = c.node_id,
                state = c.state.as_str(),
                asked = node_id,
                "the registry listed a contract that is not an active one of this node; left out"
            );
        }
        Ok(ours)
    }

    /// Twin `id` with its account key, or `None` when there is no such
    /// twin.
    pub async fn twin_key(&self, id: u32) -> Result<Option<TwinKey>, BackendError> {
        match self {
            Backend::Embedded(client) => client.twin_key(id).await.map_err(embedded),
            Backend::Tfchain(t) => Ok(t.chain()?.twin_key(id).await?),
        }
    }

    /// Delivers what node `node`'s contracts use.
    pub async fn report_contract_resources(
        &self,
        node: u32,
        reports: &[ContractResources],
    ) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(client) => client
                .report_contract_resources(node, reports)
                .await
                .map(drop)
                .map_err(embedded),
            Backend::Tfchain(t) => {
                let uses: Vec<crate::tfchain::calls::ContractUse> = reports
                    .iter()
                    .map(|r| crate::tfchain::calls::ContractUse {
                        contract_id: r.contract_id,
                        used: r.used,
                    })
                    .collect();
                t.chain()?.report_contract_resources(&uses).await?;
                Ok(())
            }
        }
    }

    /// Sends every event about node `node_id`'s contracts until the
    /// connection ends (TFChain). The embedded registry has no events: the
    /// future never ends, and its readers poll.
    pub async fn follow_contract_events(
        &self,
        node_id: u32,
        to: tokio::sync::mpsc::Sender<crate::tfchain::client::ChainEvent>,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(_) => std::future::pending().await,
            Backend::Tfchain(t) => Ok(t.chain()?.follow_events(node_id, to).await?),
        }
    }

    /// The region's nodes' mesh details, where the registry keeps them.
    pub async fn peers(&self, farm_id: u32) -> Option<Vec<MeshInfo>> {
        match self {
            Backend::Embedded(client) => {
                let (nodes, twins) = tokio::join!(client.nodes(farm_id), client.twins());
                Some(crate::registry::client::derive_peer_keys(
                    nodes.ok()?,
                    &twins.ok()?,
                ))
            }
            Backend::Tfchain(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::Resources;

    fn registration(sru: u64, mru: u64, cru: u64) -> NodeRegistration {
        NodeRegistration {
            farm_id: 1,
            twin_id: 2,
            resources: Resources {
                hru: 0,
                sru,
                cru,
                mru,
            },
            interfaces: vec![],
            serial_number: String::new(),
            virtualized: true,
            secure_boot: false,
        }
    }

    #[test]
    fn tfchain_rules_are_checked_before_sending_and_say_what_to_change() {
        let small = tfchain_rules(&registration(4 * GIB, 8 * GIB, 2)).expect_err("4 GiB SSD");
        assert_eq!(small.kind(), "InvalidSRUInput");
        let text = small.to_string();
        assert!(
            text.contains("100 GiB") && text.contains("4.0 GiB"),
            "{text}"
        );
        assert_eq!(
            tfchain_rules(&registration(100 * GIB, GIB, 2))
                .expect_err("1 GiB memory")
                .kind(),
            "InvalidMRUInput"
        );
        assert_eq!(
            tfchain_rules(&registration(100 * GIB, 2 * GIB, 0))
                .expect_err("no CPU")
                .kind(),
            "InvalidCRUInput"
        );
        tfchain_rules(&registration(100 * GIB, 2 * GIB, 1)).expect("the minimum passes");
    }

    #[test]
    fn refusals_are_sorted_into_transient_and_permanent() {
        let permanent: BackendError = TfchainError::Refused {
            call: "TfgridModule.create_node".into(),
            error: "InvalidSRUInput".into(),
        }
        .into();
        assert!(
            matches!(permanent, BackendError::Permanent { .. }),
            "{permanent:?}"
        );
        assert!(permanent.to_string().contains("100 GiB"), "{permanent}");
        let clock: BackendError = TfchainError::Refused {
            call: "TfgridModule.report_uptime_v2".into(),
            error: "InvalidTimestampHint".into(),
        }
        .into();
        assert!(matches!(clock, BackendError::Transient(_)), "{clock:?}");
        let gone: BackendError = TfchainError::Disconnected("background task closed".into()).into();
        assert!(matches!(gone, BackendError::Unreachable(_)), "{gone:?}");
        let stalled: BackendError = TfchainError::Unconfirmed {
            call: "x".into(),
            nonce: 3,
            secs: 60,
        }
        .into();
        assert!(
            matches!(stalled, BackendError::Unreachable(_)),
            "{stalled:?}"
        );
        let unfunded: BackendError = TfchainError::Unfunded {
            account: "5Abc".into(),
        }
        .into();
        assert_eq!(unfunded, BackendError::Unfunded("5Abc".into()));
    }
}
