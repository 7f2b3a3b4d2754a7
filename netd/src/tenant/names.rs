//! The names a tenant network lives under: its id, its workloads' names,
//! and every namespace, interface, nftables table and MAC derived from
//! them.
//!
//! A [`NetId`] and a [`WorkloadName`] are at most 13 characters of `a-z`,
//! `0-9` and `-`, so that every derived interface name (`w-<netid>`,
//! `v-<name>`) fits the kernel's 15 bytes and every derived name is also a
//! valid nftables identifier; MACs are derived from the names by hashing,
//! so a link re-created after a crash gets the MAC it had. Limits: two
//! networks cannot attach workloads of the same name on one node (their
//! host-side interfaces would collide).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of the veth end inside every tenant namespace that leads out
/// to the host.
pub const EGRESS_INSIDE: &str = "egress";
/// The nftables table inside every tenant namespace.
pub const INSIDE_TABLE: &str = "grove";
/// Prefixes of the links a tenant network puts in the host namespace: its
/// egress veth (`e-`), its WireGuard placeholder (`w-`) and workload
/// veths (`v-`).
pub const HOST_PREFIXES: [&str; 3] = ["e-", "w-", "v-"];

/// Why a text is not a network id or a workload name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error(
        "{what} {text:?} is {len} characters, at most {max}: the interface names made from it must fit 15 bytes"
    )]
    TooLong {
        what: &'static str,
        text: String,
        len: usize,
        max: usize,
    },
    #[error("{what} {text:?} has {bad:?}: only a-z, 0-9 and '-' (not first) are allowed")]
    BadChar {
        what: &'static str,
        text: String,
        bad: char,
    },
}

/// Longest network id or workload name.
pub const MAX_LEN: usize = 13;

fn check(what: &'static str, text: &str) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty { what });
    }
    let len = text.chars().count();
    if len > MAX_LEN {
        return Err(NameError::TooLong {
            what,
            text: text.to_owned(),
            len,
            max: MAX_LEN,
        });
    }
    let bad = text
        .chars()
        .enumerate()
        .find(|(i, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || (*c == '-' && *i > 0)));
    if let Some((_, bad)) = bad {
        return Err(NameError::BadChar {
            what,
            text: text.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// Declares a name checked by [`check`] (`what` in its errors) and the
/// kernel names made from it by a prefix, one method each.
macro_rules! tenant_name {
    (
        $(#[$doc:meta])* $name:ident, $what:literal,
        { $($(#[$method_doc:meta])* $method:ident => $prefix:literal,)* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            $(
                $(#[$method_doc])*
                pub fn $method(&self) -> String {
                    format!(concat!($prefix, "{}"), self.0)
                }
            )*
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                check($what, text)?;
                Ok(Self(text.to_owned()))
            }
        }

        grove_daemon::checked_name!($name);
    };
}

tenant_name!(
    /// A tenant network's id on this node.
    NetId, "netid",
    {
        /// `n-<netid>`: the network namespace.
        namespace => "n-",
        /// `w-<netid>`: the WireGuard interface (inside the namespace).
        wireguard => "w-",
        /// `b-<netid>`: the workloads' bridge (inside the namespace).
        bridge => "b-",
        /// `e-<netid>`: the host end of the egress veth.
        egress => "e-",
        /// `grove-n-<netid>`: the network's nftables table in the host namespace.
        host_table => "grove-n-",
    }
);

impl NetId {
    /// The bridge's MAC.
    pub fn bridge_mac(&self) -> [u8; 6] {
        mac(&["bridge", &self.0])
    }
}

tenant_name!(
    /// A workload's name, as given when it is attached.
    WorkloadName, "workload name",
    {
        /// `v-<name>`: the veth end left in the host namespace for the runtime.
        veth => "v-",
        /// `p-<name>`: the veth end on the tenant bridge.
        port => "p-",
        /// `t-<name>`: the tap device on the tenant bridge.
        tap => "t-",
        /// `c-<name>`: the namespace of a workload attached as
        /// [`super::input::AttachKind::Namespace`].
        namespace => "c-",
    }
);

impl WorkloadName {
    /// The MAC the workload's own interface uses.
    pub fn mac(&self, netid: &NetId) -> [u8; 6] {
        mac(&["workload", netid.as_str(), &self.0])
    }

    /// The MAC of the bridge side (the veth port or the tap device).
    pub fn port_mac(&self, netid: &NetId) -> [u8; 6] {
        mac(&["port", netid.as_str(), &self.0])
    }
}

/// Whether `ifname` in the host namespace belongs to a tenant network.
pub fn is_tenant_link(ifname: &str) -> bool {
    HOST_PREFIXES.iter().any(|p| ifname.starts_with(p))
}

/// A locally administered unicast MAC from the FNV-1a hash of `parts`.
pub fn mac(parts: &[&str]) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let b = hash.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_every_derived_name() {
        let id: NetId = "abcdefghij-12".parse().expect("13 characters");
        for name in [id.namespace(), id.wireguard(), id.bridge(), id.egress()] {
            assert!(name.len() <= 15, "{name}");
            assert!(
                name.parse::<crate::types::InterfaceName>().is_ok(),
                "{name}"
            );
        }
        let w: WorkloadName = "vm-0123456789".parse().expect("13 characters");
        for name in [w.veth(), w.port(), w.tap()] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "netid is empty"),
            ("abcdefghijklmn", "is 14 characters, at most 13"),
            ("Abc", "has 'A'"),
            ("-abc", "has '-'"),
            ("a_b", "has '_'"),
            ("a/b", "has '/'"),
            ("a b", "has ' '"),
            ("é", "has 'é'"),
        ];
        crate::testing::refused::<NetId>(cases);
        assert!("a-1".parse::<NetId>().is_ok());
        let err = "".parse::<WorkloadName>().expect_err("empty").to_string();
        assert_eq!(err, "workload name is empty");
    }

    #[test]
    fn macs_are_stable_local_and_distinct() {
        let id: NetId = "net1".parse().expect("valid");
        let w: WorkloadName = "web".parse().expect("valid");
        assert_eq!(id.bridge_mac(), id.bridge_mac());
        assert_eq!(id.bridge_mac()[0], 0x02);
        assert_ne!(w.mac(&id), w.port_mac(&id));
        let other: NetId = "net2".parse().expect("valid");
        assert_ne!(w.mac(&id), w.mac(&other));
        assert_eq!(mac_text(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
    }

    #[test]
    fn host_links_are_recognised() {
        for (ifname, tenant) in [
            ("e-net1", true),
            ("v-web", true),
            ("w-net1", true),
            ("eth0", false),
            ("br-grove", false),
        ] {
            assert_eq!(is_tenant_link(ifname), tenant, "{ifname}");
        }
    }
}
