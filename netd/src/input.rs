//! What netd's API refuses, and the checks its mesh and tenant networks
//! share.
//!
//! Every request body is parsed by [`body`] and checked into typed values
//! before anything is touched; whatever is wrong is one [`InputError`],
//! which the API answers with 400 and a message naming the field (and the
//! peer, by index and key). [`parse_key`] and [`parse_endpoint`] are the
//! peer checks a WireGuard device of either kind needs. Limits: endpoints
//! are addresses, never hostnames; nothing here resolves names.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use crate::mesh::address::AddressError;
use crate::prefix::{Ipv4Prefix, PrefixError};
use crate::tenant::input::{RANGE_LEN, SUBNET_LEN};
use crate::tenant::names::NameError;
use crate::wg::PublicKey;
use crate::wg::key::KeyError;

/// Whose own key a peer must not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The node's mesh device.
    Node,
    /// A tenant network's device.
    Network,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Owner::Node => "this node's",
            Owner::Network => "this network's",
        })
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("bad request body: {0}")]
    Body(#[source] serde_path_to_error::Error<serde_json::Error>),
    #[error("private_key: {0}")]
    PrivateKey(#[source] KeyError),
    #[error("listen_port: 0 is not a port")]
    PortZero,
    #[error("prefix: {0}")]
    Prefix(#[source] AddressError),
    #[error("key {key} gives the reserved address <prefix>::0 (its first 8 bytes are zero)")]
    ReservedAddress { key: PublicKey },
    #[error("peer {index} ({key}): has a public endpoint but no endpoints")]
    NoEndpoint { index: usize, key: PublicKey },
    #[error("peer {index}: public_key: {source}")]
    PeerKey {
        index: usize,
        #[source]
        source: KeyError,
    },
    #[error("peer {second}: public key {key} is also peer {first}")]
    Duplicate {
        key: PublicKey,
        first: usize,
        second: usize,
    },
    #[error("peer {index}: public key {key} is {owner} own key")]
    OwnKey {
        index: usize,
        key: PublicKey,
        owner: Owner,
    },
    #[error("peer {index} ({key}): endpoint {endpoint:?} is not ip:port: {source}")]
    Endpoint {
        index: usize,
        key: PublicKey,
        endpoint: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("peer {index} ({key}): endpoint {endpoint:?} has port 0")]
    EndpointPort {
        index: usize,
        key: PublicKey,
        endpoint: String,
    },
    #[error("{0}")]
    Name(#[source] NameError),
    #[error("address: {text:?} is not an IPv4 address: {source}")]
    Address {
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("ip_range: {0}")]
    Range(#[source] PrefixError),
    #[error("ip_range: {range} is a /{}, not a /{RANGE_LEN}", .range.prefix_len())]
    RangeLength { range: Ipv4Prefix },
    #[error("subnet: {0}")]
    Subnet(#[source] PrefixError),
    #[error("subnet: {subnet} is a /{}, not a /{SUBNET_LEN}", .subnet.prefix_len())]
    SubnetLength { subnet: Ipv4Prefix },
    #[error("subnet: {subnet} is not inside ip_range {range}")]
    SubnetOutside {
        subnet: Ipv4Prefix,
        range: Ipv4Prefix,
    },
    #[error("peer {index} ({key}): allowed_ips: {source}")]
    AllowedIp {
        index: usize,
        key: PublicKey,
        #[source]
        source: PrefixError,
    },
    #[error("peer {index} ({key}): allowed_ips: {prefix} would take all traffic; egress is NAT's")]
    AllowedDefault {
        index: usize,
        key: PublicKey,
        prefix: Ipv4Prefix,
    },
    #[error("peer {index} ({key}): allowed_ips: {prefix} overlaps this node's subnet {subnet}")]
    AllowedLocal {
        index: usize,
        key: PublicKey,
        prefix: Ipv4Prefix,
        subnet: Ipv4Prefix,
    },
    #[error("peer {second}: allowed_ips: {prefix} overlaps {other} of peer {first}")]
    AllowedShared {
        prefix: Ipv4Prefix,
        second: usize,
        other: Ipv4Prefix,
        first: usize,
    },
}

/// Parses a JSON body, naming the path of a bad field.
pub fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(InputError::Body)
}

/// The key of peer `index`: it parses, is not `own` (the key of `owner`),
/// and no earlier peer in `seen` (key to index) has it.
pub fn parse_key(
    index: usize,
    text: &str,
    own: &PublicKey,
    owner: Owner,
    seen: &BTreeMap<PublicKey, usize>,
) -> Result<PublicKey, InputError> {
    let key: PublicKey = text
        .parse()
        .map_err(|source| InputError::PeerKey { index, source })?;
    if &key == own {
        return Err(InputError::OwnKey { index, key, owner });
    }
    if let Some(first) = seen.get(&key) {
        return Err(InputError::Duplicate {
            key,
            first: *first,
            second: index,
        });
    }
    Ok(key)
}

/// An endpoint of peer `index`: `ip:port` or `[ipv6]:port`, port not 0.
pub fn parse_endpoint(index: usize, key: PublicKey, text: &str) -> Result<SocketAddr, InputError> {
    let endpoint: SocketAddr = text.parse().map_err(|source| InputError::Endpoint {
        index,
        key,
        endpoint: text.to_owned(),
        source,
    })?;
    if endpoint.port() == 0 {
        return Err(InputError::EndpointPort {
            index,
            key,
            endpoint: text.to_owned(),
        });
    }
    Ok(endpoint)
}
