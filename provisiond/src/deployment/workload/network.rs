//! `network`: this node's part of a tenant's WireGuard network.
//!
//! It hashes as zos does: range, subnet, private key, port, then each peer
//! (public key, endpoint, subnet, allowed IPs) and the optional mycelium key.
//! Grove checks more than zos: the range is an IPv4 /16, the subnets are
//! network prefixes inside it that do not overlap, keys decode to 32 bytes,
//! endpoints are `ip:port`, the port is not 0.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Invalid, null_default};
use crate::deployment::challenge::{Challenge, ChallengeExt};
use crate::deployment::net::IpNet;

/// A value that must never be printed: `Debug` shows a placeholder.
///
/// `Serialize` writes the value, for the node's own store; an answer to a
/// client is built without it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The `network` workload's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub ip_range: IpNet,
    pub subnet: IpNet,
    pub wireguard_private_key: Secret,
    pub wireguard_listen_port: u16,
    #[serde(deserialize_with = "null_default")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<NetworkMycelium>,
}

/// Another node's part of the same network, or a tenant's own machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub subnet: IpNet,
    pub wireguard_public_key: String,
    #[serde(deserialize_with = "null_default")]
    pub allowed_ips: Vec<IpNet>,
    #[serde(deserialize_with = "null_default")]
    pub endpoint: String,
}

/// The network's mycelium key (zos's optional overlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMycelium {
    pub hex_key: Secret,
    #[serde(deserialize_with = "null_default")]
    pub peers: Vec<String>,
}

/// The length of a WireGuard key.
const KEY_LEN: usize = 32;

fn check_key(field: &str, key: &str) -> Result<(), Invalid> {
    // The key may be a private one: the error never holds it.
    match base64::decode(key) {
        Ok(bytes) if bytes.len() == KEY_LEN => Ok(()),
        Ok(bytes) => Err(Invalid::new(
            field,
            format!(
                "must be a base64 {KEY_LEN}-byte WireGuard key, this one has {} bytes",
                bytes.len()
            ),
        )),
        Err(source) => Err(Invalid::new(
            field,
            format!("must be a base64 {KEY_LEN}-byte WireGuard key ({source})"),
        )),
    }
}

impl Network {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let range = &self.ip_range;
        if !range.is_ipv4() || range.prefix() != 16 || !range.is_network() {
            return Err(Invalid::new(
                "ip_range",
                format!("must be an IPv4 /16 network such as 10.20.0.0/16, not {range}"),
            ));
        }
        check_subnet("subnet", range, &self.subnet)?;
        check_key("wireguard_private_key", self.wireguard_private_key.expose())?;
        if self.wireguard_listen_port == 0 {
            return Err(Invalid::new("wireguard_listen_port", "must not be 0"));
        }
        let mut keys = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let at = |field: &str| format!("peers[{i}].{field}");
            check_subnet(&at("subnet"), range, &peer.subnet)?;
            if peer.subnet.overlaps(&self.subnet) {
                return Err(Invalid::new(
                    at("subnet"),
                    format!(
                        "{} overlaps this node's subnet {}",
                        peer.subnet, self.subnet
                    ),
                ));
            }
            if let Some(j) = self.peers[..i]
                .iter()
                .position(|other| other.subnet.overlaps(&peer.subnet))
            {
                return Err(Invalid::new(
                    at("subnet"),
                    format!("{} overlaps peers[{j}]'s subnet", peer.subnet),
                ));
            }
            check_key(&at("wireguard_public_key"), &peer.wireguard_public_key)?;
            if !keys.insert(peer.wireguard_public_key.as_str()) {
                return Err(Invalid::new(
                    at("wireguard_public_key"),
                    "is the key of an earlier peer",
                ));
            }
            if peer.allowed_ips.is_empty() {
                return Err(Invalid::new(at("allowed_ips"), "cannot be empty"));
            }
            if !peer.endpoint.is_empty() && peer.endpoint.parse::<SocketAddr>().is_err() {
                return Err(Invalid::new(
                    at("endpoint"),
                    format!(
                        "{:?} is not an address and port such as 192.0.2.10:3011 or [2001:db8::1]:3011",
                        peer.endpoint
                    ),
                ));
            }
        }
        if let Some(mycelium) = &self.mycelium {
            match hex::decode(mycelium.hex_key.expose()) {
                Ok(key) if key.len() == KEY_LEN => {}
                _ => {
                    return Err(Invalid::new(
                        "mycelium.hex_key",
                        format!("must be {KEY_LEN} bytes in hex"),
                    ));
                }
            }
            if !mycelium.peers.is_empty() {
                return Err(Invalid::new(
                    "mycelium.peers",
                    "a mycelium peer list is not supported",
                ));
            }
        }
        Ok(())
    }
}

fn check_subnet(field: &str, range: &IpNet, subnet: &IpNet) -> Result<(), Invalid> {
    if !range.contains(subnet) || subnet.prefix() <= range.prefix() || subnet.prefix() > 29 {
        return Err(Invalid::new(
            field,
            format!("{subnet} must be a prefix of /17 to /29 inside the network's range {range}"),
        ));
    }
    if !subnet.is_network() {
        return Err(Invalid::new(
            field,
            format!(
                "{subnet} has host bits set: write {}/{}",
                subnet.network(),
                subnet.prefix()
            ),
        ));
    }
    Ok(())
}

impl Challenge for Network {
    fn challenge(&self, out: &mut String) {
        out.shown(&self.ip_range)
            .shown(&self.subnet)
            .text(self.wireguard_private_key.expose())
            .num(self.wireguard_listen_port);
        for peer in &self.peers {
            out.text(&peer.wireguard_public_key)
                .text(&peer.endpoint)
                .shown(&peer.subnet);
            for ip in &peer.allowed_ips {
                out.shown(ip);
            }
        }
        if let Some(mycelium) = &self.mycelium {
            // zos prints the decoded key with %x: lower-case hex.
            out.text(&mycelium.hex_key.expose().to_ascii_lowercase());
            for peer in &mycelium.peers {
                out.text(peer);
            }
        }
    }
}
