//! The node's identity: one ed25519 seed for life.
//!
//! [`keys`] derives everything from the seed (chain account, WireGuard
//! key); [`store`] keeps it on the system cache with a copy on every pool,
//! so a dead cache disk does not change the node's account. The seed is
//! never logged and never served.

pub mod keys;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use storaged::client::StoragedClient;
use tokio::sync::watch;

use self::keys::NodeKeys;
use self::store::{IdentityReport, PoolDir};

/// The identity once loaded, shared with whoever needs the keys.
#[derive(Debug, Default)]
pub struct Identity {
    report: RwLock<Option<IdentityReport>>,
    keys: RwLock<Option<Arc<NodeKeys>>>,
}

impl Identity {
    /// An identity given outright, for a host without storage (tools,
    /// tests against a chain).
    pub fn with_seed(seed: &keys::Seed) -> Self {
        Self {
            report: RwLock::new(None),
            keys: RwLock::new(Some(Arc::new(seed.keys()))),
        }
    }

    pub fn report(&self) -> Option<IdentityReport> {
        self.report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn keys(&self) -> Option<Arc<NodeKeys>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the identity once storaged is ready, then keeps a copy on
    /// every pool as pools come and go.
    pub async fn maintain(
        self: Arc<Self>,
        storaged: StoragedClient,
        mut storage_ready: watch::Receiver<bool>,
        cache_dir: PathBuf,
    ) {
        if storage_ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let mut known_pools = None;
        loop {
            let pools = storaged.pools().await;
            let capacity = storaged.capacity().await;
            match (pools, capacity) {
                (Ok(pools), Ok(capacity)) => {
                    let dirs: Vec<PoolDir> = pools
                        .iter()
                        .filter(|p| p.state == storaged::pool::PoolState::Mounted)
                        .map(|p| PoolDir {
                            label: p.label.to_string(),
                            mount_point: p.mount_point.clone(),
                        })
                        .collect();
                    let labels: Vec<String> = dirs.iter().map(|d| d.label.clone()).collect();
                    if known_pools.as_ref() != Some(&labels) {
                        let persistent = capacity.cache.pool.is_some();
                        let dir = cache_dir.clone();
                        let loaded = tokio::task::spawn_blocking(move || {
                            store::load_or_create(&dir, &dirs, persistent)
                        })
                        .await;
                        match loaded {
                            Ok(Ok((seed, report))) => {
                                tracing::info!(
                                    account = %report.public.account,
                                    source = ?report.source,
                                    copies = ?report.copies,
                                    "node identity"
                                );
                                for w in &report.warnings {
                                    tracing::warn!(warning = %w, "node identity");
                                }
                                *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
                                    Some(Arc::new(seed.keys()));
                                *self.report.write().unwrap_or_else(|e| e.into_inner()) =
                                    Some(report);
                                known_pools = Some(labels);
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "cannot store the node identity")
                            }
                            Err(e) => tracing::error!(error = %e, "identity task failed"),
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot ask storaged for pools")
                }
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
}
