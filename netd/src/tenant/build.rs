//! Making the kernel hold one tenant network, and taking it away again.
//!
//! [`converge`] runs every step as an `ensure_*` that changes only what
//! differs (namespace and its settings, bridge, egress veth, WireGuard
//! device, peers, routes, firewall, workloads), so creating, restoring
//! after a restart and rebuilding after the userspace process died are the
//! same call; [`teardown`] removes everything a network's names cover, so
//! it also cleans up after a creation that failed halfway. With userspace
//! WireGuard, boringtun creates its TUN device `w-<netid>` in the host
//! namespace and netd moves it into `n-<netid>`: the UDP and UAPI sockets
//! stay outside, as with kernel WireGuard. Limits: boringtun 0.7 looks its
//! device up by name in its own namespace once a second to read the MTU,
//! and leaks a socket each time it is not found; a down bridge named
//! `w-<netid>` is therefore left in the host namespace as a placeholder
//! (it also tells boringtun the MTU). Multi-queue is switched off, since
//! boringtun opens its extra queues by name after its UAPI socket answers,
//! which races with the move.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::firewall;
use super::input::AttachKind;
use super::names::{self, EGRESS_INSIDE, INSIDE_TABLE, NetId};
use super::netns::{self, NetnsDir};
use super::network::{Attachment, EgressSlot, Network};
use super::prefix::Ipv4Prefix;
use super::tap;
use super::{TenantConfig, TenantError, blocking};
use crate::actor::Restart;
use crate::netlink::{LinkSettings, Netlink, Route};
use crate::sysctl::{self, Sysctls};
use crate::wg::Backend;
use crate::wg::PublicKey;
use crate::wg::boringtun::{self, Boringtun, Options};
use crate::wg::device::{self, DeviceError, DeviceState, PeerConfig, Settings};

/// What every network shares: settings, backend and the host namespace.
#[derive(Debug)]
pub(crate) struct Env {
    pub config: TenantConfig,
    pub backend: Backend,
    pub dir: NetnsDir,
    pub sysctls: Sysctls,
    pub host: Netlink,
}

/// A network that exists on this node, with what it runs on.
#[derive(Debug)]
pub(crate) struct Live {
    pub network: Network,
    pub ns: Arc<File>,
    pub inside: Netlink,
    pub process: Option<Boringtun>,
    /// The peers last sent to the device.
    pub asked: BTreeMap<PublicKey, PeerConfig>,
    pub restart: Restart,
}

/// Runs a blocking call on a thread inside the network's namespace.
async fn inside<T: Send + 'static, E>(
    live: &Live,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, TenantError>
where
    E: Into<TenantError> + Send + 'static,
{
    let name = live.network.netid().namespace();
    netns::run_in_async(live.ns.clone(), name, f)
        .await?
        .map_err(Into::into)
}

/// Reads or configures the network's WireGuard device: over the UAPI
/// socket from anywhere, or over netlink from inside the namespace.
async fn on_device<T: Send + 'static>(
    env: &Env,
    live: &Live,
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> Result<T, TenantError> {
    match env.backend {
        Backend::Kernel => inside(live, f).await,
        Backend::Userspace => Ok(blocking(move || Ok::<_, TenantError>(f()?)).await?),
    }
}

/// Makes (or finds) the namespace of `network` and opens a netlink
/// connection inside it, with IPv6 off and forwarding on.
pub(crate) async fn open(env: &Env, network: Network) -> Result<Live, TenantError> {
    let name = network.netid().namespace();
    let (dir, ns) = (env.dir.clone(), name.clone());
    let file = blocking(move || {
        if dir.create(&ns)? {
            tracing::info!(netns = %ns, "network namespace created");
        }
        Ok(dir.open(&ns)?)
    })
    .await?;
    let file = Arc::new(file);
    let links = settle_namespace(env, &file, &name, &sysctl::TENANT_INSIDE).await?;
    links.ensure_link("lo", &LinkSettings::up()).await?;
    Ok(Live {
        network,
        ns: file,
        inside: links,
        process: None,
        asked: BTreeMap::new(),
        restart: Restart::default(),
    })
}

/// Holds the sysctl `settings` inside the namespace `ns`, open as `file`,
/// and opens a netlink connection there.
async fn settle_namespace(
    env: &Env,
    file: &Arc<File>,
    ns: &str,
    settings: &'static [(&'static str, &'static str)],
) -> Result<Netlink, TenantError> {
    let sysctls = env.sysctls.clone();
    netns::run_in_async(file.clone(), ns.to_owned(), move || {
        sysctls.ensure_all(settings)
    })
    .await??;
    Ok(Netlink::inside(file.clone(), ns).await?)
}

/// Makes the kernel hold `live.network`, changing only what differs.
pub(crate) async fn converge(env: &Env, live: &mut Live) -> Result<(), TenantError> {
    let netid = live.network.netid().clone();
    let spec = live.network.spec.clone();
    let up = LinkSettings::up();

    let bridge = netid.bridge();
    live.inside
        .ensure_bridge(&bridge, netid.bridge_mac())
        .await?;
    live.inside
        .ensure_only_address(&bridge, spec.gateway(), spec.subnet.prefix_len())
        .await?;
    live.inside.ensure_link(&bridge, &up).await?;

    egress(env, live).await?;

    let fresh = match env.backend {
        Backend::Userspace => userspace_device(env, live).await?,
        Backend::Kernel => kernel_device(env, live).await?,
    };
    peers(env, live, fresh).await?;
    let wg = netid.wireguard();
    let settings = LinkSettings {
        mtu: Some(env.config.mtu),
        up: true,
        ..LinkSettings::default()
    };
    live.inside.ensure_link(&wg, &settings).await?;
    live.inside
        .ensure_routes(&wg, &live.network.wireguard_routes())
        .await?;

    let nft = env.config.nft.clone();
    let rules = firewall::inside_rules(&netid);
    let binary = nft.clone();
    inside(live, move || firewall::apply(&binary, INSIDE_TABLE, &rules)).await?;
    let (table, rules) = (
        netid.host_table(),
        firewall::host_rules(&netid, live.network.slot.inside()),
    );
    let sysctls = env.sysctls.clone();
    blocking(move || {
        firewall::apply(&nft, &table, &rules)?;
        sysctls.ensure(sysctl::FORWARD.0, sysctl::FORWARD.1)?;
        Ok(())
    })
    .await?;

    let attachments = live.network.attachments.clone();
    for attachment in &attachments {
        ensure_attachment(env, live, attachment).await?;
    }
    Ok(())
}

/// The veth pair out of the namespace, its addresses and the namespace's
/// default route through it.
async fn egress(env: &Env, live: &Live) -> Result<(), TenantError> {
    let netid = live.network.netid();
    let slot: EgressSlot = live.network.slot;
    let host_end = netid.egress();
    let host_mac = names::mac(&["egress-host", netid.as_str()]);
    let inside_mac = names::mac(&["egress", netid.as_str()]);
    env.host
        .ensure_veth((&host_end, host_mac), (EGRESS_INSIDE, inside_mac), &live.ns)
        .await?;
    let (sysctls, ifname) = (env.sysctls.clone(), host_end.clone());
    blocking(move || Ok(sysctls.no_ipv6(&ifname)?)).await?;
    env.host
        .ensure_only_address(&host_end, slot.host(), EgressSlot::LEN)
        .await?;
    let up = LinkSettings::up();
    env.host.ensure_link(&host_end, &up).await?;
    live.inside
        .ensure_only_address(EGRESS_INSIDE, slot.inside(), EgressSlot::LEN)
        .await?;
    live.inside.ensure_link(EGRESS_INSIDE, &up).await?;
    let default = Route {
        dest: Ipv4Prefix::ANY,
        gateway: Some(slot.host()),
        source: None,
    };
    live.inside.ensure_routes(EGRESS_INSIDE, &[default]).await?;
    Ok(())
}

fn boringtun_options() -> Options {
    Options {
        args: vec!["--disable-multi-queue".to_owned()],
        outlive: true,
    }
}

/// The userspace device: adopt the process a previous netd left, or start
/// one; move its TUN device into the namespace; leave the placeholder.
/// True if the device is new.
async fn userspace_device(env: &Env, live: &mut Live) -> Result<bool, TenantError> {
    let netid = live.network.netid().clone();
    let wg = netid.wireguard();
    let mut fresh = false;
    if live.process.is_none() {
        let binary = boringtun::locate(env.config.boringtun.as_deref(), std::env::var_os("PATH"))?;
        match Boringtun::adopt(&binary, &wg, Path::new("/proc")).await {
            Some(mut process) => {
                process.outlive();
                live.process = Some(process);
            }
            None => {
                // boringtun makes its device by name: the placeholder must go.
                env.host.delete(&wg).await?;
                live.process =
                    Some(Boringtun::spawn_with(&binary, &wg, &boringtun_options()).await?);
                fresh = true;
            }
        }
        live.restart.started();
    }
    if let Some(link) = env.host.link(&wg).await?
        && link.kind.as_deref() == Some("tun")
    {
        env.host.move_to(&wg, &live.ns).await?;
        tracing::info!(%netid, ifname = %wg, "userspace WireGuard device moved into its namespace");
    }
    env.host
        .ensure_bridge(&wg, names::mac(&["placeholder", netid.as_str()]))
        .await?;
    let mtu = LinkSettings {
        mtu: Some(env.config.mtu),
        ..LinkSettings::default()
    };
    env.host.ensure_link(&wg, &mtu).await?;
    Ok(fresh)
}

/// The kernel device: made in the host namespace, then moved in. True if
/// it is new.
async fn kernel_device(env: &Env, live: &Live) -> Result<bool, TenantError> {
    let wg = live.network.netid().wireguard();
    if live.inside.link(&wg).await?.is_some() {
        return Ok(false);
    }
    env.host.ensure_wireguard(&wg).await?;
    env.host.move_to(&wg, &live.ns).await?;
    Ok(true)
}

/// Sends the device the key, the port and the peers that differ.
async fn peers(env: &Env, live: &mut Live, fresh: bool) -> Result<(), TenantError> {
    let spec = live.network.spec.clone();
    let wg = spec.netid.wireguard();
    let backend = env.backend;
    let name = wg.clone();
    let actual: DeviceState = on_device(env, live, move || device::read(&name, backend)).await?;
    let wanted = live.network.peers();
    let changes = device::diff(&live.asked, &actual.peers, &wanted);
    let key =
        (fresh || actual.public_key != Some(spec.public_key)).then(|| spec.private_key.clone());
    let port = (actual.listen_port != Some(spec.listen_port)).then_some(spec.listen_port);
    if key.is_some() || port.is_some() || !changes.is_empty() {
        // boringtun does not report its key, so it is sent again; a key the
        // device already holds changes nothing there.
        let news = fresh || port.is_some() || !changes.is_empty();
        let count = (
            changes.add.len(),
            changes.update.len(),
            changes.remove.len(),
        );
        on_device(env, live, move || {
            let settings = Settings {
                private_key: key.as_ref(),
                listen_port: port,
            };
            device::apply(&wg, backend, &settings, &changes)
        })
        .await?;
        if news {
            tracing::info!(
                netid = %spec.netid,
                public_key = %spec.public_key,
                added = count.0,
                updated = count.1,
                removed = count.2,
                "tenant WireGuard configured"
            );
        }
    }
    live.asked = wanted;
    Ok(())
}

/// Puts `attachment` on the network's bridge.
pub(crate) async fn ensure_attachment(
    env: &Env,
    live: &Live,
    attachment: &Attachment,
) -> Result<(), TenantError> {
    let netid = live.network.netid();
    let bridge = live
        .inside
        .link(&netid.bridge())
        .await?
        .map(|l| l.index)
        .ok_or_else(|| TenantError::NotFound {
            netid: netid.clone(),
        })?;
    let name = &attachment.name;
    let port = match attachment.kind {
        AttachKind::Veth => {
            let port = name.port();
            if live.inside.link(&port).await?.is_none() {
                // Half a pair (the other end gone) is no pair.
                env.host.delete(&name.veth()).await?;
                env.host
                    .ensure_veth(
                        (&name.veth(), name.mac(netid)),
                        (&port, name.port_mac(netid)),
                        &live.ns,
                    )
                    .await?;
            }
            port
        }
        AttachKind::Tap => {
            let tap = name.tap();
            if live.inside.link(&tap).await?.is_none() {
                let ifname = tap.clone();
                inside(live, move || tap::ensure_tap(&ifname)).await?;
            }
            tap
        }
        AttachKind::Namespace => {
            ensure_workload_namespace(env, live, attachment).await?;
            name.port()
        }
    };
    let settings = LinkSettings {
        mac: Some(name.port_mac(netid)),
        controller: Some(bridge),
        up: true,
        mtu: None,
    };
    live.inside.ensure_link(&port, &settings).await?;
    live.inside
        .forget_neighbour(bridge, &netid.bridge(), attachment.address)
        .await?;
    Ok(())
}

/// The namespace `c-<name>` of a workload attached with its own: `eth0`
/// (the veth's end, whose other end is the bridge port) with the
/// workload's address and MAC, `lo` up, a default route via the gateway.
/// Every part is checked and made where missing, so a restart or a lost
/// port mends it.
async fn ensure_workload_namespace(
    env: &Env,
    live: &Live,
    attachment: &Attachment,
) -> Result<(), TenantError> {
    use super::network::WORKLOAD_IFNAME as ETH0;
    let (name, netid) = (&attachment.name, live.network.netid());
    let ns = name.namespace();
    let (dir, made) = (env.dir.clone(), ns.clone());
    let file = Arc::new(
        blocking(move || {
            dir.create(&made)?;
            Ok(dir.open(&made)?)
        })
        .await?,
    );
    let workload = settle_namespace(env, &file, &ns, &sysctl::WORKLOAD_INSIDE).await?;
    let port = name.port();
    if live.inside.link(&port).await?.is_none() || workload.link(ETH0).await?.is_none() {
        // Half a pair is no pair.
        live.inside.delete(&port).await?;
        workload.delete(ETH0).await?;
        workload
            .ensure_veth(
                (ETH0, name.mac(netid)),
                (&port, name.port_mac(netid)),
                &live.ns,
            )
            .await?;
    }
    let up = LinkSettings {
        mac: None,
        controller: None,
        up: true,
        mtu: None,
    };
    workload.ensure_link("lo", &up).await?;
    workload
        .ensure_link(
            ETH0,
            &LinkSettings {
                mac: Some(name.mac(netid)),
                ..up
            },
        )
        .await?;
    let subnet = live.network.spec.subnet;
    workload
        .ensure_only_address(ETH0, attachment.address, subnet.prefix_len())
        .await?;
    workload
        .ensure_routes(
            ETH0,
            &[Route {
                dest: Ipv4Prefix::ANY,
                gateway: Some(live.network.spec.gateway()),
                source: None,
            }],
        )
        .await?;
    Ok(())
}

/// Takes `attachment` off the bridge and removes its interfaces.
pub(crate) async fn remove_attachment(
    env: &Env,
    live: &Live,
    attachment: &Attachment,
) -> Result<(), TenantError> {
    let name = &attachment.name;
    match attachment.kind {
        AttachKind::Veth => {
            live.inside.delete(&name.port()).await?;
            env.host.delete(&name.veth()).await?;
        }
        AttachKind::Tap => {
            live.inside.delete(&name.tap()).await?;
        }
        AttachKind::Namespace => {
            live.inside.delete(&name.port()).await?;
            let (dir, ns) = (env.dir.clone(), name.namespace());
            blocking(move || Ok(dir.delete(&ns)?)).await?;
        }
    }
    Ok(())
}

/// The device as it is now.
pub(crate) async fn read_device(env: &Env, live: &Live) -> Result<DeviceState, TenantError> {
    let (wg, backend) = (live.network.netid().wireguard(), env.backend);
    on_device(env, live, move || device::read(&wg, backend)).await
}

/// Removes everything named after `netid`: its userspace process, its links
/// in the host namespace (the veths' other ends go with them), its host
/// table and its namespace. Safe to run on a network that is only half
/// there, or not at all; every step is tried, and the first failure is
/// the answer.
pub(crate) async fn teardown(
    env: &Env,
    netid: &NetId,
    process: Option<Boringtun>,
    inside: Option<&Netlink>,
    attachments: &[Attachment],
) -> Result<(), TenantError> {
    let wg = netid.wireguard();
    match process {
        Some(process) => process.stop().await,
        None if env.backend == Backend::Userspace => {
            if let Ok(binary) =
                boringtun::locate(env.config.boringtun.as_deref(), std::env::var_os("PATH"))
                && let Some(process) = Boringtun::adopt(&binary, &wg, Path::new("/proc")).await
            {
                process.stop().await;
            }
        }
        None => {}
    }
    let mut failures: Vec<TenantError> = Vec::new();
    if let Some(inside) = inside
        && let Err(e) = inside.delete(&wg).await
    {
        // A kernel device's socket is closed now, not when the namespace
        // is finally freed.
        failures.push(e.into());
    }
    let veths = attachments
        .iter()
        .filter(|a| a.kind == AttachKind::Veth)
        .map(|a| a.name.veth());
    for ifname in [wg.clone(), netid.egress()].into_iter().chain(veths) {
        if let Err(e) = env.host.delete(&ifname).await {
            failures.push(e.into());
        }
    }
    let (nft, table) = (env.config.nft.clone(), netid.host_table());
    let removed = blocking(move || Ok(firewall::apply(&nft, &table, &firewall::removal(&table))?));
    if let Err(e) = removed.await {
        failures.push(e);
    }
    let namespaces = attachments
        .iter()
        .filter(|a| a.kind == AttachKind::Namespace)
        .map(|a| a.name.namespace());
    for ns in std::iter::once(netid.namespace()).chain(namespaces) {
        let dir = env.dir.clone();
        if let Err(e) = blocking(move || Ok(dir.delete(&ns)?)).await {
            failures.push(e);
        }
    }
    for later in failures.iter().skip(1) {
        tracing::error!(%netid, error = %later, "tenant network teardown");
    }
    match failures.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}
