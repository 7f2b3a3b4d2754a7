//! Links, addresses and routes in netd's own network namespace, over one
//! rtnetlink connection spawned once.
//!
//! Every operation is an idempotent `ensure_*`: a restart re-runs them and
//! changes nothing that is already right (adds use `replace`). NIC facts
//! (MAC, carrier, kind) come from `/sys/class/net`, whose root is a
//! parameter so the classification is unit-tested on a fixture tree.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVlan, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::types::{InterfaceName, Ipv4Cidr, VlanId};

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink connection: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no interface named {0}")]
    NotFound(InterfaceName),
    #[error("cannot {op} on {ifname}: {source}")]
    Netlink {
        op: &'static str,
        ifname: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot read {path}: {source}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// The rtnetlink handle of netd's namespace.
#[derive(Debug, Clone)]
pub struct Links {
    handle: Handle,
    sys: PathBuf,
}

impl Links {
    /// Opens the connection and spawns its task (owned by the runtime for
    /// the daemon's lifetime).
    pub fn connect(sys: &Path) -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            sys: sys.to_owned(),
        })
    }

    fn err(op: &'static str, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let ifname = ifname.to_owned();
        move |source| LinkError::Netlink { op, ifname, source }
    }

    /// The index of `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(Self::err("look up", name)(e)),
        }
    }

    async fn require(&self, name: &InterfaceName) -> Result<u32, LinkError> {
        self.index(name.as_str())
            .await?
            .ok_or_else(|| LinkError::NotFound(name.clone()))
    }

    pub async fn set_up(&self, name: &InterfaceName) -> Result<(), LinkError> {
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Self::err("bring up", name.as_str()))
    }

    /// A bridge named `name` with MAC `mac` (so DHCP sees the same client
    /// as on the NIC), up; created if missing.
    pub async fn ensure_bridge(&self, name: &InterfaceName, mac: &[u8]) -> Result<u32, LinkError> {
        if self.index(name.as_str()).await?.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(name.as_str()).address(mac.to_vec()).build())
                .execute()
                .await
                .map_err(Self::err("create bridge", name.as_str()))?;
        }
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(Self::err("set up bridge", name.as_str()))?;
        Ok(index)
    }

    /// A VLAN link `<parent>.<id>` on `parent`, up; created if missing.
    pub async fn ensure_vlan(
        &self,
        parent: &InterfaceName,
        id: VlanId,
    ) -> Result<InterfaceName, LinkError> {
        let name: InterfaceName = vlan_name(parent, id);
        if self.index(name.as_str()).await?.is_none() {
            let parent_index = self.require(parent).await?;
            self.handle
                .link()
                .add(
                    LinkVlan::new(name.as_str(), parent_index, id.get())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(Self::err("create vlan", name.as_str()))?;
        }
        self.set_up(&name).await?;
        Ok(name)
    }

    /// Makes `port` a port of `bridge`, up.
    pub async fn ensure_port(&self, bridge: u32, port: &InterfaceName) -> Result<(), LinkError> {
        let index = self.require(port).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(Self::err("enslave", port.as_str()))
    }

    /// Sets `address` on `ifname` and removes every other IPv4 address there.
    pub async fn ensure_ipv4(
        &self,
        ifname: &InterfaceName,
        address: Ipv4Cidr,
    ) -> Result<(), LinkError> {
        let index = self.require(ifname).await?;
        for (addr, prefix, msg) in self.ipv4_addresses(index).await? {
            if addr != address.addr || prefix != address.prefix {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(Self::err("remove an old address", ifname.as_str()))?;
            }
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(address.addr), address.prefix)
            .replace()
            .execute()
            .await
            .map_err(Self::err("add address", ifname.as_str()))
    }

    /// Removes every IPv4 address from `ifname`.
    pub async fn flush_ipv4(&self, ifname: &InterfaceName) -> Result<(), LinkError> {
        let Some(index) = self.index(ifname.as_str()).await? else {
            return Ok(());
        };
        for (_, _, msg) in self.ipv4_addresses(index).await? {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(Self::err("remove address", ifname.as_str()))?;
        }
        Ok(())
    }

    /// The first IPv4 address on link `index`, with its prefix.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<(Ipv4Addr, u8)>, LinkError> {
        Ok(self
            .ipv4_addresses(index)
            .await?
            .into_iter()
            .next()
            .map(|(ip, prefix, _)| (ip, prefix)))
    }

    async fn ipv4_addresses(
        &self,
        index: u32,
    ) -> Result<
        Vec<(
            Ipv4Addr,
            u8,
            rtnetlink::packet_route::address::AddressMessage,
        )>,
        LinkError,
    > {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(Self::err("list addresses", &index.to_string()))?
        {
            let prefix = msg.header.prefix_len;
            let v4 = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = v4 {
                out.push((ip, prefix, msg));
            }
        }
        Ok(out)
    }

    /// The default route via `gateway` out of `ifname`.
    pub async fn ensure_default_route(
        &self,
        ifname: &InterfaceName,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let index = self.require(ifname).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(Self::err("set the default route", ifname.as_str()))
    }

    /// Every link with its addresses, for the interfaces report.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, LinkError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(Self::err("list links", "all"))?
        {
            let name = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if name == "lo" {
                continue;
            }
            let mut addresses = Vec::new();
            let mut addrs = self
                .handle
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute();
            while let Some(msg) = addrs
                .try_next()
                .await
                .map_err(Self::err("list addresses", &name))?
            {
                for a in &msg.attributes {
                    if let AddressAttribute::Address(ip) = a {
                        addresses.push(format!("{ip}/{}", msg.header.prefix_len));
                    }
                }
            }
            let facts = nic_facts(&self.sys, &name);
            out.push(Interface {
                name,
                mac: facts.mac,
                carrier: facts.carrier,
                kind: facts.kind,
                addresses,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
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
/// bridge, a tunnel, a VLAN, a bond or one Grove made.
pub fn candidate_nics(sys: &Path) -> Result<Vec<InterfaceName>, LinkError> {
    let dir = sys.join("class/net");
    let entries = std::fs::read_dir(&dir).map_err(|source| LinkError::Sysfs {
        path: dir.clone(),
        source,
    })?;
    let mut out: Vec<InterfaceName> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<InterfaceName>().ok())
        .filter(|n| {
            let name = n.as_str();
            let ours = name == super::BRIDGE
                || name.starts_with("mesh")
                || crate::tenant::names::is_tenant_link(name);
            name != "lo" && !ours && nic_facts(sys, name).kind == "nic"
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn only_plain_nics_are_candidates() {
        let sys = tempfile::tempdir().expect("tempdir");
        let r = sys.path();
        write(r, "class/net/lo/address", "00:00:00:00:00:00\n");
        write(r, "class/net/eth0/address", "02:00:00:00:00:01\n");
        write(r, "class/net/eth0/carrier", "1\n");
        write(r, "class/net/eth0/uevent", "INTERFACE=eth0\nIFINDEX=2\n");
        write(r, "class/net/eth1/carrier", "0\n");
        write(r, "class/net/br-grove/bridge/stp_state", "0\n");
        write(r, "class/net/eth0.7/uevent", "DEVTYPE=vlan\n");
        write(r, "class/net/mesh0/uevent", "DEVTYPE=wireguard\n");
        write(r, "class/net/tun0/tun_flags", "0x1001\n");
        let names: Vec<String> = candidate_nics(r)
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
        assert!(!nic_facts(r, "eth1").carrier);
        assert_eq!(nic_facts(r, "br-grove").kind, "bridge");
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
