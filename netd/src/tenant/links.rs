//! Links, IPv4 addresses and routes in one network namespace, over one
//! rtnetlink connection opened inside it.
//!
//! [`NsLinks::connect_in`] opens the netlink socket on a thread that has
//! entered the namespace (a socket belongs to the namespace it was made
//! in) and then serves it from the runtime like any other; every operation
//! is an idempotent `ensure_*` that changes only what differs, so a restart
//! re-runs them without duplicate addresses or routes and without touching
//! what is already right. Limits: IPv4 only; routes are managed per device
//! in the main table, and a device's routes with protocol `kernel` are left
//! to the kernel.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkWireguard,
    RouteMessageBuilder,
};
use tracing::Instrument;

use super::netns::{self, NetnsError};
use super::prefix::Ipv4Prefix;

/// A netlink operation that failed, with the namespace and link involved.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink connection in {ns}: {source}")]
    Connect {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a netlink connection in {ns}: {source}")]
    Netns {
        ns: String,
        #[source]
        source: NetnsError,
    },
    #[error("no interface {ifname} in {ns}")]
    NotFound { ns: String, ifname: String },
    #[error("cannot {op} {ifname} in {ns}: {source}")]
    Netlink {
        ns: String,
        op: &'static str,
        ifname: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// `bridge`, `veth`, `tun`, `wireguard`, ...; `None` for physical NICs.
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub up: bool,
    pub mtu: Option<u32>,
    /// The bridge it is a port of.
    pub controller: Option<u32>,
}

/// One route this module manages: `dest` out of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dest: Ipv4Prefix,
    pub gateway: Option<Ipv4Addr>,
    pub source: Option<Ipv4Addr>,
}

/// The rtnetlink connection of one namespace.
#[derive(Debug)]
pub struct NsLinks {
    ns: String,
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for NsLinks {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Whether `e` is the kernel's answer for "no such thing".
fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -nix::libc::ENODEV
            || m.raw_code() == -nix::libc::EADDRNOTAVAIL
            || m.raw_code() == -nix::libc::ESRCH)
}

impl NsLinks {
    /// A connection in the namespace of the calling thread (netd's own).
    pub fn connect_here(ns: &str) -> Result<Self, LinkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| LinkError::Connect {
                ns: ns.to_owned(),
                source,
            })?;
        Ok(Self::serve(ns, connection, handle))
    }

    /// A connection inside the namespace `file` stands for.
    pub async fn connect_in(file: Arc<File>, ns: &str) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        let made = netns::run_in_async(file, ns.to_owned(), move || {
            let _context = runtime.enter();
            rtnetlink::new_connection()
        })
        .await
        .map_err(|source| LinkError::Netns {
            ns: ns.to_owned(),
            source,
        })?;
        let (connection, handle, _) = made.map_err(|source| LinkError::Connect {
            ns: ns.to_owned(),
            source,
        })?;
        Ok(Self::serve(ns, connection, handle))
    }

    fn serve(
        ns: &str,
        connection: impl std::future::Future<Output = ()> + Send + 'static,
        handle: Handle,
    ) -> Self {
        let span = tracing::info_span!("rtnetlink", ns);
        Self {
            ns: ns.to_owned(),
            handle,
            connection: tokio::spawn(connection.instrument(span)),
        }
    }

    fn fail(&self, op: &'static str, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let (ns, ifname) = (self.ns.clone(), ifname.to_owned());
        move |source| LinkError::Netlink {
            ns,
            op,
            ifname,
            source: Box::new(source),
        }
    }

    /// Link `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut links = self
            .handle
            .clone()
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let message = match links.try_next().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(None),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(self.fail("look up", name)(e)),
        };
        let mut link = Link {
            index: message.header.index,
            kind: None,
            mac: Vec::new(),
            up: message.header.flags.contains(LinkFlags::Up),
            mtu: None,
            controller: None,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::Address(mac) => link.mac = mac,
                LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(Some(link))
    }

    async fn require(&self, name: &str) -> Result<Link, LinkError> {
        self.link(name).await?.ok_or_else(|| LinkError::NotFound {
            ns: self.ns.clone(),
            ifname: name.to_owned(),
        })
    }

    /// A bridge `name` with MAC `mac`, created down if missing; its index
    /// and whether it was created.
    pub async fn ensure_bridge(&self, name: &str, mac: [u8; 6]) -> Result<(u32, bool), LinkError> {
        if let Some(link) = self.link(name).await? {
            return Ok((link.index, false));
        }
        let message = LinkMessageBuilder::<LinkBridge>::new(name)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(self.fail("create bridge", name))?;
        Ok((self.require(name).await?.index, true))
    }

    /// A kernel WireGuard link `name`, unless it exists; true if it did.
    pub async fn ensure_wireguard(&self, name: &str) -> Result<bool, LinkError> {
        if self.link(name).await?.is_some() {
            return Ok(false);
        }
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(self.fail("create WireGuard link", name))?;
        Ok(true)
    }

    /// A veth pair: `name` here and `peer` created straight inside the
    /// namespace `peer_ns` (so its name never exists here), with the given
    /// MACs; true if it was created.
    pub async fn ensure_veth(
        &self,
        (name, mac): (&str, [u8; 6]),
        (peer, peer_mac): (&str, [u8; 6]),
        peer_ns: &File,
    ) -> Result<bool, LinkError> {
        if self.link(name).await?.is_some() {
            return Ok(false);
        }
        let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let message = LinkVeth::new(name, peer)
            .address(mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(self.fail("create veth", name))?;
        Ok(true)
    }

    /// Sets what is given on link `name` (MAC, MTU, bridge, up) where it
    /// differs; true if anything changed.
    pub async fn ensure_link(&self, name: &str, wanted: &LinkSettings) -> Result<bool, LinkError> {
        let link = self.require(name).await?;
        let mut set = LinkUnspec::new_with_index(link.index);
        let mut changed = false;
        if let Some(mac) = wanted.mac
            && link.mac != mac
        {
            set = set.address(mac.to_vec());
            changed = true;
        }
        if let Some(mtu) = wanted.mtu
            && link.mtu != Some(mtu)
        {
            set = set.mtu(mtu);
            changed = true;
        }
        if let Some(controller) = wanted.controller
            && link.controller != Some(controller)
        {
            set = set.controller(controller);
            changed = true;
        }
        if wanted.up && !link.up {
            set = set.up();
            changed = true;
        }
        if changed {
            self.handle
                .link()
                .set(set.build())
                .execute()
                .await
                .map_err(self.fail("set up", name))?;
        }
        Ok(changed)
    }

    /// Moves link `name` into the namespace `target` stands for.
    pub async fn move_to(&self, name: &str, target: &File) -> Result<(), LinkError> {
        let link = self.require(name).await?;
        let message = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(target.as_raw_fd())
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(self.fail("move", name))
    }

    /// Deletes link `name` if it exists; true if it did.
    pub async fn delete(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.clone().link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(self.fail("delete", name)(e)),
        }
    }

    /// Makes `address/len` the only IPv4 address of `name`; true if
    /// anything changed.
    pub async fn ensure_only_ipv4(
        &self,
        name: &str,
        address: Ipv4Addr,
        len: u8,
    ) -> Result<bool, LinkError> {
        let index = self.require(name).await?.index;
        let mut present = false;
        let mut changed = false;
        for (addr, prefix, message) in self.ipv4_addresses(index, name).await? {
            if (addr, prefix) == (address, len) {
                present = true;
                continue;
            }
            match self.handle.address().del(message).execute().await {
                Err(e) if !is_absent(&e) => return Err(self.fail("remove an address of", name)(e)),
                _ => changed = true,
            }
        }
        if !present {
            self.handle
                .address()
                .add(index, IpAddr::V4(address), len)
                .replace()
                .execute()
                .await
                .map_err(self.fail("add an address to", name))?;
            changed = true;
        }
        Ok(changed)
    }

    async fn ipv4_addresses(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, LinkError> {
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
            .map_err(self.fail("list the addresses of", name))?
        {
            if message.header.family != AddressFamily::Inet {
                continue;
            }
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local {
                out.push((ip, message.header.prefix_len, message));
            }
        }
        Ok(out)
    }

    /// Makes the static routes of the main table out of `dev` exactly
    /// `wanted`; the number of routes added and removed.
    pub async fn ensure_routes(&self, dev: &str, wanted: &[Route]) -> Result<usize, LinkError> {
        let index = self.require(dev).await?.index;
        let mut present = Vec::new();
        let mut changed = 0;
        for (route, message) in self.routes_out_of(index, dev).await? {
            if wanted.contains(&route) {
                present.push(route);
                continue;
            }
            match self.handle.route().del(message).execute().await {
                Err(e) if !is_absent(&e) => return Err(self.fail("remove a route via", dev)(e)),
                _ => changed += 1,
            }
        }
        for route in wanted.iter().filter(|r| !present.contains(r)) {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.dest.network(), route.dest.prefix_len())
                .output_interface(index);
            builder = match route.gateway {
                Some(gateway) => builder.gateway(gateway),
                None => builder.scope(RouteScope::Link),
            };
            if let Some(source) = route.source {
                builder = builder.pref_source(source);
            }
            self.handle
                .route()
                .add(builder.build())
                .replace()
                .execute()
                .await
                .map_err(self.fail("add a route via", dev))?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The non-kernel IPv4 routes of the main table out of link `index`.
    async fn routes_out_of(
        &self,
        index: u32,
        dev: &str,
    ) -> Result<Vec<(Route, RouteMessage)>, LinkError> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(self.fail("list the routes via", dev))?
        {
            let header = &message.header;
            let main = header.table == RouteHeader::RT_TABLE_MAIN;
            if !main || header.protocol == RouteProtocol::Kernel {
                continue;
            }
            let mut oif = None;
            let (mut dest, mut gateway, mut source) = (Ipv4Addr::UNSPECIFIED, None, None);
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => source = Some(*ip),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let Some(dest) = Ipv4Prefix::new(dest, header.destination_prefix_length) else {
                continue;
            };
            out.push((
                Route {
                    dest,
                    gateway,
                    source,
                },
                message,
            ));
        }
        Ok(out)
    }
}

/// What [`NsLinks::ensure_link`] sets; `None` leaves a setting alone.
#[derive(Debug, Clone, Default)]
pub struct LinkSettings {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The index of the bridge to be a port of.
    pub controller: Option<u32>,
    pub up: bool,
}

/// Whether `kind` is what the kernel reports for a link of `kind`.
pub fn is_kind(link: &Link, kind: InfoKind) -> bool {
    link.kind.as_deref() == Some(kind.to_string().as_str())
}
