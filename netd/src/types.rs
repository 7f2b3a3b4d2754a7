//! Kernel identifiers and addresses that netd's API and boot parameters use.
//!
//! Each is a newtype that can only hold a valid value, so parsing happens
//! once at the edge. Limits: IPv4 only for static uplink addresses for now.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use grove_daemon::text::{NameFlaw, name_flaw};
use serde::{Deserialize, Serialize};

/// Why a value is not a valid network identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("interface name {0:?} is empty")]
    EmptyName(String),
    #[error("interface name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    #[error("interface name {0:?} contains '/', whitespace, ':' or a control character")]
    NameBadChar(String),
    #[error("interface name {0:?} is reserved")]
    NameReserved(String),
    #[error("{0:?} is not an IPv4 address with a prefix length (like 10.0.0.5/24)")]
    BadCidr(String),
    #[error("prefix length in {0:?} is above 32")]
    BadPrefix(String),
    #[error("VLAN id {0:?} is not a number from 1 to 4094")]
    BadVlan(String),
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

impl InterfaceName {
    /// IFNAMSIZ less the terminating NUL.
    pub const MAX_LEN: usize = 15;
}

impl FromStr for InterfaceName {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        let allowed = |c: char| !(c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        match name_flaw(s, Self::MAX_LEN, allowed) {
            Some(NameFlaw::Empty) => Err(TypeError::EmptyName(s.to_owned())),
            Some(NameFlaw::TooLong) => Err(TypeError::NameTooLong(s.to_owned())),
            Some(NameFlaw::BadChar) => Err(TypeError::NameBadChar(s.to_owned())),
            None if s == "." || s == ".." => Err(TypeError::NameReserved(s.to_owned())),
            None => Ok(Self(s.to_owned())),
        }
    }
}

grove_daemon::checked_name!(InterfaceName);

/// An IPv4 address with its prefix length, as in `10.0.0.5/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| TypeError::BadCidr(s.to_owned()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_not_ip: std::net::AddrParseError| TypeError::BadCidr(s.to_owned()))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_not_num: std::num::ParseIntError| TypeError::BadCidr(s.to_owned()))?;
        if prefix > 32 {
            return Err(TypeError::BadPrefix(s.to_owned()));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

grove_daemon::text_value!(Ipv4Cidr);

/// An 802.1Q VLAN id, 1 to 4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct VlanId(u16);

impl VlanId {
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for VlanId {
    type Error = TypeError;
    fn try_from(id: u16) -> Result<Self, TypeError> {
        if (1..=4094).contains(&id) {
            Ok(Self(id))
        } else {
            Err(TypeError::BadVlan(id.to_string()))
        }
    }
}

impl From<VlanId> for u16 {
    fn from(v: VlanId) -> u16 {
        v.0
    }
}

impl FromStr for VlanId {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        let id: u16 = s
            .parse()
            .map_err(|_not_num: std::num::ParseIntError| TypeError::BadVlan(s.to_owned()))?;
        Self::try_from(id).map_err(|_out_of_range| TypeError::BadVlan(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        let cases: &[(&str, bool)] = &[
            ("eth0", true),
            ("br-grove", true),
            ("w-123456789012", true),
            ("abcdefghijklmnop", false),
            ("", false),
            ("a/b", false),
            ("a b", false),
            ("eth0:1", false),
            ("..", false),
            ("tab\t", false),
        ];
        for (name, ok) in cases {
            assert_eq!(name.parse::<InterfaceName>().is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Ipv4Cidr = "10.1.2.3/24".parse().expect("valid");
        assert_eq!((c.addr, c.prefix), (Ipv4Addr::new(10, 1, 2, 3), 24));
        assert_eq!(c.to_string(), "10.1.2.3/24");
        for bad in ["10.1.2.3", "10.1.2/24", "10.1.2.3/33", "10.1.2.3/x", "/24"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vlans() {
        assert_eq!("100".parse::<VlanId>().expect("valid").get(), 100);
        for bad in ["0", "4095", "-1", "abc", ""] {
            assert!(bad.parse::<VlanId>().is_err(), "{bad}");
        }
    }
}
