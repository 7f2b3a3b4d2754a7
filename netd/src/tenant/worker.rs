//! The tenant network worker: the one task that changes tenant networks.
//!
//! Every request is checked against the other networks of the node
//! (netid, overlapping subnet, listen port, names already taken) before
//! anything is made; a creation or an attachment that fails midway is
//! rolled back by removing everything its names cover, and a network is
//! saved only once it is whole. At start the worker removes namespaces a
//! crash left without a saved network, then restores every saved one
//! through the same convergence as the API, adopting the userspace
//! processes a previous netd left running. Limits: a network whose
//! namespace cannot even be made at start is reported and skipped until
//! the next restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Instant;

use grove_daemon::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use super::build::{self, Env, Live};
use super::input::{Attach, AttachKind, NetworkSpec};
use super::names::{NetId, WorkloadName};
use super::netns::NetnsDir;
use super::network::{Attachment, EgressSlot, Network};
use super::state::StateDir;
use super::view::{self, AttachmentView, NetworkView};
use super::{TenantConfig, TenantError, blocking};
use crate::actor::until;
use crate::netlink::Netlink;
use crate::sysctl::Sysctls;
use crate::wg;
use crate::wg::boringtun::Boringtun;

/// The probe link's name, distinct from the mesh's (both probe at start).
const PROBE: &str = "grove-wgprobe-t";

/// A request to the worker.
#[derive(Debug)]
pub(crate) enum Command {
    Create {
        spec: Box<NetworkSpec>,
        reply: oneshot::Sender<Result<NetworkView, TenantError>>,
    },
    Delete {
        netid: NetId,
        reply: oneshot::Sender<Result<(), TenantError>>,
    },
    List {
        reply: oneshot::Sender<Result<Vec<NetworkView>, TenantError>>,
    },
    Show {
        netid: NetId,
        reply: oneshot::Sender<Result<NetworkView, TenantError>>,
    },
    Attach {
        netid: NetId,
        attach: Attach,
        reply: oneshot::Sender<Result<AttachmentView, TenantError>>,
    },
    Detach {
        netid: NetId,
        name: WorkloadName,
        reply: oneshot::Sender<Result<(), TenantError>>,
    },
}

#[derive(Debug)]
struct Worker {
    env: Env,
    state: StateDir,
    nets: BTreeMap<NetId, Live>,
}

/// Runs the worker until `shutdown` trips or every handle is gone. The
/// userspace processes outlive it.
pub(crate) async fn run(
    config: TenantConfig,
    host: Netlink,
    gate: crate::state::Gate,
    mut inbox: mpsc::Receiver<Command>,
    shutdown: Shutdown,
) {
    if !gate.open(&shutdown).await {
        return;
    }
    let mut worker = Worker::new(config, host).await;
    worker.restore().await;
    loop {
        let due = worker.next_restart();
        tokio::select! {
            command = inbox.recv() => match command {
                Some(command) => worker.handle(command).await,
                None => break,
            },
            (netid, how) = exited(&mut worker.nets) => worker.lost(&netid, &how),
            netid = restart_due(due) => worker.revive(&netid).await,
            () = shutdown.wait() => break,
        }
    }
    if !worker.nets.is_empty() {
        tracing::info!(
            networks = worker.nets.len(),
            "tenant networks left running for the next netd"
        );
    }
}

/// The first network whose userspace process exits, and how it ended.
async fn exited(nets: &mut BTreeMap<NetId, Live>) -> (NetId, String) {
    let waits: Vec<_> = nets
        .iter_mut()
        .filter_map(|(netid, live)| {
            let process = live.process.as_mut()?;
            Some(Box::pin(
                async move { (netid.clone(), process.exited().await) },
            ))
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(waits).await.0
}

async fn restart_due(due: Option<(NetId, tokio::time::Instant)>) -> NetId {
    until(due.as_ref().map(|(_, at)| *at)).await;
    match due {
        Some((netid, _)) => netid,
        None => std::future::pending().await,
    }
}

/// Whether UDP port `port` is free in this namespace.
fn port_free(port: u16) -> Result<(), TenantError> {
    UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .map(drop)
        .map_err(|source| TenantError::PortInUse { port, source })
}

impl Worker {
    async fn new(config: TenantConfig, host: Netlink) -> Self {
        let backend = wg::detect_as(&host, config.backend, PROBE).await;
        let state = StateDir::locate(
            config.state_dir.as_deref(),
            Path::new(grove_daemon::CACHE_DIR),
            Path::new(grove_daemon::RUN_DIR),
        );
        tracing::info!(%backend, state = %state.path().display(), "tenant networks backend chosen");
        Self {
            env: Env {
                config,
                backend,
                dir: NetnsDir::default(),
                sysctls: Sysctls::default(),
                host,
            },
            state,
            nets: BTreeMap::new(),
        }
    }

    fn next_restart(&self) -> Option<(NetId, tokio::time::Instant)> {
        self.nets
            .iter()
            .filter_map(|(netid, live)| Some((netid.clone(), live.restart.due()?)))
            .min_by_key(|(_, at)| *at)
    }

    /// Rebuilds every saved network; removes what no saved network owns.
    async fn restore(&mut self) {
        let state = self.state.clone();
        let loaded = blocking(move || Ok(state.load_all())).await;
        let (networks, errors) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "tenant: cannot read the saved networks");
                return;
            }
        };
        for e in errors {
            tracing::error!(error = %e, "tenant: a saved network is skipped");
        }
        let env = &self.env;
        let known: BTreeSet<String> = networks.iter().map(|n| n.netid().namespace()).collect();
        for ns in env.dir.list("n-") {
            let Some(netid) = ns
                .strip_prefix("n-")
                .and_then(|id| id.parse::<NetId>().ok())
            else {
                continue;
            };
            if known.contains(&ns) {
                continue;
            }
            match build::teardown(env, &netid, None, None, &[]).await {
                Ok(()) => {
                    tracing::warn!(%netid, "removed a network namespace no saved network owns")
                }
                Err(e) => tracing::error!(%netid, error = %e, "cannot remove a leftover network"),
            }
        }
        // Workloads' own namespaces that no saved attachment owns: made
        // just before a crash, before the attachment was saved.
        let owned: BTreeSet<String> = networks
            .iter()
            .flat_map(|n| n.attachments.iter())
            .filter(|a| a.kind == AttachKind::Namespace)
            .map(|a| a.name.namespace())
            .collect();
        for ns in env.dir.list("c-") {
            if owned.contains(&ns) {
                continue;
            }
            let dir = env.dir.clone();
            let name = ns.clone();
            match blocking(move || Ok(dir.delete(&name)?)).await {
                Ok(_) => tracing::warn!(%ns, "removed a workload namespace no attachment owns"),
                Err(e) => {
                    tracing::error!(%ns, error = %e, "cannot remove a leftover workload namespace")
                }
            }
        }
        for network in networks {
            let netid = network.netid().clone();
            let mut live = match build::open(env, network).await {
                Ok(live) => live,
                Err(e) => {
                    tracing::error!(%netid, error = %e, "tenant: cannot restore network");
                    continue;
                }
            };
            match build::converge(env, &mut live).await {
                Ok(()) => tracing::info!(%netid, "tenant network restored"),
                Err(e) => {
                    tracing::error!(%netid, error = %e, "tenant: cannot restore network; retrying");
                    live.restart.schedule();
                }
            }
            self.nets.insert(netid, live);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Create { spec, reply } => {
                let _gone = reply.send(self.create(*spec).await);
            }
            Command::Delete { netid, reply } => {
                let _gone = reply.send(self.delete(&netid).await);
            }
            Command::List { reply } => {
                let _gone = reply.send(self.list().await);
            }
            Command::Show { netid, reply } => {
                let _gone = reply.send(self.show(&netid).await);
            }
            Command::Attach {
                netid,
                attach,
                reply,
            } => {
                let _gone = reply.send(self.attach(&netid, attach).await);
            }
            Command::Detach { netid, name, reply } => {
                let _gone = reply.send(self.detach(&netid, &name).await);
            }
        }
    }

    /// Refuses `spec` if it collides with anything on this node.
    async fn check_new(&self, env: &Env, spec: &NetworkSpec) -> Result<(), TenantError> {
        let netid = &spec.netid;
        if self.nets.contains_key(netid) {
            return Err(TenantError::Exists {
                netid: netid.clone(),
            });
        }
        for (other, live) in &self.nets {
            let theirs = &live.network.spec;
            if theirs.subnet.overlaps(&spec.subnet) {
                return Err(TenantError::Overlap {
                    subnet: spec.subnet,
                    other: other.clone(),
                    other_subnet: theirs.subnet,
                });
            }
            if theirs.listen_port == spec.listen_port {
                return Err(TenantError::PortTaken {
                    port: spec.listen_port,
                    other: other.clone(),
                });
            }
        }
        if env.dir.exists(&netid.namespace()) {
            return Err(TenantError::InUse {
                what: "network namespace",
                name: netid.namespace(),
            });
        }
        for ifname in [netid.wireguard(), netid.egress()] {
            if env.host.link(&ifname).await?.is_some() {
                return Err(TenantError::InUse {
                    what: "interface",
                    name: ifname,
                });
            }
        }
        let port = spec.listen_port;
        blocking(move || port_free(port)).await
    }

    async fn create(&mut self, spec: NetworkSpec) -> Result<NetworkView, TenantError> {
        let env = &self.env;
        self.check_new(env, &spec).await?;
        let used: BTreeSet<EgressSlot> = self.nets.values().map(|l| l.network.slot).collect();
        let slot = EgressSlot::first_free(&used).ok_or(TenantError::SlotsFull)?;
        let netid = spec.netid.clone();
        let network = Network {
            spec,
            slot,
            attachments: Vec::new(),
        };
        let started = Instant::now();
        let mut live = match build::open(env, network).await {
            Ok(live) => live,
            Err(e) => {
                rollback(env, &netid, None).await;
                return Err(e);
            }
        };
        let state = self.state.clone();
        let made = async {
            build::converge(env, &mut live).await?;
            let network = live.network.clone();
            blocking(move || Ok(state.save(&network)?)).await
        }
        .await;
        if let Err(e) = made {
            rollback(env, &netid, Some(live)).await;
            return Err(e);
        }
        tracing::info!(
            %netid,
            subnet = %live.network.spec.subnet,
            public_key = %live.network.spec.public_key,
            took_ms = started.elapsed().as_millis() as u64,
            "tenant network created"
        );
        let answer = network_view(env, &live).await;
        self.nets.insert(netid, live);
        Ok(answer)
    }

    async fn delete(&mut self, netid: &NetId) -> Result<(), TenantError> {
        let env = &self.env;
        let mut live = self
            .nets
            .remove(netid)
            .ok_or_else(|| TenantError::NotFound {
                netid: netid.clone(),
            })?;
        let process = live.process.take();
        let attachments = live.network.attachments.clone();
        let (state, id) = (self.state.clone(), netid.clone());
        let removed = async {
            build::teardown(env, netid, process, Some(&live.inside), &attachments).await?;
            blocking(move || Ok(state.remove(&id)?)).await
        }
        .await;
        match removed {
            Ok(()) => {
                tracing::info!(%netid, "tenant network deleted");
                Ok(())
            }
            Err(e) => {
                // Kept, so that DELETE can be tried again.
                self.nets.insert(netid.clone(), live);
                Err(e)
            }
        }
    }

    async fn list(&mut self) -> Result<Vec<NetworkView>, TenantError> {
        let env = &self.env;
        let mut out = Vec::with_capacity(self.nets.len());
        for live in self.nets.values() {
            out.push(network_view(env, live).await);
        }
        Ok(out)
    }

    async fn show(&mut self, netid: &NetId) -> Result<NetworkView, TenantError> {
        let env = &self.env;
        let live = self.nets.get(netid).ok_or_else(|| TenantError::NotFound {
            netid: netid.clone(),
        })?;
        Ok(network_view(env, live).await)
    }

    async fn attach(
        &mut self,
        netid: &NetId,
        attach: Attach,
    ) -> Result<AttachmentView, TenantError> {
        let env = &self.env;
        for (id, live) in &self.nets {
            if live.network.attachment(&attach.name).is_some() {
                return Err(TenantError::Attached {
                    name: attach.name,
                    netid: id.clone(),
                });
            }
        }
        let live = live_mut(&mut self.nets, netid)?;
        if attach.kind == AttachKind::Veth && env.host.link(&attach.name.veth()).await?.is_some() {
            return Err(TenantError::InUse {
                what: "interface",
                name: attach.name.veth(),
            });
        }
        let address = match attach.address {
            Some(ip) => {
                live.network
                    .check_address(ip)
                    .map_err(|why| TenantError::Address {
                        netid: netid.clone(),
                        why,
                    })?;
                ip
            }
            None => live
                .network
                .next_address()
                .ok_or_else(|| TenantError::SubnetFull {
                    netid: netid.clone(),
                    subnet: live.network.spec.subnet,
                })?,
        };
        if attach.kind == AttachKind::Namespace && env.dir.exists(&attach.name.namespace()) {
            return Err(TenantError::InUse {
                what: "namespace",
                name: attach.name.namespace(),
            });
        }
        let attachment = Attachment {
            name: attach.name,
            kind: attach.kind,
            address,
        };
        let mut network = live.network.clone();
        network.attachments.push(attachment.clone());
        let (state, saved) = (self.state.clone(), network.clone());
        let made = async {
            build::ensure_attachment(env, live, &attachment).await?;
            blocking(move || Ok(state.save(&saved)?)).await
        }
        .await;
        if let Err(e) = made {
            if let Err(undo) = build::remove_attachment(env, live, &attachment).await {
                tracing::error!(%netid, name = %attachment.name, error = %undo, "cannot roll back an attachment");
            }
            return Err(e);
        }
        live.network = network;
        tracing::info!(%netid, name = %attachment.name, kind = %attachment.kind, %address, "workload attached");
        Ok(view::attachment_view(&live.network, &attachment))
    }

    async fn detach(&mut self, netid: &NetId, name: &WorkloadName) -> Result<(), TenantError> {
        let env = &self.env;
        let live = live_mut(&mut self.nets, netid)?;
        let attachment =
            live.network
                .attachment(name)
                .cloned()
                .ok_or_else(|| TenantError::NotAttached {
                    name: name.clone(),
                    netid: netid.clone(),
                })?;
        build::remove_attachment(env, live, &attachment).await?;
        let mut network = live.network.clone();
        network.attachments.retain(|a| &a.name != name);
        let (state, saved) = (self.state.clone(), network.clone());
        blocking(move || Ok(state.save(&saved)?)).await?;
        live.network = network;
        tracing::info!(%netid, %name, "workload detached");
        Ok(())
    }

    /// A network's userspace process died: schedule its rebuild.
    fn lost(&mut self, netid: &NetId, how: &str) {
        let Some(live) = self.nets.get_mut(netid) else {
            return;
        };
        live.process = None;
        let wait = live.restart.lost();
        tracing::error!(
            %netid,
            how,
            retry_in_ms = wait.as_millis() as u64,
            "tenant userspace WireGuard exited; restarting it"
        );
    }

    /// Rebuilds a network whose restart is due.
    async fn revive(&mut self, netid: &NetId) {
        let Some(live) = self.nets.get_mut(netid) else {
            return;
        };
        live.restart.clear();
        match build::converge(&self.env, live).await {
            Ok(()) => tracing::info!(%netid, "tenant network rebuilt"),
            Err(e) => {
                tracing::error!(%netid, error = %e, "tenant: cannot rebuild network; retrying");
                live.restart.schedule();
            }
        }
    }
}

/// Network `netid`, or [`TenantError::NotFound`].
fn live_mut<'a>(
    nets: &'a mut BTreeMap<NetId, Live>,
    netid: &NetId,
) -> Result<&'a mut Live, TenantError> {
    nets.get_mut(netid).ok_or_else(|| TenantError::NotFound {
        netid: netid.clone(),
    })
}

/// Removes what a failed creation made, and says so.
async fn rollback(env: &Env, netid: &NetId, live: Option<Live>) {
    let (process, inside) = match live {
        Some(mut live) => (live.process.take(), Some(live.inside)),
        None => (None, None),
    };
    match build::teardown(env, netid, process, inside.as_ref(), &[]).await {
        Ok(()) => tracing::warn!(%netid, "tenant network creation failed; rolled back"),
        Err(e) => tracing::error!(%netid, error = %e, "cannot roll back a failed tenant network"),
    }
}

/// The answer for `live`, with what its device reports if it can be read.
async fn network_view(env: &Env, live: &Live) -> NetworkView {
    let pid = live.process.as_ref().map(Boringtun::pid);
    let device = match build::read_device(env, live).await {
        Ok(device) => Some(device),
        Err(e) => {
            tracing::warn!(netid = %live.network.netid(), error = %e, "cannot read the tenant WireGuard device");
            None
        }
    };
    view::network_view(&live.network, env.backend, pid, device.as_ref())
}
