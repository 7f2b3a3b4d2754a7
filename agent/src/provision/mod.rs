//! The glue between the registry and `provisiond`: the agent is the only
//! process that talks to the registry, so it tells provisiond the node's
//! id, removes a deployment when its contract is cancelled, and reports
//! what each contract uses.
//!
//! - **The node's id** goes to provisiond (`PUT /v1/node`) once the chain
//!   task knows it, and again whenever it changes or provisiond restarts
//!   without it (checked every [`TICK`]).
//! - **Cancels.** The contract watch ([`crate::chain::contracts`]) says
//!   when a contract leaves the node's active list; the registry is then
//!   asked for the contract itself, and the deployment is removed only if
//!   the contract was cancelled: `Deleted` on the embedded registry, gone
//!   from TFChain while the node's own twin is still there. A registry
//!   that restarted empty forgets contracts without cancelling them: that
//!   is a degraded registry ([`ProvisionStatus::forgotten`]), never a
//!   reason to delete a tenant's data. At start, and every [`RECONCILE`],
//!   every deployment provisiond holds is checked the same way, so a
//!   cancel missed while the agent was down is acted on.
//! - **Usage.** After each change and once at start, provisiond's
//!   per-contract usage goes through the chain task's durable queue
//!   (`reportContractResources`) when it differs from the last one queued,
//!   which is kept in a state file so a restart does not send the same
//!   report again.

pub mod api;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grove_daemon::client::ClientError;
use grove_daemon::latest::Latest;
use grove_daemon::shutdown::Shutdown;
use provisiond::api::DeploymentState;
use provisiond::client::ProvisiondClient;
use serde::{Deserialize, Serialize};

use crate::boot::BootParams;
use crate::chain::backend::{Backend, BackendError};
use crate::chain::contracts::ContractChange;
use crate::chain::{Chain, ChainConfig};
use crate::identity::Identity;
use crate::registry::model::{ContractResources, ContractState, NodeContract, Resources, TwinKey};

/// How often the node id, pending removals and usage are looked at when
/// nothing else happens.
pub const TICK: Duration = Duration::from_secs(10);
/// How often every deployment is checked against the registry.
pub const RECONCILE: Duration = Duration::from_secs(300);
/// The longest a registry read may take.
const READ_DEADLINE: Duration = Duration::from_secs(15);

/// What the glue did last, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionStatus {
    /// The node id provisiond was given.
    pub node_id: Option<u32>,
    /// Contracts whose deployment the node holds but the registry no
    /// longer knows, without a cancel: kept, and the registry is degraded.
    pub forgotten: Vec<u64>,
    /// Cancelled contracts whose removal provisiond has not taken yet.
    pub pending_removals: Vec<u64>,
    /// The sequence number of the last usage report queued (since the
    /// agent started).
    pub last_report: Option<u64>,
    /// How many times the usage was compared with the last report.
    pub usage_checks: u64,
    pub error: Option<String>,
}

impl ProvisionStatus {
    /// What makes the node degraded: deployments whose contracts the
    /// registry lost.
    pub fn problems(&self) -> Vec<String> {
        if self.forgotten.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "the registry no longer knows contract(s) {:?} but did not cancel them: their deployments are kept",
            self.forgotten
        )]
    }
}

/// Reads of the registry on a connection of their own, shared by the
/// tenants' requests and the glue.
#[derive(Debug)]
pub struct RegistryReader {
    tfchain: bool,
    backend: tokio::sync::Mutex<Backend>,
}

impl RegistryReader {
    pub fn new(backend: Backend) -> Self {
        Self {
            tfchain: backend.is_tfchain(),
            backend: tokio::sync::Mutex::new(backend),
        }
    }

    /// Runs one read on a connected backend; a connection that failed or
    /// timed out is dropped, to be made again by the next read.
    async fn read<T>(
        &self,
        op: impl for<'a> FnOnce(
            &'a Backend,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, BackendError>> + Send + 'a>,
        >,
    ) -> Result<T, BackendError> {
        let mut backend = self.backend.lock().await;
        let result = tokio::time::timeout(READ_DEADLINE, async {
            backend.connect().await?;
            op(&backend).await
        })
        .await
        .unwrap_or_else(|_elapsed| {
            Err(BackendError::Unreachable(format!(
                "no answer within {} s",
                READ_DEADLINE.as_secs()
            )))
        });
        if matches!(result, Err(BackendError::Unreachable(_))) {
            backend.disconnect();
        }
        result
    }

    pub async fn contract(&self, id: u64) -> Result<Option<NodeContract>, BackendError> {
        self.read(move |b| Box::pin(b.contract(id))).await
    }

    pub async fn twin_key(&self, id: u32) -> Result<Option<TwinKey>, BackendError> {
        self.read(move |b| Box::pin(b.twin_key(id))).await
    }

    pub async fn node_contracts(&self, node: u32) -> Result<Vec<NodeContract>, BackendError> {
        self.read(move |b| Box::pin(b.node_contracts(node))).await
    }

    pub async fn has_twin(&self, account: String, twin: u32) -> Result<bool, BackendError> {
        self.read(move |b| Box::pin(async move { b.has_twin(&account, twin).await }))
            .await
    }

    fn is_tfchain(&self) -> bool {
        self.tfchain
    }
}

/// The node the glue serves, and how it reads the registry.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    node: u32,
    reader: &'a RegistryReader,
    /// The node's account.
    account: &'a str,
    /// The node's twin, as the chain task knows it.
    own_twin: Option<u32>,
}

/// What the registry says of a contract the node holds a deployment for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Cancelled: the deployment is removed.
    Cancelled,
    /// Still an active contract of this node and twin.
    Active,
    /// Not known, or known otherwise, without a cancel: the registry lost
    /// it. The deployment is kept.
    Forgotten,
}

/// Decides from what the registry answered. `contract` is the registry's
/// contract (`None`: it has none); `own_twin_known` whether the registry
/// still holds the node's own twin (asked on TFChain only, where a
/// cancelled contract is removed from storage).
pub fn verdict(
    contract: Option<&NodeContract>,
    node: u32,
    twin: u32,
    tfchain: bool,
    own_twin_known: Option<bool>,
) -> Verdict {
    match contract {
        Some(c) if c.node_id != node || c.twin_id != twin => Verdict::Forgotten,
        Some(c) if c.state == ContractState::Deleted => Verdict::Cancelled,
        Some(_) => Verdict::Active,
        None if tfchain && own_twin_known == Some(true) => Verdict::Cancelled,
        None => Verdict::Forgotten,
    }
}

/// The glue's shared state: the API's registry reads, and a bell rung
/// after each tenant's change.
#[derive(Debug)]
pub struct Provisioning {
    pub client: ProvisiondClient,
    registry: OnceLock<Arc<RegistryReader>>,
    changed: tokio::sync::Notify,
    status: Latest<ProvisionStatus>,
}

impl Default for Provisioning {
    fn default() -> Self {
        Self::new(ProvisiondClient::default().with_timeout(Duration::from_secs(10)))
    }
}

/// What went wrong while reporting or removing, for the logs and status.
#[derive(Debug, thiserror::Error)]
pub enum GlueError {
    #[error("provisiond: {0}")]
    Provisiond(#[from] ClientError),
    #[error("registry: {0}")]
    Registry(#[from] BackendError),
    #[error("cannot queue the usage report for the registry: {0}")]
    Queue(String),
    #[error("cannot encode the last usage report: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot keep the last usage report: {0}")]
    Dir(#[from] grove_daemon::fsutil::DirError),
    #[error("cannot keep the last usage report: {0}")]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("keeping the last usage report failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Provisioning {
    pub fn new(client: ProvisiondClient) -> Self {
        Self {
            client,
            registry: OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            status: Latest::default(),
        }
    }

    pub fn status(&self) -> ProvisionStatus {
        self.status.get()
    }

    fn update(&self, f: impl FnOnce(&mut ProvisionStatus)) {
        self.status.update(f);
    }

    /// The registry reader, once the node knows its registry and keys.
    pub fn registry(&self) -> Option<Arc<RegistryReader>> {
        self.registry.get().cloned()
    }

    /// A tenant changed a deployment: the usage is looked at again.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Runs until `shutdown` trips.
    pub async fn run(self: Arc<Self>, sources: GlueSources, shutdown: Shutdown) {
        tokio::select! {
            () = self.run_until_stopped(sources, &shutdown) => {}
            () = shutdown.wait() => {}
        }
    }

    async fn run_until_stopped(self: &Arc<Self>, sources: GlueSources, shutdown: &Shutdown) {
        let Some(url) = crate::chain::registry_url(&sources.params) else {
            self.update(|s| s.error = Some("no registry URL in the boot parameters".to_owned()));
            return;
        };
        let keys = loop {
            if let Some(k) = sources.identity.keys() {
                break k;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let kind = sources.params.chain.backend;
        let make =
            || crate::chain::backend_for(kind, &url, keys.signing(), &sources.config.location);
        let (reader, watcher) = match (make(), make()) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                self.update(|s| s.error = Some(e));
                return;
            }
        };
        let reader = Arc::new(RegistryReader::new(reader));
        if self.registry.set(reader.clone()).is_err() {
            tracing::warn!("the provisioning glue ran twice");
        }
        let account = keys.public().account;
        let mut reported = load_reported(&sources.reported).await;
        let mut watcher = Some(watcher);
        loop {
            let node = loop {
                if let Some(id) = sources.chain.status().node_id {
                    break id;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            let backend = match watcher.take() {
                Some(b) => b,
                None => match make() {
                    Ok(b) => b,
                    Err(e) => {
                        self.update(|s| s.error = Some(e));
                        return;
                    }
                },
            };
            self.serve_node(
                node,
                backend,
                &reader,
                &account,
                &sources,
                &mut reported,
                shutdown,
            )
            .await;
        }
    }

    /// Serves node `node` until its id changes (a registry that was reset).
    #[allow(clippy::too_many_arguments)]
    async fn serve_node(
        &self,
        node: u32,
        watcher: Backend,
        reader: &RegistryReader,
        account: &str,
        sources: &GlueSources,
        reported: &mut Option<Vec<ContractResources>>,
        shutdown: &Shutdown,
    ) {
        let (tx, mut changes) = tokio::sync::mpsc::channel(64);
        let watch = crate::chain::contracts::watch(watcher, node, tx, shutdown.clone());
        tokio::pin!(watch);
        let mut pending: BTreeSet<u64> = BTreeSet::new();
        let mut next_reconcile = tokio::time::Instant::now();
        loop {
            if sources.chain.status().node_id != Some(node) {
                tracing::warn!(
                    node,
                    "the node's id on the registry changed; provisioning follows"
                );
                return;
            }
            // Idempotent and local: given on every round, so a provisiond
            // that restarted learns it again within a tick.
            let given = self.give_node(node).await;
            let ctx = Ctx {
                node,
                reader,
                account,
                own_twin: sources.chain.status().twin_id,
            };
            if given && tokio::time::Instant::now() >= next_reconcile {
                match self.reconcile(&ctx, &mut pending).await {
                    Ok(()) => next_reconcile = tokio::time::Instant::now() + RECONCILE,
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the deployments were not checked against the registry yet"
                    ),
                }
            }
            if given {
                self.remove_pending(&ctx, &mut pending).await;
                if let Err(e) = self.report_usage(sources, reported).await {
                    tracing::warn!(error = %e, "contract usage not reported yet");
                }
            }
            tokio::select! {
                change = changes.recv() => match change {
                    Some(ContractChange::Gone(c)) => {
                        tracing::info!(contract = c.contract_id, "a contract left the node's active list; asking the registry why");
                        pending.insert(c.contract_id);
                    }
                    Some(ContractChange::Active(c)) => {
                        tracing::debug!(contract = c.contract_id, "an active contract");
                    }
                    None => return,
                },
                () = &mut watch => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Tells provisiond the node's id; true once it took it.
    async fn give_node(&self, node: u32) -> bool {
        match self.client.set_node(node).await {
            Ok(_) => {
                if self.status().node_id != Some(node) {
                    tracing::info!(node, "provisiond knows the node's id");
                }
                self.update(|s| {
                    s.node_id = Some(node);
                    s.error = None;
                });
                true
            }
            Err(e) => {
                if self.status().node_id.is_some() || self.status().error.is_none() {
                    tracing::warn!(node, error = %e, "provisiond did not take the node's id");
                }
                self.update(|s| {
                    s.node_id = None;
                    s.error = Some(format!("provisiond did not take the node's id: {e}"));
                });
                false
            }
        }
    }

    /// Puts every live deployment whose contract is no longer active on
    /// the node among the ones to look at.
    async fn reconcile(&self, ctx: &Ctx<'_>, pending: &mut BTreeSet<u64>) -> Result<(), GlueError> {
        let active: BTreeSet<u64> = ctx
            .reader
            .node_contracts(ctx.node)
            .await?
            .into_iter()
            .map(|c| c.contract_id)
            .collect();
        let held = self.client.deployments(None).await?;
        for d in held {
            if is_live(d.state) && !active.contains(&d.contract_id) {
                pending.insert(d.contract_id);
            }
        }
        self.remove_pending(ctx, pending).await;
        Ok(())
    }

    /// Asks the registry about each contract in `pending` and removes the
    /// deployments of the cancelled ones; the rest stay pending while the
    /// registry or provisiond does not answer.
    async fn remove_pending(&self, ctx: &Ctx<'_>, pending: &mut BTreeSet<u64>) {
        let mut forgotten = Vec::new();
        for id in pending.clone() {
            match self.settle(ctx, id).await {
                Ok(Some(Verdict::Forgotten)) => {
                    forgotten.push(id);
                    pending.remove(&id);
                }
                Ok(_) => {
                    pending.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(contract = id, error = %e, "a cancel is not settled yet");
                }
            }
        }
        let left: Vec<u64> = pending.iter().copied().collect();
        self.update(|s| {
            for id in &forgotten {
                if !s.forgotten.contains(id) {
                    s.forgotten.push(*id);
                }
            }
            s.pending_removals = left;
        });
    }

    /// Looks at contract `id`: removes its deployment if the contract was
    /// cancelled. `None`: provisiond holds no live deployment of it.
    async fn settle(&self, ctx: &Ctx<'_>, id: u64) -> Result<Option<Verdict>, GlueError> {
        let Ctx {
            node,
            reader,
            account,
            own_twin,
        } = *ctx;
        let held = match self.client.deployment(id).await {
            Ok(d) => d,
            Err(ClientError::Status { status, .. }) if status.as_u16() == 404 => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !is_live(held.state) {
            return Ok(None);
        }
        let contract = reader.contract(id).await?;
        let tfchain = reader.is_tfchain();
        let own_twin = match (&contract, tfchain) {
            (None, true) => Some(self.own_twin_known(reader, account, own_twin).await?),
            _ => None,
        };
        let v = verdict(contract.as_ref(), node, held.twin_id, tfchain, own_twin);
        match v {
            Verdict::Cancelled => {
                match self.client.remove(id).await {
                    Ok(_) => {}
                    // Removed already (409) or unknown (404): nothing to do.
                    Err(ClientError::Status { status, .. })
                        if matches!(status.as_u16(), 404 | 409) => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(
                    contract = id,
                    "the contract was cancelled: its deployment is removed"
                );
                self.update(|s| s.forgotten.retain(|f| *f != id));
                self.changed();
            }
            Verdict::Active => {
                self.update(|s| s.forgotten.retain(|f| *f != id));
            }
            Verdict::Forgotten => tracing::error!(
                contract = id,
                "the registry no longer knows this contract but did not cancel it: the deployment is kept (a registry that restarted empty?)"
            ),
        }
        Ok(Some(v))
    }

    /// Whether the registry still holds the node's own twin (TFChain: a
    /// chain that lost it was reset, and its missing contracts prove
    /// nothing).
    async fn own_twin_known(
        &self,
        reader: &RegistryReader,
        account: &str,
        twin: Option<u32>,
    ) -> Result<bool, BackendError> {
        let Some(twin) = twin else {
            return Ok(false);
        };
        reader.has_twin(account.to_owned(), twin).await
    }

    /// Queues provisiond's usage for `reportContractResources` when it
    /// differs from the last report queued.
    async fn report_usage(
        &self,
        sources: &GlueSources,
        reported: &mut Option<Vec<ContractResources>>,
    ) -> Result<(), GlueError> {
        let now = to_resources(self.client.usage().await?);
        let last = reported.as_deref().unwrap_or(&[]);
        self.update(|s| s.usage_checks += 1);
        if now == last {
            return Ok(());
        }
        if now.is_empty() {
            // Nothing to report (the registry skips cancelled contracts):
            // a call that would only cost a fee on TFChain.
            save_reported(&sources.reported, &now).await?;
            *reported = Some(now);
            return Ok(());
        }
        let seq = sources
            .chain
            .queue_contract_resources(now.clone())
            .await
            .map_err(GlueError::Queue)?;
        save_reported(&sources.reported, &now).await?;
        tracing::info!(
            report = seq,
            contracts = now.len(),
            "contract usage queued for the registry"
        );
        self.update(|s| s.last_report = Some(seq));
        *reported = Some(now);
        Ok(())
    }
}

/// What the glue is made from.
#[derive(Debug)]
pub struct GlueSources {
    pub chain: Arc<Chain>,
    pub identity: Arc<Identity>,
    pub params: BootParams,
    pub config: ChainConfig,
    /// The state file of the last usage report queued.
    pub reported: PathBuf,
}

/// Whether a deployment in `state` still holds anything on the node.
fn is_live(state: DeploymentState) -> bool {
    !matches!(state, DeploymentState::Deleted | DeploymentState::Deleting)
}

/// provisiond's usage as the registry's reports, by contract id.
pub fn to_resources(usage: Vec<provisiond::api::ContractUsage>) -> Vec<ContractResources> {
    let mut out: Vec<ContractResources> = usage
        .into_iter()
        .map(|u| ContractResources {
            contract_id: u.contract_id,
            used: Resources {
                hru: u.hru,
                sru: u.sru,
                cru: u.cru,
                mru: u.mru,
            },
        })
        .collect();
    out.sort_by_key(|r| r.contract_id);
    out
}

/// The last usage report queued, as kept; `None` when none was kept or it
/// cannot be read (then the next report is sent, which is harmless).
async fn load_reported(path: &Path) -> Option<Vec<ContractResources>> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the last usage report");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the last usage report is unreadable; the next one is sent");
            None
        }
    }
}

async fn save_reported(path: &Path, reports: &[ContractResources]) -> Result<(), GlueError> {
    let bytes = serde_json::to_vec(reports).map_err(GlueError::Encode)?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            grove_daemon::fsutil::ensure_dir(dir, None)?;
        }
        Ok(grove_daemon::fsutil::write_atomic(&path, &bytes, 0o600)?)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::DeploymentHash;

    fn contract(node: u32, twin: u32, state: ContractState) -> NodeContract {
        NodeContract {
            contract_id: 7,
            node_id: node,
            twin_id: twin,
            deployment_hash: DeploymentHash([b'a'; 32]),
            public_ips: 0,
            state,
        }
    }

    #[test]
    fn only_a_cancel_removes_a_deployment_never_a_registry_that_forgot() {
        let deleted = contract(1, 2, ContractState::Deleted);
        let created = contract(1, 2, ContractState::Created);
        let grace = contract(1, 2, ContractState::GracePeriod);
        // The embedded registry keeps a cancelled contract, Deleted.
        assert_eq!(
            verdict(Some(&deleted), 1, 2, false, None),
            Verdict::Cancelled
        );
        assert_eq!(verdict(Some(&created), 1, 2, false, None), Verdict::Active);
        assert_eq!(verdict(Some(&grace), 1, 2, true, None), Verdict::Active);
        // Restarted empty: it has no such contract at all.
        assert_eq!(verdict(None, 1, 2, false, None), Verdict::Forgotten);
        // TFChain removes a cancelled contract; a chain that still has the
        // node's twin cancelled it, one that lost the twin was reset.
        assert_eq!(verdict(None, 1, 2, true, Some(true)), Verdict::Cancelled);
        assert_eq!(verdict(None, 1, 2, true, Some(false)), Verdict::Forgotten);
        assert_eq!(verdict(None, 1, 2, true, None), Verdict::Forgotten);
        // An id reused by a registry that restarted: another node or twin.
        assert_eq!(
            verdict(
                Some(&contract(9, 2, ContractState::Deleted)),
                1,
                2,
                false,
                None
            ),
            Verdict::Forgotten
        );
        assert_eq!(
            verdict(
                Some(&contract(1, 3, ContractState::Deleted)),
                1,
                2,
                true,
                None
            ),
            Verdict::Forgotten
        );
    }

    #[tokio::test]
    async fn the_last_report_survives_a_restart_and_an_unreadable_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provision").join("reported.json");
        assert_eq!(load_reported(&path).await, None);
        let reports = to_resources(vec![
            provisiond::api::ContractUsage {
                contract_id: 9,
                cru: 0,
                mru: 0,
                sru: 2048,
                hru: 0,
                public_ips: 0,
            },
            provisiond::api::ContractUsage {
                contract_id: 3,
                cru: 1,
                mru: 4,
                sru: 5,
                hru: 6,
                public_ips: 0,
            },
        ]);
        assert_eq!(
            reports.iter().map(|r| r.contract_id).collect::<Vec<_>>(),
            [3, 9]
        );
        assert_eq!(
            reports[0].used,
            Resources {
                hru: 6,
                sru: 5,
                cru: 1,
                mru: 4
            }
        );
        save_reported(&path, &reports).await.expect("saved");
        assert_eq!(load_reported(&path).await, Some(reports));
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(load_reported(&path).await, None);
    }
}
