//! Workload types: their typed data, checks and challenge text.
//!
//! [`WorkloadType`] is the closed list of types Grove reads; any other type
//! name is refused by name. [`WorkloadData`] holds one type's data, parsed
//! from the workload's `data` object (unknown keys such as the SDK's
//! `__type` are ignored). Each type checks its own fields and writes its own
//! part of the challenge.

pub mod container;
pub mod disk;
pub mod gateway;
pub mod ip;
pub mod network;
pub mod zdb;
pub mod zmachine;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use super::challenge::Challenge;

/// Reads JSON `null` as the type's default, as Go leaves a nil slice or map
/// empty (Go clients send `null` for an empty list).
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A field of a workload's data that fails its check: the field's path
/// inside `data`, and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The workload types Grove reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadType {
    #[serde(rename = "network")]
    Network,
    #[serde(rename = "zmount")]
    Zmount,
    #[serde(rename = "volume")]
    Volume,
    #[serde(rename = "zmachine")]
    Zmachine,
    #[serde(rename = "container")]
    Container,
    #[serde(rename = "ip")]
    Ip,
    #[serde(rename = "zdb")]
    Zdb,
    #[serde(rename = "gateway-name-proxy")]
    GatewayNameProxy,
    #[serde(rename = "gateway-fqdn-proxy")]
    GatewayFqdnProxy,
}

impl WorkloadType {
    pub const ALL: [WorkloadType; 9] = [
        WorkloadType::Network,
        WorkloadType::Zmount,
        WorkloadType::Volume,
        WorkloadType::Zmachine,
        WorkloadType::Container,
        WorkloadType::Ip,
        WorkloadType::Zdb,
        WorkloadType::GatewayNameProxy,
        WorkloadType::GatewayFqdnProxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Network => "network",
            WorkloadType::Zmount => "zmount",
            WorkloadType::Volume => "volume",
            WorkloadType::Zmachine => "zmachine",
            WorkloadType::Container => "container",
            WorkloadType::Ip => "ip",
            WorkloadType::Zdb => "zdb",
            WorkloadType::GatewayNameProxy => "gateway-name-proxy",
            WorkloadType::GatewayFqdnProxy => "gateway-fqdn-proxy",
        }
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A type name that is not one of [`WorkloadType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload type {0:?}")]
pub struct UnknownType(pub String);

impl FromStr for WorkloadType {
    type Err = UnknownType;
    fn from_str(name: &str) -> Result<Self, UnknownType> {
        WorkloadType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| UnknownType(name.to_owned()))
    }
}

/// One workload's typed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WorkloadData {
    Network(network::Network),
    Zmount(disk::Zmount),
    Volume(disk::Volume),
    Zmachine(zmachine::Zmachine),
    Container(container::Container),
    Ip(ip::PublicIp),
    Zdb(zdb::Zdb),
    GatewayNameProxy(gateway::GatewayNameProxy),
    GatewayFqdnProxy(gateway::GatewayFqdnProxy),
}

impl WorkloadData {
    /// Parses `data` as the data of a workload of type `kind`.
    pub fn parse(
        kind: WorkloadType,
        data: serde_json::Value,
    ) -> Result<Self, serde_path_to_error::Error<serde_json::Error>> {
        fn typed<T: serde::de::DeserializeOwned>(
            data: serde_json::Value,
        ) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
            serde_path_to_error::deserialize(data)
        }
        Ok(match kind {
            WorkloadType::Network => WorkloadData::Network(typed(data)?),
            WorkloadType::Zmount => WorkloadData::Zmount(typed(data)?),
            WorkloadType::Volume => WorkloadData::Volume(typed(data)?),
            WorkloadType::Zmachine => WorkloadData::Zmachine(typed(data)?),
            WorkloadType::Container => WorkloadData::Container(typed(data)?),
            WorkloadType::Ip => WorkloadData::Ip(typed(data)?),
            WorkloadType::Zdb => WorkloadData::Zdb(typed(data)?),
            WorkloadType::GatewayNameProxy => WorkloadData::GatewayNameProxy(typed(data)?),
            WorkloadType::GatewayFqdnProxy => WorkloadData::GatewayFqdnProxy(typed(data)?),
        })
    }

    pub fn kind(&self) -> WorkloadType {
        match self {
            WorkloadData::Network(_) => WorkloadType::Network,
            WorkloadData::Zmount(_) => WorkloadType::Zmount,
            WorkloadData::Volume(_) => WorkloadType::Volume,
            WorkloadData::Zmachine(_) => WorkloadType::Zmachine,
            WorkloadData::Container(_) => WorkloadType::Container,
            WorkloadData::Ip(_) => WorkloadType::Ip,
            WorkloadData::Zdb(_) => WorkloadType::Zdb,
            WorkloadData::GatewayNameProxy(_) => WorkloadType::GatewayNameProxy,
            WorkloadData::GatewayFqdnProxy(_) => WorkloadType::GatewayFqdnProxy,
        }
    }

    /// Checks the fields that the type alone can check.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            WorkloadData::Network(d) => d.validate(),
            WorkloadData::Zmount(d) => d.validate(),
            WorkloadData::Volume(d) => d.validate(),
            WorkloadData::Zmachine(d) => d.validate(),
            WorkloadData::Container(d) => d.validate(),
            WorkloadData::Ip(d) => d.validate(),
            WorkloadData::Zdb(d) => d.validate(),
            WorkloadData::GatewayNameProxy(d) => d.validate(),
            WorkloadData::GatewayFqdnProxy(d) => d.validate(),
        }
    }
}

impl Challenge for WorkloadData {
    fn challenge(&self, out: &mut String) {
        match self {
            WorkloadData::Network(d) => d.challenge(out),
            WorkloadData::Zmount(d) => d.challenge(out),
            WorkloadData::Volume(d) => d.challenge(out),
            WorkloadData::Zmachine(d) => d.challenge(out),
            WorkloadData::Container(d) => d.challenge(out),
            WorkloadData::Ip(d) => d.challenge(out),
            WorkloadData::Zdb(d) => d.challenge(out),
            WorkloadData::GatewayNameProxy(d) => d.challenge(out),
            WorkloadData::GatewayFqdnProxy(d) => d.challenge(out),
        }
    }
}
