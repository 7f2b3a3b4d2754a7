//! The deployment: zos's wire format, read into typed values, checked, hashed.
//!
//! [`Deployment::parse`] reads the JSON a ThreeFold client sends (unknown keys
//! ignored, an unknown workload type refused by name), then checks every
//! field before anything else may use it. [`Deployment::challenge`] writes
//! zos's challenge text from the typed fields, [`Deployment::hash`] is its
//! MD5, and [`signature`] verifies the twins' signatures over that hash.
//! Workload `result`s sent by a client are ignored: results are the node's.

pub mod challenge;
pub mod name;
pub mod net;
pub mod sign;
pub mod signature;
pub mod workload;

use std::collections::BTreeSet;
use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use self::challenge::{Challenge, ChallengeExt};
use self::name::Name;
use self::signature::SignatureRequirement;
use self::workload::{WorkloadData, WorkloadType, null_default};

/// Why a deployment is refused before anything is done with it.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("the deployment is not in the zos wire format at {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("workloads[{index}] ('{name}'): unknown workload type {kind:?}")]
    UnknownType {
        index: usize,
        name: String,
        kind: String,
    },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error(
        "workloads[{index}] ('{name}'): workload type {kind} is not supported on this node yet"
    )]
    Unsupported {
        index: usize,
        name: String,
        kind: WorkloadType,
    },
}

impl DeploymentError {
    fn invalid(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        DeploymentError::Invalid {
            field: field.into(),
            problem: problem.to_string(),
        }
    }

    fn json(prefix: &str, error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let inner = error.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, _) => inner,
            (false, ".") => prefix.to_owned(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        DeploymentError::Json {
            path,
            source: error.into_inner(),
        }
    }
}

/// The deployment hash: the MD5 of the challenge.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentHash(pub [u8; 16]);

impl DeploymentHash {
    /// The hash as lower-case hex, 32 characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// What a TFChain node contract stores: the 32 ASCII bytes of [`Self::hex`].
    pub fn chain_hash(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.hex().as_bytes());
        out
    }
}

impl fmt::Debug for DeploymentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeploymentHash({})", self.hex())
    }
}

impl fmt::Display for DeploymentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// One workload of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub version: u32,
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: WorkloadType,
    pub data: WorkloadData,
    pub metadata: String,
    pub description: String,
}

/// A deployment, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub version: u32,
    pub twin_id: u32,
    pub contract_id: u64,
    pub metadata: String,
    pub description: String,
    pub expiration: i64,
    pub workloads: Vec<Workload>,
    pub signature_requirement: SignatureRequirement,
}

#[derive(Deserialize)]
struct WireDeployment {
    version: u32,
    twin_id: u32,
    /// Absent until the contract exists; not part of the challenge.
    #[serde(default, deserialize_with = "null_default")]
    contract_id: u64,
    #[serde(deserialize_with = "null_default")]
    metadata: String,
    #[serde(deserialize_with = "null_default")]
    description: String,
    #[serde(deserialize_with = "null_default")]
    expiration: i64,
    #[serde(deserialize_with = "null_default")]
    workloads: Vec<WireWorkload>,
    signature_requirement: SignatureRequirement,
}

#[derive(Deserialize)]
struct WireWorkload {
    #[serde(deserialize_with = "null_default")]
    version: u32,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    data: serde_json::Value,
    #[serde(deserialize_with = "null_default")]
    metadata: String,
    #[serde(deserialize_with = "null_default")]
    description: String,
}

impl Deployment {
    /// Reads and checks a deployment sent by a client.
    pub fn parse(json: &[u8]) -> Result<Self, DeploymentError> {
        let mut reader = serde_json::Deserializer::from_slice(json);
        let wire: WireDeployment = serde_path_to_error::deserialize(&mut reader)
            .map_err(|error| DeploymentError::json("", error))?;
        reader.end().map_err(|source| DeploymentError::Json {
            path: "(after the deployment)".to_owned(),
            source,
        })?;
        let mut workloads = Vec::with_capacity(wire.workloads.len());
        for (index, raw) in wire.workloads.into_iter().enumerate() {
            let at = format!("workloads[{index}]");
            let name = Name::new(&raw.name)
                .map_err(|source| DeploymentError::invalid(format!("{at}.name"), source))?;
            let kind: WorkloadType =
                raw.kind.parse().map_err(|source: workload::UnknownType| {
                    DeploymentError::UnknownType {
                        index,
                        name: name.to_string(),
                        kind: source.0,
                    }
                })?;
            let data = WorkloadData::parse(kind, raw.data)
                .map_err(|error| DeploymentError::json(&format!("{at}.data"), error))?;
            workloads.push(Workload {
                version: raw.version,
                name,
                kind,
                data,
                metadata: raw.metadata,
                description: raw.description,
            });
        }
        let deployment = Deployment {
            version: wire.version,
            twin_id: wire.twin_id,
            contract_id: wire.contract_id,
            metadata: wire.metadata,
            description: wire.description,
            expiration: wire.expiration,
            workloads,
            signature_requirement: wire.signature_requirement,
        };
        deployment.validate()?;
        Ok(deployment)
    }

    /// Checks what the types alone cannot: twin, versions, unique names,
    /// each workload's data, references between workloads, the signature
    /// requirement's shape.
    pub fn validate(&self) -> Result<(), DeploymentError> {
        if self.twin_id == 0 {
            return Err(DeploymentError::invalid("twin_id", "must not be 0"));
        }
        let mut names = BTreeSet::new();
        for (index, workload) in self.workloads.iter().enumerate() {
            let at = format!("workloads[{index}]");
            if workload.version > self.version {
                return Err(DeploymentError::invalid(
                    format!("{at}.version"),
                    format!(
                        "workload '{}' has version {}, above the deployment's version {}",
                        workload.name, workload.version, self.version
                    ),
                ));
            }
            if !names.insert(&workload.name) {
                return Err(DeploymentError::invalid(
                    format!("{at}.name"),
                    format!("two workloads are named '{}'", workload.name),
                ));
            }
            workload.data.validate().map_err(|invalid| {
                DeploymentError::invalid(
                    format!("{at}.data.{}", invalid.field),
                    format!(
                        "({} '{}') {}",
                        workload.kind, workload.name, invalid.problem
                    ),
                )
            })?;
        }
        self.validate_references()?;
        self.signature_requirement.validate(self.twin_id)
    }

    fn validate_references(&self) -> Result<(), DeploymentError> {
        let of_type = |name: &str, kind: WorkloadType| {
            self.workloads
                .iter()
                .any(|w| w.name.as_str() == name && w.kind == kind)
        };
        let mut public_ips = BTreeSet::new();
        for (index, workload) in self.workloads.iter().enumerate() {
            if let WorkloadData::Container(container) = &workload.data {
                for (i, mount) in container.mounts.iter().enumerate() {
                    let name = mount.name.as_str();
                    if !of_type(name, WorkloadType::Volume) {
                        return Err(DeploymentError::invalid(
                            format!("workloads[{index}].data.mounts[{i}].name"),
                            format!("no volume named '{name}' in this deployment"),
                        ));
                    }
                }
                continue;
            }
            let WorkloadData::Zmachine(machine) = &workload.data else {
                continue;
            };
            let at = format!("workloads[{index}].data");
            let public_ip = &machine.network.public_ip;
            if !public_ip.is_empty() {
                if !of_type(public_ip, WorkloadType::Ip) {
                    return Err(DeploymentError::invalid(
                        format!("{at}.network.public_ip"),
                        format!("no ip workload named '{public_ip}' in this deployment"),
                    ));
                }
                if !public_ips.insert(public_ip.as_str()) {
                    return Err(DeploymentError::invalid(
                        format!("{at}.network.public_ip"),
                        format!("the ip workload '{public_ip}' is given to two machines"),
                    ));
                }
            }
            for (i, mount) in machine.mounts.iter().enumerate() {
                let name = mount.name.as_str();
                if !of_type(name, WorkloadType::Zmount) && !of_type(name, WorkloadType::Volume) {
                    return Err(DeploymentError::invalid(
                        format!("{at}.mounts[{i}].name"),
                        format!("no zmount or volume named '{name}' in this deployment"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// zos's challenge text, from the typed fields.
    pub fn challenge(&self) -> String {
        let mut out = String::new();
        self.challenge_into(&mut out);
        out
    }

    /// The deployment hash: the MD5 of [`Self::challenge`].
    pub fn hash(&self) -> DeploymentHash {
        DeploymentHash(Md5::digest(self.challenge().as_bytes()).into())
    }

    /// Verifies the twins' signatures over this deployment's hash; returns
    /// the weight reached.
    pub fn verify(
        &self,
        keys: &impl signature::TwinKeys,
    ) -> Result<u64, signature::SignatureError> {
        self.signature_requirement
            .verify(self.twin_id, &self.hash(), keys)
    }

    /// The names of the workload types this deployment holds, once each.
    pub fn kinds(&self) -> BTreeSet<WorkloadType> {
        self.workloads.iter().map(|w| w.kind).collect()
    }

    /// Refuses a deployment holding a type this node has no driver for.
    pub fn ensure_supported(&self, supported: &[WorkloadType]) -> Result<(), DeploymentError> {
        match self
            .workloads
            .iter()
            .enumerate()
            .find(|(_, w)| !supported.contains(&w.kind))
        {
            Some((index, w)) => Err(DeploymentError::Unsupported {
                index,
                name: w.name.to_string(),
                kind: w.kind,
            }),
            None => Ok(()),
        }
    }

    /// The workload named `name`.
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name.as_str() == name)
    }
}

impl Deployment {
    fn challenge_into(&self, out: &mut String) {
        // The contract id is not part of the challenge: the contract is
        // created with the hash, then its id is set on the deployment.
        out.num(self.version)
            .num(self.twin_id)
            .text(&self.metadata)
            .text(&self.description)
            .num(self.expiration);
        for workload in &self.workloads {
            out.num(workload.version)
                .text(workload.name.as_str())
                .text(workload.kind.as_str())
                .text(&workload.metadata)
                .text(&workload.description);
            workload.data.challenge(out);
        }
        self.signature_requirement.challenge(out);
    }
}

#[cfg(test)]
mod tests;
