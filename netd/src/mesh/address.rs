//! Mesh addresses: the region's ULA prefix and the one IPv6 address each
//! node derives from its public key inside it.
//!
//! A node's address is `<prefix /48>:0000:<first 8 bytes of its public
//! key>`: subnet 0 of the region is the mesh, and the interface id is the
//! key's own leading bytes (a curve point, so already uniform), so any peer
//! computes it from the public key alone with no hash to agree on.
//! Limits: two keys sharing their first 8 bytes would share an address
//! (about 2^-64 per pair), and the subnet is fixed.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wg::PublicKey;
use crate::wg::device::Cidr;

/// The /64 inside the region prefix that the mesh uses.
pub const MESH_SUBNET: u16 = 0;
/// The prefix length of a region.
pub const REGION_LEN: u8 = 48;
/// The prefix length of the mesh subnet.
pub const MESH_LEN: u8 = 64;

/// Why a text is not a region prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("prefix {0:?} has no length: write it as fdxx:xxxx:xxxx::/48")]
    NoLength(String),
    #[error("prefix {text:?} is not an IPv6 address: {source}")]
    NotIpv6 {
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("prefix {text:?} is a /{len}, a region prefix is a /{REGION_LEN}")]
    Length { text: String, len: String },
    #[error("prefix {0:?} is not a unique local prefix (fd00::/8)")]
    NotUla(String),
    #[error("prefix {0:?} has bits set past /{REGION_LEN}")]
    HostBits(String),
}

/// A region's ULA prefix, `fdxx:xxxx:xxxx::/48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionPrefix([u8; 6]);

impl RegionPrefix {
    /// The mesh's /64.
    pub fn mesh_subnet(&self) -> Cidr {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.0);
        bytes[6..8].copy_from_slice(&MESH_SUBNET.to_be_bytes());
        Cidr {
            addr: Ipv6Addr::from(bytes).into(),
            len: MESH_LEN,
        }
    }

    /// The mesh address of the node with public key `key`.
    pub fn address_of(&self, key: &PublicKey) -> Ipv6Addr {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.0);
        bytes[6..8].copy_from_slice(&MESH_SUBNET.to_be_bytes());
        bytes[8..].copy_from_slice(&key.as_bytes()[..8]);
        Ipv6Addr::from(bytes)
    }

    /// Whether `key`'s address is the subnet-router anycast address (an
    /// all-zero interface id), which no node may take.
    pub fn reserved_for(key: &PublicKey) -> bool {
        key.as_bytes()[..8].iter().all(|b| *b == 0)
    }
}

impl FromStr for RegionPrefix {
    type Err = AddressError;
    fn from_str(text: &str) -> Result<Self, AddressError> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| AddressError::NoLength(text.to_owned()))?;
        let addr: Ipv6Addr = addr.parse().map_err(|source| AddressError::NotIpv6 {
            text: text.to_owned(),
            source,
        })?;
        if len != REGION_LEN.to_string() {
            return Err(AddressError::Length {
                text: text.to_owned(),
                len: len.to_owned(),
            });
        }
        let octets = addr.octets();
        if octets[0] != 0xfd {
            return Err(AddressError::NotUla(text.to_owned()));
        }
        if octets[6..].iter().any(|b| *b != 0) {
            return Err(AddressError::HostBits(text.to_owned()));
        }
        let mut prefix = [0u8; 6];
        prefix.copy_from_slice(&octets[..6]);
        Ok(Self(prefix))
    }
}

impl fmt::Display for RegionPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&self.0);
        write!(f, "{}/{REGION_LEN}", Ipv6Addr::from(bytes))
    }
}

grove_daemon::text_value!(RegionPrefix);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: RegionPrefix = "fd12:3456:789a::/48".parse().expect("valid");
        assert_eq!(p.to_string(), "fd12:3456:789a::/48");
        assert_eq!(p.mesh_subnet().to_string(), "fd12:3456:789a::/64");
        let cases: &[(&str, &str)] = &[
            ("fd12:3456:789a::", "no length"),
            ("10.0.0.0/48", "not an IPv6"),
            ("fd12:3456:789a::/64", "is a /64"),
            ("fd12:3456:789a::/x", "is a /x"),
            ("2001:db8:1::/48", "not a unique local"),
            ("fd12:3456:789a:1::/48", "bits set past"),
        ];
        crate::testing::refused::<RegionPrefix>(cases);
    }

    #[test]
    fn addresses_come_from_the_key_alone() {
        let p: RegionPrefix = "fd12:3456:789a::/48".parse().expect("valid");
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
        let key = PublicKey::from_wg(&wireguard_control::Key(bytes));
        let addr = p.address_of(&key);
        assert_eq!(addr.to_string(), "fd12:3456:789a:0:dead:beef:1:203");
        assert!(!RegionPrefix::reserved_for(&key));
        assert!(RegionPrefix::reserved_for(&PublicKey::from_wg(
            &wireguard_control::Key([0; 32])
        )));
    }
}
