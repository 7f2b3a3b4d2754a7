//! The node on the registry: register, report uptime, never lose a report.
//!
//! Once the identity is loaded the task runs in steps, each again after a
//! failure (backoff capped at [`MAX_BACKOFF`]) and all stopping on shutdown:
//!
//! - **connect**: (re)connects to the registry; a chain whose genesis
//!   changed was reset, so the twin and node are read (and made) again;
//! - **prepare**: reads the farm's owner (no funds needed), then the node's
//!   twin (made if missing);
//! - **register**: registration is state, not a queued report. The node
//!   compares what the registry holds with what it has (capacity from the
//!   host and storaged, interfaces from netd) and sends a registration or
//!   an update only when they differ, and never again an input the registry
//!   refused for good;
//! - **report**: uptime reports wait in a durable [`queue`] for the node to
//!   be registered, without blocking it. On the embedded registry each
//!   report goes out as it was made; on TFChain `reportUptimeV2` carries
//!   only the uptime at delivery, so one report covers the backlog and the
//!   older ones are dropped with the reason logged. A report the registry
//!   refuses for good is dropped, logged, never silently.
//!
//! Queue files are written and scanned off the async runtime.

pub mod backend;
pub mod contracts;
pub mod queue;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grove_daemon::latest::Latest;
use grove_daemon::shutdown::Shutdown;

use serde::{Deserialize, Serialize};

use crate::boot::{BootParams, ChainBackend};
use crate::identity::Identity;
use crate::registry::client::EmbeddedClient;
use crate::registry::model::{
    ContractResources, Interface, MeshInfo, NodeRegistration, Resources, UptimeReport,
};
use backend::{Backend, BackendError, Connected, TfchainBackend};
use queue::{Queue, Report};

/// `[chain]` in `agent.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// How often uptime is reported.
    pub uptime_interval_secs: u64,
    /// The durable report queue.
    pub queue_dir: PathBuf,
    /// Where the node is; TFChain wants it on every node.
    pub location: LocationConfig,
}

/// `[chain.location]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocationConfig {
    pub city: String,
    pub country: String,
    pub latitude: String,
    pub longitude: String,
}

impl Default for LocationConfig {
    fn default() -> Self {
        Self {
            city: "Unknown".to_owned(),
            country: "Unknown".to_owned(),
            latitude: "0".to_owned(),
            longitude: "0".to_owned(),
        }
    }
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            uptime_interval_secs: 40 * 60,
            queue_dir: Path::new(grove_daemon::CACHE_DIR).join("agent/reports"),
            location: LocationConfig::default(),
        }
    }
}

/// `[mesh]` in `agent.toml`: how this node joins the region's mesh.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    pub enabled: bool,
    /// The region's ULA /48.
    pub prefix: String,
    pub listen_port: u16,
    /// Whether other nodes can reach this one at its LAN address.
    pub public_endpoint: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "fd47:726f:7665::/48".to_owned(),
            listen_port: 7777,
            public_endpoint: true,
        }
    }
}

/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a node needs at least to register on TFChain and report for months.
pub const FUNDS_NEEDED: &str = "1 TFT";

/// `GET /v1/chain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainStatus {
    pub backend: Option<ChainBackend>,
    pub url: Option<String>,
    pub account: Option<String>,
    pub farm_id: Option<u32>,
    /// The account that owns the farm: the only one that may change the node.
    pub farmer: Option<String>,
    pub twin_id: Option<u32>,
    pub node_id: Option<u32>,
    pub last_uptime_report: Option<UptimeReport>,
    pub queue_length: usize,
    /// Region peers handed to netd's `mesh0`.
    pub mesh_peers: usize,
    /// `not needed` for the embedded registry; on TFChain, `funded` or
    /// `waiting for funds: send at least 1 TFT to <account>`.
    pub funds: String,
    pub error: Option<String>,
    /// Whether the registry answers.
    pub connected: bool,
    /// Since when (unix seconds) the registry does not answer.
    pub unreachable_since: Option<u64>,
    /// A refusal for good, and what to change.
    pub refusal: Option<String>,
    /// The node's clock minus the chain's, in seconds, when last read.
    pub clock_skew_secs: Option<i64>,
    /// When (unix seconds) a report was last delivered.
    pub last_report_at: Option<u64>,
    /// When (unix seconds) the oldest queued report was made.
    pub oldest_queued_at: Option<u64>,
    pub uptime_interval_secs: u64,
    /// Refusals and failures since the agent started, by kind.
    pub refusals: BTreeMap<String, u64>,
    /// The chain's genesis hash, where there is one.
    pub genesis: Option<String>,
}

impl ChainStatus {
    /// What is wrong with the node on the registry, in words a farmer can
    /// act on; empty when nothing is.
    pub fn problems(&self, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        if self.backend.is_none() {
            return out;
        }
        // A node booted without a farm or registry has nothing to report
        // to; `/v1/chain` says so, and the node itself may be fine.
        if self.url.is_none() || self.farm_id.is_none() {
            return out;
        }
        if let Some(since) = self.unreachable_since {
            out.push(format!(
                "chain: cannot reach the registry at {} for {} s: {}",
                self.url.as_deref().unwrap_or("?"),
                now.saturating_sub(since),
                self.error.as_deref().unwrap_or("no answer")
            ));
        }
        if self.funds.starts_with("waiting for funds") {
            out.push(format!("chain: {}", self.funds));
        }
        if let Some(r) = &self.refusal {
            out.push(format!("chain: {r}"));
        }
        if let Some(skew) = self.clock_skew_secs
            && skew.unsigned_abs() > backend::MAX_CLOCK_SKEW_SECS
        {
            out.push(format!(
                "chain: the node's clock is off the chain's by {skew} s; uptime reports use the chain's time: check the node's time source"
            ));
        }
        let late = 2 * self.uptime_interval_secs.max(1);
        if let Some(oldest) = self.oldest_queued_at
            && now.saturating_sub(oldest) > late
        {
            out.push(format!(
                "chain: {} report(s) queued, the oldest for {} s (over 2 intervals)",
                self.queue_length,
                now.saturating_sub(oldest)
            ));
        }
        out
    }
}

/// How long after start the node waits for its LAN address before it
/// registers without a mesh endpoint.
const MESH_GRACE: Duration = Duration::from_secs(60);

/// The chain task's shared status.
#[derive(Debug)]
pub struct Chain {
    status: Latest<ChainStatus>,
    started: Instant,
    /// The report queue, once the task opened it.
    queue: std::sync::OnceLock<Queue>,
    /// Wakes the task when a report is queued from outside.
    wake: tokio::sync::Notify,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            status: Latest::default(),
            started: Instant::now(),
            queue: std::sync::OnceLock::new(),
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// What the registration is made from, asked anew before each one.
#[derive(Debug)]
pub struct Sources {
    pub identity: Arc<Identity>,
    pub storaged: storaged::client::StoragedClient,
    pub netd: netd::client::NetdClient,
    pub proc_root: PathBuf,
    pub mesh: MeshConfig,
}

/// What the node registers: its registration and where the mesh reaches it.
type Wanted = (NodeRegistration, Option<MeshInfo>);

/// What the task knows of the node on the registry.
#[derive(Debug, Default)]
struct Known {
    farmer: Option<String>,
    twin: Option<u32>,
    node: Option<u32>,
    /// What the registry holds, as far as the node knows.
    registered: Option<Wanted>,
    /// What the registry refused for good: not sent again.
    refused: Option<Wanted>,
    /// A node was just created: its first uptime goes out now, not at the
    /// next interval.
    report_now: bool,
    /// When the twin and node were last read back from the registry.
    verified: Option<Instant>,
    /// What the node last sent.
    sent: Option<Wanted>,
}

/// How often the node reads its twin and node back from the registry, to
/// notice a registry that lost them (or a connection that died quietly).
const VERIFY_EVERY: Duration = Duration::from_secs(15);

/// Capped exponential backoff.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_secs(1))
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }

    fn reset(&mut self) {
        self.0 = Duration::from_secs(1);
    }
}

/// A queue operation, off the async runtime.
async fn blocking<T: Send + 'static>(
    queue: &Queue,
    op: impl FnOnce(&Queue) -> Result<T, queue::QueueError> + Send + 'static,
) -> Result<T, String> {
    let queue = queue.clone();
    match tokio::task::spawn_blocking(move || op(&queue)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the queue task failed: {e}")),
    }
}

impl Chain {
    pub fn status(&self) -> ChainStatus {
        self.status.get()
    }

    fn update(&self, f: impl FnOnce(&mut ChainStatus)) {
        self.status.update(f);
    }

    fn fail(&self, error: String) {
        tracing::warn!(error = %error, "registry");
        self.update(|s| s.error = Some(error));
    }

    /// Records why the registry did not take something; a lost connection
    /// is dropped, to be made again.
    /// The value of a registry call, or `None` once its failure is noted.
    fn value_of<T>(&self, backend: &mut Backend, result: Result<T, BackendError>) -> Option<T> {
        result.map_err(|e| self.failed(backend, &e)).ok()
    }

    fn failed(&self, backend: &mut Backend, e: &BackendError) {
        let now = crate::clock::unix_ms() / 1000;
        self.update(|s| {
            *s.refusals.entry(e.kind().to_owned()).or_default() += 1;
            match e {
                BackendError::Unreachable(_) => {
                    s.connected = false;
                    s.unreachable_since.get_or_insert(now);
                }
                BackendError::Unfunded(account) => {
                    s.funds =
                        format!("waiting for funds: send at least {FUNDS_NEEDED} to {account}");
                }
                BackendError::Permanent { message, .. } => s.refusal = Some(message.clone()),
                BackendError::NoFarm(_) => s.refusal = Some(e.to_string()),
                BackendError::Transient(_) => {}
            }
        });
        if matches!(e, BackendError::Unreachable(_)) {
            backend.disconnect();
        }
        self.fail(e.to_string());
    }

    /// Runs until `shutdown` trips.
    pub async fn run(
        self: Arc<Self>,
        params: BootParams,
        config: ChainConfig,
        sources: Sources,
        shutdown: Shutdown,
    ) {
        tokio::select! {
            () = self.run_until_stopped(params, config, sources) => {}
            () = shutdown.wait() => tracing::info!("the chain task stops"),
        }
    }

    async fn run_until_stopped(
        self: &Arc<Self>,
        params: BootParams,
        config: ChainConfig,
        mut sources: Sources,
    ) {
        // The command line's word on the mesh endpoint beats agent.toml's:
        // the image's config is the same for every node.
        if let Some(public) = params.mesh_public {
            sources.mesh.public_endpoint = public;
        }
        let kind = params.chain.backend;
        let url = registry_url(&params);
        let interval = Duration::from_secs(config.uptime_interval_secs.max(1));
        self.update(|s| {
            s.backend = Some(kind);
            s.url = url.clone();
            s.farm_id = params.farm_id;
            s.uptime_interval_secs = interval.as_secs();
            s.funds = match kind {
                ChainBackend::Embedded => "not needed".to_owned(),
                ChainBackend::Tfchain => "unknown".to_owned(),
            };
        });
        let (Some(url), Some(farm_id)) = (url, params.farm_id) else {
            self.fail(
                "no registry: the boot parameters name no farm or no registry URL".to_owned(),
            );
            return;
        };
        // The identity is loaded once storaged has mounted the cache, which
        // is where the queue lives.
        let keys = loop {
            if let Some(k) = sources.identity.keys() {
                break k;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let dir = config.queue_dir.clone();
        let queue = match tokio::task::spawn_blocking(move || Queue::open(&dir)).await {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                self.fail(e.to_string());
                return;
            }
            Err(e) => {
                self.fail(format!("opening the queue failed: {e}"));
                return;
            }
        };
        let mut backend = match backend_for(kind, &url, keys.signing(), &config.location) {
            Ok(b) => b,
            Err(e) => {
                self.fail(e);
                return;
            }
        };
        let account = keys.public().account;
        self.update(|s| s.account = Some(account.clone()));
        if self.queue.set(queue.clone()).is_err() {
            tracing::warn!("the chain task ran twice; reports queue to the first one's queue");
        }

        let booted = Instant::now();
        let mut next_uptime = Instant::now();
        let mut next_peers = Instant::now();
        let mut mesh_configured = false;
        let mut last_peers = None;
        let mut known = Known::default();
        let mut backoff = Backoff::new();
        loop {
            if known.report_now && Instant::now() < next_uptime {
                known.report_now = false;
                next_uptime = Instant::now();
            }
            if Instant::now() >= next_uptime {
                let uptime = match sysinfo::System::uptime() {
                    0 => booted.elapsed().as_secs(),
                    secs => secs,
                };
                self.enqueue(&queue, uptime).await;
                next_uptime += interval;
            }
            let ok = self
                .step(
                    &mut backend,
                    &mut known,
                    &queue,
                    &sources,
                    &keys,
                    farm_id,
                    &account,
                )
                .await;
            self.refresh_queue(&queue).await;
            if ok {
                backoff.reset();
                self.answered();
            }
            if sources.mesh.enabled && !mesh_configured {
                mesh_configured = self.configure_mesh(&sources, &keys).await;
            }
            if sources.mesh.enabled && mesh_configured && Instant::now() >= next_peers {
                self.sync_peers(&backend, &sources, farm_id, &keys, &mut last_peers)
                    .await;
                next_peers = Instant::now() + Duration::from_secs(5);
            }
            let wait = if ok {
                Duration::from_secs(5)
            } else {
                backoff.next()
            };
            let sleep = tokio::time::sleep(
                wait.min(
                    next_uptime
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(200)),
                ),
            );
            tokio::select! {
                () = sleep => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Connect, prepare, register, report; false when a step failed.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        backend: &mut Backend,
        known: &mut Known,
        queue: &Queue,
        sources: &Sources,
        keys: &crate::identity::keys::NodeKeys,
        farm_id: u32,
        account: &str,
    ) -> bool {
        if !self.connect(backend, known).await {
            return false;
        }
        if !self.prepare(backend, known, farm_id, account).await {
            return false;
        }
        if !self.register(backend, known, sources, keys, farm_id).await {
            return false;
        }
        self.report(backend, known, queue).await
    }

    /// (Re)connects; a new connection reads the twin and node again, a reset
    /// chain forgets them.
    async fn connect(&self, backend: &mut Backend, known: &mut Known) -> bool {
        let connected = backend.connect().await;
        let Some(connected) = self.value_of(backend, connected) else {
            return false;
        };
        match &connected {
            Connected::Same => {}
            Connected::New => {
                tracing::info!("connected to the registry");
                known.twin = None;
                known.node = None;
                known.registered = None;
            }
            Connected::Reset { was, now } => {
                tracing::warn!(was = %was, now = %now, "the chain was reset: registering again");
                *known = Known::default();
            }
        }
        if connected == Connected::Same {
            return true;
        }
        let genesis = backend_genesis(backend);
        let reset = matches!(connected, Connected::Reset { .. });
        self.update(|s| {
            if reset {
                s.twin_id = None;
                s.node_id = None;
                s.farmer = None;
                s.refusal = None;
            }
            s.genesis = genesis;
            s.error = None;
        });
        self.answered();
        true
    }

    /// The registry answered.
    fn answered(&self) {
        self.update(|s| {
            s.connected = true;
            s.unreachable_since = None;
        });
    }

    /// The farm's owner (read without funds), then the node's twin.
    async fn prepare(
        &self,
        backend: &mut Backend,
        known: &mut Known,
        farm_id: u32,
        account: &str,
    ) -> bool {
        if let Some(twin) = known.twin
            && known.verified.is_none_or(|at| at.elapsed() >= VERIFY_EVERY)
        {
            match backend.has_twin(account, twin).await {
                Ok(true) => {
                    known.verified = Some(Instant::now());
                    // The node is read back too.
                    known.registered = None;
                }
                Ok(false) => {
                    tracing::warn!(
                        twin,
                        "the registry no longer has the node's twin: registering again"
                    );
                    *known = Known::default();
                    self.update(|s| {
                        s.twin_id = None;
                        s.node_id = None;
                        s.refusal = None;
                    });
                }
                Err(e) => {
                    self.failed(backend, &e);
                    return false;
                }
            }
        }
        if known.farmer.is_none() {
            let farmer = backend.farmer(farm_id).await;
            let Some(farmer) = self.value_of(backend, farmer) else {
                return false;
            };
            self.update(|s| s.farmer = Some(farmer.clone()));
            known.farmer = Some(farmer);
        }
        if known.twin.is_none() {
            let twin = backend.twin(account).await;
            let Some(twin) = self.value_of(backend, twin) else {
                return false;
            };
            known.twin = Some(twin);
            known.verified = Some(Instant::now());
            let tfchain = backend.is_tfchain();
            self.update(|s| {
                s.twin_id = Some(twin);
                s.error = None;
                if tfchain {
                    s.funds = "funded".to_owned();
                }
            });
        }
        true
    }

    /// Sends a registration or an update when, and only when, the registry
    /// holds something else than the node has.
    async fn register(
        &self,
        backend: &mut Backend,
        known: &mut Known,
        sources: &Sources,
        keys: &crate::identity::keys::NodeKeys,
        farm_id: u32,
    ) -> bool {
        let Some(twin) = known.twin else {
            return false;
        };
        let registration = match registration(sources, farm_id, twin).await {
            Ok(r) => r,
            Err(e) => {
                self.fail(e);
                return false;
            }
        };
        let mesh = self.mesh_info(sources, keys).await;
        if sources.mesh.enabled && mesh.is_none() && self.started.elapsed() < MESH_GRACE {
            // netd has no LAN address yet: register once it has, rather
            // than twice.
            return false;
        }
        let wanted = (registration, mesh);
        if known.registered.as_ref() == Some(&wanted) {
            return true;
        }
        if known.refused.as_ref() == Some(&wanted) {
            // Refused for good: the uptime waits, the rest goes on.
            return true;
        }
        if let Err(e) = backend.check(&wanted.0) {
            tracing::warn!(refusal = %e, "registration not sent");
            self.failed(backend, &e);
            known.refused = Some(wanted);
            return true;
        }
        let existing = backend.registered(&wanted.0, wanted.1.as_ref()).await;
        let Some(existing) = self.value_of(backend, existing) else {
            return false;
        };
        let id = match existing {
            Some(found) if found.same => found.id,
            // Sent already, and the registry keeps it otherwise than sent:
            // sending it again would change nothing and cost a fee.
            Some(found) if known.sent.as_ref() == Some(&wanted) => {
                tracing::warn!(
                    node = found.id,
                    "the registry holds the node otherwise than it was sent; not sent again"
                );
                found.id
            }
            found => {
                match backend
                    .register(&wanted.0, wanted.1.as_ref(), found.map(|f| f.id))
                    .await
                {
                    Ok(id) => {
                        known.report_now = found.is_none();
                        known.sent = Some(wanted.clone());
                        tracing::info!(
                            node = id,
                            update = found.is_some(),
                            resources = ?wanted.0.resources,
                            "the registry now holds what the node has"
                        );
                        id
                    }
                    Err(e) => {
                        let permanent = matches!(e, BackendError::Permanent { .. });
                        self.failed(backend, &e);
                        if permanent {
                            known.refused = Some(wanted);
                            return true;
                        }
                        return false;
                    }
                }
            }
        };
        known.node = Some(id);
        known.registered = Some(wanted);
        known.refused = None;
        self.update(|s| {
            s.node_id = Some(id);
            s.refusal = None;
            s.error = None;
        });
        true
    }

    async fn enqueue(&self, queue: &Queue, uptime: u64) {
        let pushed = blocking(queue, move |q| {
            let seq = q.next_seq()?;
            q.push(
                seq,
                &Report::Uptime(UptimeReport {
                    seq,
                    uptime,
                    timestamp: crate::clock::unix_ms() / 1000,
                }),
            )
        })
        .await;
        if let Err(e) = pushed {
            self.fail(format!("cannot queue a report: {e}"));
        }
    }

    /// The queue's length and age, for the status.
    async fn refresh_queue(&self, queue: &Queue) {
        if let Ok(entries) = blocking(queue, Queue::reports).await {
            let oldest = entries.iter().find_map(|(_, r)| match r {
                Report::Uptime(u) => Some(u.timestamp),
                Report::Register { .. } | Report::ContractResources { .. } => None,
            });
            self.update(|s| {
                s.queue_length = entries.len();
                s.oldest_queued_at = oldest;
            });
        }
    }

    /// Delivers queued uptime once the node is registered; false when the
    /// registry did not take a report.
    async fn report(&self, backend: &mut Backend, known: &mut Known, queue: &Queue) -> bool {
        let entries = match blocking(queue, Queue::reports).await {
            Ok(e) => e,
            Err(e) => {
                self.fail(e);
                return false;
            }
        };
        let mut uptime = Vec::new();
        let mut resources = Vec::new();
        for (seq, report) in entries {
            match report {
                Report::Uptime(u) => uptime.push((seq, u)),
                Report::ContractResources { reports } => resources.push((seq, reports)),
                Report::Register { .. } => {
                    tracing::info!(
                        report = seq,
                        "dropping a queued registration: registration is kept as state, compared with the registry"
                    );
                    if let Err(e) = blocking(queue, move |q| q.remove(seq)).await {
                        self.fail(e);
                        return false;
                    }
                }
            }
        }
        let Some(node) = known.node else {
            // Reports wait for the registration.
            return true;
        };
        // On TFChain one report, the newest (made in this boot), proves the
        // node up at delivery; the older ones say nothing more.
        if backend.is_tfchain() && uptime.len() > 1 {
            let newest = uptime.len() - 1;
            let (last_seq, last) = uptime[newest];
            tracing::info!(
                reports = newest,
                newest = last_seq,
                "older queued reports superseded: reportUptimeV2 carries only the uptime at delivery"
            );
            uptime = vec![(last_seq, last)];
            if let Err(e) = blocking(queue, move |q| q.remove_through(last_seq - 1)).await {
                self.fail(e);
                return false;
            }
        }
        if !self
            .deliver_resources(backend, node, queue, resources)
            .await
        {
            return false;
        }
        for (seq, report) in uptime {
            match backend.report_uptime(node, &report).await {
                Ok(delivered) => {
                    known.report_now = false;
                    if let Err(e) = blocking(queue, move |q| q.remove(seq)).await {
                        self.fail(e);
                        return false;
                    }
                    let now = crate::clock::unix_ms() / 1000;
                    self.update(|s| {
                        s.last_uptime_report = Some(report);
                        s.last_report_at = Some(now);
                        if delivered.skew_secs.is_some() {
                            s.clock_skew_secs = delivered.skew_secs;
                        }
                        s.error = None;
                    });
                }
                Err(e @ BackendError::Permanent { .. }) => {
                    tracing::error!(report = seq, reason = %e, "uptime report dropped: the registry refuses it for good");
                    self.failed(backend, &e);
                    if let Err(e) = blocking(queue, move |q| q.remove(seq)).await {
                        self.fail(e);
                        return false;
                    }
                    // The node may be gone from the registry: look again.
                    known.registered = None;
                }
                Err(e) => {
                    self.failed(backend, &e);
                    self.fail(format!(
                        "report {seq} not delivered, kept in the queue: {e}"
                    ));
                    return false;
                }
            }
        }
        true
    }

    /// Delivers the newest queued contract resources report; the older
    /// ones are superseded (each report is the whole list, and the
    /// registry keeps only the last per contract). False when the registry
    /// did not take it (kept for the next try); a report refused for good
    /// is dropped with its reason, never sent again.
    async fn deliver_resources(
        &self,
        backend: &mut Backend,
        node: u32,
        queue: &Queue,
        mut resources: Vec<(u64, Vec<ContractResources>)>,
    ) -> bool {
        let Some((seq, reports)) = resources.pop() else {
            return true;
        };
        if !resources.is_empty() {
            tracing::info!(
                reports = resources.len(),
                newest = seq,
                "older contract resources reports superseded by the newest"
            );
            let older: Vec<u64> = resources.iter().map(|(s, _)| *s).collect();
            let removed = blocking(queue, move |q| {
                older.into_iter().try_for_each(|s| q.remove(s))
            })
            .await;
            if let Err(e) = removed {
                self.fail(e);
                return false;
            }
        }
        let outcome = if reports.is_empty() {
            Ok(())
        } else {
            backend.report_contract_resources(node, &reports).await
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    report = seq,
                    contracts = reports.len(),
                    "contract resources delivered"
                );
            }
            Err(e @ BackendError::Permanent { .. }) => {
                tracing::error!(report = seq, reason = %e, "contract resources report dropped: the registry refuses it for good");
                self.failed(backend, &e);
            }
            Err(e) => {
                self.failed(backend, &e);
                self.fail(format!(
                    "contract resources report {seq} not delivered, kept in the queue: {e}"
                ));
                return false;
            }
        }
        if let Err(e) = blocking(queue, move |q| q.remove(seq)).await {
            self.fail(e);
            return false;
        }
        true
    }

    /// Queues what each of the node's contracts uses, for
    /// `reportContractResources`: written durably before this returns,
    /// delivered once the node is registered (a newer report supersedes
    /// it). Fails while the chain task has not opened its queue.
    pub async fn queue_contract_resources(
        &self,
        reports: Vec<ContractResources>,
    ) -> Result<u64, String> {
        let Some(queue) = self.queue.get() else {
            return Err("the chain task has not opened its report queue yet".to_owned());
        };
        let seq = blocking(queue, move |q| {
            let seq = q.next_seq()?;
            q.push(seq, &Report::ContractResources { reports })?;
            Ok(seq)
        })
        .await?;
        self.wake.notify_one();
        Ok(seq)
    }

    /// Where the region reaches this node's `mesh0`: its LAN address.
    async fn mesh_info(
        &self,
        sources: &Sources,
        keys: &crate::identity::keys::NodeKeys,
    ) -> Option<MeshInfo> {
        if !sources.mesh.enabled {
            return None;
        }
        let interfaces = sources.netd.interfaces().await.ok()?;
        let ip = interfaces
            .iter()
            .filter(|i| i.kind == "bridge" || i.kind == "nic")
            .flat_map(|i| i.addresses.iter())
            .filter_map(|a| a.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
            .find(|ip| !ip.is_loopback() && !ip.is_link_local())?;
        Some(MeshInfo {
            public_key: keys.public().wireguard_public_key,
            endpoints: vec![format!("{ip}:{}", sources.mesh.listen_port)],
            public_endpoint: sources.mesh.public_endpoint,
        })
    }

    /// Hands netd the node's WireGuard key; true once netd took it.
    async fn configure_mesh(
        &self,
        sources: &Sources,
        keys: &crate::identity::keys::NodeKeys,
    ) -> bool {
        let request = netd::mesh::input::MeshRequest {
            private_key: keys.wireguard_private_key(),
            listen_port: sources.mesh.listen_port,
            prefix: sources.mesh.prefix.clone(),
            public_endpoint: sources.mesh.public_endpoint,
        };
        match sources.netd.set_mesh(&request).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "netd did not take the mesh configuration yet");
                false
            }
        }
    }

    /// The region's other nodes become `mesh0`'s peers.
    async fn sync_peers(
        &self,
        client: &Backend,
        sources: &Sources,
        farm_id: u32,
        keys: &crate::identity::keys::NodeKeys,
        last: &mut Option<Vec<netd::mesh::input::PeerRequest>>,
    ) {
        let own = keys.public().wireguard_public_key;
        let Some(meshes) = client.peers(farm_id).await else {
            return;
        };
        let peers: Vec<netd::mesh::input::PeerRequest> = meshes
            .into_iter()
            .filter(|m| m.public_key != own)
            .map(|m| netd::mesh::input::PeerRequest {
                public_key: m.public_key,
                endpoints: m.endpoints,
                public_endpoint: m.public_endpoint,
            })
            .collect();
        if last.as_ref() == Some(&peers) {
            return;
        }
        match sources.netd.set_mesh_peers(&peers).await {
            Ok(_) => {
                tracing::info!(peers = peers.len(), "mesh peers updated from the registry");
                self.update(|s| s.mesh_peers = peers.len());
                *last = Some(peers);
            }
            Err(e) => tracing::warn!(error = %e, "netd refused the mesh peers"),
        }
    }
}

/// A connection to the node's registry of kind `kind` at `url`, signing
/// with `key`: one for the chain task, and one each for the readers that
/// must never wait on it (the contract watch, the tenants' requests).
pub fn backend_for(
    kind: ChainBackend,
    url: &str,
    key: &ed25519_dalek::SigningKey,
    location: &LocationConfig,
) -> Result<Backend, String> {
    match kind {
        ChainBackend::Embedded => match EmbeddedClient::new(url, key.clone()) {
            Some(c) => Ok(Backend::Embedded(Box::new(c))),
            None => Err(format!(
                "the embedded registry URL {url:?} is not http://HOST:PORT"
            )),
        },
        ChainBackend::Tfchain => Ok(Backend::Tfchain(Box::new(TfchainBackend::new(
            url,
            key.clone(),
            crate::tfchain::calls::Location {
                city: location.city.clone(),
                country: location.country.clone(),
                latitude: location.latitude.clone(),
                longitude: location.longitude.clone(),
            },
        )))),
    }
}

/// The registry URL the boot parameters name, if any.
pub fn registry_url(params: &BootParams) -> Option<String> {
    params
        .chain
        .url
        .clone()
        .or_else(|| params.chain.run_mode.map(|m| m.chain_url().to_owned()))
}

fn backend_genesis(backend: &Backend) -> Option<String> {
    match backend {
        Backend::Tfchain(t) => t.genesis(),
        Backend::Embedded(_) => None,
    }
}

/// What the node would register now; an error while storaged or netd do
/// not answer, so a half-known node is never registered over a whole one.
async fn registration(
    sources: &Sources,
    farm_id: u32,
    twin_id: u32,
) -> Result<NodeRegistration, String> {
    /// Why the registration waits, with the cause.
    fn waiting_for<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
        move |e| format!("waiting for {what}: {e}")
    }
    let host = tokio::task::spawn_blocking(crate::hostinfo::HostInfo::read)
        .await
        .map_err(|e| format!("reading host facts failed: {e}"))?;
    // Until storaged is ready (the identity settled, this node's pools
    // told apart from others'), its capacity is not yet the node's.
    let ready = sources
        .storaged
        .ready()
        .await
        .map_err(waiting_for("storaged"))?;
    if !ready.ready {
        return Err(waiting_for("storaged")(
            ready.waiting_for.as_deref().unwrap_or("not ready"),
        ));
    }
    let capacity = sources
        .storaged
        .capacity()
        .await
        .map_err(waiting_for("storaged's capacity"))?;
    let interfaces = sources
        .netd
        .interfaces()
        .await
        .map_err(waiting_for("netd's interfaces"))?;
    let node = crate::operator::capacity::node_capacity(&host, Some(&capacity));
    Ok(NodeRegistration {
        farm_id,
        twin_id,
        resources: Resources {
            hru: node.hru.total,
            sru: node.sru.total,
            cru: node.cru.total,
            mru: node.mru.total,
        },
        interfaces: interfaces
            .into_iter()
            .filter(|i| i.kind == "nic" || i.kind == "bridge")
            .map(|i| Interface {
                name: i.name,
                mac: i.mac,
                ips: i.addresses,
            })
            .collect(),
        serial_number: dmi_serial().unwrap_or_else(|| "Not Specified".to_owned()),
        virtualized: virtualized(&sources.proc_root),
        secure_boot: secure_boot(),
    })
}

fn dmi_serial() -> Option<String> {
    let s = std::fs::read_to_string("/sys/class/dmi/id/product_serial").ok()?;
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A hypervisor flag in the CPU's features means a virtual machine.
fn virtualized(proc_root: &std::path::Path) -> bool {
    std::fs::read_to_string(proc_root.join("cpuinfo")).is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    })
}

/// Secure boot is on when the EFI variable says so.
fn secure_boot() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/firmware/efi/efivars") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("SecureBoot-"))
        .and_then(|e| std::fs::read(e.path()).ok())
        .is_some_and(|bytes| bytes.last() == Some(&1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tfchain() -> ChainStatus {
        ChainStatus {
            backend: Some(ChainBackend::Tfchain),
            url: Some("ws://chain:9944".into()),
            farm_id: Some(1),
            funds: "funded".into(),
            connected: true,
            uptime_interval_secs: 100,
            ..ChainStatus::default()
        }
    }

    #[test]
    fn a_healthy_node_has_no_chain_problem() {
        assert!(tfchain().problems(1_000).is_empty());
        let mut s = tfchain();
        s.clock_skew_secs = Some(-30);
        s.oldest_queued_at = Some(800);
        assert!(s.problems(1_000).is_empty(), "{:?}", s.problems(1_000));
    }

    #[test]
    fn every_chain_problem_is_said_in_words_a_farmer_can_act_on() {
        let mut s = tfchain();
        s.connected = false;
        s.unreachable_since = Some(900);
        s.error = Some("connection refused".into());
        s.funds = "waiting for funds: send at least 1 TFT to 5Node".into();
        s.refusal = Some("TFChain refuses a node with less than 100 GiB of SSD (SRU)".into());
        s.clock_skew_secs = Some(-600);
        s.queue_length = 4;
        s.oldest_queued_at = Some(700);
        let all = s.problems(1_000).join("\n");
        for needle in [
            "ws://chain:9944 for 100 s",
            "connection refused",
            "send at least 1 TFT to 5Node",
            "100 GiB of SSD",
            "off the chain's by -600 s",
            "4 report(s) queued, the oldest for 300 s",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert_eq!(s.problems(1_000).len(), 5);
    }

    /// An embedded registry on a free port with one farm, a node of key 2
    /// and a contract of twin key 5 on it; answers the URL, the node's id
    /// and the contract's id.
    async fn registry_with_a_contract(
        dir: &std::path::Path,
    ) -> (String, u32, u64, tokio::task::JoinHandle<()>) {
        use crate::registry::embedded::{Embedded, routes};
        use ed25519_dalek::SigningKey;
        let farmer = SigningKey::from_bytes(&[1; 32]);
        let farmer_account = crate::identity::keys::ss58(&farmer.verifying_key().to_bytes(), 42);
        let r = Embedded::open(&dir.join("r.json"), std::slice::from_ref(&farmer_account))
            .expect("open");
        let owner = r.ensure_twin(&farmer_account, None).expect("twin");
        let farm = r.create_farm("farm-one", owner.id).expect("farm");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, routes(Arc::new(r)))
                .await
                .expect("serve");
        });
        let mut nodes = Vec::new();
        for byte in [2, 3] {
            let node =
                EmbeddedClient::new(&url, SigningKey::from_bytes(&[byte; 32])).expect("client");
            let twin = node.ensure_twin().await.expect("node twin");
            let registration = NodeRegistration {
                farm_id: farm.id,
                twin_id: twin.id,
                resources: Resources::default(),
                interfaces: vec![],
                serial_number: String::new(),
                virtualized: true,
                secure_boot: false,
            };
            nodes.push(node.register(&registration, None).await.expect("node").id);
        }
        let tenant = EmbeddedClient::new(&url, SigningKey::from_bytes(&[5; 32])).expect("client");
        let twin = tenant.ensure_twin().await.expect("tenant twin");
        let hash =
            crate::registry::model::DeploymentHash::parse("0123456789abcdef0123456789abcdef")
                .expect("hash");
        // The contract is on the second node: the first reporting on it is
        // refused for good.
        let contract = tenant
            .create_contract(twin.id, nodes[1], &hash, 0)
            .await
            .expect("contract");
        (url, nodes[1], contract.contract_id, task)
    }

    fn uses(contract_id: u64, cru: u64) -> Vec<ContractResources> {
        vec![ContractResources {
            contract_id,
            used: Resources {
                cru,
                ..Resources::default()
            },
        }]
    }

    #[tokio::test]
    async fn contract_resources_wait_in_the_queue_the_newest_is_delivered_and_a_refusal_for_good_is_dropped()
     {
        let dir = tempfile::tempdir().unwrap();
        let (url, node, contract, task) = registry_with_a_contract(dir.path()).await;
        let chain = Chain::default();
        assert!(
            chain
                .queue_contract_resources(uses(contract, 1))
                .await
                .is_err(),
            "no queue yet"
        );
        let queue = Queue::open(&dir.path().join("queue")).expect("queue");
        chain.queue.set(queue.clone()).expect("first queue");
        chain
            .queue_contract_resources(uses(contract, 1))
            .await
            .expect("queued");
        chain
            .queue_contract_resources(uses(contract, 2))
            .await
            .expect("queued");
        let node_key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let mut known = Known {
            node: Some(node),
            ..Known::default()
        };

        // The registry does not answer: the newest report is kept (the
        // older one says nothing it does not).
        let free = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("address");
        let mut down = Backend::Embedded(Box::new(
            EmbeddedClient::new(&format!("http://{free}"), node_key.clone()).expect("client"),
        ));
        assert!(!chain.report(&mut down, &mut known, &queue).await);
        let kept = queue.reports().expect("reports");
        assert_eq!(
            kept.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            [Report::ContractResources {
                reports: uses(contract, 2)
            }]
        );
        let error = chain.status().error.unwrap_or_default();
        assert!(error.contains("kept in the queue"), "{error}");

        // It answers: the newest goes out, the older is superseded.
        let mut up = Backend::Embedded(Box::new(
            EmbeddedClient::new(&url, node_key).expect("client"),
        ));
        assert!(chain.report(&mut up, &mut known, &queue).await);
        assert!(queue.is_empty());
        let reader = crate::registry::client::RegistryReader::new(&url).expect("reader");
        let stored = reader
            .contract_resources(contract)
            .await
            .unwrap()
            .expect("delivered");
        assert_eq!((stored.node_id, stored.used.cru), (node, 2));

        // Another node reporting on the contract: refused for good, said
        // in words, dropped, never sent again.
        let other_key = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let mut other = Backend::Embedded(Box::new(
            EmbeddedClient::new(&url, other_key).expect("client"),
        ));
        let mut other_known = Known {
            node: Some(node - 1),
            ..Known::default()
        };
        chain
            .queue_contract_resources(uses(contract, 9))
            .await
            .expect("queued");
        assert!(chain.report(&mut other, &mut other_known, &queue).await);
        assert!(queue.is_empty(), "a refusal for good is not kept");
        let refusal = chain.status().refusal.unwrap_or_default();
        assert!(refusal.contains("403"), "{refusal}");
        let stored = reader
            .contract_resources(contract)
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(stored.used.cru, 2, "the refused report changed nothing");
        task.abort();
    }

    #[test]
    fn backoff_is_capped_at_ten_seconds() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10, 10]);
        b.reset();
        assert_eq!(b.next(), Duration::from_secs(1));
    }
}
