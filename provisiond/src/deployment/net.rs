//! Addresses and prefixes as zos reads and prints them.
//!
//! zos parses `a.b.c.d/n` with Go's `net.ParseCIDR`, keeps the address as
//! given (host bits included) and prints it back with `IPNet.String()`; the
//! challenge holds that printed form. [`IpNet`] keeps the same two parts and
//! prints them the same way. Grove refuses IPv4-mapped IPv6 addresses and
//! leading zeros, where Go's printing would differ from the text sent.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an address or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{text:?} is not an IP address")]
    Address {
        text: String,
        source: std::net::AddrParseError,
    },
    #[error("{0:?} is not a prefix of the form address/length")]
    Prefix(String),
    #[error("{0:?} is an IPv4-mapped IPv6 address: write the IPv4 address")]
    Mapped(String),
}

fn parse_addr(text: &str) -> Result<IpAddr, NetError> {
    let addr = IpAddr::from_str(text).map_err(|source| NetError::Address {
        text: text.to_owned(),
        source,
    })?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(NetError::Mapped(text.to_owned()));
    }
    Ok(addr)
}

/// An address as zos's `net.IP.String()` prints it.
pub fn go_ip(addr: &IpAddr) -> String {
    addr.to_string()
}

/// An IP address, parsed as zos parses `net.IP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(pub IpAddr);

impl FromStr for Ip {
    type Err = NetError;
    fn from_str(text: &str) -> Result<Self, NetError> {
        parse_addr(text).map(Ip)
    }
}

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&go_ip(&self.0))
    }
}

/// An address with a prefix length: `10.20.2.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn bits(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn as_u128(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn host_mask(&self) -> u128 {
        let host_bits = u32::from(self.bits() - self.prefix);
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    /// True when the address has no host bits set (`10.20.2.0/24`, not `10.20.2.5/24`).
    pub fn is_network(&self) -> bool {
        Self::as_u128(self.addr) & self.host_mask() == 0
    }

    /// True when `other` lies wholly inside this prefix.
    pub fn contains(&self, other: &IpNet) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.prefix >= self.prefix
            && Self::as_u128(self.addr) & !self.host_mask()
                == Self::as_u128(other.addr) & !self.host_mask()
    }

    /// True when the two prefixes share an address.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The first address of the prefix.
    pub fn network(&self) -> IpAddr {
        let n = Self::as_u128(self.addr) & !self.host_mask();
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(0))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

impl FromStr for IpNet {
    type Err = NetError;
    fn from_str(text: &str) -> Result<Self, NetError> {
        let prefix_error = || NetError::Prefix(text.to_owned());
        let (addr, len) = text.split_once('/').ok_or_else(prefix_error)?;
        let addr = parse_addr(addr)?;
        let well_formed = !len.is_empty()
            && len.len() <= 3
            && len.bytes().all(|b| b.is_ascii_digit())
            && (len == "0" || !len.starts_with('0'));
        if !well_formed {
            return Err(prefix_error());
        }
        // At most three ASCII digits: the value fits and parses.
        let prefix = len.bytes().fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match u8::try_from(prefix) {
            Ok(prefix) if prefix <= max => prefix,
            _ => return Err(prefix_error()),
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", go_ip(&self.addr), self.prefix)
    }
}

macro_rules! serde_as_text {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Ip);
serde_as_text!(IpNet);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_print_as_go_prints_them() {
        for (input, printed) in [
            ("10.20.0.0/16", "10.20.0.0/16"),
            ("10.20.2.5/24", "10.20.2.5/24"),
            ("100.64.20.3/32", "100.64.20.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:DB8:0:0:1:0:0:1/64", "2001:db8::1:0:0:1/64"),
            ("2001:db8:0:1:1:1:1:1/64", "2001:db8:0:1:1:1:1:1/64"),
            ("fd00::/8", "fd00::/8"),
        ] {
            let net: IpNet = input.parse().expect(input);
            assert_eq!(net.to_string(), printed, "input {input}");
        }
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for input in [
            "",
            "10.20.0.0",
            "10.20.0.0/",
            "10.20.0.0/33",
            "10.20.0.0/016",
            "10.20.0.0/+16",
            "10.020.0.0/16",
            "10.20.0/16",
            "::ffff:10.20.0.0/112",
            "fd00::/129",
            "host.example/16",
        ] {
            assert!(input.parse::<IpNet>().is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let range: IpNet = "10.20.0.0/16".parse().expect("range");
        let inside: IpNet = "10.20.3.0/24".parse().expect("inside");
        let outside: IpNet = "10.21.3.0/24".parse().expect("outside");
        assert!(range.contains(&inside));
        assert!(!range.contains(&outside));
        assert!(!inside.contains(&range));
        assert!(inside.overlaps(&range));
        assert!(!inside.overlaps(&outside));
        assert!(range.is_network());
        assert!(!"10.20.2.5/24".parse::<IpNet>().expect("host").is_network());
        assert_eq!(inside.network().to_string(), "10.20.3.0");
    }
}
