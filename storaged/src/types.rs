//! Identifiers that storaged's API and boot parameters use.
//!
//! A [`DiskSerial`] names a disk across reboots: the kernel command line and
//! the wipe API name disks by it, never by `/dev` path, which can change.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value is not a valid disk serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("disk serial is empty")]
    Empty,
    #[error("disk serial {0:?} is longer than 128 characters")]
    TooLong(String),
    #[error("disk serial {0:?} may only hold letters, digits and . _ - : +")]
    BadChar(String),
}

/// A disk's serial number (or the stable substitute Grove derives for
/// devices without one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DiskSerial(String);

impl DiskSerial {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DiskSerial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, SerialError> {
        if s.is_empty() {
            return Err(SerialError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(SerialError::TooLong(s.to_owned()));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '+'))
        {
            return Err(SerialError::BadChar(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for DiskSerial {
    type Error = SerialError;
    fn try_from(s: String) -> Result<Self, SerialError> {
        s.parse()
    }
}

impl From<DiskSerial> for String {
    fn from(s: DiskSerial) -> String {
        s.0
    }
}

impl fmt::Display for DiskSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        let cases: &[(&str, bool)] = &[
            ("S3Z9NB0K123456", true),
            ("WD-WCC4N1234567", true),
            ("loop:7f3a", true),
            ("", false),
            ("a/b", false),
            ("a b", false),
            ("a,b", false),
        ];
        for (s, ok) in cases {
            assert_eq!(s.parse::<DiskSerial>().is_ok(), *ok, "{s:?}");
        }
        assert!("x".repeat(129).parse::<DiskSerial>().is_err());
    }
}
