//! The registry's data model, as TFChain's `tfgridModule` has it: twins,
//! farms, nodes with their resources and interfaces, and uptime reports.
//!
//! Field names follow the chain's (`hru`, `sru`, `cru`, `mru`; `farm_id`,
//! `twin_id`), so the embedded registry and TFChain carry the same facts.

use serde::{Deserialize, Serialize};

/// `resources{hru,sru,cru,mru}` in bytes (cru: threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub hru: u64,
    pub sru: u64,
    pub cru: u64,
    pub mru: u64,
}

/// One interface of a node, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    pub id: u32,
    /// SS58 account.
    pub account: String,
    pub relay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farm {
    pub id: u32,
    pub name: String,
    pub twin_id: u32,
}

/// What a node registers and updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub farm_id: u32,
    pub twin_id: u32,
    pub resources: Resources,
    pub interfaces: Vec<Interface>,
    pub serial_number: String,
    pub virtualized: bool,
    pub secure_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: u32,
    #[serde(flatten)]
    pub registration: NodeRegistration,
    /// The node's WireGuard public key and mesh endpoint, for its peers.
    pub mesh: Option<MeshInfo>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// How the region's other nodes reach this one over `mesh0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInfo {
    pub public_key: String,
    pub endpoints: Vec<String>,
    pub public_endpoint: bool,
}

/// `reportUptimeV2(uptime, timestampHint)`, with the node's own sequence
/// number so a retried report is recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UptimeReport {
    pub seq: u64,
    /// Seconds since the node booted.
    pub uptime: u64,
    /// Unix seconds when the node made the report.
    pub timestamp: u64,
}

/// A twin's account key: the 32 bytes its account's signatures verify with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinKey {
    pub id: u32,
    /// SS58 account.
    pub account: String,
    /// Hex of the 32-byte public key of `account`.
    pub account_key: String,
}

impl TwinKey {
    /// The key of `twin`, when its account is one.
    pub fn of(twin: &Twin) -> Option<Self> {
        let key = crate::auth::account_key(&twin.account)?;
        Some(Self::new(twin.id, key.to_bytes()))
    }

    /// The twin `id` of the account whose public key is `key`.
    pub fn new(id: u32, key: [u8; 32]) -> Self {
        Self {
            id,
            account: crate::identity::keys::ss58(&key, crate::identity::keys::SS58_PREFIX),
            account_key: crate::auth::hex(&key),
        }
    }

    /// The 32 bytes of the account key.
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        let bytes = unhex(&self.account_key)?;
        bytes.try_into().ok()
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A node contract's state, as TFChain's `ContractState` (without the
/// cause of a deletion or the block a grace period started at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContractState {
    Created,
    GracePeriod,
    Deleted,
}

impl ContractState {
    /// Created or in its grace period: the node keeps the deployment.
    pub fn is_active(self) -> bool {
        matches!(self, ContractState::Created | ContractState::GracePeriod)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContractState::Created => "Created",
            ContractState::GracePeriod => "GracePeriod",
            ContractState::Deleted => "Deleted",
        }
    }
}

/// A deployment's hash as a node contract stores it: 32 bytes, the ASCII
/// of the lowercase hex MD5 of the deployment's challenge.
///
/// In JSON it is the 32 characters. TFChain takes any 32 bytes: a hash
/// that is not lowercase hex ASCII (made by some other client) is written
/// `0x` and the 64 hex digits of its bytes, so it is carried, never
/// mistaken for a valid one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeploymentHash(pub [u8; 32]);

impl DeploymentHash {
    /// `text` as a hash: exactly 32 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes: [u8; 32] = text.as_bytes().try_into().map_err(|_| {
            format!(
                "a deployment hash is 32 lowercase hex characters (the hex MD5), not {} characters",
                text.len()
            )
        })?;
        let hash = Self(bytes);
        if !hash.is_hex() {
            return Err(
                "a deployment hash is 32 lowercase hex characters (0-9, a-f): the hex MD5"
                    .to_owned(),
            );
        }
        Ok(hash)
    }

    /// Whether the bytes are lowercase hex ASCII, as every Grove and
    /// ThreeFold client writes them.
    pub fn is_hex(&self) -> bool {
        self.0
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }
}

impl std::fmt::Display for DeploymentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_hex() {
            // Hex ASCII, checked just above.
            f.write_str(std::str::from_utf8(&self.0).unwrap_or_default())
        } else {
            write!(f, "0x{}", crate::auth::hex(&self.0))
        }
    }
}

impl std::fmt::Debug for DeploymentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeploymentHash({self})")
    }
}

impl Serialize for DeploymentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeploymentHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(raw) = text.strip_prefix("0x") {
            let bytes = unhex(raw)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| serde::de::Error::custom("0x and 64 hex digits"))?;
            return Ok(Self(bytes));
        }
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A node contract, as TFChain's `Contract` with `NodeContract` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeContract {
    pub contract_id: u64,
    pub node_id: u32,
    /// The twin that owns the contract.
    pub twin_id: u32,
    pub deployment_hash: DeploymentHash,
    pub public_ips: u32,
    pub state: ContractState,
}

impl NodeContract {
    /// The contract as provisiond's admission checks it.
    pub fn to_admission(&self) -> provisiond::admission::Contract {
        provisiond::admission::Contract {
            contract_id: self.contract_id,
            node_id: self.node_id,
            twin_id: self.twin_id,
            state: match self.state {
                ContractState::Created => provisiond::admission::ContractState::Created,
                ContractState::GracePeriod => provisiond::admission::ContractState::GracePeriod,
                ContractState::Deleted => provisiond::admission::ContractState::Deleted,
            },
            deployment_hash: self.deployment_hash.0,
        }
    }
}

/// What one contract uses on its node: `reportContractResources`'s
/// `ContractResources {contract_id, used}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractResources {
    pub contract_id: u64,
    pub used: Resources,
}

/// The last resources report a node made for a contract, as the embedded
/// registry keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractResourcesReport {
    pub node_id: u32,
    pub used: Resources,
    /// Unix seconds when the registry took it.
    pub at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_hash_is_32_lowercase_hex_characters_in_json_and_raw_bytes_round_trip() {
        let text = "0123456789abcdef0123456789abcdef";
        let hash = DeploymentHash::parse(text).expect("hex");
        assert_eq!(&hash.0, text.as_bytes());
        let json = serde_json::to_string(&hash).expect("encode");
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(
            serde_json::from_str::<DeploymentHash>(&json).expect("decode"),
            hash
        );
        for bad in [
            "",
            "0123456789abcdef",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert!(DeploymentHash::parse(bad).is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<DeploymentHash>(&format!("\"{bad}\"")).is_err(),
                "{bad:?}"
            );
        }
        let raw = DeploymentHash([0xfe; 32]);
        let json = serde_json::to_string(&raw).expect("encode");
        assert_eq!(json, format!("\"0x{}\"", "fe".repeat(32)));
        assert_eq!(
            serde_json::from_str::<DeploymentHash>(&json).expect("decode"),
            raw
        );
    }

    #[test]
    fn a_twin_key_is_the_key_of_its_account() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]).verifying_key();
        let twin = Twin {
            id: 3,
            account: crate::identity::keys::ss58(&key.to_bytes(), 42),
            relay: None,
        };
        let k = TwinKey::of(&twin).expect("an account");
        assert_eq!(k.key_bytes(), Some(key.to_bytes()));
        assert_eq!(k.account, twin.account);
        let not_an_account = Twin {
            account: "farmer-1".into(),
            ..twin
        };
        assert_eq!(TwinKey::of(&not_an_account), None);
    }
}
