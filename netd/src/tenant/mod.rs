//! Tenant networks: one private IPv4 network per deployment network,
//! spanning nodes over WireGuard, isolated from every other tenant.
//!
//! Each network lives in a namespace `n-<netid>` holding the workloads'
//! bridge, its WireGuard interface `w-<netid>` (made in the host namespace
//! and moved in, so its UDP socket stays outside) and the inside end of an
//! egress veth whose traffic is masqueraded twice, in the namespace and
//! again in the host; one worker task owns every network, applies each
//! change as an idempotent convergence (the same path creates, restores
//! after a restart and rebuilds after the userspace process died), rolls
//! back what a failed creation made, and keeps each network's spec on disk.
//! Limits: IPv4 inside the network; peers are set at creation (no update
//! call yet); with userspace WireGuard, `w-<netid>` also has a down
//! placeholder bridge of that name in the host namespace (see
//! `build`).

pub mod api;
mod build;
pub mod firewall;
pub mod input;
pub mod names;
pub mod network;
pub mod state;
pub mod tap;
pub mod view;
mod worker;

pub use crate::{netns, prefix, sysctl};

use std::path::PathBuf;

use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::wg::BackendChoice;
use crate::wg::boringtun::BoringtunError;
use crate::wg::device::DeviceError;

use crate::netlink::{Netlink, NetlinkError};
pub use api::routes;
use firewall::FirewallError;
use input::{Attach, InputError, NetworkSpec};
use names::{NetId, WorkloadName};
use netns::NetnsError;
use prefix::Ipv4Prefix;
use state::StateError;
use sysctl::SysctlError;
use tap::TapError;
use view::{AttachmentView, NetworkView};
use worker::Command;

/// `[tenant]` in `netd.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// `auto` (kernel if it can, else userspace), `kernel` or `userspace`.
    pub backend: BackendChoice,
    /// The `boringtun-cli` binary; searched in `$PATH`, then
    /// `/root/.cargo/bin`, when unset.
    pub boringtun: Option<PathBuf>,
    /// The `nft` binary.
    pub nft: PathBuf,
    /// MTU of every `w-<netid>`.
    pub mtu: u32,
    /// Where the network files live; `netd/networks` in [`grove_daemon::CACHE_DIR`] when
    /// the system cache is mounted, else `/run/grove/netd/networks`, when
    /// unset.
    pub state_dir: Option<PathBuf>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            boringtun: None,
            nft: PathBuf::from("nft"),
            mtu: 1420,
            state_dir: None,
        }
    }
}

/// Why a tenant network request failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("network {netid} already exists")]
    Exists { netid: NetId },
    #[error("no network {netid}")]
    NotFound { netid: NetId },
    #[error("subnet {subnet} overlaps subnet {other_subnet} of network {other} on this node")]
    Overlap {
        subnet: Ipv4Prefix,
        other: NetId,
        other_subnet: Ipv4Prefix,
    },
    #[error("listen_port {port} is the port of network {other} on this node")]
    PortTaken { port: u16, other: NetId },
    #[error("listen_port {port} is in use on this node: {source}")]
    PortInUse {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {name} already exists on this node")]
    InUse { what: &'static str, name: String },
    #[error("no egress address left for another network on this node")]
    SlotsFull,
    #[error("workload {name} is already attached to network {netid}")]
    Attached { name: WorkloadName, netid: NetId },
    #[error("no workload {name} on network {netid}")]
    NotAttached { name: WorkloadName, netid: NetId },
    #[error("network {netid}: {why}")]
    Address { netid: NetId, why: String },
    #[error("subnet {subnet} of network {netid} has no free address left")]
    SubnetFull { netid: NetId, subnet: Ipv4Prefix },
    #[error("the tenant network worker has stopped")]
    Stopped,
    #[error("userspace WireGuard: {0}")]
    Boringtun(#[from] BoringtunError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("tenant network state: {0}")]
    State(#[from] StateError),
    #[error("a blocking tenant network task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// [`crate::actor::blocking`] answering a [`TenantError`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TenantError> + Send + 'static,
) -> Result<T, TenantError> {
    crate::actor::blocking(f).await
}

/// The handle the API uses to reach the tenant network worker.
#[derive(Debug, Clone)]
pub struct Tenants {
    actor: crate::actor::Actor<Command>,
}

impl Tenants {
    /// Starts the worker: once `gate` opens, it restores every saved network
    /// (removing what a crash left half-made), then serves commands until
    /// `shutdown` trips. Userspace WireGuard processes are left running when
    /// it stops, as kernel devices are, and the next netd adopts them.
    pub fn start(
        config: TenantConfig,
        host: Netlink,
        gate: crate::state::Gate,
        shutdown: Shutdown,
    ) -> Self {
        let span = tracing::info_span!("tenant");
        Self {
            actor: crate::actor::Actor::spawn("tenant", span, |inbox| {
                worker::run(config, host, gate, inbox, shutdown)
            }),
        }
    }

    /// Waits for the worker to finish (after shutdown has tripped).
    pub async fn drain(&self) {
        self.actor.drain().await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, TenantError>>) -> Command,
    ) -> Result<T, TenantError> {
        self.actor.ask(make, || TenantError::Stopped).await
    }

    pub async fn create(&self, spec: NetworkSpec) -> Result<NetworkView, TenantError> {
        self.ask(|reply| Command::Create {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    pub async fn delete(&self, netid: NetId) -> Result<(), TenantError> {
        self.ask(|reply| Command::Delete { netid, reply }).await
    }

    pub async fn list(&self) -> Result<Vec<NetworkView>, TenantError> {
        self.ask(|reply| Command::List { reply }).await
    }

    pub async fn show(&self, netid: NetId) -> Result<NetworkView, TenantError> {
        self.ask(|reply| Command::Show { netid, reply }).await
    }

    pub async fn attach(
        &self,
        netid: NetId,
        attach: Attach,
    ) -> Result<AttachmentView, TenantError> {
        self.ask(|reply| Command::Attach {
            netid,
            attach,
            reply,
        })
        .await
    }

    pub async fn detach(&self, netid: NetId, name: WorkloadName) -> Result<(), TenantError> {
        self.ask(|reply| Command::Detach { netid, name, reply })
            .await
    }
}
