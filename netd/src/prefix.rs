//! IPv4 prefixes as tenant networks use them: a range, a node's subnet, a
//! peer's allowed IPs.
//!
//! An [`Ipv4Prefix`] is a network address and a length with no host bits
//! set, so two prefixes compare, contain and overlap by arithmetic alone;
//! text that sets host bits is refused rather than silently masked, the way
//! a typo would be. Limits: IPv4 only.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a text is not an IPv4 prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("{text:?} is not an IPv4 prefix like 10.1.0.0/16")]
    Syntax { text: String },
    #[error("{text:?} has a prefix length above 32")]
    Length { text: String },
    #[error("{text:?} has host bits set past /{len} (the network is {network}/{len})")]
    HostBits {
        text: String,
        len: u8,
        network: Ipv4Addr,
    },
}

/// A network: its first address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Prefix {
    network: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// `0.0.0.0/0`: every address.
    pub const ANY: Ipv4Prefix = Ipv4Prefix {
        network: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };

    /// The prefix of `len` bits starting at `network`, if no host bits are set.
    pub fn new(network: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32 && mask(network, len) == network).then_some(Self { network, len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        mask(ip, self.len) == self.network
    }

    /// Whether all of `other` is inside this prefix.
    pub fn covers(&self, other: &Ipv4Prefix) -> bool {
        other.len >= self.len && self.contains(other.network)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Ipv4Prefix) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// Host `n` of the prefix (`n = 1` is the first address after the
    /// network address), if it is inside.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.len));
        if u64::from(n) >= size {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// How many addresses the prefix spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
}

fn mask(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let kept = match len {
        0 => 0,
        n => bits & (u32::MAX << (32 - u32::from(n.min(32)))),
    };
    Ipv4Addr::from(kept)
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;
    fn from_str(text: &str) -> Result<Self, PrefixError> {
        let syntax = || PrefixError::Syntax {
            text: text.to_owned(),
        };
        let (addr, len) = text.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_not_ip: std::net::AddrParseError| syntax())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 =
            len.parse()
                .map_err(|_too_big: std::num::ParseIntError| PrefixError::Length {
                    text: text.to_owned(),
                })?;
        if len > 32 {
            return Err(PrefixError::Length {
                text: text.to_owned(),
            });
        }
        Self::new(addr, len).ok_or_else(|| PrefixError::HostBits {
            text: text.to_owned(),
            len,
            network: mask(addr, len),
        })
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

grove_daemon::text_value!(Ipv4Prefix);

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Ipv4Prefix {
        text.parse().expect(text)
    }

    #[test]
    fn parses_strictly() {
        assert_eq!(p("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(p("10.1.2.3/32").network(), Ipv4Addr::new(10, 1, 2, 3));
        let cases: &[(&str, &str)] = &[
            ("10.1.0.0", "is not an IPv4 prefix"),
            ("10.1.0/16", "is not an IPv4 prefix"),
            ("10.1.0.0/", "is not an IPv4 prefix"),
            ("10.1.0.0/+8", "is not an IPv4 prefix"),
            ("fd00::/8", "is not an IPv4 prefix"),
            ("10.1.0.0/33", "above 32"),
            ("10.1.0.0/999", "above 32"),
            (
                "10.1.2.0/16",
                "host bits set past /16 (the network is 10.1.0.0/16)",
            ),
        ];
        let errors = crate::testing::refused::<Ipv4Prefix>(cases);
        for ((text, _), err) in cases.iter().zip(errors) {
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let range = p("10.1.0.0/16");
        assert!(range.covers(&p("10.1.7.0/24")));
        assert!(!range.covers(&p("10.2.7.0/24")));
        assert!(!p("10.1.7.0/24").covers(&range));
        assert!(p("10.1.7.0/24").overlaps(&range));
        assert!(!p("10.1.7.0/24").overlaps(&p("10.1.8.0/24")));
        assert!(p("0.0.0.0/0").covers(&range));
        assert!(range.contains(Ipv4Addr::new(10, 1, 255, 255)));
        assert!(!range.contains(Ipv4Addr::new(10, 0, 255, 255)));
    }

    #[test]
    fn hosts() {
        let subnet = p("10.1.7.0/24");
        assert_eq!(subnet.host(1), Some(Ipv4Addr::new(10, 1, 7, 1)));
        assert_eq!(subnet.host(255), Some(Ipv4Addr::new(10, 1, 7, 255)));
        assert_eq!(subnet.host(256), None);
        assert_eq!(subnet.size(), 256);
        assert_eq!(p("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn round_trips_through_json() {
        let json = serde_json::to_string(&p("10.1.7.0/24")).expect("json");
        assert_eq!(json, "\"10.1.7.0/24\"");
        let back: Ipv4Prefix = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, p("10.1.7.0/24"));
        assert!(serde_json::from_str::<Ipv4Prefix>("\"10.1.7.1/24\"").is_err());
    }
}
