//! Plumbing that every Grove daemon shares, and nothing else.
//!
//! A daemon reads a strict TOML config ([`config`]), logs through `tracing`
//! ([`log`]), serves HTTP/1.1 + JSON on a Unix socket with the standard
//! `/live`, `/ready` and `/v1/info` routes ([`server`]), is reached through a
//! typed client ([`client`]), and stops on SIGTERM within a grace period
//! ([`shutdown`]); [`cli`] ties these together for a binary's `main`.
//! Short-lived host tools run through [`cmd`], the testbed's as well.
//! Daemon logic lives in each daemon's own crate.

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cmd;
pub mod config;
pub mod fsutil;
pub mod latest;
pub mod log;
pub mod parent;
pub mod server;
pub mod shutdown;
pub mod text;

/// Exit code for a configuration the daemon refuses (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Directory that holds every daemon's socket on a node.
pub const RUN_DIR: &str = "/run/grove";

/// Where a node keeps its state across reboots: the system cache, a
/// subvolume of the node's cache pool that storaged mounts here.
pub const CACHE_DIR: &str = "/var/cache/grove";

/// The socket path of daemon `name` under [`RUN_DIR`].
pub fn socket_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(RUN_DIR).join(format!("{name}.sock"))
}
