//! The typed client for `storaged`'s socket API; the shapes it answers are in
//! [`crate::report`].

use std::path::PathBuf;

use grove_daemon::client::{ClientError, SocketClient};
use grove_daemon::server::{Info, ReadyReport};

use crate::volume::{Removed, VdiskRequest, VdiskView, VolumeRequest, VolumeView};

/// A client for `storaged`.
#[derive(Clone, Debug)]
pub struct StoragedClient {
    socket: SocketClient,
}

impl Default for StoragedClient {
    fn default() -> Self {
        Self::new(grove_daemon::socket_path(crate::NAME))
    }
}

impl StoragedClient {
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

    pub async fn pools(&self) -> Result<Vec<crate::report::PoolReport>, ClientError> {
        self.socket.get("/v1/pools").await
    }

    /// The node's identity as storaged holds it.
    pub async fn identity(&self) -> Result<crate::report::IdentityState, ClientError> {
        self.socket.get("/v1/identity").await
    }

    /// Settles the node's identity (`None`: the node has none yet).
    pub async fn settle(
        &self,
        account: Option<String>,
    ) -> Result<crate::report::IdentityState, ClientError> {
        self.socket
            .call(
                hyper::Method::POST,
                "/v1/identity",
                Some(&crate::report::SettleRequest { account }),
            )
            .await
    }

    /// Passes on the farmer's choice for a node waiting for its identity.
    pub async fn choose(
        &self,
        choice: &crate::report::IdentityChoice,
    ) -> Result<crate::report::IdentityState, ClientError> {
        self.socket
            .call(hyper::Method::POST, "/v1/identity/choice", Some(choice))
            .await
    }

    pub async fn capacity(&self) -> Result<crate::report::Capacity, ClientError> {
        self.socket.get("/v1/capacity").await
    }

    /// Wipes the foreign disk `serial` and makes it a pool.
    pub async fn wipe(&self, serial: &str) -> Result<crate::report::Disk, ClientError> {
        self.socket
            .call::<(), _>(
                hyper::Method::POST,
                &format!("/v1/disks/{serial}/wipe"),
                None,
            )
            .await
    }

    pub async fn disks(&self) -> Result<Vec<crate::report::Disk>, ClientError> {
        self.socket.get("/v1/disks").await
    }

    /// Makes the volume `name`, leaves it as it is, or grows it (`PUT
    /// /v1/volumes/{name}`).
    pub async fn ensure_volume(
        &self,
        name: &str,
        request: &VolumeRequest,
    ) -> Result<VolumeView, ClientError> {
        self.socket
            .put(&format!("/v1/volumes/{name}"), request)
            .await
    }

    /// Removes the volume `name`; `existed: false` when there was none.
    pub async fn delete_volume(&self, name: &str) -> Result<Removed, ClientError> {
        self.socket.delete(&format!("/v1/volumes/{name}")).await
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeView>, ClientError> {
        self.socket.get("/v1/volumes").await
    }

    /// Makes the vdisk `name`, leaves it as it is, or grows it (`PUT
    /// /v1/vdisks/{name}`).
    pub async fn ensure_vdisk(
        &self,
        name: &str,
        request: &VdiskRequest,
    ) -> Result<VdiskView, ClientError> {
        self.socket
            .put(&format!("/v1/vdisks/{name}"), request)
            .await
    }

    /// Removes the vdisk `name`; `existed: false` when there was none.
    pub async fn delete_vdisk(&self, name: &str) -> Result<Removed, ClientError> {
        self.socket.delete(&format!("/v1/vdisks/{name}")).await
    }

    pub async fn vdisks(&self) -> Result<Vec<VdiskView>, ClientError> {
        self.socket.get("/v1/vdisks").await
    }
}
