//! The node mesh `mesh0`: WireGuard between every node of the region.

use axum::Router;
use serde::Deserialize;

/// `[mesh]` in `netd.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {}

/// The mesh's API routes.
pub fn routes() -> Router {
    Router::new()
}
