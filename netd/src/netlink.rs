//! Every netlink call netd makes: links, addresses and routes, in netd's own
//! namespace or inside a tenant namespace, over one connection per
//! namespace.
//!
//! A [`Netlink`] is opened once per namespace (its socket belongs to the
//! namespace it was made in) and cloned to whoever needs it; its connection
//! task is owned by the clones and ends with the last one. Every change is
//! an idempotent `ensure_*` that looks first, changes only what differs and
//! reports whether it changed anything, so a restart re-runs them without
//! duplicates; the kernel's "no such thing" answers are mapped in one place
//! ([`is_absent`]), and every error names the namespace, the interface and
//! the operation. The kernel runs one dump at a time on a socket and
//! answers a second one with EBUSY, so the clones' dumps (links, addresses,
//! routes) take turns. Limits: routes are IPv4 routes of the main table, managed
//! per device, and a device's routes with protocol `kernel` are left to the
//! kernel; IPv6 addresses are put without duplicate detection (netd puts
//! them only on point-to-point tunnels).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan, LinkWireguard,
    RouteMessageBuilder,
};
use tracing::Instrument;

use crate::netns::{self, NetnsError};
use crate::prefix::Ipv4Prefix;

/// How errors and logs name netd's own namespace.
pub const HOST: &str = "the host namespace";

/// A netlink operation that failed, with the namespace, the interface and
/// the operation involved.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink connection in {ns}: {source}")]
    Connect {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter {ns} to open a netlink connection there: {source}")]
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

/// What [`Netlink::ensure_link`] sets; `None` leaves a setting alone.
#[derive(Debug, Clone, Default)]
pub struct LinkSettings {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The index of the bridge to be a port of.
    pub controller: Option<u32>,
    pub up: bool,
}

impl LinkSettings {
    /// Up, and nothing else.
    pub fn up() -> Self {
        Self {
            up: true,
            ..Self::default()
        }
    }
}

/// One IPv4 route out of a device: `dest`, through `gateway` or on link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dest: Ipv4Prefix,
    pub gateway: Option<Ipv4Addr>,
    pub source: Option<Ipv4Addr>,
}

/// One link's name and addresses (`address/len`), as a listing shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddresses {
    pub name: String,
    pub addresses: Vec<String>,
}

/// Ends the connection task when the last clone of a [`Netlink`] goes.
#[derive(Debug)]
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The netlink connection of one namespace; clones share it.
#[derive(Debug, Clone)]
pub struct Netlink {
    ns: Arc<str>,
    handle: Handle,
    /// The kernel runs one dump at a time on a socket and answers a second
    /// one with EBUSY: the clones' dumps take turns.
    dumps: Arc<tokio::sync::Mutex<()>>,
    _connection: Arc<Connection>,
}

/// Whether `e` is the kernel's answer for "no such thing".
pub fn is_absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -nix::libc::ENODEV
            || m.raw_code() == -nix::libc::EADDRNOTAVAIL
            || m.raw_code() == -nix::libc::ESRCH)
}

impl Netlink {
    /// A connection in the namespace of the calling thread (netd's own),
    /// named `ns` in errors. Needs a runtime.
    pub fn here(ns: &str) -> Result<Self, NetlinkError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Connect {
                ns: ns.to_owned(),
                source,
            })?;
        Ok(Self::serve(ns, connection, handle))
    }

    /// A connection inside the namespace `file` stands for, named `ns`.
    pub async fn inside(file: Arc<File>, ns: &str) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::current();
        let made = netns::run_in_async(file, ns.to_owned(), move || {
            let _context = runtime.enter();
            rtnetlink::new_connection()
        })
        .await
        .map_err(|source| NetlinkError::Netns {
            ns: ns.to_owned(),
            source,
        })?;
        let (connection, handle, _) = made.map_err(|source| NetlinkError::Connect {
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
            ns: ns.into(),
            handle,
            dumps: Arc::default(),
            _connection: Arc::new(Connection(tokio::spawn(connection.instrument(span)))),
        }
    }

    /// The namespace's name, as errors say it.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    fn fail(
        &self,
        op: &'static str,
        ifname: &str,
    ) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let (ns, ifname) = (self.ns.to_string(), ifname.to_owned());
        move |source| NetlinkError::Netlink {
            ns,
            op,
            ifname,
            source: Box::new(source),
        }
    }

    /// Link `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut links = self
            .handle
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

    async fn add_link(
        &self,
        message: LinkMessage,
        op: &'static str,
        name: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(self.fail(op, name))
    }

    /// Link `name`, or [`NetlinkError::NotFound`].
    pub async fn require(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                ns: self.ns.to_string(),
                ifname: name.to_owned(),
            })
    }

    /// A bridge `name` with MAC `mac`, created down if missing; its index
    /// and whether it was created.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
    ) -> Result<(u32, bool), NetlinkError> {
        if let Some(link) = self.link(name).await? {
            return Ok((link.index, false));
        }
        let message = LinkMessageBuilder::<LinkBridge>::new(name)
            .address(mac.to_vec())
            .build();
        self.add_link(message, "create bridge", name).await?;
        Ok((self.require(name).await?.index, true))
    }

    /// A VLAN link `name` tagging `id` on `parent`, created if missing;
    /// true if it was created.
    pub async fn ensure_vlan(
        &self,
        name: &str,
        parent: &str,
        id: u16,
    ) -> Result<bool, NetlinkError> {
        if self.link(name).await?.is_some() {
            return Ok(false);
        }
        let parent = self.require(parent).await?.index;
        self.add_link(LinkVlan::new(name, parent, id).build(), "create vlan", name)
            .await?;
        Ok(true)
    }

    /// A kernel WireGuard link `name`, unless it exists; true if it was
    /// created.
    pub async fn ensure_wireguard(&self, name: &str) -> Result<bool, NetlinkError> {
        if self.link(name).await?.is_some() {
            return Ok(false);
        }
        self.add_link(
            LinkWireguard::new(name).build(),
            "create WireGuard link",
            name,
        )
        .await?;
        Ok(true)
    }

    /// Whether this kernel can create WireGuard links: creates and deletes
    /// a throwaway link named `probe`. The error says why not.
    pub async fn kernel_wireguard(&self, probe: &str) -> Result<(), NetlinkError> {
        self.delete(probe).await?;
        self.ensure_wireguard(probe).await?;
        self.delete(probe).await?;
        Ok(())
    }

    /// A veth pair: `name` here and `peer` created straight inside the
    /// namespace `peer_ns` (so its name never exists here), with the given
    /// MACs; true if it was created.
    pub async fn ensure_veth(
        &self,
        (name, mac): (&str, [u8; 6]),
        (peer, peer_mac): (&str, [u8; 6]),
        peer_ns: &File,
    ) -> Result<bool, NetlinkError> {
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
        self.add_link(message, "create veth", name).await?;
        Ok(true)
    }

    /// Sets what is given on link `name` (MAC, MTU, bridge, up) where it
    /// differs; true if anything changed.
    pub async fn ensure_link(
        &self,
        name: &str,
        wanted: &LinkSettings,
    ) -> Result<bool, NetlinkError> {
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
    pub async fn move_to(&self, name: &str, target: &File) -> Result<(), NetlinkError> {
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
    pub async fn delete(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(self.fail("delete", name)(e)),
        }
    }

    /// Forgets what the neighbour cache of link `index` (`name` in errors)
    /// holds for `ip`; true if it held anything. A workload that takes an
    /// address over from one that left has another MAC, which the cache
    /// would otherwise go on using until the entry times out.
    pub async fn forget_neighbour(
        &self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<bool, NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -nix::libc::ENOENT => {
                Ok(false)
            }
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(self.fail("forget the neighbour on", name)(e)),
        }
    }

    /// Makes `address/len` the only address of its family on `name`; true
    /// if anything changed. Addresses of the other family are left alone;
    /// an IPv6 address goes without duplicate detection (a point-to-point
    /// tunnel has nobody to detect duplicates with).
    pub async fn ensure_only_address(
        &self,
        name: &str,
        address: impl Into<IpAddr>,
        len: u8,
    ) -> Result<bool, NetlinkError> {
        self.ensure_only(name, address.into(), len).await
    }

    async fn ensure_only(
        &self,
        name: &str,
        address: IpAddr,
        len: u8,
    ) -> Result<bool, NetlinkError> {
        let index = self.require(name).await?.index;
        let family = family_of(address);
        let mut present = false;
        let mut changed = false;
        for (addr, prefix, message) in self.addresses_of(index, name, family).await? {
            if (addr, prefix) == (address, len) {
                present = true;
                continue;
            }
            changed |= self.remove_address(name, message).await?;
        }
        if !present {
            let mut add = self.handle.address().add(index, address, len).replace();
            if address.is_ipv6() {
                add.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            add.execute()
                .await
                .map_err(self.fail("add an address to", name))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Removes every IPv4 address from `name`, if it exists; true if there
    /// was any.
    pub async fn flush_ipv4(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        let mut changed = false;
        for (_, _, message) in self
            .addresses_of(link.index, name, AddressFamily::Inet)
            .await?
        {
            changed |= self.remove_address(name, message).await?;
        }
        Ok(changed)
    }

    /// The IPv4 addresses of `name` with their prefix lengths; none when
    /// it does not exist.
    pub async fn ipv4_addresses(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let Some(link) = self.link(name).await? else {
            return Ok(Vec::new());
        };
        let found = self
            .addresses_of(link.index, name, AddressFamily::Inet)
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(ip, len, _)| match ip {
                IpAddr::V4(ip) => Some((ip, len)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    async fn remove_address(
        &self,
        name: &str,
        message: AddressMessage,
    ) -> Result<bool, NetlinkError> {
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(self.fail("remove an address of", name)(e)),
        }
    }

    /// Every address message of link `index`, in its turn.
    async fn address_messages(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<AddressMessage>, NetlinkError> {
        let _turn = self.dumps.lock().await;
        let dump = self.handle.address().get().set_link_index_filter(index);
        let listed = dump.execute().try_collect().await;
        listed.map_err(self.fail("list the addresses of", name))
    }

    /// The addresses of `family` on link `index`: the local address (IPv4)
    /// or the address (IPv6), with its prefix length and its message.
    async fn addresses_of(
        &self,
        index: u32,
        name: &str,
        family: AddressFamily,
    ) -> Result<Vec<(IpAddr, u8, AddressMessage)>, NetlinkError> {
        let mut out = Vec::new();
        for message in self.address_messages(index, name).await? {
            if message.header.family != family {
                continue;
            }
            let ip = message.attributes.iter().find_map(|a| match (a, family) {
                (AddressAttribute::Local(ip @ IpAddr::V4(_)), AddressFamily::Inet) => Some(*ip),
                (AddressAttribute::Address(ip @ IpAddr::V6(_)), AddressFamily::Inet6) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                out.push((ip, message.header.prefix_len, message));
            }
        }
        Ok(out)
    }

    /// Every link but `lo`, by name, with its addresses.
    pub async fn addresses(&self) -> Result<Vec<LinkAddresses>, NetlinkError> {
        let mut links = Vec::new();
        {
            // The link dump ends before the address dumps start: one at a time.
            let _turn = self.dumps.lock().await;
            let mut stream = self.handle.link().get().execute();
            while let Some(link) = stream
                .try_next()
                .await
                .map_err(self.fail("list", "every link"))?
            {
                let name = link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                if name != "lo" {
                    links.push((link.header.index, name));
                }
            }
        }
        let mut out = Vec::new();
        for (index, name) in links {
            let addresses = self
                .address_messages(index, &name)
                .await?
                .iter()
                .flat_map(|message| {
                    message.attributes.iter().filter_map(|a| match a {
                        AddressAttribute::Address(ip) => {
                            Some(format!("{ip}/{}", message.header.prefix_len))
                        }
                        _ => None,
                    })
                })
                .collect();
            out.push(LinkAddresses { name, addresses });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Makes the static routes of the main table out of `dev` exactly
    /// `wanted`; the number of routes added and removed.
    pub async fn ensure_routes(&self, dev: &str, wanted: &[Route]) -> Result<usize, NetlinkError> {
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
            self.add_route(index, dev, route).await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Adds `route` out of `dev` unless it is there, replacing a route to
    /// the same destination; other routes are left alone. True if it was
    /// added.
    pub async fn ensure_route(&self, dev: &str, route: &Route) -> Result<bool, NetlinkError> {
        let index = self.require(dev).await?.index;
        let present = self.routes_out_of(index, dev).await?;
        if present.iter().any(|(r, _)| r == route) {
            return Ok(false);
        }
        self.add_route(index, dev, route).await?;
        Ok(true)
    }

    async fn add_route(&self, index: u32, dev: &str, route: &Route) -> Result<(), NetlinkError> {
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
            .map_err(self.fail("add a route via", dev))
    }

    /// The non-kernel IPv4 routes of the main table out of link `index`.
    async fn routes_out_of(
        &self,
        index: u32,
        dev: &str,
    ) -> Result<Vec<(Route, RouteMessage)>, NetlinkError> {
        let _turn = self.dumps.lock().await;
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

fn family_of(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}
