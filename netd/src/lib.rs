//! `netd`: Node networking: uplink bring-up, the regional WireGuard mesh `mesh0`, tenant networks and their firewall.
//!
//! The library holds all of the daemon's logic; `main.rs` only parses flags
//! and calls [`run`]. It serves its API on `/run/grove/netd.sock`, and
//! [`client::NetdClient`] is how `agent` and the other daemons reach it.

#![deny(unsafe_code)]

pub mod actor;
pub mod client;
pub mod flags;
pub mod input;
pub mod mesh;
pub mod netlink;
pub mod netns;
pub mod prefix;
pub mod procs;
pub mod state;
pub mod sysctl;
pub mod tenant;
#[cfg(test)]
mod testing;
pub mod types;
pub mod uplink;
pub mod wg;

use std::path::PathBuf;

use axum::Router;
use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;

/// The daemon's name: its socket, its log field, its service name in `agent`.
pub const NAME: &str = "netd";

/// `/etc/grove/netd.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
    pub uplink: uplink::UplinkConfig,
    pub mesh: mesh::MeshConfig,
    pub tenant: tenant::TenantConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: grove_daemon::socket_path(NAME),
            uplink: uplink::UplinkConfig::default(),
            mesh: mesh::MeshConfig::default(),
            tenant: tenant::TenantConfig::default(),
        }
    }
}

/// Why `netd` stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetdError {
    #[error(transparent)]
    Serve(#[from] ServerError),
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
}

impl Failure for NetdError {}

/// Whether `ifname` in the host namespace is a link netd makes (the
/// uplink bridge, the mesh, a tenant network's), never an uplink NIC.
pub fn made_by_netd(ifname: &str) -> bool {
    ifname == uplink::BRIDGE || ifname.starts_with("mesh") || tenant::names::is_tenant_link(ifname)
}

/// Runs the daemon until `shutdown` trips.
pub async fn run(
    config: Config,
    overrides: uplink::Overrides,
    gate: state::Gate,
    shutdown: Shutdown,
) -> Result<(), NetdError> {
    let identity = Identity::new(NAME, env!("CARGO_PKG_VERSION"));
    let readiness = Readiness::waiting("uplink");
    let host = netlink::Netlink::here(netlink::HOST)?;
    let uplink = uplink::Uplink::new(config.uplink.clone(), overrides, host.clone(), made_by_netd);
    let uplink_task = tokio::spawn(uplink.clone().run(readiness.clone(), shutdown.clone()));
    let mesh = mesh::Mesh::start(
        config.mesh.clone(),
        host.clone(),
        gate.clone(),
        shutdown.clone(),
    );
    let tenants = tenant::Tenants::start(config.tenant.clone(), host, gate, shutdown.clone());
    let api = Router::new().merge(mesh::routes(mesh.clone()));
    let api = api.merge(uplink::api::routes(uplink));
    let api = api.merge(tenant::routes(tenants.clone()));
    let served =
        grove_daemon::server::serve_daemon(identity, readiness, &config.socket, api, shutdown)
            .await;
    if let Err(e) = uplink_task.await {
        tracing::error!(error = %e, "uplink task failed");
    }
    mesh.drain().await;
    tenants.drain().await;
    served?;
    Ok(())
}

/// The `netd` program: flags in, exit code out.
pub fn main() -> std::process::ExitCode {
    grove_daemon::cli::main(NAME, flags::ABOUT, flags::Flags::run)
}
