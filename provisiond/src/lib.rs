//! `provisiond`: Deployments: validation, signatures, a durable store, capacity accounting and the workload drivers.
//!
//! The library holds all of the daemon's logic; `main.rs` only parses flags
//! and calls [`run`]. It serves its API on `/run/grove/provisiond.sock`, and
//! [`client::ProvisiondClient`] is how `agent` and the other daemons reach it.
//!
//! The parts so far: [`deployment`] (zos's wire format, checks, hash and
//! signatures), [`store`] (the durable record of deployments, results and
//! history), [`capacity`] (the ledger that refuses what does not fit) and
//! [`update`] (zos's update rules). The engine, its drivers and the API that
//! join them are not written yet.

#![forbid(unsafe_code)]

pub mod admission;
pub mod capacity;
pub mod client;
pub mod deployment;
pub mod store;
pub mod update;

use std::path::PathBuf;

use axum::Router;
use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;

/// The daemon's name: its socket, its log field, its service name in `agent`.
pub const NAME: &str = "provisiond";

/// `/etc/grove/provisiond.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: grove_daemon::socket_path(NAME),
        }
    }
}

/// Why `provisiond` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisiondError {
    #[error(transparent)]
    Serve(#[from] ServerError),
}

impl Failure for ProvisiondError {}

/// Runs the daemon until `shutdown` trips.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProvisiondError> {
    let identity = Identity::new(NAME, env!("CARGO_PKG_VERSION"));
    let readiness = Readiness::default();
    let api = Router::new();
    grove_daemon::server::serve_daemon(identity, readiness, &config.socket, api, shutdown).await?;
    Ok(())
}
