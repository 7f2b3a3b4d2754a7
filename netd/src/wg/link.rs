//! The link side of a WireGuard device: whether the kernel can make one,
//! its MTU and state, its one address, and its IPv6 sysctls.
//!
//! One rtnetlink connection per namespace, spawned once and owned here;
//! every operation is an idempotent `ensure_*` that reports whether it
//! changed anything, so a restart re-runs them without duplicates. Limits:
//! IPv6 addresses only (the mesh is IPv6), and sysctls are written through
//! `/proc/sys` of the calling thread's namespace.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard};
use tracing::Instrument;

/// The name of the throwaway link that probes for kernel WireGuard.
pub const PROBE: &str = "grove-wgprobe";

/// A link operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink connection: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no interface named {0}")]
    NotFound(String),
    #[error("cannot {op} {ifname}: {source}")]
    Netlink {
        op: &'static str,
        ifname: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot write {value} to {path}: {source}")]
    Sysctl {
        path: PathBuf,
        value: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The rtnetlink connection of netd's namespace.
#[derive(Debug)]
pub struct Links {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Links {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn netlink(op: &'static str, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let ifname = ifname.to_owned();
    move |source| LinkError::Netlink { op, ifname, source }
}

/// Whether `e` is the kernel's answer for "no such thing".
fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -nix::libc::ENODEV || m.raw_code() == -nix::libc::EADDRNOTAVAIL)
}

impl Links {
    /// Opens the connection; its task lives as long as this value.
    pub fn connect() -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        let connection = tokio::spawn(connection.instrument(tracing::info_span!("rtnetlink")));
        Ok(Self { handle, connection })
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
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(netlink("look up", name)(e)),
        }
    }

    async fn require(&self, name: &str) -> Result<u32, LinkError> {
        self.index(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.to_owned()))
    }

    /// Whether this kernel can create WireGuard links: creates and deletes
    /// a throwaway one. The error says why not.
    pub async fn kernel_wireguard(&self) -> Result<(), LinkError> {
        self.kernel_wireguard_as(PROBE).await
    }

    /// [`Links::kernel_wireguard`] with a throwaway link named `probe`, so
    /// two probes at once do not remove each other's link.
    pub async fn kernel_wireguard_as(&self, probe: &str) -> Result<(), LinkError> {
        self.delete(probe).await?;
        self.handle
            .link()
            .add(LinkWireguard::new(probe).build())
            .execute()
            .await
            .map_err(netlink("create a WireGuard link", probe))?;
        self.delete(probe).await
    }

    /// Creates WireGuard link `name` unless it exists; true if it did.
    pub async fn ensure_wireguard(&self, name: &str) -> Result<bool, LinkError> {
        if self.index(name).await?.is_some() {
            return Ok(false);
        }
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(netlink("create", name))?;
        Ok(true)
    }

    /// Deletes link `name` if it exists.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(e) if !is_absent(&e) => Err(netlink("delete", name)(e)),
            _ => Ok(()),
        }
    }

    /// Sets `mtu` and brings `name` up.
    pub async fn ensure_up(&self, name: &str, mtu: u32) -> Result<u32, LinkError> {
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(netlink("bring up", name))?;
        Ok(index)
    }

    /// Makes `address/prefix` the only IPv6 address of `name`; true if
    /// anything changed.
    pub async fn ensure_only_address(
        &self,
        name: &str,
        address: Ipv6Addr,
        prefix: u8,
    ) -> Result<bool, LinkError> {
        let index = self.require(name).await?;
        let mut present = false;
        let mut changed = false;
        for (addr, len, message) in self.ipv6_addresses(index, name).await? {
            if (addr, len) == (address, prefix) {
                present = true;
                continue;
            }
            match self.handle.address().del(message).execute().await {
                Err(e) if !is_absent(&e) => {
                    return Err(netlink("remove an old address of", name)(e));
                }
                _ => changed = true,
            }
        }
        if !present {
            let mut add = self
                .handle
                .address()
                .add(index, IpAddr::V6(address), prefix)
                .replace();
            // A point-to-point tunnel has nobody to detect duplicates with.
            add.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            add.execute()
                .await
                .map_err(netlink("add the address to", name))?;
            changed = true;
        }
        Ok(changed)
    }

    async fn ipv6_addresses(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<(Ipv6Addr, u8, AddressMessage)>, LinkError> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(netlink("list the addresses of", name))?
        {
            let v6 = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = v6 {
                out.push((ip, message.header.prefix_len, message));
            }
        }
        Ok(out)
    }
}

/// IPv6 settings of one interface under a `/proc/sys` root.
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn conf(&self, ifname: &str, key: &str) -> PathBuf {
        self.root.join("net/ipv6/conf").join(ifname).join(key)
    }

    fn write(path: &Path, value: &'static str) -> Result<(), LinkError> {
        std::fs::write(path, value).map_err(|source| LinkError::Sysctl {
            path: path.to_owned(),
            value,
            source,
        })
    }

    /// IPv6 on, and no link-local address: set before the link goes up,
    /// so its addresses are exactly the ones netd puts there.
    pub fn no_link_local(&self, ifname: &str) -> Result<(), LinkError> {
        Self::write(&self.conf(ifname, "disable_ipv6"), "0")?;
        Self::write(&self.conf(ifname, "addr_gen_mode"), "1")
    }

    /// Forward IPv6 packets that arrive on `ifname`: per interface where the
    /// kernel has `force_forwarding` (6.17 and later), else for the whole
    /// namespace. True when it had to be the whole namespace.
    pub fn forward(&self, ifname: &str) -> Result<bool, LinkError> {
        let own = self.conf(ifname, "force_forwarding");
        if own.exists() {
            Self::write(&own, "1")?;
            return Ok(false);
        }
        Self::write(&self.conf("all", "forwarding"), "1")?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(keys: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for key in keys {
            let path = root.path().join("net/ipv6/conf").join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "0").expect("write");
        }
        root
    }

    fn read(root: &Path, key: &str) -> String {
        std::fs::read_to_string(root.join("net/ipv6/conf").join(key)).expect("read")
    }

    #[test]
    fn forwarding_is_per_interface_where_the_kernel_allows() {
        let root = tree(&["mesh0/force_forwarding", "all/forwarding"]);
        let sysctls = Sysctls::new(root.path());
        assert!(!sysctls.forward("mesh0").expect("written"));
        assert_eq!(read(root.path(), "mesh0/force_forwarding"), "1");
        assert_eq!(read(root.path(), "all/forwarding"), "0");

        let old = tree(&["all/forwarding"]);
        assert!(Sysctls::new(old.path()).forward("mesh0").expect("written"));
        assert_eq!(read(old.path(), "all/forwarding"), "1");
    }

    #[test]
    fn link_local_is_switched_off_and_a_missing_interface_is_named() {
        let root = tree(&["mesh0/disable_ipv6", "mesh0/addr_gen_mode"]);
        let sysctls = Sysctls::new(root.path());
        sysctls.no_link_local("mesh0").expect("written");
        assert_eq!(read(root.path(), "mesh0/addr_gen_mode"), "1");
        let err = sysctls
            .no_link_local("gone0")
            .expect_err("no such interface");
        assert!(err.to_string().contains("gone0"), "{err}");
    }
}
