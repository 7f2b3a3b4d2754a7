//! What the tenant network API answers.
//!
//! [`network_view`] joins a network's configuration with what its
//! WireGuard device reports (live endpoints, handshakes, byte counts), and
//! [`attachment_view`] tells a workload runtime which interface to take,
//! where, and with which address and MAC. Limits: no field can hold the
//! private key, by construction.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::input::AttachKind;
use super::names::{self, EGRESS_INSIDE};
use super::network::{Attachment, Network};
use super::prefix::Ipv4Prefix;
use crate::wg::device::DeviceState;
use crate::wg::{Backend, PublicKey};

/// `GET /v1/networks/{netid}`, and each entry of `GET /v1/networks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkView {
    pub netid: String,
    pub ip_range: Ipv4Prefix,
    pub subnet: Ipv4Prefix,
    /// The bridge's address: the workloads' gateway.
    pub gateway: Ipv4Addr,
    pub namespace: String,
    pub bridge: String,
    pub wireguard: String,
    pub backend: Backend,
    /// The userspace WireGuard process, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub egress: EgressView,
    pub peers: Vec<PeerView>,
    pub attachments: Vec<AttachmentView>,
}

/// The veth pair that leads out of the namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressView {
    /// Its end in the host namespace.
    pub host: String,
    pub host_address: Ipv4Addr,
    /// Its end inside the network's namespace.
    pub inside: String,
    pub inside_address: Ipv4Addr,
}

/// One peer in [`NetworkView`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub public_key: PublicKey,
    /// As configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// Where the device sends to now (it follows a peer that roams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Prefix>,
    /// Seconds since the current session's handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `POST /v1/networks/{netid}/attach`, and each attachment of a network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentView {
    pub name: String,
    pub kind: AttachKind,
    /// The interface the runtime takes.
    pub interface: String,
    /// The namespace the interface is in: `null` for the host's (a veth
    /// end), `n-<netid>` for a tap, `c-<name>` (netd's namespace directory,
    /// `/run/netns` on a node) for a workload's own.
    pub namespace: Option<String>,
    /// The workload's address with the subnet's length.
    pub address: String,
    pub gateway: Ipv4Addr,
    /// The MAC the workload's interface uses.
    pub mac: String,
}

/// The view of `network` whose device reports `device` (`None` when it
/// could not be read).
pub fn network_view(
    network: &Network,
    backend: Backend,
    pid: Option<i32>,
    device: Option<&DeviceState>,
) -> NetworkView {
    let spec = &network.spec;
    let peers = spec
        .peers
        .iter()
        .map(|peer| {
            let live = device.and_then(|d| d.peers.get(&peer.key));
            PeerView {
                public_key: peer.key,
                endpoint: peer.endpoint,
                live_endpoint: live.and_then(|s| s.endpoint),
                allowed_ips: peer.allowed_ips.clone(),
                latest_handshake_secs_ago: live.and_then(|s| s.handshake_ago).map(|d| d.as_secs()),
                rx_bytes: live.map_or(0, |s| s.rx_bytes),
                tx_bytes: live.map_or(0, |s| s.tx_bytes),
            }
        })
        .collect();
    NetworkView {
        netid: spec.netid.to_string(),
        ip_range: spec.ip_range,
        subnet: spec.subnet,
        gateway: spec.gateway(),
        namespace: spec.netid.namespace(),
        bridge: spec.netid.bridge(),
        wireguard: spec.netid.wireguard(),
        backend,
        pid,
        public_key: spec.public_key,
        listen_port: spec.listen_port,
        egress: EgressView {
            host: spec.netid.egress(),
            host_address: network.slot.host(),
            inside: EGRESS_INSIDE.to_owned(),
            inside_address: network.slot.inside(),
        },
        peers,
        attachments: network
            .attachments
            .iter()
            .map(|a| attachment_view(network, a))
            .collect(),
    }
}

/// What a workload runtime needs to know about `attachment`.
pub fn attachment_view(network: &Network, attachment: &Attachment) -> AttachmentView {
    let netid = network.netid();
    AttachmentView {
        name: attachment.name.to_string(),
        kind: attachment.kind,
        interface: attachment.interface(),
        namespace: match attachment.kind {
            AttachKind::Veth => None,
            AttachKind::Tap => Some(netid.namespace()),
            AttachKind::Namespace => Some(attachment.name.namespace()),
        },
        address: format!(
            "{}/{}",
            attachment.address,
            network.spec.subnet.prefix_len()
        ),
        gateway: network.spec.gateway(),
        mac: names::mac_text(&attachment.name.mac(netid)),
    }
}
