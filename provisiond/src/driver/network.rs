//! The network driver: netd's tenant networks.
//!
//! A `network` workload is the tenant network `p-<hash of twin and name>`
//! on netd. `ensure` reads the network first: absent, it is created; the
//! same range, subnet, key, port and peers, it is left alone; different,
//! it is deleted and created again, since netd sets peers at creation. The
//! request is checked with netd's own parser before anything is sent, so a
//! refusal carries netd's words. The result `data` names the netid, the
//! namespace and the node's public key; never the private key.

use netd::client::{NetdClient, NetworkPeerRequest, NetworkRequest, NetworkView};
use netd::tenant::input::{NetworkSpec, parse_network};
use serde_json::json;

use super::{Driver, DriverError, DriverFuture, Target, is_netid, is_not_found, netid};
use crate::deployment::workload::network::Network;
use crate::deployment::workload::{WorkloadData, WorkloadType};

/// `network` → a netd tenant network.
#[derive(Debug, Clone)]
pub struct NetworkDriver {
    netd: NetdClient,
}

impl NetworkDriver {
    pub fn new(netd: NetdClient) -> Self {
        Self { netd }
    }

    async fn current(&self, id: &str) -> Result<Option<NetworkView>, DriverError> {
        match self.netd.network(id).await {
            Ok(view) => Ok(Some(view)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The request for netd of `network` under `netid`.
pub fn request(netid: &str, network: &Network) -> NetworkRequest {
    NetworkRequest {
        netid: netid.to_owned(),
        ip_range: network.ip_range.to_string(),
        subnet: network.subnet.to_string(),
        private_key: network.wireguard_private_key.expose().to_owned(),
        listen_port: network.wireguard_listen_port,
        peers: network
            .peers
            .iter()
            .map(|p| NetworkPeerRequest {
                public_key: p.wireguard_public_key.clone(),
                endpoint: (!p.endpoint.is_empty()).then(|| p.endpoint.clone()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    }
}

/// Whether netd's network is the one `spec` asks.
fn matches(view: &NetworkView, spec: &NetworkSpec) -> bool {
    let mut have: Vec<_> = view
        .peers
        .iter()
        .map(|p| (p.public_key, p.endpoint, p.allowed_ips.clone()))
        .collect();
    let mut want: Vec<_> = spec
        .peers
        .iter()
        .map(|p| (p.key, p.endpoint, p.allowed_ips.clone()))
        .collect();
    have.sort_by_key(|p| p.0.to_string());
    want.sort_by_key(|p| p.0.to_string());
    view.ip_range == spec.ip_range
        && view.subnet == spec.subnet
        && view.public_key == spec.public_key
        && view.listen_port == spec.listen_port
        && have == want
}

fn data(view: &NetworkView) -> serde_json::Value {
    json!({
        "netid": view.netid,
        "namespace": view.namespace,
        "public_key": view.public_key.to_string(),
        "gateway": view.gateway.to_string(),
    })
}

impl Driver for NetworkDriver {
    fn kind(&self) -> WorkloadType {
        WorkloadType::Network
    }

    fn object(&self, twin: u32, _contract: u64, name: &str) -> String {
        netid(twin, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let WorkloadData::Network(network) = &target.workload.data else {
                return Err(DriverError::Refused(format!(
                    "workload '{}' is not a network",
                    target.workload.name
                )));
            };
            let id = self.object(target.twin, target.contract, target.workload.name.as_str());
            let request = request(&id, network);
            let spec = parse_network(&request).map_err(|e| DriverError::Refused(e.to_string()))?;
            if let Some(view) = self.current(&id).await? {
                if matches(&view, &spec) {
                    return Ok(data(&view));
                }
                self.remove(&id).await?;
            }
            match self.netd.create_network(&request).await {
                Ok(view) => Ok(data(&view)),
                Err(error) => {
                    // A create whose answer was lost may have made it.
                    let error = DriverError::from(error);
                    if let DriverError::Unavailable(_) = error {
                        return Err(error);
                    }
                    match self.current(&id).await? {
                        Some(view) if matches(&view, &spec) => Ok(data(&view)),
                        _ => Err(error),
                    }
                }
            }
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            match self.netd.delete_network(object).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .netd
                .networks()
                .await?
                .into_iter()
                .map(|n| n.netid)
                .filter(|n| is_netid(n))
                .collect())
        })
    }
}
