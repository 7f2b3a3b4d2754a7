//! A tenant on the registry: the writes of someone who holds a twin key
//! (not a node's), on either backend, for a tenant command line.
//!
//! A tenant makes its twin where the registry needs one, then makes,
//! updates and cancels node contracts and reads them back. On the
//! embedded registry every write is a signed HTTP request (target
//! `registry`); on TFChain it is an extrinsic signed with the same ed25519
//! key (`MultiSignature::Ed25519`), paid by the tenant's account. The URL
//! says which: `http://HOST:PORT` is the embedded registry, `ws://` or
//! `wss://` TFChain. Limits: ed25519 keys only; no public IPs on the
//! embedded registry (its farms have none).

use ed25519_dalek::SigningKey;
use grove_daemon::client::ClientError;

use super::client::EmbeddedClient;
use super::model::{DeploymentHash, NodeContract, TwinKey};
use crate::tfchain::client::{Tfchain, TfchainError};

/// Why a tenant's request failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(
        "{0:?} is not a registry URL: http://HOST:PORT (embedded) or ws(s)://HOST:PORT (TFChain)"
    )]
    Url(String),
    #[error("the embedded registry: {0}")]
    Embedded(#[from] ClientError),
    #[error("TFChain: {0}")]
    Tfchain(#[from] TfchainError),
}

/// A tenant connected to its registry.
pub enum Tenant {
    Embedded(Box<EmbeddedClient>),
    Tfchain(Box<Tfchain>),
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tenant::Embedded(c) => f.debug_tuple("Tenant::Embedded").field(c).finish(),
            Tenant::Tfchain(c) => f.debug_tuple("Tenant::Tfchain").field(c).finish(),
        }
    }
}

/// What TFChain stores as a contract's deployment data: Grove keeps none.
const DEPLOYMENT_DATA: &[u8] = b"";

impl Tenant {
    /// The registry at `url`, written to with the twin key `key`.
    pub async fn connect(url: &str, key: SigningKey) -> Result<Self, TenantError> {
        if url.starts_with("ws://") || url.starts_with("wss://") {
            return Ok(Tenant::Tfchain(Box::new(Tfchain::connect(url, key).await?)));
        }
        EmbeddedClient::new(url, key)
            .map(|c| Tenant::Embedded(Box::new(c)))
            .ok_or_else(|| TenantError::Url(url.to_owned()))
    }

    /// The tenant's SS58 account.
    pub fn account(&self) -> String {
        match self {
            Tenant::Embedded(c) => c.account(),
            Tenant::Tfchain(c) => c.account().to_owned(),
        }
    }

    /// The tenant's twin, made if missing (on TFChain after accepting the
    /// terms; the account needs funds there).
    pub async fn ensure_twin(&self) -> Result<u32, TenantError> {
        match self {
            Tenant::Embedded(c) => Ok(c.ensure_twin().await?.id),
            Tenant::Tfchain(c) => Ok(c.ensure_twin(None).await?),
        }
    }

    /// `create_twin` in the interface's words: the same as
    /// [`Tenant::ensure_twin`], never a second twin.
    pub async fn create_twin(&self) -> Result<u32, TenantError> {
        self.ensure_twin().await
    }

    /// The tenant's twin, if it has one (reads only).
    pub async fn twin_id(&self) -> Result<Option<u32>, TenantError> {
        match self {
            Tenant::Embedded(c) => {
                let account = c.account();
                Ok(c.twins()
                    .await?
                    .into_iter()
                    .find(|t| t.account == account)
                    .map(|t| t.id))
            }
            Tenant::Tfchain(c) => Ok(c.twin().await?),
        }
    }

    /// A node contract on `node_id` for the deployment with
    /// `deployment_hash` (the ASCII of its hex MD5); answers its id.
    pub async fn create_node_contract(
        &self,
        node_id: u32,
        deployment_hash: [u8; 32],
        public_ips: u32,
    ) -> Result<u64, TenantError> {
        let hash = DeploymentHash(deployment_hash);
        match self {
            Tenant::Embedded(c) => {
                let twin = c.ensure_twin().await?;
                Ok(c.create_contract(twin.id, node_id, &hash, public_ips)
                    .await?
                    .contract_id)
            }
            Tenant::Tfchain(c) => Ok(c
                .create_node_contract(node_id, &hash, DEPLOYMENT_DATA, public_ips)
                .await?
                .contract_id),
        }
    }

    /// Sets contract `contract_id`'s deployment hash (the owner only, and
    /// only while the contract is Created).
    pub async fn update_node_contract(
        &self,
        contract_id: u64,
        deployment_hash: [u8; 32],
    ) -> Result<(), TenantError> {
        let hash = DeploymentHash(deployment_hash);
        match self {
            Tenant::Embedded(c) => c.update_contract(contract_id, &hash).await.map(drop)?,
            Tenant::Tfchain(c) => c
                .update_node_contract(contract_id, &hash, DEPLOYMENT_DATA)
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Cancels contract `contract_id` (the owner only).
    pub async fn cancel_contract(&self, contract_id: u64) -> Result<(), TenantError> {
        match self {
            Tenant::Embedded(c) => c.cancel_contract(contract_id).await.map(drop)?,
            Tenant::Tfchain(c) => c.cancel_contract(contract_id).await.map(drop)?,
        }
        Ok(())
    }

    /// Contract `contract_id`. On TFChain a cancelled contract is removed,
    /// so it reads as `None`; the embedded registry keeps it, `Deleted`.
    pub async fn contract(&self, contract_id: u64) -> Result<Option<NodeContract>, TenantError> {
        match self {
            Tenant::Embedded(c) => Ok(c.contract(contract_id).await?),
            Tenant::Tfchain(c) => Ok(c.contract(contract_id).await?),
        }
    }

    /// Twin `id` and its account key.
    pub async fn twin(&self, id: u32) -> Result<Option<TwinKey>, TenantError> {
        match self {
            Tenant::Embedded(c) => Ok(c.twin_key(id).await?),
            Tenant::Tfchain(c) => Ok(c.twin_key(id).await?),
        }
    }
}
