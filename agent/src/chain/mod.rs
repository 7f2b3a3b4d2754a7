//! The node on the registry: register, report uptime, never lose a report.
//!
//! Once the identity is loaded the task makes sure the node's twin exists
//! and its farm does, then queues a registration (capacity from the host
//! and storaged, interfaces from netd) and an uptime report, and another
//! uptime report every interval. Reports go through a durable [`queue`] and
//! are delivered in order: the first one that fails stops the delivery
//! until the registry answers again, and then the whole backlog goes out,
//! the outage's uptime proof with it.

pub mod backend;
pub mod queue;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::boot::{BootParams, ChainBackend};
use crate::identity::Identity;
use crate::registry::client::EmbeddedClient;
use crate::registry::model::{Interface, MeshInfo, NodeRegistration, Resources, UptimeReport};
use backend::{Backend, BackendError};
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
            queue_dir: PathBuf::from("/var/cache/grove/agent/reports"),
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

/// `GET /v1/chain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `waiting for funds: send TFT to <account>`.
    pub funds: String,
    pub error: Option<String>,
}

/// The chain task's shared status.
#[derive(Debug, Default)]
pub struct Chain {
    status: RwLock<ChainStatus>,
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

impl Chain {
    pub fn status(&self) -> ChainStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ChainStatus)) {
        f(&mut self.status.write().unwrap_or_else(|e| e.into_inner()));
    }

    fn fail(&self, error: String) {
        tracing::warn!(error = %error, "registry");
        self.update(|s| s.error = Some(error));
    }

    /// Runs until the process ends.
    pub async fn run(self: Arc<Self>, params: BootParams, config: ChainConfig, sources: Sources) {
        let backend = params.chain.backend;
        let url = params
            .chain
            .url
            .clone()
            .or_else(|| params.chain.run_mode.map(|m| m.chain_url().to_owned()));
        self.update(|s| {
            s.backend = Some(backend);
            s.url = url.clone();
            s.farm_id = params.farm_id;
            s.funds = match backend {
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
        let queue = match Queue::open(&config.queue_dir) {
            Ok(q) => q,
            Err(e) => {
                self.fail(e.to_string());
                return;
            }
        };
        let client = match backend {
            ChainBackend::Embedded => match EmbeddedClient::new(&url, keys.signing().clone()) {
                Some(c) => Backend::Embedded(c),
                None => {
                    self.fail(format!(
                        "the embedded registry URL {url:?} is not http://HOST:PORT"
                    ));
                    return;
                }
            },
            ChainBackend::Tfchain => {
                let mut wait = Duration::from_secs(1);
                loop {
                    match crate::tfchain::client::Tfchain::connect(&url, keys.signing().clone())
                        .await
                    {
                        Ok(chain) => {
                            let l = &config.location;
                            break Backend::Tfchain {
                                chain: Box::new(chain),
                                location: crate::tfchain::calls::Location {
                                    city: l.city.clone(),
                                    country: l.country.clone(),
                                    latitude: l.latitude.clone(),
                                    longitude: l.longitude.clone(),
                                },
                            };
                        }
                        Err(e) => self.fail(e.to_string()),
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        };
        let account = keys.public().account;
        self.update(|s| s.account = Some(account.clone()));

        let mut backoff = Duration::from_secs(1);
        let twin_id = loop {
            match self.prepare(&client, &account, farm_id).await {
                Ok(twin) => break twin,
                Err(e) => self.fail(e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        };
        self.update(|s| {
            s.twin_id = Some(twin_id);
            s.error = None;
        });

        let interval = Duration::from_secs(config.uptime_interval_secs.max(1));
        let booted = Instant::now();
        let mut next_uptime = Instant::now();
        let mut next_peers = Instant::now();
        let mut last_registration = None;
        let mut mesh_configured = false;
        let mut last_peers = None;
        loop {
            let registration = registration(&sources, farm_id, twin_id).await;
            let mesh = self.mesh_info(&sources, &keys).await;
            let now = (registration.clone(), mesh.clone());
            if last_registration.as_ref() != Some(&now) {
                self.enqueue(&queue, |_| Report::Register {
                    registration: registration.clone(),
                    mesh: mesh.clone(),
                });
                last_registration = Some(now);
            }
            if Instant::now() >= next_uptime {
                let uptime = host_uptime(&sources.proc_root).unwrap_or(booted.elapsed().as_secs());
                self.enqueue(&queue, |seq| {
                    Report::Uptime(UptimeReport {
                        seq,
                        uptime,
                        timestamp: crate::clock::unix_ms() / 1000,
                    })
                });
                next_uptime += interval;
            }
            let delivered = self.deliver(&client, &queue).await;
            self.update(|s| s.queue_length = queue.len());
            if sources.mesh.enabled && !mesh_configured {
                mesh_configured = self.configure_mesh(&sources, &keys).await;
            }
            if sources.mesh.enabled && mesh_configured && Instant::now() >= next_peers {
                self.sync_peers(&client, &sources, farm_id, &keys, &mut last_peers)
                    .await;
                next_peers = Instant::now() + Duration::from_secs(5);
            }
            let wait = if delivered {
                Duration::from_secs(1)
            } else {
                backoff.min(Duration::from_secs(5))
            };
            tokio::time::sleep(
                wait.min(
                    next_uptime
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(200)),
                ),
            )
            .await;
        }
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

    /// The node's twin, and its farm's owner; says when the node waits for
    /// funds.
    async fn prepare(&self, client: &Backend, account: &str, farm_id: u32) -> Result<u32, String> {
        match client.prepare(account, farm_id).await {
            Ok(prepared) => {
                self.update(|s| {
                    s.farmer = Some(prepared.farmer);
                    if matches!(client, Backend::Tfchain { .. }) {
                        s.funds = "funded".to_owned();
                    }
                });
                Ok(prepared.twin)
            }
            Err(e) => {
                if let BackendError::Unfunded(account) = &e {
                    self.update(|s| s.funds = format!("waiting for funds: send TFT to {account}"));
                }
                Err(e.to_string())
            }
        }
    }

    fn enqueue(&self, queue: &Queue, make: impl FnOnce(u64) -> Report) {
        let pushed = queue.next_seq().and_then(|seq| queue.push(seq, &make(seq)));
        if let Err(e) = pushed {
            self.fail(format!("cannot queue a report: {e}"));
        }
    }

    /// Sends queued reports in order; false when one could not go out.
    async fn deliver(&self, client: &Backend, queue: &Queue) -> bool {
        loop {
            let (seq, report) = match queue.front() {
                Ok(Some(front)) => front,
                Ok(None) => return true,
                Err(e) => {
                    self.fail(e.to_string());
                    return false;
                }
            };
            let sent = match &report {
                Report::Register { registration, mesh } => client
                    .register(registration, mesh.as_ref())
                    .await
                    .map(|node| self.update(|s| s.node_id = Some(node))),
                Report::Uptime(uptime) => match self.status().node_id {
                    Some(node) => client.report_uptime(node, uptime).await.map(|_| {
                        self.update(|s| s.last_uptime_report = Some(*uptime));
                    }),
                    None => {
                        self.fail("uptime queued before the node is registered".to_owned());
                        return false;
                    }
                },
            };
            match sent {
                Ok(()) => {
                    if let Err(e) = queue.remove(seq) {
                        self.fail(e.to_string());
                        return false;
                    }
                    self.update(|s| s.error = None);
                }
                Err(e) => {
                    self.fail(format!(
                        "report {seq} not delivered, kept in the queue: {e}"
                    ));
                    return false;
                }
            }
        }
    }
}

async fn registration(sources: &Sources, farm_id: u32, twin_id: u32) -> NodeRegistration {
    let proc_root = sources.proc_root.clone();
    let host = tokio::task::spawn_blocking(move || crate::hostinfo::HostInfo::read(&proc_root))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading host facts failed");
            crate::hostinfo::HostInfo::default()
        });
    let capacity = sources.storaged.capacity().await.ok();
    let interfaces = sources.netd.interfaces().await.unwrap_or_default();
    let node = crate::operator::capacity::node_capacity(&host, capacity.as_ref());
    NodeRegistration {
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
    }
}

fn host_uptime(proc_root: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_root.join("uptime")).ok()?;
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .map(|s| s as u64)
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
