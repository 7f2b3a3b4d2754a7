//! Workload names: the zos rule, checked once when a deployment is parsed.
//!
//! A name is 1 to 36 ASCII letters, digits or `_` (36 is the longest virtio-fs
//! tag, which zos uses as the mount tag), and never the reserved `ygg`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest workload name zos accepts.
pub const MAX_NAME_LEN: usize = 36;

/// A valid workload name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Why a name is not a valid workload name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name has at most {MAX_NAME_LEN} characters, this one has {0}")]
    TooLong(usize),
    #[error("a name holds only ASCII letters, digits and '_', not {0:?}")]
    BadCharacter(char),
    #[error("the name {0:?} is reserved")]
    Reserved(String),
}

impl Name {
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(NameError::BadCharacter(c));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if name == "ygg" {
            return Err(NameError::Reserved(name.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Name::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let long = "a".repeat(37);
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            (&long, NameError::TooLong(37)),
            ("net-1", NameError::BadCharacter('-')),
            ("net 1", NameError::BadCharacter(' ')),
            ("né", NameError::BadCharacter('é')),
            ("a/b", NameError::BadCharacter('/')),
            ("ygg", NameError::Reserved("ygg".to_owned())),
        ];
        for (input, want) in cases {
            assert_eq!(Name::new(input).as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn good_names_are_kept_as_given() {
        for input in ["a", "net1", "Disk_2", &"x".repeat(36), "YGG"] {
            assert_eq!(
                Name::new(input).map(|n| n.to_string()),
                Ok(input.to_owned())
            );
        }
    }
}
