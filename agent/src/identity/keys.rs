//! Everything derived from the node's seed: its ed25519 chain key, its
//! account address (SS58), and its WireGuard key.
//!
//! The WireGuard key is the X25519 form of the same key (the ed25519
//! secret's clamped scalar; the public key's Montgomery form), so any peer
//! can compute a node's WireGuard public key from its chain account alone.
//! The seed never leaves this module except to be stored: [`Seed`]'s Debug
//! hides it, and nothing here logs.

use blake2::{Blake2b512, Digest};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// SS58 address type of generic Substrate chains, which TFChain uses.
pub const SS58_PREFIX: u8 = 42;

/// The node's 32-byte secret seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(<secret>)")
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

impl Seed {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh seed from the kernel's random source.
    pub fn generate() -> std::io::Result<Self> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The stored form: 64 hex characters and a newline.
    pub fn to_file_text(&self) -> String {
        let mut text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        text
    }

    /// Parses the stored form; `None` for anything else.
    pub fn from_file_text(text: &str) -> Option<Self> {
        let hex = text.trim();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    pub fn keys(&self) -> NodeKeys {
        NodeKeys {
            signing: SigningKey::from_bytes(&self.0),
        }
    }
}

/// The keys of a node.
#[derive(Debug)]
pub struct NodeKeys {
    signing: SigningKey,
}

/// The public side of a node's identity, safe to show anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// The chain account, SS58 with prefix 42.
    pub account: String,
    /// The ed25519 public key, hex.
    pub public_key: String,
    /// The WireGuard public key, base64.
    pub wireguard_public_key: String,
}

impl NodeKeys {
    pub fn verifying(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The WireGuard private key, base64, for netd's `mesh0` only.
    pub fn wireguard_private_key(&self) -> String {
        base64::encode(self.signing.to_scalar_bytes())
    }

    pub fn public(&self) -> PublicIdentity {
        let public = self.verifying().to_bytes();
        PublicIdentity {
            account: ss58(&public, SS58_PREFIX),
            public_key: public.iter().map(|b| format!("{b:02x}")).collect(),
            wireguard_public_key: wireguard_public_key(&self.verifying()),
        }
    }
}

/// The WireGuard public key of the node whose chain key is `key`.
pub fn wireguard_public_key(key: &VerifyingKey) -> String {
    base64::encode(key.to_montgomery().to_bytes())
}

/// SS58 encoding of a 32-byte account id with a one-byte address type.
pub fn ss58(account: &[u8; 32], prefix: u8) -> String {
    let mut payload = Vec::with_capacity(35);
    payload.push(prefix);
    payload.extend_from_slice(account);
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(&payload);
    let checksum = hasher.finalize();
    payload.extend_from_slice(&checksum[..2]);
    bs58::encode(payload).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss58_matches_substrate() {
        // The all-zero account id, as every Substrate tool prints it.
        assert_eq!(
            ss58(&[0; 32], 42),
            "5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM"
        );
    }

    #[test]
    fn rfc8032_test_vector_one() {
        // RFC 8032 section 7.1, test 1.
        let seed = Seed::from_file_text(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        )
        .expect("seed");
        let public = seed.keys().public();
        assert_eq!(
            public.public_key,
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert!(public.account.starts_with('5'));
    }

    #[test]
    fn the_wireguard_key_pair_is_the_x25519_form_of_the_node_key() {
        let seed = Seed::generate().expect("random");
        let keys = seed.keys();
        let private = base64::decode(keys.wireguard_private_key()).expect("base64");
        let private: [u8; 32] = private.try_into().expect("32 bytes");
        let from_private =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private));
        let expected = base64::encode(from_private.as_bytes());
        assert_eq!(keys.public().wireguard_public_key, expected);
    }

    #[test]
    fn seed_text_round_trips_and_bad_text_is_refused() {
        let seed = Seed::generate().expect("random");
        assert_eq!(
            Seed::from_file_text(&seed.to_file_text()),
            Some(seed.clone())
        );
        for bad in ["", "abc", &"zz".repeat(32), &"00".repeat(33)] {
            assert!(Seed::from_file_text(bad).is_none(), "{bad}");
        }
        assert_eq!(format!("{seed:?}"), "Seed(<secret>)");
    }
}
