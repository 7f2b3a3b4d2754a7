//! The node's client for the embedded registry's HTTP API.

use grove_daemon::client::{ClientError, SocketClient};
use hyper::StatusCode;
use serde_json::json;

use super::model::{Farm, MeshInfo, Node, NodeRegistration, Twin, UptimeReport};

/// A registry at `http://host:port`.
#[derive(Debug, Clone)]
pub struct EmbeddedClient {
    http: SocketClient,
}

impl EmbeddedClient {
    /// `url` is `http://host:port`; anything else is refused.
    pub fn new(url: &str) -> Option<Self> {
        let address = url.strip_prefix("http://")?.trim_end_matches('/');
        (!address.is_empty() && !address.contains('/')).then(|| Self {
            http: SocketClient::tcp(address).with_timeout(std::time::Duration::from_secs(5)),
        })
    }

    pub async fn ensure_twin(&self, account: &str) -> Result<Twin, ClientError> {
        self.http
            .post("/v1/twins", &json!({ "account": account, "relay": null }))
            .await
    }

    /// The farm, or `None` when the registry has no such farm.
    pub async fn farm(&self, id: u32) -> Result<Option<Farm>, ClientError> {
        match self.http.get(&format!("/v1/farms/{id}")).await {
            Ok(farm) => Ok(Some(farm)),
            Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn twin(&self, id: u32) -> Result<Twin, ClientError> {
        self.http.get(&format!("/v1/twins/{id}")).await
    }

    pub async fn register(
        &self,
        registration: &NodeRegistration,
        mesh: Option<&MeshInfo>,
    ) -> Result<Node, ClientError> {
        let mut body =
            serde_json::to_value(registration).map_err(|source| ClientError::Encode {
                path: self.http.path().to_owned(),
                source,
            })?;
        body["mesh"] = serde_json::to_value(mesh).unwrap_or_default();
        self.http.post("/v1/nodes", &body).await
    }

    pub async fn report_uptime(
        &self,
        node: u32,
        report: &UptimeReport,
    ) -> Result<bool, ClientError> {
        self.http
            .post(&format!("/v1/nodes/{node}/uptime"), report)
            .await
    }

    pub async fn nodes(&self, farm: u32) -> Result<Vec<Node>, ClientError> {
        self.http.get(&format!("/v1/nodes?farm_id={farm}")).await
    }

    pub async fn uptime(&self, node: u32) -> Result<Vec<UptimeReport>, ClientError> {
        self.http.get(&format!("/v1/nodes/{node}/uptime")).await
    }
}
