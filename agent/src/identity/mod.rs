//! The node's identity: one ed25519 seed for life.
//!
//! [`keys`] derives everything from the seed (chain account, WireGuard
//! key); [`store`] decides who the node is from the pools this machine made
//! and keeps the seed on the system cache with a copy on every pool of this
//! node. The identity is settled before storaged mounts the cache (it is
//! told the account, and puts the cache only on pools of that account), so
//! a disk moved in from another node never changes who this node is. A
//! node that cannot tell who it is waits, and [`choice`] takes the farmer's
//! signed answer. The seed is never logged and never served.

pub mod alive;
pub mod choice;
pub mod keys;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use storaged::client::StoragedClient;

use self::choice::WaitingReport;
use self::keys::{NodeKeys, Seed};
use self::store::{IdentityReport, PoolDir};

/// The identity once loaded, shared with whoever needs the keys.
#[derive(Debug, Default)]
pub struct Identity {
    report: RwLock<Option<IdentityReport>>,
    keys: RwLock<Option<Arc<NodeKeys>>>,
    /// Why the node has no identity and how the farmer answers, while it
    /// waits.
    waiting: RwLock<Option<WaitingReport>>,
    /// Held by one round of [`Identity::maintain`] or one farmer's choice
    /// at a time; holds the pool labels the identity was last stored for.
    turn: tokio::sync::Mutex<Option<Vec<String>>>,
    cache_dir: OnceLock<PathBuf>,
}

/// The pools storaged has mounted, each with the seed copy it holds.
type Seen = Vec<(PoolDir, Option<Seed>)>;

impl Identity {
    /// An identity given outright, for a host without storage (tools,
    /// tests against a chain).
    pub fn with_seed(seed: &keys::Seed) -> Self {
        Self {
            keys: RwLock::new(Some(Arc::new(seed.keys()))),
            ..Self::default()
        }
    }

    /// Why the node has no identity yet and how the farmer answers, while
    /// it waits for the farmer's choice.
    pub fn waiting(&self) -> Option<WaitingReport> {
        self.waiting
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Settles the node's identity with storaged as soon as it answers,
    /// then keeps a copy on every pool of this node as pools come and go,
    /// and settles again if storaged restarts.
    pub async fn maintain(
        self: Arc<Self>,
        storaged: StoragedClient,
        cache_dir: PathBuf,
        params: crate::boot::BootParams,
    ) {
        let _ = self.cache_dir.set(cache_dir.clone());
        let mut waiting_logged = false;
        loop {
            let result = {
                let mut known_pools = self.turn.lock().await;
                self.step(&storaged, &cache_dir, &params, &mut known_pools)
                    .await
            };
            let pause = match result {
                Ok(Step::Settled) => Duration::from_secs(2),
                Ok(Step::Waiting(others)) => {
                    if !waiting_logged {
                        tracing::warn!(others = ?others, "no identity of this node's own: waiting for the farmer's choice");
                        waiting_logged = true;
                    }
                    Duration::from_secs(2)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "identity not settled yet");
                    Duration::from_millis(100)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The pools storaged has mounted, with the seed each holds, their
    /// labels, and storaged's report of them.
    async fn look(
        storaged: &StoragedClient,
    ) -> Result<(Seen, Vec<String>, Vec<storaged::report::PoolReport>), StepError> {
        let pools = storaged.pools().await?;
        let dirs: Vec<PoolDir> = pools
            .iter()
            .filter(|p| p.is_mounted())
            .map(|p| PoolDir {
                label: p.label.to_string(),
                mount_point: p.mount_point.clone(),
                this_machine: p.this_machine,
            })
            .collect();
        let labels: Vec<String> = dirs.iter().map(|d| d.label.clone()).collect();
        let seen = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .map(|d| {
                    let seed = store::seed_on(&d).unwrap_or_else(|e| {
                        tracing::warn!(pool = %d.label, error = %e, "unreadable seed copy");
                        None
                    });
                    (d, seed)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        Ok((seen, labels, pools))
    }

    async fn step(
        &self,
        storaged: &StoragedClient,
        cache_dir: &std::path::Path,
        params: &crate::boot::BootParams,
        known_pools: &mut Option<Vec<String>>,
    ) -> Result<Step, StepError> {
        let state = storaged.identity().await?;
        let (mut seen, labels, _) = Self::look(storaged).await?;
        if state.settled && known_pools.as_ref() == Some(&labels) && self.keys().is_some() {
            return Ok(Step::Settled);
        }
        let (seed, from_pool) = match store::settle(&seen) {
            store::Settled::Wait { others, adoptable } => {
                match adoptable.filter(|_| !state.settled) {
                    Some((seed, pool)) => match adopt(params, &seed).await {
                        Ok(()) => {
                            // storaged makes the pools of that identity this
                            // machine's once told the account.
                            for (dir, on_pool) in seen.iter_mut() {
                                if on_pool.as_ref() == Some(&seed) {
                                    dir.this_machine = true;
                                }
                            }
                            (seed, Some(pool))
                        }
                        Err(reason) => {
                            storaged.settle(None).await?;
                            let mut others = others;
                            others.push(reason);
                            self.wait(&seen, &state, &others);
                            return Ok(Step::Waiting(others));
                        }
                    },
                    None => {
                        if !state.settled {
                            storaged.settle(None).await?;
                        }
                        self.wait(&seen, &state, &others);
                        return Ok(Step::Waiting(others));
                    }
                }
            }
            settled => store::seed_of(settled)?,
        };
        let account = seed.keys().public().account;
        if state.settled && state.account.as_ref() != Some(&account) {
            return Err(StepError::Mismatch {
                held: state.account.unwrap_or_else(|| "no identity".to_owned()),
                found: account,
            });
        }
        if !state.settled {
            storaged.settle(Some(account)).await?;
        }
        self.finish(storaged, cache_dir, seen, seed, from_pool)
            .await?;
        *known_pools = Some(labels);
        Ok(Step::Settled)
    }

    /// Notes why the node waits, for `/v1/node` and the status.
    fn wait(&self, seen: &Seen, state: &storaged::report::IdentityState, reasons: &[String]) {
        let report = choice::waiting_report(seen, state.machine.as_deref(), reasons);
        *self.waiting.write().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// Stores the settled seed (on the cache storaged has mounted, and on
    /// every pool of this node) and makes it the node's.
    async fn finish(
        &self,
        storaged: &StoragedClient,
        cache_dir: &std::path::Path,
        seen: Seen,
        seed: Seed,
        from_pool: Option<String>,
    ) -> Result<IdentityReport, StepError> {
        let persistent = storaged.capacity().await?.cache.pool.is_some();
        let dir = cache_dir.to_owned();
        let (seed, report) = tokio::task::spawn_blocking(move || {
            store::store(&dir, &seen, seed, from_pool, persistent)
        })
        .await??;
        tracing::info!(
            account = %report.public.account,
            source = ?report.source,
            copies = ?report.copies,
            "node identity"
        );
        for w in &report.warnings {
            tracing::warn!(warning = %w, "node identity");
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(seed.keys()));
        *self.report.write().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        *self.waiting.write().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(report)
    }
}

/// Whether the node may adopt the identity every attached pool holds: only
/// if the registry says that identity's node did not report uptime within
/// the hour. `Err` says why not.
async fn adopt(params: &crate::boot::BootParams, seed: &keys::Seed) -> Result<(), String> {
    let account = seed.keys().public().account;
    let now = crate::clock::unix_ms() / 1000;
    match alive::last_uptime(params, &account).await {
        Ok(last) if alive::alive(last, now) => Err(format!(
            "not adopting account {account}: its node reported uptime {} s ago, within the hour",
            now.saturating_sub(last.unwrap_or(now))
        )),
        Ok(_) => {
            tracing::warn!(account = %account, "adopting the identity every attached pool holds: its node has not reported uptime within the hour");
            Ok(())
        }
        Err(e) => Err(format!(
            "not adopting account {account}: cannot tell whether its node is alive: {e}"
        )),
    }
}

/// Where one round of [`Identity::maintain`] left the node.
enum Step {
    Settled,
    Waiting(Vec<String>),
}

/// Why one round of [`Identity::maintain`] did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot ask storaged: {0}")]
    Storaged(#[from] grove_daemon::client::ClientError),
    #[error("identity task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] store::IdentityError),
    #[error("storaged holds the node to be {held}, but its pools say {found}")]
    Mismatch { held: String, found: String },
}
