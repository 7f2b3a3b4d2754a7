//! What `GET /v1/mesh` and the `PUT`s answer.
//!
//! [`view`] joins what was asked (settings, peers, the plan) with what the
//! device reports (live endpoints, handshakes, byte counts), so one answer
//! shows both the intent and the state. Limits: it never carries the
//! private key, by construction: no field can hold it.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::address::RegionPrefix;
use super::input::{MeshSettings, Peer};
use super::plan::Plan;
use crate::wg::device::{Changes, DeviceState};
use crate::wg::{Backend, PublicKey};

/// `GET /v1/mesh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshView {
    pub interface: String,
    pub backend: Backend,
    /// False until `PUT /v1/mesh`.
    pub configured: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<RegionPrefix>,
    /// This node's mesh address (a /64 on the interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<bool>,
    /// The userspace WireGuard process, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The public node this node's traffic to other NAT'd nodes goes
    /// through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<PublicKey>,
    /// NAT'd nodes whose traffic to each other goes through this node.
    #[serde(default)]
    pub relay_for: Vec<PublicKey>,
    pub peers: Vec<PeerView>,
}

/// One peer in [`MeshView`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub public_key: PublicKey,
    pub address: Ipv6Addr,
    /// As given in the peer list.
    pub endpoints: Vec<SocketAddr>,
    pub public_endpoint: bool,
    /// Reached through this relay instead of directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<PublicKey>,
    /// Where the device sends to now (it follows the peer when it roams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    /// Seconds since the current session's handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What a `PUT` changed on the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Peers of the list that were not taken, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl From<&Changes> for Applied {
    fn from(c: &Changes) -> Self {
        Self {
            added: c.add.len(),
            updated: c.update.len(),
            removed: c.remove.len(),
            unchanged: c.unchanged,
            skipped: Vec::new(),
        }
    }
}

/// The answer for an interface that has not been configured.
pub fn unconfigured(interface: &str, backend: Backend) -> MeshView {
    MeshView {
        interface: interface.to_owned(),
        backend,
        configured: false,
        public_key: None,
        listen_port: None,
        prefix: None,
        address: None,
        public_endpoint: None,
        pid: None,
        relay: None,
        relay_for: Vec::new(),
        peers: Vec::new(),
    }
}

/// Joins the configuration with the device's report.
pub fn view(
    interface: &str,
    backend: Backend,
    pid: Option<i32>,
    (settings, peers, plan): (&MeshSettings, &[Peer], &Plan),
    device: &DeviceState,
) -> MeshView {
    let live: BTreeMap<&PublicKey, _> = device.peers.iter().collect();
    let peers = peers
        .iter()
        .map(|peer| {
            let state = live.get(&peer.key);
            let via = plan
                .relayed
                .contains(&peer.key)
                .then_some(plan.relay)
                .flatten();
            PeerView {
                public_key: peer.key,
                address: settings.prefix.address_of(&peer.key),
                endpoints: peer.endpoints.clone(),
                public_endpoint: peer.public_endpoint,
                via,
                endpoint: state.and_then(|s| s.endpoint),
                allowed_ips: state
                    .map(|s| s.allowed_ips.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                persistent_keepalive: state.and_then(|s| s.keepalive),
                latest_handshake_secs_ago: state.and_then(|s| s.handshake_ago).map(|d| d.as_secs()),
                rx_bytes: state.map_or(0, |s| s.rx_bytes),
                tx_bytes: state.map_or(0, |s| s.tx_bytes),
            }
        })
        .collect();
    MeshView {
        interface: interface.to_owned(),
        backend,
        configured: true,
        public_key: Some(settings.public_key),
        listen_port: Some(settings.listen_port),
        prefix: Some(settings.prefix),
        address: Some(settings.prefix.address_of(&settings.public_key)),
        public_endpoint: Some(settings.public_endpoint),
        pid,
        relay: plan.relay,
        relay_for: plan.relay_for.iter().copied().collect(),
        peers,
    }
}
