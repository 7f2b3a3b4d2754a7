//! The two registries behind one interface: the embedded registry and
//! TFChain.
//!
//! Both hold twins, farms, nodes and uptime. What differs is kept here: the
//! embedded registry keys everything by account over HTTP; TFChain needs a
//! funded account, terms accepted before a twin, a location on every node,
//! and an uptime hint within 60 s of chain time (so a report delivered after
//! an outage carries the uptime at delivery and the time of delivery).

use crate::registry::client::EmbeddedClient;
use crate::registry::model::{MeshInfo, NodeRegistration, UptimeReport};
use crate::tfchain::calls::Location;
use crate::tfchain::client::{Tfchain, TfchainError};

/// Why the registry did not take something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach the registry: {0}")]
    Unreachable(String),
    #[error("farm {0} does not exist on the registry")]
    NoFarm(u32),
    #[error("waiting for funds: send TFT to {0}")]
    Unfunded(String),
    #[error("{0}")]
    Refused(String),
}

impl From<TfchainError> for BackendError {
    fn from(e: TfchainError) -> Self {
        match e {
            TfchainError::Unfunded { account } => BackendError::Unfunded(account),
            TfchainError::NoFarm(id) => BackendError::NoFarm(id),
            TfchainError::Connect { .. } | TfchainError::Read { .. } => {
                BackendError::Unreachable(e.to_string())
            }
            TfchainError::Call { .. } | TfchainError::Encode(_) => {
                BackendError::Refused(e.to_string())
            }
        }
    }
}

/// The node's twin and its farm's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub twin: u32,
    pub farmer: String,
}

/// One of the two registries.
#[derive(Debug)]
pub enum Backend {
    Embedded(EmbeddedClient),
    Tfchain {
        chain: Box<Tfchain>,
        location: Location,
    },
}

fn unreachable(e: grove_daemon::client::ClientError) -> BackendError {
    BackendError::Unreachable(e.to_string())
}

impl Backend {
    /// The node's twin (made if missing) and its farm's owner.
    pub async fn prepare(&self, account: &str, farm_id: u32) -> Result<Prepared, BackendError> {
        match self {
            Backend::Embedded(client) => {
                let twin = client.ensure_twin().await.map_err(unreachable)?;
                if twin.account != account {
                    return Err(BackendError::Refused(format!(
                        "the registry answered twin {} of {}, not of {account}",
                        twin.id, twin.account
                    )));
                }
                let farm = client
                    .farm(farm_id)
                    .await
                    .map_err(unreachable)?
                    .ok_or(BackendError::NoFarm(farm_id))?;
                let owner = client.twin(farm.twin_id).await.map_err(unreachable)?;
                Ok(Prepared {
                    twin: twin.id,
                    farmer: owner.account,
                })
            }
            Backend::Tfchain { chain, .. } => {
                let farmer = chain
                    .farm_owner(farm_id)
                    .await?
                    .ok_or(BackendError::NoFarm(farm_id))?;
                let twin = chain.ensure_twin(None).await?;
                Ok(Prepared { twin, farmer })
            }
        }
    }

    /// Registers or updates the node; answers its id.
    pub async fn register(
        &self,
        registration: &NodeRegistration,
        mesh: Option<&MeshInfo>,
    ) -> Result<u32, BackendError> {
        match self {
            Backend::Embedded(client) => client
                .register(registration, mesh)
                .await
                .map(|n| n.id)
                .map_err(unreachable),
            Backend::Tfchain { chain, location } => Ok(chain
                .register(registration.twin_id, registration, location)
                .await?),
        }
    }

    pub async fn report_uptime(
        &self,
        node: u32,
        report: &UptimeReport,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Embedded(client) => client
                .report_uptime(node, report)
                .await
                .map(drop)
                .map_err(unreachable),
            Backend::Tfchain { chain, .. } => {
                let now = crate::clock::unix_ms() / 1000;
                let uptime = report.uptime + now.saturating_sub(report.timestamp);
                Ok(chain.report_uptime(uptime, now).await?)
            }
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
            Backend::Tfchain { .. } => None,
        }
    }
}
