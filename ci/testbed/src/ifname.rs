//! Interface names the kernel will accept.
//!
//! [`IfName`] is checked once, when it is made: at most 15 bytes (IFNAMSIZ
//! less the NUL), not empty, not `.`/`..`, no `/`, `:` or whitespace; every
//! link the testbed creates goes through it, so a too-long generated name
//! fails before any side effect instead of deep inside `ip`.
//! Limits: only the kernel's own rules are checked, not uniqueness.

use std::fmt;

/// The longest interface name the kernel accepts.
pub const IFNAME_MAX: usize = 15;

/// A name the kernel would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("interface name is empty")]
    Empty,
    #[error("interface name `{name}` is {len} bytes, the kernel allows {IFNAME_MAX}")]
    TooLong { name: String, len: usize },
    #[error("interface name `{name}` contains `{bad}`")]
    BadChar { name: String, bad: char },
    #[error("interface name `{name}` is reserved")]
    Reserved { name: String },
}

/// A valid Linux interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// Checks `name` against the kernel's rules.
    pub fn new(name: impl Into<String>) -> Result<IfName, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > IFNAME_MAX {
            return Err(IfNameError::TooLong {
                len: name.len(),
                name,
            });
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved { name });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
        {
            return Err(IfNameError::BadChar { name, bad });
        }
        Ok(IfName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for IfName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_rules() {
        let cases: &[(&str, bool)] = &[
            ("eth0", true),
            ("gtb1a2b3ch0", true),
            ("abcdefghijklmno", true),
            ("abcdefghijklmnop", false),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a:b", false),
            ("a b", false),
            ("a\tb", false),
        ];
        for (name, ok) in cases {
            assert_eq!(IfName::new(*name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn too_long_says_how_long() {
        let err = IfName::new("abcdefghijklmnop").expect_err("16 bytes");
        assert_eq!(
            err,
            IfNameError::TooLong {
                name: "abcdefghijklmnop".into(),
                len: 16
            }
        );
    }
}
