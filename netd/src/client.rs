//! The typed client for `netd`'s socket API, and the types on its wire.
//!
//! Every call answers the daemon's own request and response types, which
//! this module re-exports so a caller finds the whole API in one place:
//! the uplink's report, the interfaces, the mesh and the tenant networks.
//! Limits: one request per call; the socket client bounds each with its
//! timeout.

use grove_daemon::client::ClientError;

pub use crate::mesh::input::{MeshRequest, PeerRequest as MeshPeerRequest};
pub use crate::mesh::view::{Applied, MeshView, PeerView as MeshPeerView};
pub use crate::tenant::api::Deleted;
pub use crate::tenant::input::{
    AttachKind, AttachRequest, NetworkRequest, PeerRequest as NetworkPeerRequest,
};
pub use crate::tenant::view::{AttachmentView, NetworkView};
pub use crate::uplink::{Interface, UplinkReport, UplinkState};

grove_daemon::daemon_client!(
    /// A client for `netd`.
    NetdClient,
    crate::NAME
);

impl NetdClient {
    /// `GET /v1/uplink`.
    pub async fn uplink(&self) -> Result<UplinkReport, ClientError> {
        self.socket.get("/v1/uplink").await
    }

    /// `GET /v1/interfaces`.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, ClientError> {
        self.socket.get("/v1/interfaces").await
    }

    /// Configures `mesh0` (`PUT /v1/mesh`).
    pub async fn set_mesh(&self, request: &MeshRequest) -> Result<Applied, ClientError> {
        self.socket.put("/v1/mesh", request).await
    }

    /// Replaces `mesh0`'s peer list; netd applies only the difference.
    pub async fn set_mesh_peers(&self, peers: &[MeshPeerRequest]) -> Result<Applied, ClientError> {
        self.socket.put("/v1/mesh/peers", &peers).await
    }

    /// `GET /v1/mesh`.
    pub async fn mesh(&self) -> Result<MeshView, ClientError> {
        self.socket.get("/v1/mesh").await
    }

    /// Every tenant network on the node (`GET /v1/networks`).
    pub async fn networks(&self) -> Result<Vec<NetworkView>, ClientError> {
        self.socket.get("/v1/networks").await
    }

    /// One tenant network (`GET /v1/networks/{netid}`).
    pub async fn network(&self, netid: &str) -> Result<NetworkView, ClientError> {
        self.socket.get(&format!("/v1/networks/{netid}")).await
    }

    /// Creates a tenant network (`POST /v1/networks`).
    pub async fn create_network(
        &self,
        request: &NetworkRequest,
    ) -> Result<NetworkView, ClientError> {
        self.socket.post("/v1/networks", request).await
    }

    /// Deletes a tenant network and everything of it.
    pub async fn delete_network(&self, netid: &str) -> Result<Deleted, ClientError> {
        self.socket.delete(&format!("/v1/networks/{netid}")).await
    }

    /// Attaches a workload to a tenant network.
    pub async fn attach(
        &self,
        netid: &str,
        request: &AttachRequest,
    ) -> Result<AttachmentView, ClientError> {
        (self.socket)
            .post(&format!("/v1/networks/{netid}/attach"), request)
            .await
    }

    /// Detaches workload `name` from a tenant network.
    pub async fn detach(&self, netid: &str, name: &str) -> Result<Deleted, ClientError> {
        (self.socket)
            .delete(&format!("/v1/networks/{netid}/attach/{name}"))
            .await
    }
}
