//! Who `mesh0` talks to directly, who through a relay, and how.
//!
//! Every node with a public endpoint is a direct peer at its first
//! endpoint. A public node also takes every NAT'd node as a peer without an
//! endpoint (it learns the NAT's mapping when the NAT'd node's keepalive
//! arrives); a NAT'd node keeps a keepalive to every public node, and gives
//! its relay, the public node with the lowest key, the whole mesh /64 as a
//! catch-all, so other NAT'd nodes (which it never peers with) are reached
//! through the relay without touching any peer when they come or go.
//! Limits: with no public node at all, NAT'd nodes cannot reach each other;
//! two NAT'd nodes on one LAN still go through the relay.

use std::collections::{BTreeMap, BTreeSet};

use super::input::{MeshSettings, Peer};
use crate::wg::PublicKey;
use crate::wg::device::{Cidr, PeerConfig};

/// The WireGuard peers that realise one mesh configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub peers: BTreeMap<PublicKey, PeerConfig>,
    /// This node's relay, when it is behind NAT.
    pub relay: Option<PublicKey>,
    /// Peers this node reaches only through its relay.
    pub relayed: BTreeSet<PublicKey>,
    /// NAT'd peers that reach each other through this node.
    pub relay_for: BTreeSet<PublicKey>,
}

/// The plan for node `own` among `peers`, with `keepalive` seconds from
/// NAT'd nodes to public ones.
pub fn plan(own: &MeshSettings, peers: &[Peer], keepalive: u16) -> Plan {
    let lowest_public = peers
        .iter()
        .filter(|p| p.public_endpoint)
        .map(|p| p.key)
        .min();
    let relay = if own.public_endpoint {
        None
    } else {
        lowest_public
    };
    let mut out = Plan {
        relay,
        ..Plan::default()
    };
    let host = |key: &PublicKey| Cidr {
        addr: own.prefix.address_of(key).into(),
        len: 128,
    };
    for peer in peers {
        if peer.public_endpoint {
            let mut allowed_ips = BTreeSet::from([host(&peer.key)]);
            if relay == Some(peer.key) {
                allowed_ips.insert(own.prefix.mesh_subnet());
            }
            let config = PeerConfig {
                key: peer.key,
                endpoint: peer.endpoints.first().copied(),
                keepalive: (!own.public_endpoint).then_some(keepalive),
                allowed_ips,
            };
            out.peers.insert(peer.key, config);
        } else if own.public_endpoint {
            let config = PeerConfig {
                key: peer.key,
                endpoint: None,
                keepalive: None,
                allowed_ips: BTreeSet::from([host(&peer.key)]),
            };
            out.peers.insert(peer.key, config);
        } else {
            out.relayed.insert(peer.key);
        }
    }
    let we_relay = own.public_endpoint && lowest_public.is_none_or(|k| own.public_key < k);
    if we_relay {
        out.relay_for = peers
            .iter()
            .filter(|p| !p.public_endpoint)
            .map(|p| p.key)
            .collect();
        if out.relay_for.len() < 2 {
            out.relay_for.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::input::{MeshRequest, parse_mesh};

    fn key(n: u8) -> PublicKey {
        PublicKey::from_wg(&wireguard_control::Key([n; 32]))
    }

    fn peer(n: u8, public: bool) -> Peer {
        Peer {
            key: key(n),
            endpoints: vec![format!("10.0.0.{n}:51820").parse().expect("endpoint")],
            public_endpoint: public,
        }
    }

    fn own(public: bool) -> MeshSettings {
        parse_mesh(&MeshRequest {
            private_key: base64::encode([0x77; 32]),
            listen_port: 51820,
            prefix: "fd00:1:2::/48".to_owned(),
            public_endpoint: public,
        })
        .expect("valid")
    }

    #[test]
    fn public_nodes_peer_with_everyone_without_keepalive() {
        let peers = [peer(3, true), peer(2, true), peer(9, false)];
        let p = plan(&own(true), &peers, 25);
        assert_eq!(p.peers.len(), 3);
        assert_eq!(p.relay, None);
        assert!(p.relayed.is_empty());
        let nat = &p.peers[&key(9)];
        assert_eq!((nat.endpoint, nat.keepalive), (None, None));
        assert_eq!(nat.allowed_ips.len(), 1);
        let public = &p.peers[&key(2)];
        assert_eq!(
            public.endpoint,
            Some("10.0.0.2:51820".parse().expect("endpoint"))
        );
        assert_eq!(public.keepalive, None);
        assert_eq!(
            public
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["fd00:1:2:0:202:202:202:202/128"]
        );
    }

    #[test]
    fn nat_nodes_keep_alive_to_public_ones_and_relay_through_the_lowest_key() {
        let peers = [peer(3, true), peer(2, true), peer(9, false), peer(8, false)];
        let p = plan(&own(false), &peers, 5);
        assert_eq!(p.relay, Some(key(2)));
        assert_eq!(p.relayed, BTreeSet::from([key(8), key(9)]));
        assert_eq!(
            p.peers.keys().copied().collect::<Vec<_>>(),
            [key(2), key(3)]
        );
        assert!(p.peers.values().all(|c| c.keepalive == Some(5)));
        let relay: Vec<String> = p.peers[&key(2)]
            .allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(relay, ["fd00:1:2::/64", "fd00:1:2:0:202:202:202:202/128"]);
        assert_eq!(p.peers[&key(3)].allowed_ips.len(), 1);
    }

    #[test]
    fn the_lowest_public_key_knows_it_relays() {
        // Our own key (0x77...) is above key 2 and below key 0x80.
        let peers = [peer(0x80, true), peer(9, false), peer(8, false)];
        assert_eq!(
            plan(&own(true), &peers, 5).relay_for,
            BTreeSet::from([key(8), key(9)])
        );
        let lower = [peer(2, true), peer(9, false), peer(8, false)];
        assert!(plan(&own(true), &lower, 5).relay_for.is_empty());
    }

    #[test]
    fn adding_a_nat_node_changes_no_existing_peer_anywhere() {
        let before = [peer(3, true), peer(2, true), peer(9, false)];
        let mut after = before.to_vec();
        after.push(peer(8, false));
        for public in [true, false] {
            let a = plan(&own(public), &before, 5);
            let b = plan(&own(public), &after, 5);
            for (k, config) in &a.peers {
                assert_eq!(b.peers.get(k), Some(config), "public={public}");
            }
        }
    }
}
