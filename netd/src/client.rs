//! The typed client for `netd`'s socket API.

use std::path::PathBuf;

use grove_daemon::client::{ClientError, SocketClient};
use grove_daemon::server::{Info, ReadyReport};

/// A client for `netd`.
#[derive(Clone, Debug)]
pub struct NetdClient {
    socket: SocketClient,
}

impl Default for NetdClient {
    fn default() -> Self {
        Self::new(grove_daemon::socket_path(crate::NAME))
    }
}

impl NetdClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: SocketClient::new(socket),
        }
    }

    /// Bounds every call to `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.socket = self.socket.with_timeout(timeout);
        self
    }

    pub async fn ready(&self) -> Result<ReadyReport, ClientError> {
        self.socket.ready().await
    }

    pub async fn info(&self) -> Result<Info, ClientError> {
        self.socket.info().await
    }

    pub async fn uplink(&self) -> Result<crate::uplink::UplinkReport, ClientError> {
        self.socket.get("/v1/uplink").await
    }

    /// Configures `mesh0` (`PUT /v1/mesh`).
    pub async fn set_mesh(
        &self,
        request: &crate::mesh::input::MeshRequest,
    ) -> Result<serde_json::Value, ClientError> {
        self.socket.put("/v1/mesh", request).await
    }

    /// Replaces `mesh0`'s peer list; netd applies only the difference.
    pub async fn set_mesh_peers(
        &self,
        peers: &[crate::mesh::input::PeerRequest],
    ) -> Result<serde_json::Value, ClientError> {
        self.socket.put("/v1/mesh/peers", &peers).await
    }

    pub async fn mesh(&self) -> Result<serde_json::Value, ClientError> {
        self.socket.get("/v1/mesh").await
    }

    pub async fn interfaces(&self) -> Result<Vec<crate::uplink::Interface>, ClientError> {
        self.socket.get("/v1/interfaces").await
    }
}
