//! What the tenant network API accepts, and its validation into typed
//! values.
//!
//! Request bodies are plain serde structs of strings; [`parse_network`] and
//! [`parse_attach`] check everything a request can get wrong on its own
//! (names, prefixes, keys, ports, endpoints, peers whose allowed IPs
//! collide) before anything is touched, and the error names the field and
//! the peer. Conflicts with other networks on the node are the worker's to
//! find. Limits: IPv4 inside tenant networks; a peer has one endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::names::{NetId, WorkloadName};
use super::prefix::Ipv4Prefix;
use crate::input::Owner;
pub use crate::input::{InputError, body};
use crate::wg::{PrivateKey, PublicKey};

/// The length of a tenant's range.
pub const RANGE_LEN: u8 = 16;
/// The length of a node's subnet of that range.
pub const SUBNET_LEN: u8 = 24;

/// `POST /v1/networks`. Never `Debug`-printed whole: it holds the private key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    pub netid: String,
    /// The tenant's IPv4 range, a /16.
    pub ip_range: String,
    /// This node's part of the range, a /24.
    pub subnet: String,
    /// base64 x25519 private key of this node's end of the network.
    pub private_key: String,
    pub listen_port: u16,
    #[serde(default)]
    pub peers: Vec<PeerRequest>,
}

impl std::fmt::Debug for NetworkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkRequest")
            .field("netid", &self.netid)
            .field("ip_range", &self.ip_range)
            .field("subnet", &self.subnet)
            .field("private_key", &"<redacted>")
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer of a network: the same network on another node, or an access
/// peer such as a tenant's laptop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    pub public_key: String,
    /// `ip:port`; absent for a peer that comes to us (a laptop behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The prefixes routed to this peer: its subnet, its addresses.
    pub allowed_ips: Vec<String>,
}

/// What is attached to a network's bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    /// A veth pair: one end on the bridge, `v-<name>` left in the host
    /// namespace for a container runtime to take.
    Veth,
    /// A persistent tap device `t-<name>` on the bridge, inside the
    /// network's namespace, for a VMM to open there.
    Tap,
    /// A veth pair: one end on the bridge, the other `eth0` inside a
    /// namespace of its own, `c-<name>`, with the workload's address, `lo`
    /// up and a default route via the gateway: a container runtime joins
    /// the namespace by its path.
    Namespace,
}

impl std::fmt::Display for AttachKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachKind::Veth => "veth",
            AttachKind::Tap => "tap",
            AttachKind::Namespace => "namespace",
        })
    }
}

/// `POST /v1/networks/{netid}/attach`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    pub name: String,
    pub kind: AttachKind,
    /// The workload's address in the network's subnet; the lowest free
    /// one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A network as this node realises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub netid: NetId,
    pub ip_range: Ipv4Prefix,
    pub subnet: Ipv4Prefix,
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    pub listen_port: u16,
    pub peers: Vec<Peer>,
}

/// One validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Prefix>,
}

impl NetworkSpec {
    /// The request this spec was parsed from, private key included (for
    /// the state file only).
    pub fn to_request(&self) -> NetworkRequest {
        NetworkRequest {
            netid: self.netid.to_string(),
            ip_range: self.ip_range.to_string(),
            subnet: self.subnet.to_string(),
            private_key: self.private_key.expose(),
            listen_port: self.listen_port,
            peers: self
                .peers
                .iter()
                .map(|p| PeerRequest {
                    public_key: p.key.to_string(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }
    }

    /// The bridge's address, the subnet's first host: the workloads'
    /// gateway.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.subnet.host(1).unwrap_or(self.subnet.network())
    }
}

/// A validated attach request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub name: WorkloadName,
    pub kind: AttachKind,
    pub address: Option<std::net::Ipv4Addr>,
}

/// Checks `POST /v1/networks` on its own.
pub fn parse_network(req: &NetworkRequest) -> Result<NetworkSpec, InputError> {
    let netid: NetId = req.netid.parse().map_err(InputError::Name)?;
    let ip_range: Ipv4Prefix = req.ip_range.parse().map_err(InputError::Range)?;
    if ip_range.prefix_len() != RANGE_LEN {
        return Err(InputError::RangeLength { range: ip_range });
    }
    let subnet: Ipv4Prefix = req.subnet.parse().map_err(InputError::Subnet)?;
    if subnet.prefix_len() != SUBNET_LEN {
        return Err(InputError::SubnetLength { subnet });
    }
    if !ip_range.covers(&subnet) {
        return Err(InputError::SubnetOutside {
            subnet,
            range: ip_range,
        });
    }
    let private_key = PrivateKey::parse(&req.private_key).map_err(InputError::PrivateKey)?;
    if req.listen_port == 0 {
        return Err(InputError::PortZero);
    }
    let public_key = private_key.public();
    let peers = parse_peers(&req.peers, &public_key, &subnet)?;
    Ok(NetworkSpec {
        netid,
        ip_range,
        subnet,
        private_key,
        public_key,
        listen_port: req.listen_port,
        peers,
    })
}

fn parse_peers(
    reqs: &[PeerRequest],
    own: &PublicKey,
    subnet: &Ipv4Prefix,
) -> Result<Vec<Peer>, InputError> {
    let mut keys: BTreeMap<PublicKey, usize> = BTreeMap::new();
    let mut routed: Vec<(Ipv4Prefix, usize)> = Vec::new();
    let mut peers = Vec::with_capacity(reqs.len());
    for (index, req) in reqs.iter().enumerate() {
        let key = crate::input::parse_key(index, &req.public_key, own, Owner::Network, &keys)?;
        keys.insert(key, index);
        let endpoint = req
            .endpoint
            .as_deref()
            .map(|text| crate::input::parse_endpoint(index, key, text))
            .transpose()?;
        let mut allowed_ips = Vec::with_capacity(req.allowed_ips.len());
        for text in &req.allowed_ips {
            let prefix: Ipv4Prefix =
                text.parse()
                    .map_err(|source| InputError::AllowedIp { index, key, source })?;
            if prefix.prefix_len() == 0 {
                return Err(InputError::AllowedDefault { index, key, prefix });
            }
            if prefix.overlaps(subnet) {
                return Err(InputError::AllowedLocal {
                    index,
                    key,
                    prefix,
                    subnet: *subnet,
                });
            }
            if let Some((other, first)) = routed.iter().find(|(o, _)| o.overlaps(&prefix)) {
                return Err(InputError::AllowedShared {
                    prefix,
                    second: index,
                    other: *other,
                    first: *first,
                });
            }
            routed.push((prefix, index));
            allowed_ips.push(prefix);
        }
        peers.push(Peer {
            key,
            endpoint,
            allowed_ips,
        });
    }
    Ok(peers)
}

/// Checks `POST /v1/networks/{netid}/attach` on its own.
pub fn parse_attach(req: &AttachRequest) -> Result<Attach, InputError> {
    let address = match &req.address {
        Some(text) => Some(text.parse().map_err(|source| InputError::Address {
            text: text.clone(),
            source,
        })?),
        None => None,
    };
    Ok(Attach {
        name: req.name.parse().map_err(InputError::Name)?,
        kind: req.kind,
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
    const PUBLIC: &str = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=";

    fn key(n: u8) -> String {
        base64::encode([n; 32])
    }

    fn peer(n: u8, endpoint: Option<&str>, ips: &[&str]) -> PeerRequest {
        PeerRequest {
            public_key: key(n),
            endpoint: endpoint.map(str::to_owned),
            allowed_ips: ips.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn request() -> NetworkRequest {
        NetworkRequest {
            netid: "net1".to_owned(),
            ip_range: "10.1.0.0/16".to_owned(),
            subnet: "10.1.1.0/24".to_owned(),
            private_key: PRIVATE.to_owned(),
            listen_port: 7001,
            peers: vec![
                peer(1, Some("10.77.0.11:7001"), &["10.1.2.0/24"]),
                peer(2, None, &["10.1.200.2/32"]),
            ],
        }
    }

    #[test]
    fn a_good_request_round_trips() {
        let spec = parse_network(&request()).expect("valid");
        assert_eq!(spec.public_key.to_string(), PUBLIC);
        assert_eq!(spec.gateway().to_string(), "10.1.1.1");
        assert_eq!(spec.peers[1].endpoint, None);
        assert_eq!(spec.to_request(), request());
        assert!(!format!("{:?}", request()).contains(PRIVATE));
        assert!(!format!("{spec:?}").contains(PRIVATE));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let with = |f: &dyn Fn(&mut NetworkRequest)| {
            let mut r = request();
            f(&mut r);
            r
        };
        let cases: Vec<(NetworkRequest, &str)> = vec![
            (
                with(&|r| r.netid = "a-very-long-netid".to_owned()),
                "netid \"a-very-long-netid\" is 17 characters, at most 13",
            ),
            (with(&|r| r.netid = "Net".to_owned()), "has 'N'"),
            (
                with(&|r| r.ip_range = "10.1.0.0/24".to_owned()),
                "ip_range: 10.1.0.0/24 is a /24, not a /16",
            ),
            (
                with(&|r| r.ip_range = "10.1.2.0/16".to_owned()),
                "ip_range: \"10.1.2.0/16\" has host bits set",
            ),
            (
                with(&|r| r.subnet = "10.1.0.0/16".to_owned()),
                "subnet: 10.1.0.0/16 is a /16, not a /24",
            ),
            (
                with(&|r| r.subnet = "10.2.1.0/24".to_owned()),
                "subnet: 10.2.1.0/24 is not inside ip_range 10.1.0.0/16",
            ),
            (with(&|r| r.subnet = "x".to_owned()), "subnet: \"x\""),
            (
                with(&|r| r.private_key = "not base64!".to_owned()),
                "private_key: private key is not base64",
            ),
            (
                with(&|r| r.private_key = key(1)[..20].to_owned()),
                "private_key: private key decodes to 15 bytes",
            ),
            (with(&|r| r.listen_port = 0), "listen_port: 0"),
            (
                with(&|r| r.peers[1].public_key = "!!".to_owned()),
                "peer 1: public_key: public key \"!!\" is not base64",
            ),
            (
                with(&|r| r.peers[1].public_key = PUBLIC.to_owned()),
                "peer 1: public key DD5y",
            ),
            (
                with(&|r| r.peers[1].public_key = key(1)),
                "peer 1: public key AQEB",
            ),
            (
                with(&|r| r.peers[0].endpoint = Some("10.77.0.11".to_owned())),
                "endpoint \"10.77.0.11\" is not ip:port",
            ),
            (
                with(&|r| r.peers[0].endpoint = Some("10.77.0.11:0".to_owned())),
                "has port 0",
            ),
            (
                with(&|r| r.peers[0].allowed_ips = vec!["10.1.2.1/24".to_owned()]),
                "peer 0 (AQEB",
            ),
            (
                with(&|r| r.peers[0].allowed_ips = vec!["0.0.0.0/0".to_owned()]),
                "would take all traffic",
            ),
            (
                with(&|r| r.peers[0].allowed_ips = vec!["10.1.1.7/32".to_owned()]),
                "10.1.1.7/32 overlaps this node's subnet 10.1.1.0/24",
            ),
            (
                with(&|r| r.peers[1].allowed_ips = vec!["10.1.2.9/32".to_owned()]),
                "peer 1: allowed_ips: 10.1.2.9/32 overlaps 10.1.2.0/24 of peer 0",
            ),
        ];
        for (req, why) in cases {
            let err = parse_network(&req).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert!(!err.contains(PRIVATE), "{err}");
        }
    }

    #[test]
    fn bodies_name_unknown_fields_and_kinds() {
        let err = body::<AttachRequest>(br#"{"name":"web","kind":"macvlan"}"#)
            .expect_err("unknown kind")
            .to_string();
        assert!(err.contains("kind"), "{err}");
        let err = body::<NetworkRequest>(br#"{"netid":"x","colour":1}"#)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let attach = body::<AttachRequest>(br#"{"name":"web","kind":"tap"}"#).expect("valid");
        let attach = parse_attach(&attach).expect("valid");
        assert_eq!(attach.kind, AttachKind::Tap);
        let bad = parse_attach(&AttachRequest {
            name: "web server".to_owned(),
            kind: AttachKind::Veth,
            address: None,
        })
        .expect_err("space")
        .to_string();
        assert!(bad.contains("workload name \"web server\""), "{bad}");
        let bad = parse_attach(&AttachRequest {
            name: "app".to_owned(),
            kind: AttachKind::Namespace,
            address: Some("10.1.1".to_owned()),
        })
        .expect_err("not an address")
        .to_string();
        assert!(bad.contains("address: \"10.1.1\""), "{bad}");
    }
}
