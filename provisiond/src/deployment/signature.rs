//! Who must sign a deployment, and the check of their signatures.
//!
//! A signature covers the 16-byte deployment hash, or with the
//! `polka-wallet` style the text `<Bytes>HEX</Bytes>` of it. Keys are the
//! twins' account keys from the registry, ed25519 or sr25519 (context
//! `substrate`). The deploying twin must be among the requests and always
//! signs; for each requested twin the first signature entry with its id is
//! the one that counts (an SDK re-signing an update may leave a stale second
//! one); the counted weights must reach `weight_required`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::challenge::{Challenge, ChallengeExt};
use super::workload::null_default;
use super::{DeploymentError, DeploymentHash};

/// A twin asked to sign, and the weight its signature carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRequest {
    pub twin_id: u32,
    pub required: bool,
    pub weight: u64,
}

/// The two key types zos accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureType {
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "sr25519")]
    Sr25519,
}

/// What the signatures cover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureStyle {
    /// The 16 bytes of the hash.
    #[default]
    #[serde(rename = "")]
    Default,
    /// `<Bytes>` + the hash in hex + `</Bytes>`, as the polkadot wallet signs.
    #[serde(rename = "polka-wallet")]
    PolkaWallet,
}

impl SignatureStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureStyle::Default => "",
            SignatureStyle::PolkaWallet => "polka-wallet",
        }
    }
}

/// One twin's signature, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub twin_id: u32,
    pub signature: String,
    pub signature_type: SignatureType,
}

/// The deployment's `signature_requirement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRequirement {
    #[serde(deserialize_with = "null_default")]
    pub requests: Vec<SignatureRequest>,
    #[serde(deserialize_with = "null_default")]
    pub weight_required: u64,
    #[serde(deserialize_with = "null_default")]
    pub signatures: Vec<Signature>,
    /// Absent from what the SDK sends, which means the default style.
    #[serde(default, deserialize_with = "null_default")]
    pub signature_style: SignatureStyle,
}

/// The account keys of the twins that sign, as the registry holds them.
pub trait TwinKeys {
    /// The 32-byte account key of `twin`, or `None` for an unknown twin.
    fn account_key(&self, twin: u32) -> Option<[u8; 32]>;
}

impl TwinKeys for BTreeMap<u32, [u8; 32]> {
    fn account_key(&self, twin: u32) -> Option<[u8; 32]> {
        self.get(&twin).copied()
    }
}

/// Why the signatures do not authorise a deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("twin {twin} must sign this deployment and did not")]
    Missing { twin: u32 },
    #[error("twin {twin} is not known to the registry")]
    UnknownTwin { twin: u32 },
    #[error("the signature of twin {twin} is not 64 bytes in hex: {reason}")]
    Malformed { twin: u32, reason: String },
    #[error("the account key of twin {twin} is not a valid {kind} key: {reason}")]
    BadKey {
        twin: u32,
        kind: SignatureType,
        reason: String,
    },
    #[error("the {kind} signature of twin {twin} does not verify against its account key")]
    Invalid { twin: u32, kind: SignatureType },
    #[error("the signatures carry a weight of {got}, {required} is required")]
    Weight { got: u64, required: u64 },
}

/// What the twins sign: the hash, in the deployment's style.
pub fn signed_message(hash: &DeploymentHash, style: SignatureStyle) -> Vec<u8> {
    match style {
        SignatureStyle::Default => hash.0.to_vec(),
        SignatureStyle::PolkaWallet => format!("<Bytes>{}</Bytes>", hash.hex()).into_bytes(),
    }
}

/// Checks one signature over `message` with a 32-byte account key.
pub fn verify_one(
    twin: u32,
    kind: SignatureType,
    key: &[u8; 32],
    message: &[u8],
    signature_hex: &str,
) -> Result<(), SignatureError> {
    let bytes = hex::decode(signature_hex).map_err(|source| SignatureError::Malformed {
        twin,
        reason: source.to_string(),
    })?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| SignatureError::Malformed {
            twin,
            reason: format!("{} bytes", bytes.len()),
        })?;
    let verified = match kind {
        SignatureType::Ed25519 => {
            let key = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|source| {
                SignatureError::BadKey {
                    twin,
                    kind,
                    reason: source.to_string(),
                }
            })?;
            let signature = ed25519_dalek::Signature::from_bytes(&bytes);
            key.verify_strict(message, &signature).is_ok()
        }
        SignatureType::Sr25519 => {
            let key = schnorrkel::PublicKey::from_bytes(key).map_err(|source| {
                SignatureError::BadKey {
                    twin,
                    kind,
                    reason: source.to_string(),
                }
            })?;
            match schnorrkel::Signature::from_bytes(&bytes) {
                Ok(signature) => key.verify_simple(b"substrate", message, &signature).is_ok(),
                Err(source) => {
                    return Err(SignatureError::Malformed {
                        twin,
                        reason: source.to_string(),
                    });
                }
            }
        }
    };
    if verified {
        Ok(())
    } else {
        Err(SignatureError::Invalid { twin, kind })
    }
}

impl SignatureRequirement {
    /// The shape checks: the originator among the requests, each twin asked
    /// once, a weight that can be reached.
    pub(super) fn validate(&self, originator: u32) -> Result<(), DeploymentError> {
        let field = |f: &str| format!("signature_requirement.{f}");
        if !self.requests.iter().any(|r| r.twin_id == originator) {
            return Err(DeploymentError::invalid(
                field("requests"),
                format!("the deploying twin {originator} must be among the requests"),
            ));
        }
        for (i, request) in self.requests.iter().enumerate() {
            if self.requests[..i]
                .iter()
                .any(|r| r.twin_id == request.twin_id)
            {
                return Err(DeploymentError::invalid(
                    format!("{}[{i}].twin_id", field("requests")),
                    format!("twin {} is asked twice", request.twin_id),
                ));
            }
        }
        let total = self
            .requests
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(r.weight));
        match total {
            None => Err(DeploymentError::invalid(
                field("requests"),
                "the weights add up past 2^64",
            )),
            Some(total) if total < self.weight_required => Err(DeploymentError::invalid(
                field("weight_required"),
                format!(
                    "{} is more than all requests together ({total})",
                    self.weight_required
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The twins whose keys [`Self::verify`] needs.
    pub fn signers(&self) -> Vec<u32> {
        self.requests.iter().map(|r| r.twin_id).collect()
    }

    /// The first signature entry of `twin`: the one that counts.
    pub fn signature_of(&self, twin: u32) -> Option<&Signature> {
        self.signatures.iter().find(|s| s.twin_id == twin)
    }

    /// Verifies the signatures of a deployment of `originator` with `hash`;
    /// returns the weight reached.
    pub fn verify(
        &self,
        originator: u32,
        hash: &DeploymentHash,
        keys: &impl TwinKeys,
    ) -> Result<u64, SignatureError> {
        let message = signed_message(hash, self.signature_style);
        let mut weight = 0u64;
        for request in &self.requests {
            let twin = request.twin_id;
            let Some(signature) = self.signature_of(twin) else {
                if request.required || twin == originator {
                    return Err(SignatureError::Missing { twin });
                }
                continue;
            };
            let key = keys
                .account_key(twin)
                .ok_or(SignatureError::UnknownTwin { twin })?;
            verify_one(
                twin,
                signature.signature_type,
                &key,
                &message,
                &signature.signature,
            )?;
            weight = weight.saturating_add(request.weight);
        }
        if weight < self.weight_required {
            return Err(SignatureError::Weight {
                got: weight,
                required: self.weight_required,
            });
        }
        Ok(weight)
    }
}

impl Challenge for SignatureRequirement {
    fn challenge(&self, out: &mut String) {
        for request in &self.requests {
            out.num(request.twin_id)
                .flag(request.required)
                .num(request.weight);
        }
        out.num(self.weight_required)
            .text(self.signature_style.as_str());
    }
}

impl fmt::Display for SignatureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureType::Ed25519 => "ed25519",
            SignatureType::Sr25519 => "sr25519",
        })
    }
}
