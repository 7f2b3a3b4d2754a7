//! Identifiers that storaged's API and boot parameters use.
//!
//! A [`DiskSerial`] names a disk across reboots: the kernel command line and
//! the wipe API name disks by it, never by `/dev` path, which can change.

use std::str::FromStr;

use grove_daemon::text::{NameFlaw, name_flaw};
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

    /// Whether a serial may hold `c`: an ASCII letter or digit, or one of
    /// `. _ - : +`.
    pub fn allows(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '+')
    }
}

impl FromStr for DiskSerial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, SerialError> {
        match name_flaw(s, Self::MAX_LEN, Self::allows) {
            Some(NameFlaw::Empty) => Err(SerialError::Empty),
            Some(NameFlaw::TooLong) => Err(SerialError::TooLong(s.to_owned())),
            Some(NameFlaw::BadChar) => Err(SerialError::BadChar(s.to_owned())),
            None => Ok(Self(s.to_owned())),
        }
    }
}

grove_daemon::checked_name!(DiskSerial);

/// Why a value is not a valid pool label or resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("pool label {0:?} is not grove- followed by 1 to 32 lowercase letters or digits")]
    BadLabel(String),
    #[error("name is empty")]
    Empty,
    #[error("name {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error("name {0:?} starts with '-'")]
    LeadingDash(String),
    #[error("name {0:?} may only hold ASCII letters, digits, _ and -")]
    BadChar(String),
}

/// A Grove pool's btrfs label: `grove-` and 1 to 32 of `[a-z0-9]`. Only a
/// filesystem with such a label is ever treated as Grove's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolLabel(String);

impl PoolLabel {
    pub const PREFIX: &'static str = "grove-";
}

impl FromStr for PoolLabel {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let ok = s.strip_prefix(Self::PREFIX).is_some_and(|rest| {
            (1..=32).contains(&rest.len())
                && rest
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::BadLabel(s.to_owned()))
        }
    }
}

grove_daemon::checked_name!(PoolLabel);

/// The name of a volume or vdisk: 1 to 64 of `[A-Za-z0-9_-]`, not starting
/// with `-`. Always a single path component, never hidden, and never one of
/// the temporary names (`.new-…`) objects are made under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    pub const MAX_LEN: usize = 64;
}

impl FromStr for ResourceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        match name_flaw(s, Self::MAX_LEN, allowed) {
            Some(NameFlaw::Empty) => Err(NameError::Empty),
            Some(NameFlaw::TooLong) => Err(NameError::TooLong(s.to_owned())),
            Some(NameFlaw::BadChar) => Err(NameError::BadChar(s.to_owned())),
            None if s.starts_with('-') => Err(NameError::LeadingDash(s.to_owned())),
            None => Ok(Self(s.to_owned())),
        }
    }
}

grove_daemon::checked_name!(ResourceName);

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

    #[test]
    fn pool_labels() {
        for (s, ok) in [
            ("grove-a1b2c3d4", true),
            ("grove-", false),
            ("grove-ABC", false),
            ("other-abc", false),
            ("grove-a/b", false),
        ] {
            assert_eq!(s.parse::<PoolLabel>().is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn resource_names() {
        for (s, ok) in [
            ("db-data", true),
            ("c42-disk_1", true),
            ("_x", true),
            ("9", true),
            ("", false),
            ("-x", false),
            ("..", false),
            (".", false),
            (".new-x", false),
            ("v1.2", false),
            ("a/b", false),
            ("../etc", false),
            ("a b", false),
            ("a\nb", false),
            ("ü", false),
        ] {
            assert_eq!(s.parse::<ResourceName>().is_ok(), ok, "{s:?}");
        }
        assert!("a".repeat(64).parse::<ResourceName>().is_ok());
        assert!("a".repeat(65).parse::<ResourceName>().is_err());
    }
}
