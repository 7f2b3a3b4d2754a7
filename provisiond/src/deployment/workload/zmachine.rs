//! `zmachine`: a virtual machine. Parsed, checked and hashed as zos does;
//! [`crate::driver::machine`] runs it.
//!
//! The challenge follows zos: flist, network (public IP name, planetary,
//! interfaces, mycelium), root size, CPU, memory, mounts, entrypoint, the
//! environment sorted by key as `k=v`, then GPUs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Invalid, null_default};
use crate::deployment::challenge::{Challenge, ChallengeExt};
use crate::deployment::name::Name;
use crate::deployment::net::Ip;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The `zmachine` workload's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zmachine {
    #[serde(deserialize_with = "null_default")]
    pub flist: String,
    pub network: MachineNetwork,
    pub size: u64,
    pub compute_capacity: ComputeCapacity,
    #[serde(deserialize_with = "null_default")]
    pub mounts: Vec<MachineMount>,
    #[serde(deserialize_with = "null_default")]
    pub entrypoint: String,
    #[serde(deserialize_with = "null_default")]
    pub env: BTreeMap<String, String>,
    pub corex: bool,
    /// `omitempty` in zos: absent means none.
    #[serde(default, deserialize_with = "null_default")]
    pub gpu: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineNetwork {
    /// The name of an `ip` workload of the same deployment, or empty.
    #[serde(deserialize_with = "null_default")]
    pub public_ip: String,
    pub planetary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<MachineMycelium>,
    #[serde(deserialize_with = "null_default")]
    pub interfaces: Vec<MachineInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInterface {
    pub network: Name,
    pub ip: Ip,
}

/// zos names this struct's network field `Network` (no JSON tag); Go matches
/// keys without case, so both spellings are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMycelium {
    #[serde(rename = "network", alias = "Network")]
    pub network: Name,
    pub hex_seed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeCapacity {
    pub cpu: u8,
    pub memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMount {
    pub name: Name,
    #[serde(deserialize_with = "null_default")]
    pub mountpoint: String,
}

impl Zmachine {
    /// The pinned OCI image its `flist` names: what this node runs
    /// machines from.
    pub fn image_ref(&self) -> Result<crate::image::ImageRef, Invalid> {
        crate::image::ImageRef::parse(&self.flist).map_err(|e| {
            Invalid::new(
                "flist",
                format!("{e}: this node runs machines from OCI images pinned by digest"),
            )
        })
    }

    /// zos's smallest root disk: 2 GiB, or 500 MiB for a machine under one compute unit.
    pub fn min_root_size(&self) -> u64 {
        let cu = u64::from(self.compute_capacity.cpu) * self.compute_capacity.memory / (8 * GIB);
        if cu == 0 { 500 * MIB } else { 2 * GIB }
    }

    /// The root disk's size: the one asked, at least the minimum.
    pub fn root_size(&self) -> u64 {
        self.size.max(self.min_root_size())
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.network.interfaces.len() != 1 {
            return Err(Invalid::new(
                "network.interfaces",
                "must hold exactly one private network",
            ));
        }
        for (i, interface) in self.network.interfaces.iter().enumerate() {
            if ["pub", "mycelium"].contains(&interface.network.as_str()) {
                return Err(Invalid::new(
                    format!("network.interfaces[{i}].network"),
                    format!("'{}' is a reserved network name", interface.network),
                ));
            }
        }
        if !self.network.public_ip.is_empty() {
            Name::new(&self.network.public_ip)
                .map_err(|source| Invalid::new("network.public_ip", source.to_string()))?;
        }
        if let Some(mycelium) = &self.network.mycelium {
            match hex::decode(&mycelium.hex_seed) {
                Ok(seed) if seed.len() == 6 => {}
                _ => {
                    return Err(Invalid::new(
                        "network.mycelium.hex_seed",
                        "must be 6 bytes in hex",
                    ));
                }
            }
        }
        if self.compute_capacity.cpu == 0 {
            return Err(Invalid::new("compute_capacity.cpu", "must not be 0"));
        }
        if self.compute_capacity.memory < 250 * MIB {
            return Err(Invalid::new(
                "compute_capacity.memory",
                "must be at least 250 MiB",
            ));
        }
        let min = self.min_root_size();
        if self.size != 0 && self.size < min {
            return Err(Invalid::new(
                "size",
                format!("must be 0 (the minimum) or at least {min} bytes"),
            ));
        }
        Ok(())
    }
}

impl Challenge for Zmachine {
    fn challenge(&self, out: &mut String) {
        out.text(&self.flist)
            .text(&self.network.public_ip)
            .flag(self.network.planetary);
        for interface in &self.network.interfaces {
            out.text(interface.network.as_str()).shown(&interface.ip);
        }
        if let Some(mycelium) = &self.network.mycelium {
            out.text(mycelium.network.as_str())
                .text(&mycelium.hex_seed.to_ascii_lowercase());
        }
        out.num(self.size)
            .num(self.compute_capacity.cpu)
            .num(self.compute_capacity.memory);
        for mount in &self.mounts {
            out.text(mount.name.as_str()).text(&mount.mountpoint);
        }
        out.text(&self.entrypoint);
        // A BTreeMap iterates in byte order of its keys, as Go's sort.Strings.
        for (key, value) in &self.env {
            out.text(key).text("=").text(value);
        }
        for gpu in &self.gpu {
            out.text(gpu);
        }
    }
}
