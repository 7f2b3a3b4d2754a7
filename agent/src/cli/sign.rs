//! `agent sign`: how a farmer makes a signed request.
//!
//! `agent sign new-key --key FILE` makes a farmer key (an ed25519 seed,
//! 0600, never overwritten) and prints its account, to own the farm on the
//! registry. `agent sign request --key FILE --node ACCOUNT --method M
//! --path P [--body B]` prints the four headers of a request signed for
//! that one node (its account, as `GET /v1/node` shows it), ready for
//! `curl`; no other node accepts it, and the node accepts it once. With
//! `--body-file F` instead of `--body`, the body is a file (an upgrade
//! image for `POST /v1/upgrade/image`), and the headers name its sha256.
//! `agent sign identity --key FILE --node TARGET (--adopt ACCOUNT |
//! --fresh)` answers a node that waits for its identity: it prints the
//! headers and the body of `POST /v1/identity/choice`, signed for the
//! target `/v1/node` shows under `waiting` (`machine:ID`).

use std::path::{Path, PathBuf};

use crate::identity::keys::Seed;

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path} already exists; a farmer key is never overwritten")]
    Exists { path: PathBuf },
    #[error("cannot read the key {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot draw randomness: {0}")]
    Random(#[source] std::io::Error),
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("{0:?} is not a path: it must start with /")]
    Path(String),
    #[error(
        "{0:?} is not a node's account (SS58) or waiting machine (machine:ID), as GET /v1/node shows it"
    )]
    Node(String),
    #[error("{0:?} is not an account to adopt (SS58, or 32 bytes of hex)")]
    Adopt(String),
    #[error("cannot read the body {path}: {reason}")]
    Body { path: PathBuf, reason: String },
    #[error("cannot encode the identity choice: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The four signature headers, by name.
pub type Headers = Vec<(&'static str, String)>;

/// Makes a new farmer key at `path`; answers its account.
pub fn new_key(path: &Path) -> Result<String, SignError> {
    if path.exists() {
        return Err(SignError::Exists {
            path: path.to_owned(),
        });
    }
    let seed = Seed::generate().map_err(SignError::Random)?;
    grove_daemon::fsutil::write_atomic(path, seed.to_file_text().as_bytes(), 0o600)?;
    Ok(seed.keys().public().account)
}

fn load(path: &Path) -> Result<Seed, SignError> {
    let text = std::fs::read_to_string(path).map_err(|e| SignError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Seed::from_file_text(&text).ok_or_else(|| SignError::Read {
        path: path.to_owned(),
        reason: "not a key made by `agent sign new-key`".to_owned(),
    })
}

/// The signing key at `path` (a farmer's or a tenant's twin key).
pub fn signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey, SignError> {
    Ok(load(path)?.keys().signing().clone())
}

/// The account of the key at `path`.
pub fn account(path: &Path) -> Result<String, SignError> {
    Ok(load(path)?.keys().public().account)
}

/// The body of a request to sign.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Bytes(&'a [u8]),
    /// A file too large to hold before the node trusts it (an upgrade
    /// image): the headers then carry its sha256 too
    /// ([`crate::auth::HEADER_BODY_SHA256`]).
    File(&'a Path),
}

/// The sha256 of the file at `path`, hex, read piece by piece.
fn file_sha256(path: &Path) -> Result<String, SignError> {
    use sha2::Digest as _;
    let unreadable = |e: std::io::Error| SignError::Body {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
    Ok(crate::auth::hex(&hasher.finalize()))
}

/// The headers of a request for the node `node` (its account), signed
/// with the key at `path`, now.
pub fn headers(
    path: &Path,
    node: &str,
    method: &str,
    request_path: &str,
    body: Body<'_>,
) -> Result<Vec<(&'static str, String)>, SignError> {
    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(SignError::Method(method.to_owned()));
    }
    if !request_path.starts_with('/') {
        return Err(SignError::Path(request_path.to_owned()));
    }
    let machine = node
        .strip_prefix("machine:")
        .is_some_and(|id| !id.is_empty() && !id.chars().any(char::is_control));
    if crate::auth::account_key(node).is_none() && !machine {
        return Err(SignError::Node(node.to_owned()));
    }
    let (body_sha256, announced) = match body {
        Body::Bytes(bytes) => (crate::auth::sha256_hex(bytes), false),
        Body::File(file) => (file_sha256(file)?, true),
    };
    let seed = load(path)?;
    let nonce = crate::auth::nonce().map_err(SignError::Random)?;
    let now = (crate::clock::unix_ms() / 1000) as i64;
    let mut headers = crate::auth::sign(
        seed.keys().signing(),
        crate::auth::Covered {
            target: node,
            method,
            path: request_path,
            body_sha256: body_sha256.clone(),
        },
        now,
        &nonce,
    );
    if announced {
        headers.push((crate::auth::HEADER_BODY_SHA256, body_sha256));
    }
    Ok(headers)
}

/// The headers and body of the farmer's identity choice for the node
/// `node` (its waiting machine, `machine:ID`): adopt `adopt`, or start
/// fresh.
pub fn identity_choice(
    path: &Path,
    node: &str,
    adopt: Option<&str>,
) -> Result<(Headers, String), SignError> {
    use crate::identity::choice::{Choice, ChoiceBody, PATH as CHOICE};
    let choice = match adopt {
        Some(account) => Choice::Adopt(
            crate::identity::choice::parse_account(account)
                .ok_or_else(|| SignError::Adopt(account.to_owned()))?,
        ),
        None => Choice::Fresh,
    };
    let body = serde_json::to_string(&ChoiceBody::of(&choice)).map_err(SignError::Encode)?;
    let headers = headers(path, node, "POST", CHOICE, Body::Bytes(body.as_bytes()))?;
    Ok((headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_never_overwritten_and_sign_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("farmer.key");
        let node_key = dir.path().join("node.key");
        let account = new_key(&key).expect("new key");
        let node = new_key(&node_key).expect("a node's key");
        assert!(matches!(new_key(&key), Err(SignError::Exists { .. })));
        assert_eq!(super::account(&key).expect("account"), account);
        let h = headers(&key, &node, "POST", "/v1/reboot", Body::Bytes(b"")).expect("headers");
        let v = crate::auth::RequestVerifier::in_memory(i64::MAX);
        let now = (crate::clock::unix_ms() / 1000) as i64;
        let presented = crate::auth::tests::presented(&h);
        let request = crate::auth::Request {
            target: &node,
            method: "POST",
            path: "/v1/reboot",
            body: b"",
        };
        // What was signed before the verifier began is refused, as after
        // a restart.
        assert!(matches!(
            v.verify(&account, request, presented, now),
            Err(crate::auth::AuthError::BeforeRecord { .. })
        ));
        let other = crate::auth::Request {
            target: &account,
            ..request
        };
        assert_eq!(
            crate::auth::verify(other, presented, now),
            Err(crate::auth::AuthError::BadSignature),
            "signed for one node, refused by another"
        );
        assert_eq!(
            crate::auth::verify(request, presented, now).map(|v| v.signer),
            Ok(account.clone())
        );
        assert!(headers(&key, &node, "post", "/x", Body::Bytes(b"")).is_err());
        assert!(headers(&key, &node, "POST", "x", Body::Bytes(b"")).is_err());
        assert!(matches!(
            headers(&key, "farmer-1", "POST", "/x", Body::Bytes(b"")),
            Err(SignError::Node(_))
        ));
        assert!(
            headers(
                &dir.path().join("missing"),
                &node,
                "POST",
                "/x",
                Body::Bytes(b"")
            )
            .is_err()
        );
    }

    #[test]
    fn a_file_body_is_signed_by_its_sum_which_the_headers_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("farmer.key");
        let farmer = new_key(&key).unwrap();
        let node = new_key(&dir.path().join("node.key")).unwrap();
        let image = dir.path().join("image.tar");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&image, &bytes).unwrap();
        let path = "/v1/upgrade/image";
        let h = headers(&key, &node, "POST", path, Body::File(&image)).unwrap();
        let (_, sum) = h
            .iter()
            .find(|(k, _)| *k == crate::auth::HEADER_BODY_SHA256)
            .expect("the sum is named");
        assert_eq!(*sum, crate::auth::sha256_hex(&bytes));
        let presented = crate::auth::tests::presented(&h);
        let now = (crate::clock::unix_ms() / 1000) as i64;
        let covered = |body_sha256: &str| crate::auth::Covered {
            target: &node,
            method: "POST",
            path,
            body_sha256: body_sha256.to_owned(),
        };
        // The node checks the signature over the named sum, before it
        // reads the body; the same holds over the body itself.
        assert_eq!(
            crate::auth::verify(covered(sum), presented, now).map(|v| v.signer),
            Ok(farmer.clone())
        );
        let whole = crate::auth::Request {
            target: &node,
            method: "POST",
            path,
            body: &bytes,
        };
        assert_eq!(
            crate::auth::verify(whole, presented, now).map(|v| v.signer),
            Ok(farmer)
        );
        // Another sum in the header does not verify.
        assert_eq!(
            crate::auth::verify(covered(&crate::auth::sha256_hex(b"other")), presented, now),
            Err(crate::auth::AuthError::BadSignature)
        );
        // A small body names no sum.
        let small = headers(&key, &node, "POST", "/v1/reboot", Body::Bytes(b"")).unwrap();
        assert!(
            !small
                .iter()
                .any(|(k, _)| *k == crate::auth::HEADER_BODY_SHA256)
        );
        let missing = dir.path().join("missing.tar");
        assert!(matches!(
            headers(&key, &node, "POST", path, Body::File(&missing)),
            Err(SignError::Body { .. })
        ));
    }

    #[test]
    fn an_identity_choice_is_signed_for_the_waiting_machine_with_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("farmer.key");
        let farmer = new_key(&key).expect("new key");
        let adopted = new_key(&dir.path().join("old-node.key")).expect("a node's key");
        let (h, body) =
            identity_choice(&key, "machine:m-1", Some(&adopted)).expect("signed choice");
        assert_eq!(body, format!("{{\"adopt\":\"{adopted}\"}}"));
        let presented = crate::auth::tests::presented(&h);
        let now = (crate::clock::unix_ms() / 1000) as i64;
        let request = |target| crate::auth::Request {
            target,
            method: "POST",
            path: crate::identity::choice::PATH,
            body: body.as_bytes(),
        };
        assert_eq!(
            crate::auth::verify(request("machine:m-1"), presented, now).map(|v| v.signer),
            Ok(farmer)
        );
        assert_eq!(
            crate::auth::verify(request("machine:m-2"), presented, now),
            Err(crate::auth::AuthError::BadSignature),
            "signed for one machine, refused by another"
        );
        let (_, fresh) = identity_choice(&key, "machine:m-1", None).expect("fresh");
        assert_eq!(fresh, "{\"fresh\":true}");
        assert!(matches!(
            identity_choice(&key, "machine:m-1", Some("nobody")),
            Err(SignError::Adopt(_))
        ));
        assert!(matches!(
            identity_choice(&key, "machine:", None),
            Err(SignError::Node(_))
        ));
    }
}
