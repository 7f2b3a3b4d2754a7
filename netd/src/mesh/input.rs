//! What the mesh API accepts, and its validation into typed values.
//!
//! Request bodies are plain serde structs with strings; [`parse_mesh`] and
//! [`parse_peer_list`] check everything (keys, port, prefix, endpoints,
//! duplicates, our own key) before anything is touched, so a refused
//! request changes nothing and its error names the field and the peer. A
//! peer list is taken peer by peer: a bad peer is skipped and reported,
//! the others are applied.
//! Limits: a peer's first endpoint is the one WireGuard uses; the others
//! are kept and shown but not tried.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::address::RegionPrefix;
use crate::input::Owner;
pub use crate::input::{InputError, body};
use crate::wg::{PrivateKey, PublicKey};

/// `PUT /v1/mesh`. Never `Debug`-printed whole: it holds the private key.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeshRequest {
    /// base64 x25519 private key.
    pub private_key: String,
    pub listen_port: u16,
    /// The region's ULA /48.
    pub prefix: String,
    /// Whether other nodes can reach this one at its endpoints; a node
    /// behind NAT says false and is reached through a relay.
    #[serde(default = "yes")]
    pub public_endpoint: bool,
}

impl std::fmt::Debug for MeshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRequest")
            .field("private_key", &"<redacted>")
            .field("listen_port", &self.listen_port)
            .field("prefix", &self.prefix)
            .field("public_endpoint", &self.public_endpoint)
            .finish()
    }
}

fn yes() -> bool {
    true
}

/// One entry of `PUT /v1/mesh/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    pub public_key: String,
    /// `ip:port`, `[ipv6]:port`; the first is used.
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub public_endpoint: bool,
}

/// This node's mesh settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub prefix: RegionPrefix,
    pub public_endpoint: bool,
}

/// One other node of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub key: PublicKey,
    pub endpoints: Vec<SocketAddr>,
    pub public_endpoint: bool,
}

impl Peer {
    /// The request this peer was parsed from (for the state file).
    pub fn to_request(&self) -> PeerRequest {
        PeerRequest {
            public_key: self.key.to_string(),
            endpoints: self.endpoints.iter().map(ToString::to_string).collect(),
            public_endpoint: self.public_endpoint,
        }
    }
}

/// Checks `PUT /v1/mesh`.
pub fn parse_mesh(req: &MeshRequest) -> Result<MeshSettings, InputError> {
    let private_key = PrivateKey::parse(&req.private_key).map_err(InputError::PrivateKey)?;
    if req.listen_port == 0 {
        return Err(InputError::PortZero);
    }
    let prefix: RegionPrefix = req.prefix.parse().map_err(InputError::Prefix)?;
    let public_key = private_key.public();
    if RegionPrefix::reserved_for(&public_key) {
        return Err(InputError::ReservedAddress { key: public_key });
    }
    Ok(MeshSettings {
        private_key,
        public_key,
        listen_port: req.listen_port,
        prefix,
        public_endpoint: req.public_endpoint,
    })
}

/// Checks a stored peer list for a node whose own key is `own`: any bad
/// entry refuses the whole list.
pub fn parse_peers(reqs: &[PeerRequest], own: &PublicKey) -> Result<Vec<Peer>, InputError> {
    let (peers, mut skipped) = parse_peer_list(reqs, own);
    if skipped.is_empty() {
        Ok(peers)
    } else {
        Err(skipped.swap_remove(0))
    }
}

/// Checks `PUT /v1/mesh/peers` for a node whose own key is `own`: the good
/// peers, and why each bad one was skipped. One bad entry (a malformed key
/// in the registry, say) never costs the node its other peers; of two
/// entries with one key, the first is kept.
pub fn parse_peer_list(reqs: &[PeerRequest], own: &PublicKey) -> (Vec<Peer>, Vec<InputError>) {
    let mut seen: BTreeMap<PublicKey, usize> = BTreeMap::new();
    let mut peers = Vec::with_capacity(reqs.len());
    let mut skipped = Vec::new();
    for (index, req) in reqs.iter().enumerate() {
        match parse_peer(index, req, own, &seen) {
            Ok(peer) => {
                seen.insert(peer.key, index);
                peers.push(peer);
            }
            Err(e) => skipped.push(e),
        }
    }
    (peers, skipped)
}

fn parse_peer(
    index: usize,
    req: &PeerRequest,
    own: &PublicKey,
    seen: &BTreeMap<PublicKey, usize>,
) -> Result<Peer, InputError> {
    let key = crate::input::parse_key(index, &req.public_key, own, Owner::Node, seen)?;
    if RegionPrefix::reserved_for(&key) {
        return Err(InputError::ReservedAddress { key });
    }
    let mut endpoints = Vec::with_capacity(req.endpoints.len());
    for text in &req.endpoints {
        endpoints.push(crate::input::parse_endpoint(index, key, text)?);
    }
    if req.public_endpoint && endpoints.is_empty() {
        return Err(InputError::NoEndpoint { index, key });
    }
    Ok(Peer {
        key,
        endpoints,
        public_endpoint: req.public_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
    const PUBLIC: &str = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=";

    fn mesh(private_key: &str, listen_port: u16, prefix: &str) -> MeshRequest {
        MeshRequest {
            private_key: private_key.to_owned(),
            listen_port,
            prefix: prefix.to_owned(),
            public_endpoint: true,
        }
    }

    fn peer(key: &str, endpoints: &[&str], public_endpoint: bool) -> PeerRequest {
        PeerRequest {
            public_key: key.to_owned(),
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            public_endpoint,
        }
    }

    fn key(n: u8) -> String {
        base64::encode([n; 32])
    }

    #[test]
    fn mesh_settings() {
        let ok = parse_mesh(&mesh(PRIVATE, 51820, "fd00:1:2::/48")).expect("valid");
        assert_eq!(ok.public_key.to_string(), PUBLIC);
        let cases: Vec<(MeshRequest, &str)> = vec![
            (
                mesh("not base64!", 51820, "fd00:1:2::/48"),
                "private_key: private key is not base64",
            ),
            (mesh(&key(1)[..40], 51820, "fd00:1:2::/48"), "private_key"),
            (mesh(PRIVATE, 0, "fd00:1:2::/48"), "listen_port: 0"),
            (
                mesh(PRIVATE, 51820, "fd00:1:2::/64"),
                "prefix: prefix \"fd00:1:2::/64\" is a /64",
            ),
        ];
        for (req, why) in cases {
            let err = parse_mesh(&req).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains(PRIVATE), "{err}");
        }
        assert!(!format!("{:?}", mesh(PRIVATE, 1, "x")).contains(PRIVATE));
    }

    #[test]
    fn peer_lists() {
        let own: PublicKey = PUBLIC.parse().expect("valid");
        let good = vec![
            peer(&key(1), &["10.0.0.1:51820", "[fd00::1]:51820"], true),
            peer(&key(2), &[], false),
        ];
        let peers = parse_peers(&good, &own).expect("valid");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].endpoints[1].to_string(), "[fd00::1]:51820");
        assert_eq!(peers[0].to_request(), good[0]);

        let cases: Vec<(Vec<PeerRequest>, &str)> = vec![
            (
                vec![peer("!!", &[], false)],
                "peer 0: public_key: public key \"!!\" is not base64",
            ),
            (
                vec![peer(&base64::encode([1u8; 16]), &[], false)],
                "16 bytes, not 32",
            ),
            (
                vec![peer(&key(1), &[], false), peer(&key(1), &[], false)],
                "peer 1: public key AQEB",
            ),
            (vec![peer(PUBLIC, &[], false)], "this node's own key"),
            (
                vec![peer(&key(1), &["10.0.0.1"], true)],
                "endpoint \"10.0.0.1\" is not ip:port",
            ),
            (vec![peer(&key(1), &["host:51820"], true)], "is not ip:port"),
            (vec![peer(&key(1), &["10.0.0.1:0"], true)], "has port 0"),
            (
                vec![peer(&key(1), &[], true)],
                "has a public endpoint but no endpoints",
            ),
            (vec![peer(&key(0), &[], false)], "reserved address"),
        ];
        for (reqs, why) in cases {
            let err = parse_peers(&reqs, &own).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn a_bad_peer_is_skipped_and_the_others_are_kept() {
        let own: PublicKey = PUBLIC.parse().expect("valid");
        let list = vec![
            peer(&key(1), &["10.0.0.1:51820"], true),
            peer("not a key", &[], false),
            peer(&key(2), &["10.0.0.2"], true),
            peer(PUBLIC, &[], false),
            peer(&key(1), &[], false),
            peer(&key(3), &[], false),
        ];
        let (peers, skipped) = parse_peer_list(&list, &own);
        let kept: Vec<String> = peers.iter().map(|p| p.key.to_string()).collect();
        assert_eq!(kept, vec![key(1), key(3)]);
        let why: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why[0].starts_with("peer 1: public_key"), "{why:?}");
        assert!(why[1].contains("is not ip:port"), "{why:?}");
        assert!(why[2].contains("own key"), "{why:?}");
        assert!(why[3].contains("is also peer 0"), "{why:?}");
        assert!(
            parse_peers(&list, &own).is_err(),
            "a stored list stays strict"
        );
    }

    #[test]
    fn bodies_name_the_bad_field() {
        let err = body::<Vec<PeerRequest>>(br#"[{"public_key":"x","public_endpoint":"yes"}]"#)
            .expect_err("bad type")
            .to_string();
        assert!(err.contains("[0].public_endpoint"), "{err}");
        let err =
            body::<MeshRequest>(br#"{"private_key":"x","listen_port":1,"prefix":"p","extra":1}"#)
                .expect_err("unknown field")
                .to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
