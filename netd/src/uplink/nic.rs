//! What sysfs says about the node's NICs: which may carry the uplink, their
//! MAC, carrier and kind, and the interfaces report built from them.
//!
//! Reads go to `/sys/class/net` under a root that is a parameter, so the
//! classification is unit-tested on a fixture tree. They are blocking
//! calls: async code runs them on a blocking task. Limits: a link's kind
//! is what sysfs shows (`bridge`, `tun`, the uevent's `DEVTYPE`), else
//! `nic`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::netlink::LinkAddresses;
use crate::types::{InterfaceName, VlanId};

/// Why the NICs could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct NicError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// One interface as `/v1/interfaces` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub carrier: bool,
    /// What kind of link: `nic`, `bridge`, `vlan`, `wireguard`, `tun`, ...
    pub kind: String,
    pub addresses: Vec<String>,
}

/// `<parent>.<id>`, shortened to fit IFNAMSIZ.
pub fn vlan_name(parent: &InterfaceName, id: VlanId) -> InterfaceName {
    let suffix = format!(".{}", id.get());
    let keep = InterfaceName::MAX_LEN - suffix.len();
    let base: String = parent.as_str().chars().take(keep).collect();
    format!("{base}{suffix}")
        .parse()
        .unwrap_or_else(|_never| parent.clone())
}

/// What sysfs says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicFacts {
    pub mac: String,
    pub carrier: bool,
    pub kind: String,
}

impl NicFacts {
    /// The MAC as bytes, if sysfs gave one.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let bytes: Vec<u8> = self
            .mac
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).ok())
            .collect::<Option<_>>()?;
        bytes.try_into().ok()
    }
}

/// Reads `sys/class/net/<name>`.
pub fn nic_facts(sys: &Path, name: &str) -> NicFacts {
    let dir = sys.join("class/net").join(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_owned());
    let devtype = read("uevent").ok().and_then(|u| {
        u.lines()
            .find_map(|l| l.strip_prefix("DEVTYPE=").map(str::to_owned))
    });
    let kind = if dir.join("bridge").exists() {
        "bridge".to_owned()
    } else if dir.join("tun_flags").exists() {
        "tun".to_owned()
    } else if let Some(t) = devtype {
        t
    } else {
        "nic".to_owned()
    };
    NicFacts {
        mac: read("address").unwrap_or_default(),
        carrier: read("carrier").is_ok_and(|c| c == "1"),
        kind,
    }
}

/// The NICs that may carry the uplink: every link that is not loopback, a
/// bridge, a tunnel, a VLAN, a bond or one that `made_by_netd` claims.
pub fn candidate_nics(
    sys: &Path,
    made_by_netd: fn(&str) -> bool,
) -> Result<Vec<InterfaceName>, NicError> {
    let dir = sys.join("class/net");
    let entries = std::fs::read_dir(&dir).map_err(|source| NicError {
        path: dir.clone(),
        source,
    })?;
    let mut out: Vec<InterfaceName> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<InterfaceName>().ok())
        .filter(|n| {
            let name = n.as_str();
            name != "lo" && !made_by_netd(name) && nic_facts(sys, name).kind == "nic"
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The ports of bridge `bridge`.
pub fn bridge_ports(sys: &Path, bridge: &str) -> Vec<InterfaceName> {
    let dir = sys.join("class/net").join(bridge).join("brif");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<InterfaceName> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

/// The interfaces report: each link's addresses with what sysfs says.
pub fn interfaces(sys: &Path, links: Vec<LinkAddresses>) -> Vec<Interface> {
    links
        .into_iter()
        .map(|link| {
            let facts = nic_facts(sys, &link.name);
            Interface {
                name: link.name,
                mac: facts.mac,
                carrier: facts.carrier,
                kind: facts.kind,
                addresses: link.addresses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        grove_daemon::fsutil::write_tree(root, rel, text).expect("write a fixture");
    }

    fn grove_bridge(name: &str) -> bool {
        name == "br-grove" || name.starts_with("v-")
    }

    #[test]
    fn only_plain_nics_are_candidates() {
        let sys = tempfile::tempdir().unwrap();
        let r = sys.path();
        write(r, "class/net/lo/address", "00:00:00:00:00:00\n");
        write(r, "class/net/eth0/address", "02:00:00:00:00:01\n");
        write(r, "class/net/eth0/carrier", "1\n");
        write(r, "class/net/eth0/uevent", "INTERFACE=eth0\nIFINDEX=2\n");
        write(r, "class/net/eth1/carrier", "0\n");
        write(r, "class/net/br-grove/bridge/stp_state", "0\n");
        write(r, "class/net/br-grove/brif/eth0/state", "3\n");
        write(r, "class/net/eth0.7/uevent", "DEVTYPE=vlan\n");
        write(r, "class/net/mesh0/uevent", "DEVTYPE=wireguard\n");
        write(r, "class/net/tun0/tun_flags", "0x1001\n");
        write(r, "class/net/v-web/address", "02:00:00:00:00:09\n");
        let names: Vec<String> = candidate_nics(r, grove_bridge)
            .expect("scan")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);
        let f = nic_facts(r, "eth0");
        assert_eq!(
            (f.mac.as_str(), f.carrier, f.kind.as_str()),
            ("02:00:00:00:00:01", true, "nic")
        );
        assert_eq!(f.mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
        assert!(!nic_facts(r, "eth1").carrier);
        assert_eq!(nic_facts(r, "eth1").mac_bytes(), None);
        assert_eq!(nic_facts(r, "br-grove").kind, "bridge");
        let ports: Vec<String> = bridge_ports(r, "br-grove")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ports, ["eth0"]);
        assert!(bridge_ports(r, "eth0").is_empty());
    }

    #[test]
    fn vlan_names_fit_ifnamsiz() {
        let id: VlanId = "4000".parse().expect("vlan");
        let short: InterfaceName = "eth0".parse().expect("name");
        assert_eq!(vlan_name(&short, id).as_str(), "eth0.4000");
        let long: InterfaceName = "enp129s0f1np1".parse().expect("name");
        let v = vlan_name(&long, id);
        assert!(v.as_str().len() <= 15, "{v}");
        assert!(v.as_str().ends_with(".4000"));
    }
}
