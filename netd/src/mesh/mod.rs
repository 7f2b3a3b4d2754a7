//! The node mesh `mesh0`: WireGuard between every node of the region.
//!
//! One worker task owns the device, the userspace WireGuard process (when
//! there is no kernel WireGuard) and the applied configuration; API
//! handlers send it commands, so changes are serialised without locks and
//! the blocking WireGuard calls run on blocking threads. Limits: IPv6 only
//! inside the mesh, one endpoint per peer, and the worker is stopped by the
//! shutdown token, not awaited by the server (see [`Mesh::drain`]).

pub mod address;
pub mod api;
pub mod input;
pub mod plan;
pub mod state;
pub mod view;
mod worker;

use std::path::PathBuf;

use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::netlink::{Netlink, NetlinkError};
use crate::sysctl::SysctlError;
use crate::types::InterfaceName;
use crate::wg::BackendChoice;
use crate::wg::boringtun::BoringtunError;
use crate::wg::device::DeviceError;

pub use api::routes;
use input::{InputError, MeshSettings, PeerRequest};
use state::StateError;
use view::{Applied, MeshView};
use worker::Command;

/// `[mesh]` in `netd.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// The WireGuard interface.
    pub interface: InterfaceName,
    /// `auto` (kernel if it can, else userspace), `kernel` or `userspace`.
    pub backend: BackendChoice,
    /// The `boringtun-cli` binary; searched in `$PATH`, then
    /// `/root/.cargo/bin`, when unset.
    pub boringtun: Option<PathBuf>,
    /// Keepalive from a node behind NAT to every node with a public
    /// endpoint, in seconds.
    pub keepalive_secs: u16,
    pub mtu: u32,
    /// Where `mesh.json` lives; `netd` in [`grove_daemon::CACHE_DIR`] when the system
    /// cache is mounted, else `/run/grove/netd`, when unset.
    pub state_dir: Option<PathBuf>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            interface: "mesh0".parse().expect("mesh0 is a valid interface name"),
            backend: BackendChoice::Auto,
            boringtun: None,
            keepalive_secs: 25,
            mtu: 1420,
            state_dir: None,
        }
    }
}

/// Why a mesh request failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the mesh is not configured yet: PUT /v1/mesh first")]
    NotConfigured,
    #[error("the mesh worker has stopped")]
    Stopped,
    #[error("userspace WireGuard: {0}")]
    Boringtun(#[from] BoringtunError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("mesh state: {0}")]
    State(#[from] StateError),
    #[error("a blocking mesh task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// [`crate::actor::blocking`] answering a [`MeshError`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MeshError> + Send + 'static,
) -> Result<T, MeshError> {
    crate::actor::blocking(f).await
}

/// The handle the API uses to reach the mesh worker.
#[derive(Debug, Clone)]
pub struct Mesh {
    actor: crate::actor::Actor<Command>,
}

impl Mesh {
    /// Starts the worker: once `gate` opens, it detects the backend,
    /// restores the saved configuration if there is one, then serves
    /// commands until `shutdown` trips, when it stops the userspace process.
    pub fn start(
        config: MeshConfig,
        links: Netlink,
        gate: crate::state::Gate,
        shutdown: Shutdown,
    ) -> Self {
        let span = tracing::info_span!("mesh", ifname = %config.interface);
        Self {
            actor: crate::actor::Actor::spawn("mesh", span, |inbox| {
                worker::run(config, links, gate, inbox, shutdown)
            }),
        }
    }

    /// Waits for the worker to finish (after shutdown has tripped).
    pub async fn drain(&self) {
        self.actor.drain().await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, MeshError>>) -> Command,
    ) -> Result<T, MeshError> {
        self.actor.ask(make, || MeshError::Stopped).await
    }

    /// Applies this node's own settings.
    pub async fn configure(&self, settings: MeshSettings) -> Result<Applied, MeshError> {
        self.ask(|reply| Command::Configure { settings, reply })
            .await
    }

    /// Replaces the peer list (validated by the worker against our key).
    pub async fn set_peers(&self, peers: Vec<PeerRequest>) -> Result<Applied, MeshError> {
        self.ask(|reply| Command::SetPeers { peers, reply }).await
    }

    pub async fn show(&self) -> Result<MeshView, MeshError> {
        self.ask(|reply| Command::Show { reply }).await
    }
}
