//! WireGuard keys: a public key that may be shown anywhere, and a private
//! key that is never shown.
//!
//! Both parse from the base64 text `wg` uses and reject anything that is not
//! exactly 32 bytes, saying which; [`PrivateKey`] has no `Display` and no
//! `Serialize`, its `Debug` is redacted, and only [`PrivateKey::expose`]
//! (for the 0600 state file) turns it back into text. Limits: the secret is
//! not zeroed when dropped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The length of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a text is not a WireGuard key. The text itself is only kept for
/// public keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key {text:?} is not base64: {source}")]
    PublicNotBase64 {
        text: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("public key {text:?} decodes to {len} bytes, not {KEY_LEN}")]
    PublicLength { text: String, len: usize },
    #[error("private key is not base64: {0}")]
    PrivateNotBase64(#[source] base64::DecodeError),
    #[error("private key decodes to {len} bytes, not {KEY_LEN}")]
    PrivateLength { len: usize },
}

/// A peer's or our own public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_wg(self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }

    pub fn from_wg(key: &wireguard_control::Key) -> Self {
        Self(key.0)
    }
}

/// The key in `bytes`, or the length they have instead of [`KEY_LEN`].
fn key_bytes(bytes: &[u8]) -> Result<[u8; KEY_LEN], usize> {
    bytes
        .try_into()
        .map_err(|_wrong_len: std::array::TryFromSliceError| bytes.len())
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let bytes = base64::decode(text).map_err(|source| KeyError::PublicNotBase64 {
            text: text.to_owned(),
            source,
        })?;
        let key = key_bytes(&bytes).map_err(|len| KeyError::PublicLength {
            text: text.to_owned(),
            len,
        })?;
        Ok(Self(key))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::encode(self.0))
    }
}

grove_daemon::text_value!(PublicKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// This node's private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Parses base64; errors never contain the text.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = base64::decode(text).map_err(KeyError::PrivateNotBase64)?;
        let key = key_bytes(&bytes).map_err(|len| KeyError::PrivateLength { len })?;
        Ok(Self(key))
    }

    /// The matching public key (x25519).
    pub fn public(&self) -> PublicKey {
        PublicKey(wireguard_control::Key(self.0).get_public().0)
    }

    pub fn to_wg(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }

    /// The base64 text, for the state file only.
    pub fn expose(&self) -> String {
        base64::encode(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of wireguard-control's own key tests.
    const PRIVATE: &str = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
    const PUBLIC: &str = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=";

    #[test]
    fn private_keys_give_their_public_key_and_hide_themselves() {
        let private = PrivateKey::parse(PRIVATE).expect("valid");
        assert_eq!(private.public().to_string(), PUBLIC);
        assert_eq!(format!("{private:?}"), "PrivateKey(<redacted>)");
        assert_eq!(private.expose(), PRIVATE);
    }

    #[test]
    fn bad_keys_say_why() {
        let short = base64::encode([1u8; 31]);
        let cases: Vec<(&str, &str)> = vec![
            ("not base64!", "not base64"),
            (&short, "31 bytes, not 32"),
            ("", "0 bytes, not 32"),
        ];
        for (text, why) in cases {
            let public = text.parse::<PublicKey>().expect_err(text).to_string();
            assert!(public.contains(why), "{public}");
            assert!(public.contains(text), "{public}");
            let private = PrivateKey::parse(text).expect_err(text).to_string();
            assert!(private.contains(why), "{private}");
            if !text.is_empty() {
                assert!(!private.contains(text), "{private}");
            }
        }
    }

    #[test]
    fn public_keys_round_trip_through_json() {
        let key: PublicKey = PUBLIC.parse().expect("valid");
        let json = serde_json::to_string(&key).expect("json");
        assert_eq!(json, format!("\"{PUBLIC}\""));
        let back: PublicKey = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, key);
    }
}
