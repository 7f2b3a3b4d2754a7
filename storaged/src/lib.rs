//! `storaged`: Node storage: disk discovery, one btrfs pool per disk, the system cache, volumes and vdisks.
//!
//! The library holds all of the daemon's logic; `main.rs` only parses flags
//! and calls [`run`]. It serves its API on `/run/grove/storaged.sock`, and
//! [`client::StoragedClient`] is how `agent` and the other daemons reach it.

#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod client;
pub mod disk;
pub mod flags;
pub mod mounts;
pub mod pool;
pub mod report;
pub mod storage;
pub mod types;
pub mod volume;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;

use crate::storage::{Layout, Storage};
use crate::types::DiskSerial;

/// The daemon's name: its socket, its log field, its service name in `agent`.
pub const NAME: &str = "storaged";

/// `/etc/grove/storaged.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
    /// Only these disks (the testbed gives each node its own); a directory
    /// here stands for the devices its entries link to, looked at again on
    /// every rescan. Every disk when absent.
    pub disks: Option<Vec<PathBuf>>,
    pub pools_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The file holding this machine's id, recorded on every pool it makes
    /// so a pool moved in from another machine is told apart.
    pub machine_id_file: PathBuf,
    /// How often disks are looked at again: new ones brought up, departed
    /// ones dropped and their pools marked broken.
    pub health_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: grove_daemon::socket_path(NAME),
            disks: None,
            pools_dir: PathBuf::from("/mnt/pools"),
            cache_dir: PathBuf::from(grove_daemon::CACHE_DIR),
            machine_id_file: PathBuf::from("/sys/class/dmi/id/product_uuid"),
            health_interval_ms: 1000,
        }
    }
}

/// Why `storaged` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StoragedError {
    #[error(transparent)]
    Serve(#[from] ServerError),
}

impl Failure for StoragedError {}

/// Runs the daemon until `shutdown` trips. `wipe` lists the foreign disks
/// the farmer asked to turn into pools (`grove.wipe=` on the kernel command
/// line, passed on by `agent`).
pub async fn run(
    config: Config,
    wipe: Vec<DiskSerial>,
    shutdown: Shutdown,
) -> Result<(), StoragedError> {
    let identity = Identity::new(NAME, env!("CARGO_PKG_VERSION"));
    let readiness = Readiness::waiting("disks");
    let shared: api::Shared = Arc::new(OnceLock::new());
    let layout = Layout {
        sys: PathBuf::from("/sys"),
        dev: PathBuf::from("/dev"),
        devices: config.disks.clone(),
        pools_dir: config.pools_dir.clone(),
        cache_dir: config.cache_dir.clone(),
        machine: machine_id(&config.machine_id_file),
    };
    let worker = tokio::spawn(bring_up(
        layout,
        wipe,
        shared.clone(),
        readiness.clone(),
        Duration::from_millis(config.health_interval_ms.max(100)),
        shutdown.clone(),
    ));
    let api = api::routes(shared);
    let served =
        grove_daemon::server::serve_daemon(identity, readiness, &config.socket, api, shutdown)
            .await;
    worker.abort();
    served?;
    Ok(())
}

/// This machine's id, or `None` (with a warning) when it cannot be read or
/// is one of the placeholders firmware leaves in.
fn machine_id(path: &std::path::Path) -> Option<String> {
    let id = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().to_ascii_lowercase(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no machine id: pools moved in from another machine cannot be told apart");
            return None;
        }
    };
    let placeholder = id.is_empty() || id.chars().all(|c| matches!(c, '0' | 'f' | '-'));
    if placeholder {
        tracing::warn!(path = %path.display(), "the machine id is a placeholder: pools moved in from another machine cannot be told apart");
        return None;
    }
    Some(id)
}

/// Boots the storage (retrying while it fails), then follows the disks.
async fn bring_up(
    layout: Layout,
    wipe: Vec<DiskSerial>,
    shared: api::Shared,
    readiness: Readiness,
    health_every: Duration,
    shutdown: Shutdown,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        let (layout, wipe) = (layout.clone(), wipe.clone());
        match tokio::task::spawn_blocking(move || Storage::boot(layout, &wipe)).await {
            Ok(Ok(storage)) => {
                let cache = storage.cache();
                tracing::info!(pools = storage.pools().len(), cache_pool = ?cache.pool, degraded = ?cache.degraded, "storage ready");
                let mut settled = storage.settled_watch();
                // Only this task sets it, once.
                let _already = shared.set(storage);
                readiness.set_waiting("identity: the agent has not settled the node's identity");
                tokio::select! {
                    _ = settled.wait_for(|s| *s) => {}
                    () = shutdown.wait() => return,
                }
                readiness.set_ready();
                break;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "storage boot failed");
                readiness.set_waiting(&format!("disks: {e}"));
            }
            Err(e) => {
                tracing::error!(error = %e, "storage boot task failed");
                readiness.set_waiting("disks: boot task failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    let mut tick = tokio::time::interval(health_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let shared = shared.clone();
        let checked = tokio::task::spawn_blocking(move || shared.get().map(Storage::rescan)).await;
        match checked {
            Ok(Some(Ok(changes))) if !changes.is_empty() => {
                tracing::info!(arrived = ?changes.arrived, departed = ?changes.departed, broken = ?changes.broken, "disks changed");
            }
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "cannot look at the disks"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "rescan task failed"),
        }
    }
}

/// The `storaged` program: flags in, exit code out.
pub fn main() -> std::process::ExitCode {
    grove_daemon::cli::main(NAME, flags::ABOUT, flags::Flags::run)
}
