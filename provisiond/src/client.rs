//! The typed client for `provisiond`'s socket API.

use std::path::PathBuf;

use grove_daemon::client::{ClientError, SocketClient};
use grove_daemon::server::{Info, ReadyReport};

/// A client for `provisiond`.
#[derive(Clone, Debug)]
pub struct ProvisiondClient {
    socket: SocketClient,
}

impl Default for ProvisiondClient {
    fn default() -> Self {
        Self::new(grove_daemon::socket_path(crate::NAME))
    }
}

impl ProvisiondClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: SocketClient::new(socket),
        }
    }

    pub async fn ready(&self) -> Result<ReadyReport, ClientError> {
        self.socket.ready().await
    }

    pub async fn info(&self) -> Result<Info, ClientError> {
        self.socket.info().await
    }
}
