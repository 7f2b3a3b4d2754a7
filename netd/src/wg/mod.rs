//! WireGuard device plumbing, shared by the node mesh and tenant networks.
//!
//! One code path for both implementations: `wireguard-control` configures
//! the device through netlink (kernel) or the UAPI socket (userspace
//! `boringtun-cli`, which [`boringtun`] runs and supervises), chosen once at
//! start by [`detect`]; links and addresses go through [`crate::netlink`],
//! sysctls through [`crate::sysctl`].
//! Limits: the userspace process is per interface and must run in the
//! namespace where the interface lives.

pub mod boringtun;
pub mod device;
pub mod key;

use serde::Deserialize;

pub use device::Backend;
pub use key::{PrivateKey, PublicKey};

use crate::netlink::Netlink;

/// The name of the throwaway link that probes for kernel WireGuard.
pub const PROBE: &str = "grove-wgprobe";

/// Which backend to use: `auto` probes the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Kernel,
    Userspace,
}

/// The backend for this run: the configured one, or kernel WireGuard if
/// this kernel can create a WireGuard link, else userspace.
pub async fn detect(links: &Netlink, choice: BackendChoice) -> Backend {
    detect_as(links, choice, PROBE).await
}

/// [`detect`] probing with a link named `probe`, for a second caller that
/// may probe at the same time as the first.
pub async fn detect_as(links: &Netlink, choice: BackendChoice, probe: &str) -> Backend {
    match choice {
        BackendChoice::Kernel => Backend::Kernel,
        BackendChoice::Userspace => Backend::Userspace,
        BackendChoice::Auto => match links.kernel_wireguard(probe).await {
            Ok(()) => Backend::Kernel,
            Err(e) => {
                tracing::info!(reason = %e, "no kernel WireGuard; using userspace boringtun");
                Backend::Userspace
            }
        },
    }
}
