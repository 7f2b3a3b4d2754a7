//! Signed requests: only the farmer changes a node, and only the account a
//! registry write concerns makes it.
//!
//! A signed request carries four headers: the signer's account, a Unix
//! timestamp, a nonce, and an ed25519 signature over
//! `grove-request\nTARGET\nMETHOD\nPATH\nSHA256(BODY)\nTIMESTAMP\nNONCE`.
//! TARGET is the account of the node the request is meant for (or
//! [`REGISTRY`] for a registry write), so a request signed for one node is
//! refused by every other. The receiver checks the signature, that the
//! timestamp is within [`MAX_SKEW`] of its clock, and that the signer's
//! nonce was not used before; [`NonceStore`] keeps used nonces in a state
//! file (written atomically before the request is acted on), so a replay is
//! refused after a restart too. Without a readable record, requests signed
//! before the record was lost are refused. Limits: ed25519 keys only (a
//! farmer with an sr25519 twin signs with an ed25519 key registered for the
//! farm).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const HEADER_SIGNER: &str = "x-grove-signer";
pub const HEADER_TIMESTAMP: &str = "x-grove-timestamp";
pub const HEADER_NONCE: &str = "x-grove-nonce";
pub const HEADER_SIGNATURE: &str = "x-grove-signature";
/// On a request whose body is too large to hold before it is trusted (an
/// upgrade image): the body's sha256, hex. The signature is checked over
/// it before the body is read, and the body against it once read.
pub const HEADER_BODY_SHA256: &str = "x-grove-body-sha256";

/// The target of a write to the embedded registry.
pub const REGISTRY: &str = "registry";

/// How far a request's timestamp may be from the receiver's clock, in
/// seconds.
pub const MAX_SKEW: i64 = 60;

/// Why a request was refused. [`AuthError::status`] maps each to a status.
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
    #[error(
        "the request was signed at {timestamp}, before the record of used nonces began at {floor}; sign it again"
    )]
    BeforeRecord { timestamp: i64, floor: i64 },
    #[error(
        "the signature does not verify (a request signed for another node, or changed on the way)"
    )]
    BadSignature,
    #[error("{signer} is not the owner of this node's farm")]
    NotFarmer { signer: String },
    #[error("the farm owner's key is not known yet: {0}")]
    NoFarmer(String),
    #[error("cannot record the nonce: {0}")]
    Record(String),
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing(_)
            | AuthError::Malformed { .. }
            | AuthError::Skewed { .. }
            | AuthError::Replay(_)
            | AuthError::BeforeRecord { .. }
            | AuthError::BadSignature => 401,
            AuthError::NotFarmer { .. } => 403,
            AuthError::NoFarmer(_) | AuthError::Record(_) => 503,
        }
    }
}

/// The bytes that are signed.
pub fn message(request: &Covered<'_>, timestamp: i64, nonce: &str) -> Vec<u8> {
    let Covered {
        target,
        method,
        path,
        body_sha256,
    } = request;
    format!("grove-request\n{target}\n{method}\n{path}\n{body_sha256}\n{timestamp}\n{nonce}")
        .into_bytes()
}

/// The sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One request to sign: for whom, and what.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The target node's account, or [`REGISTRY`].
    pub target: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// A request as its signature covers it: the body by its sha256.
#[derive(Debug, Clone)]
pub struct Covered<'a> {
    pub target: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Lowercase hex.
    pub body_sha256: String,
}

impl<'a> From<Request<'a>> for Covered<'a> {
    fn from(r: Request<'a>) -> Self {
        Covered {
            target: r.target,
            method: r.method,
            path: r.path,
            body_sha256: sha256_hex(r.body),
        }
    }
}

/// The four headers for `request`, signed with `key`.
pub fn sign<'a>(
    key: &SigningKey,
    request: impl Into<Covered<'a>>,
    timestamp: i64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let signature = key.sign(&message(&request.into(), timestamp, nonce));
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

/// A fresh nonce: 32 hex characters from the kernel's random source.
pub fn nonce() -> std::io::Result<String> {
    let seed = crate::identity::keys::Seed::generate()?;
    Ok(seed.to_file_text()[..32].to_owned())
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

impl<'a> Presented<'a> {
    /// The four headers out of a request's header map.
    pub fn from_headers(headers: &'a axum::http::HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            signer: header(HEADER_SIGNER),
            timestamp: header(HEADER_TIMESTAMP),
            nonce: header(HEADER_NONCE),
            signature: header(HEADER_SIGNATURE),
        }
    }
}

/// A request whose signature verified; its nonce is not yet spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub signer: String,
    pub timestamp: i64,
    pub nonce: String,
}

/// Checks the signature of `request` as presented, at time `now`. Spends
/// nothing: the caller checks who signed, then [`NonceStore::spend`]s.
pub fn verify<'a>(
    request: impl Into<Covered<'a>>,
    h: Presented<'_>,
    now: i64,
) -> Result<Verified, AuthError> {
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
    let skew = now.saturating_sub(timestamp).saturating_abs();
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
        &message(&request.into(), timestamp, nonce),
        &Signature::from_bytes(&raw),
    )
    .map_err(|_mismatch: ed25519_dalek::SignatureError| AuthError::BadSignature)?;
    Ok(Verified {
        signer: signer.to_owned(),
        timestamp,
        nonce: nonce.to_owned(),
    })
}

/// The nonces spent within the window, keyed by `signer nonce`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    seen: BTreeMap<String, i64>,
}

#[derive(Debug)]
struct Spent {
    record: Record,
    /// Requests signed before this time are refused: what was spent
    /// before it is not known.
    floor: Option<i64>,
}

/// The used nonces, in memory and (with a path) in a state file.
#[derive(Debug)]
pub struct NonceStore {
    path: Option<PathBuf>,
    /// When the store began: without a record, requests signed before it
    /// are refused.
    began: i64,
    spent: Mutex<Option<Spent>>,
}

impl NonceStore {
    /// Nonces kept in memory only, from `began`: requests signed before it
    /// are refused, so a restart cannot be used to replay.
    pub fn in_memory(began: i64) -> Self {
        Self {
            path: None,
            began,
            spent: Mutex::new(None),
        }
    }

    /// Nonces kept in the state file at `path`, read at first use; if it
    /// cannot be read, requests signed before `began` are refused.
    pub fn at(path: &Path, began: i64) -> Self {
        Self {
            path: Some(path.to_owned()),
            began,
            spent: Mutex::new(None),
        }
    }

    fn load(&self) -> Spent {
        let Some(path) = &self.path else {
            return Spent {
                record: Record::default(),
                floor: Some(self.began),
            };
        };
        let read = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string()));
        match read {
            Ok(record) => Spent {
                record,
                floor: None,
            },
            Err(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "no record of used nonces; requests signed before the agent started are refused"
                );
                Spent {
                    record: Record::default(),
                    floor: Some(self.began),
                }
            }
        }
    }

    /// Spends the nonce of `verified`, at time `now`: refused if it was
    /// spent before. The record is on disk before this answers Ok.
    pub fn spend(&self, verified: &Verified, now: i64) -> Result<(), AuthError> {
        let mut guard = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let spent = guard.get_or_insert_with(|| self.load());
        if let Some(floor) = spent.floor
            && verified.timestamp < floor
        {
            return Err(AuthError::BeforeRecord {
                timestamp: verified.timestamp,
                floor,
            });
        }
        let key = format!("{} {}", verified.signer, verified.nonce);
        if spent.record.seen.contains_key(&key) {
            return Err(AuthError::Replay(verified.nonce.clone()));
        }
        let mut next = spent.record.clone();
        next.seen
            .retain(|_, at| now.saturating_sub(*at).saturating_abs() <= 2 * MAX_SKEW);
        next.seen.insert(key, verified.timestamp);
        if let Some(path) = &self.path {
            let bytes = serde_json::to_vec(&next).map_err(|e| AuthError::Record(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| AuthError::Record(format!("{}: {e}", dir.display())))?;
            }
            grove_daemon::fsutil::write_atomic(path, &bytes, 0o600)
                .map_err(|e| AuthError::Record(e.to_string()))?;
        }
        spent.record = next;
        Ok(())
    }
}

/// Checks farmer requests to one node and remembers their nonces.
#[derive(Debug)]
pub struct RequestVerifier {
    nonces: NonceStore,
}

impl RequestVerifier {
    /// Used nonces kept in memory, from `began`.
    pub fn in_memory(began: i64) -> Self {
        Self {
            nonces: NonceStore::in_memory(began),
        }
    }

    /// Used nonces kept in the state file at `path`; `began` is when the
    /// agent started.
    pub fn at(path: &Path, began: i64) -> Self {
        Self {
            nonces: NonceStore::at(path, began),
        }
    }

    /// Verifies one request to the node `node` (its account) against the
    /// farm owner's account, at time `now`. Blocking: it writes the nonce
    /// record.
    pub fn verify<'a>(
        &self,
        farmer: &str,
        request: impl Into<Covered<'a>>,
        h: Presented<'_>,
        now: i64,
    ) -> Result<(), AuthError> {
        let verified = verify(request, h, now)?;
        if verified.signer != farmer {
            return Err(AuthError::NotFarmer {
                signer: verified.signer,
            });
        }
        self.nonces.spend(&verified, now)
    }

    /// Spends the nonce of a request verified elsewhere (a tenant's, whose
    /// signer is checked against its twin): refused if it was spent
    /// before. Blocking: it writes the nonce record.
    pub fn spend(&self, verified: &Verified, now: i64) -> Result<(), AuthError> {
        self.nonces.spend(verified, now)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test key made of one repeated byte.
    pub(crate) fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    /// The account of `k`, as signed requests name it.
    pub(crate) fn account(k: &SigningKey) -> String {
        crate::identity::keys::ss58(&k.verifying_key().to_bytes(), 42)
    }

    const NODE: &str = "5NodeAccount";

    fn reboot<'a>(target: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            target,
            method: "POST",
            path: "/v1/reboot",
            body,
        }
    }

    /// The signature headers among `headers`, as a node receives them.
    pub(crate) fn presented<'a>(headers: &'a [(&'static str, String)]) -> Presented<'a> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(h, _)| *h == name)
                .map(|(_, v)| v.as_str())
        };
        Presented {
            signer: get(HEADER_SIGNER),
            timestamp: get(HEADER_TIMESTAMP),
            nonce: get(HEADER_NONCE),
            signature: get(HEADER_SIGNATURE),
        }
    }

    fn check(
        v: &RequestVerifier,
        farmer: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        v.verify(farmer, reboot(NODE, body), presented(headers), now)
    }

    #[test]
    fn the_farmer_passes_once_and_everything_else_is_refused() {
        let (farmer, stranger) = (key(1), key(2));
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let v = RequestVerifier::at(&dir.path().join("nonces.json"), now);
        // No record yet: what was signed before the agent started is refused.
        let early = sign(&farmer, reboot(NODE, b"{}"), now - 1, "n0");
        let e = check(&v, &account(&farmer), &early, b"{}", now).expect_err("before");
        assert!(matches!(e, AuthError::BeforeRecord { .. }), "{e}");
        assert_eq!(e.status(), 401);

        let good = sign(&farmer, reboot(NODE, b"{}"), now + 1, "n1");
        assert_eq!(check(&v, &account(&farmer), &good, b"{}", now + 5), Ok(()));
        let replay = check(&v, &account(&farmer), &good, b"{}", now + 6).expect_err("replay");
        assert!(matches!(replay, AuthError::Replay(_)));
        assert_eq!(replay.status(), 401);

        let skewed = sign(&farmer, reboot(NODE, b"{}"), now - 61, "n2");
        let e = check(&v, &account(&farmer), &skewed, b"{}", now).expect_err("skew");
        assert!(matches!(e, AuthError::Skewed { skew: 61, .. }), "{e}");

        let other = sign(&stranger, reboot(NODE, b"{}"), now + 2, "n3");
        let e = check(&v, &account(&farmer), &other, b"{}", now + 2).expect_err("stranger");
        assert_eq!(e.status(), 403);

        let tampered = sign(&farmer, reboot(NODE, b"{}"), now + 2, "n4");
        let e = check(&v, &account(&farmer), &tampered, b"{\"x\":1}", now + 2)
            .expect_err("body changed");
        assert_eq!(e, AuthError::BadSignature);

        let elsewhere = sign(&farmer, reboot("5OtherNode", b"{}"), now + 2, "n5");
        let e = check(&v, &account(&farmer), &elsewhere, b"{}", now + 2).expect_err("other node");
        assert_eq!(e, AuthError::BadSignature);

        let e = check(&v, &account(&farmer), &[], b"{}", now).expect_err("unsigned");
        assert!(matches!(e, AuthError::Missing(_)));
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn spent_nonces_survive_a_restart_and_a_lost_record_refuses_old_requests() {
        let farmer = key(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth").join("nonces.json");
        let now = 1_800_000_000;
        let first = RequestVerifier::at(&path, now);
        let good = sign(&farmer, reboot(NODE, b""), now, "n1");
        assert_eq!(check(&first, &account(&farmer), &good, b"", now), Ok(()));
        drop(first);

        let restarted = RequestVerifier::at(&path, now + 2);
        let e = check(&restarted, &account(&farmer), &good, b"", now + 3).expect_err("replay");
        assert!(matches!(e, AuthError::Replay(_)), "{e}");
        let fresh = sign(&farmer, reboot(NODE, b""), now + 3, "n2");
        assert_eq!(
            check(&restarted, &account(&farmer), &fresh, b"", now + 3),
            Ok(())
        );

        std::fs::write(&path, b"not json").expect("corrupt");
        let lost = RequestVerifier::at(&path, now + 4);
        let e = check(&lost, &account(&farmer), &fresh, b"", now + 4).expect_err("no record");
        assert!(matches!(e, AuthError::BeforeRecord { .. }), "{e}");
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
