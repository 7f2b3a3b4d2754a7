//! Signed requests: only the farmer changes a node.
//!
//! A change (reboot, disk wipe) carries four headers: the signer's account,
//! a Unix timestamp, a nonce, and an ed25519 signature over
//! `METHOD\nPATH\nSHA256(BODY)\nTIMESTAMP\nNONCE`. The agent accepts it
//! only if the signer is the owner of the node's farm, the signature
//! verifies, the timestamp is within [`MAX_SKEW`] of the node's clock, and
//! the nonce has not been seen within the window. Limits: ed25519 keys only
//! (a farmer with an sr25519 twin signs with an ed25519 key registered for
//! the farm); seen nonces are kept in memory, which the timestamp window
//! bounds.

use std::collections::HashMap;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

pub const HEADER_SIGNER: &str = "x-grove-signer";
pub const HEADER_TIMESTAMP: &str = "x-grove-timestamp";
pub const HEADER_NONCE: &str = "x-grove-nonce";
pub const HEADER_SIGNATURE: &str = "x-grove-signature";

/// How far a request's timestamp may be from the node's clock, in seconds.
pub const MAX_SKEW: i64 = 60;

/// Why a request was refused. [`AuthError::status`] maps each to 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this request changes the node and must be signed by the farmer (header {0} missing)")]
    Missing(&'static str),
    #[error("header {header} is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: String,
    },
    #[error(
        "timestamp {timestamp} is {skew} s away from the node's clock; at most {MAX_SKEW} s is accepted"
    )]
    Skewed { timestamp: i64, skew: i64 },
    #[error("nonce {0} was already used: a replayed request is refused")]
    Replay(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("{signer} is not the owner of this node's farm")]
    NotFarmer { signer: String },
    #[error("the farm owner's key is not known yet: {0}")]
    NoFarmer(String),
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing(_)
            | AuthError::Malformed { .. }
            | AuthError::Skewed { .. }
            | AuthError::Replay(_)
            | AuthError::BadSignature => 401,
            AuthError::NotFarmer { .. } => 403,
            AuthError::NoFarmer(_) => 503,
        }
    }
}

/// The bytes that are signed.
pub fn message(method: &str, path: &str, body: &[u8], timestamp: i64, nonce: &str) -> Vec<u8> {
    let digest: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{method}\n{path}\n{digest}\n{timestamp}\n{nonce}").into_bytes()
}

/// The four headers for a request, signed with `key`.
pub fn sign(
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let signature = key.sign(&message(method, path, body, timestamp, nonce));
    let signer = crate::identity::keys::ss58(
        &key.verifying_key().to_bytes(),
        crate::identity::keys::SS58_PREFIX,
    );
    vec![
        (HEADER_SIGNER, signer),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_NONCE, nonce.to_owned()),
        (HEADER_SIGNATURE, base64::encode(signature.to_bytes())),
    ]
}

/// The 32-byte public key inside an SS58 address.
pub fn account_key(account: &str) -> Option<VerifyingKey> {
    let bytes = bs58::decode(account).into_vec().ok()?;
    if bytes.len() != 35 {
        return None;
    }
    let key: [u8; 32] = bytes[1..33].try_into().ok()?;
    // The address must round-trip, checksum included.
    if crate::identity::keys::ss58(&key, bytes[0]) != account {
        return None;
    }
    VerifyingKey::from_bytes(&key).ok()
}

/// The headers of one request, as received.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub signer: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks requests and remembers their nonces.
#[derive(Debug, Default)]
pub struct RequestVerifier {
    seen: Mutex<HashMap<String, i64>>,
}

impl RequestVerifier {
    /// Verifies one request against the farm owner's account, at time `now`.
    pub fn verify(
        &self,
        farmer: &str,
        method: &str,
        path: &str,
        body: &[u8],
        h: Presented<'_>,
        now: i64,
    ) -> Result<(), AuthError> {
        let signer = h.signer.ok_or(AuthError::Missing(HEADER_SIGNER))?;
        let timestamp = h.timestamp.ok_or(AuthError::Missing(HEADER_TIMESTAMP))?;
        let nonce = h.nonce.ok_or(AuthError::Missing(HEADER_NONCE))?;
        let signature = h.signature.ok_or(AuthError::Missing(HEADER_SIGNATURE))?;
        let timestamp: i64 =
            timestamp
                .parse()
                .map_err(|e: std::num::ParseIntError| AuthError::Malformed {
                    header: HEADER_TIMESTAMP,
                    reason: e.to_string(),
                })?;
        if nonce.is_empty() || nonce.len() > 128 {
            return Err(AuthError::Malformed {
                header: HEADER_NONCE,
                reason: "must be 1 to 128 characters".into(),
            });
        }
        let skew = (now - timestamp).abs();
        if skew > MAX_SKEW {
            return Err(AuthError::Skewed { timestamp, skew });
        }
        let key = account_key(signer).ok_or_else(|| AuthError::Malformed {
            header: HEADER_SIGNER,
            reason: "not an SS58 account".into(),
        })?;
        let raw = base64::decode(signature).map_err(|e| AuthError::Malformed {
            header: HEADER_SIGNATURE,
            reason: e.to_string(),
        })?;
        let raw: [u8; 64] = raw
            .try_into()
            .map_err(|_wrong_len: Vec<u8>| AuthError::Malformed {
                header: HEADER_SIGNATURE,
                reason: "an ed25519 signature is 64 bytes".into(),
            })?;
        key.verify(
            &message(method, path, body, timestamp, nonce),
            &Signature::from_bytes(&raw),
        )
        .map_err(|_mismatch: ed25519_dalek::SignatureError| AuthError::BadSignature)?;
        if signer != farmer {
            return Err(AuthError::NotFarmer {
                signer: signer.to_owned(),
            });
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, at| (now - *at).abs() <= 2 * MAX_SKEW);
        if seen.insert(nonce.to_owned(), now).is_some() {
            return Err(AuthError::Replay(nonce.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn account(k: &SigningKey) -> String {
        crate::identity::keys::ss58(&k.verifying_key().to_bytes(), 42)
    }

    fn check(
        v: &RequestVerifier,
        farmer: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(h, _)| *h == name)
                .map(|(_, v)| v.as_str())
        };
        v.verify(
            farmer,
            "POST",
            "/v1/reboot",
            body,
            Presented {
                signer: get(HEADER_SIGNER),
                timestamp: get(HEADER_TIMESTAMP),
                nonce: get(HEADER_NONCE),
                signature: get(HEADER_SIGNATURE),
            },
            now,
        )
    }

    #[test]
    fn the_farmer_passes_once_and_everything_else_is_refused() {
        let (farmer, stranger) = (key(1), key(2));
        let v = RequestVerifier::default();
        let now = 1_800_000_000;
        let good = sign(&farmer, "POST", "/v1/reboot", b"{}", now, "n1");
        assert_eq!(check(&v, &account(&farmer), &good, b"{}", now + 5), Ok(()));
        let replay = check(&v, &account(&farmer), &good, b"{}", now + 6).expect_err("replay");
        assert!(matches!(replay, AuthError::Replay(_)));
        assert_eq!(replay.status(), 401);

        let skewed = sign(&farmer, "POST", "/v1/reboot", b"{}", now - 61, "n2");
        let e = check(&v, &account(&farmer), &skewed, b"{}", now).expect_err("skew");
        assert!(matches!(e, AuthError::Skewed { skew: 61, .. }), "{e}");

        let other = sign(&stranger, "POST", "/v1/reboot", b"{}", now, "n3");
        let e = check(&v, &account(&farmer), &other, b"{}", now).expect_err("stranger");
        assert_eq!(e.status(), 403);

        let tampered = sign(&farmer, "POST", "/v1/reboot", b"{}", now, "n4");
        let e =
            check(&v, &account(&farmer), &tampered, b"{\"x\":1}", now).expect_err("body changed");
        assert_eq!(e, AuthError::BadSignature);

        let e = check(&v, &account(&farmer), &[], b"{}", now).expect_err("unsigned");
        assert!(matches!(e, AuthError::Missing(_)));
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn accounts_round_trip_and_bad_ones_are_refused() {
        let k = key(7);
        let a = account(&k);
        assert_eq!(account_key(&a), Some(k.verifying_key()));
        let mut broken = a.clone();
        broken.pop();
        broken.push(if a.ends_with('a') { 'b' } else { 'a' });
        assert_eq!(account_key(&broken), None, "a bad checksum is refused");
        assert_eq!(account_key("not-base58!"), None);
    }
}
