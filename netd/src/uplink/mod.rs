//! The uplink: the NIC the node reaches its farm LAN and the Internet by.
//!
//! Every NIC is brought up; those with carrier are probed by DHCP in
//! parallel; the winner ([`choose`]) is bridged into `br-grove` (with the
//! NIC's MAC, so the lease follows) and a long-lived `udhcpc` keeps its
//! lease. Without a lease it probes again with backoff, at once when a NIC
//! shows that the last round did not probe. A static address, gateway,
//! DNS, a forced NIC and a VLAN tag come from the boot parameters instead.
//! A carrier that comes back makes udhcpc renew at once, so a pulled cable
//! or a DHCP server gone for minutes heals without a restart. IPv6 comes by
//! SLAAC on the bridge when a router offers it. Netlink goes through
//! [`crate::netlink`], kernel settings through [`crate::sysctl`], and sysfs
//! reads and file writes run on blocking tasks. Which links are netd's own
//! (and so never an uplink) is the caller's to say. Limits: one uplink; no
//! bonding.

pub mod api;
pub mod choose;
pub mod dhcp;
pub mod nic;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grove_daemon::latest::Latest;
use grove_daemon::server::Readiness;
use grove_daemon::shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use crate::actor::until;
use crate::netlink::{LinkSettings, Netlink, NetlinkError, Route};
use crate::prefix::Ipv4Prefix;
use crate::procs;
use crate::sysctl::{SysctlError, Sysctls};
use crate::types::{InterfaceName, Ipv4Cidr, VlanId};
use dhcp::{Client, Event, Lease};
pub use nic::Interface;
use nic::{NicError, NicFacts};

/// The bridge that carries the uplink, shared with workloads.
pub const BRIDGE: &str = "br-grove";

/// `[uplink]` in `netd.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Bring the uplink up. Off where something else already configured
    /// the node's network (a developer VM); netd then only reports.
    pub manage: bool,
    /// The DHCP client binary.
    pub udhcpc: PathBuf,
    /// The ARP tool that announces a new address to the LAN (busybox's or
    /// iputils' `arping`).
    pub arping: PathBuf,
    /// How long one DHCP probe of a NIC may take.
    pub probe_secs: u64,
    /// Where the DNS servers are written (the image links
    /// `/etc/resolv.conf` here).
    pub resolv_conf: PathBuf,
    /// The sysfs root.
    pub sys: PathBuf,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            manage: true,
            udhcpc: PathBuf::from("udhcpc"),
            arping: PathBuf::from("arping"),
            probe_secs: 4,
            resolv_conf: PathBuf::from("/run/grove/resolv.conf"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// What the boot parameters say about the uplink. netd takes it as flags
/// ([`crate::flags::Flags`]); the agent keeps it among its boot parameters,
/// where the NIC is `uplink` as on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct Overrides {
    /// Use this NIC for the uplink instead of probing every one.
    #[arg(long = "uplink", value_name = "IFNAME")]
    #[serde(rename = "uplink")]
    pub nic: Option<InterfaceName>,
    /// Static uplink address instead of DHCP.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub address: Option<Ipv4Cidr>,
    /// Static default gateway (with --address).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// DNS server (with --address). Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<IpAddr>,
    /// VLAN tag on the uplink.
    #[arg(long, value_name = "ID")]
    pub vlan: Option<VlanId>,
}

/// Where the uplink is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    Unmanaged,
    Probing,
    /// No NIC got a lease; probing again.
    NoLease,
    Bound,
    Static,
    /// The uplink NIC lost its carrier.
    NoCarrier,
    /// The lease was lost; udhcpc is asking again.
    Rebinding,
}

/// One NIC's probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub nic: String,
    pub carrier: bool,
    pub lease: Option<Lease>,
}

/// `GET /v1/uplink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkReport {
    pub state: UplinkState,
    pub nic: Option<String>,
    pub bridge: Option<String>,
    pub vlan: Option<u16>,
    pub address: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
    pub lease_secs: Option<u64>,
    pub probes: Vec<Probe>,
    /// The last error, if the uplink could not be set up as asked.
    pub error: Option<String>,
}

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Nic(#[from] NicError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error("{nic} has no MAC address in sysfs ({text:?})")]
    NoMac { nic: InterfaceName, text: String },
    #[error("a blocking uplink task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the boot parameters name uplink {0}, which does not exist")]
    NoSuchNic(InterfaceName),
    #[error("no NIC to put the static address on")]
    NoNic,
    #[error("cannot write {path}: {source}")]
    Resolv {
        path: PathBuf,
        #[source]
        source: grove_daemon::fsutil::WriteError,
    },
}

/// The uplink manager.
#[derive(Debug)]
pub struct Uplink {
    config: UplinkConfig,
    overrides: Overrides,
    links: Netlink,
    /// Whether a link is one netd made (never an uplink candidate).
    made_by_netd: fn(&str) -> bool,
    report: Latest<UplinkReport>,
}

impl Uplink {
    /// The manager, over `links` (netd's own namespace); `made_by_netd`
    /// tells the links netd makes for other purposes from NICs.
    pub fn new(
        config: UplinkConfig,
        overrides: Overrides,
        links: Netlink,
        made_by_netd: fn(&str) -> bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            report: Latest::new(UplinkReport {
                state: if config.manage {
                    UplinkState::Probing
                } else {
                    UplinkState::Unmanaged
                },
                nic: None,
                bridge: None,
                vlan: overrides.vlan.map(VlanId::get),
                address: None,
                gateway: None,
                dns: Vec::new(),
                lease_secs: None,
                probes: Vec::new(),
                error: None,
            }),
            config,
            overrides,
            links,
            made_by_netd,
        })
    }

    /// Every link with its addresses and what sysfs says about it.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, UplinkError> {
        let links = self.links.addresses().await?;
        let sys = self.config.sys.clone();
        blocking(move || Ok(nic::interfaces(&sys, links))).await
    }

    /// What sysfs says about `name`, read on a blocking task.
    async fn facts(&self, name: &InterfaceName) -> Result<NicFacts, UplinkError> {
        let (sys, name) = (self.config.sys.clone(), name.clone());
        blocking(move || Ok(nic::nic_facts(&sys, name.as_str()))).await
    }

    pub fn report(&self) -> UplinkReport {
        self.report.get()
    }

    fn update(&self, f: impl FnOnce(&mut UplinkReport)) {
        self.report.update(f);
    }

    /// Brings the uplink up and keeps it up until `shutdown`. Marks
    /// `readiness` ready once the first attempt is done, whatever it found.
    pub async fn run(self: Arc<Self>, readiness: Readiness, shutdown: Shutdown) {
        if !self.config.manage {
            readiness.set_ready();
            return;
        }
        let dir = PathBuf::from(grove_daemon::RUN_DIR).join("netd");
        let hook = match blocking(move || Ok(dhcp::write_hook(&dir)?)).await {
            Ok(h) => h,
            Err(e) => {
                self.fail(&e.to_string());
                readiness.set_ready();
                return;
            }
        };
        self.stop_leftovers(&hook).await;
        if self.overrides.address.is_some() {
            let result = self.bring_up_static().await;
            if let Err(e) = result {
                self.fail(&e.to_string());
            }
            readiness.set_ready();
            return;
        }
        if let Some((port, lease)) = self.resume().await {
            tracing::info!(port = %port, address = %lease.address, "resuming the uplink already bridged");
            readiness.set_ready();
            if let Err(e) = self.keep_lease(&hook, port, lease, true, &shutdown).await {
                self.fail(&e.to_string());
            }
            if shutdown.is_triggered() {
                return;
            }
        }
        let mut delay = Duration::from_secs(2);
        loop {
            let probed = match self.probe_all(&hook).await {
                Ok((_, Some((nic, lease)))) => {
                    readiness.set_ready();
                    if let Err(e) = self.keep_lease(&hook, nic, lease, false, &shutdown).await {
                        self.fail(&e.to_string());
                    }
                    if shutdown.is_triggered() {
                        return;
                    }
                    None
                }
                Ok((probed, None)) => {
                    self.update(|r| r.state = UplinkState::NoLease);
                    readiness.set_ready();
                    Some(probed)
                }
                Err(e) => {
                    self.fail(&e.to_string());
                    self.update(|r| r.state = UplinkState::NoLease);
                    readiness.set_ready();
                    None
                }
            };
            if !self.wait_for_new_nic(probed, delay, &shutdown).await {
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Waits `delay` before the next round, or less if a NIC shows that
    /// `probed` (the NICs the last round considered; if unknown, those
    /// present when the wait began) does not hold: a driver loaded late.
    /// A NIC that goes away changes nothing. Answers false on shutdown.
    async fn wait_for_new_nic(
        &self,
        mut probed: Option<Vec<InterfaceName>>,
        delay: Duration,
        shutdown: &Shutdown,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = shutdown.wait() => return false,
                _ = poll.tick() => {
                    let Ok(now) = self.candidates().await else { continue };
                    match &probed {
                        None => probed = Some(now),
                        Some(before) => {
                            if let Some(nic) = first_new(before, &now) {
                                tracing::info!(nic = %nic, "new NIC, probing at once");
                                return true;
                            }
                        }
                    }
                }
            }
        }
    }

    /// After a netd restart: the bridge already carries the uplink port and
    /// its address, so keep those rather than probing a bridged NIC.
    async fn resume(&self) -> Option<(InterfaceName, Lease)> {
        let sys = self.config.sys.clone();
        let ports = blocking(move || Ok::<_, UplinkError>(nic::bridge_ports(&sys, BRIDGE)));
        let port = ports.await.ok()?.into_iter().next()?;
        let addresses = self.links.ipv4_addresses(BRIDGE).await.ok()?;
        let (address, prefix) = addresses.into_iter().next()?;
        Some((
            port,
            Lease {
                address,
                prefix,
                router: None,
                dns: Vec::new(),
                lease_secs: None,
                server: None,
            },
        ))
    }

    /// Stops the udhcpc processes a previous netd left running: their
    /// events went to that netd, and a second client would renew the same
    /// lease.
    async fn stop_leftovers(&self, hook: &Path) {
        let (udhcpc, hook) = (self.config.udhcpc.clone(), hook.to_owned());
        let stopped = blocking(move || {
            let proc_root = Path::new("/proc");
            let pids = dhcp::leftovers(&udhcpc, &hook, proc_root);
            let left = procs::kill_all(proc_root, &pids, Duration::from_secs(5));
            Ok((pids, left))
        });
        match stopped.await {
            Ok((pids, left)) if !pids.is_empty() => {
                tracing::warn!(
                    ?pids,
                    ?left,
                    "stopped the udhcpc a previous netd left running"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot look for a previous netd's udhcpc"),
        }
    }

    fn fail(&self, error: &str) {
        tracing::error!(error, "uplink");
        self.update(|r| r.error = Some(error.to_owned()));
    }

    /// The NICs a round considers: every candidate, or only the one the
    /// boot parameters name (none while it is not there).
    async fn candidates(&self) -> Result<Vec<InterfaceName>, UplinkError> {
        let (sys, ours) = (self.config.sys.clone(), self.made_by_netd);
        let mut nics = blocking(move || Ok(nic::candidate_nics(&sys, ours)?)).await?;
        if let Some(only) = &self.overrides.nic {
            nics.retain(|n| n == only);
        }
        Ok(nics)
    }

    /// The NICs to consider, up, each as itself or as its VLAN link.
    async fn nics(&self) -> Result<Vec<(InterfaceName, InterfaceName)>, UplinkError> {
        let nics = self.candidates().await?;
        if let Some(only) = &self.overrides.nic
            && nics.is_empty()
        {
            return Err(UplinkError::NoSuchNic(only.clone()));
        }
        let mut out = Vec::new();
        let up = LinkSettings::up();
        for nic in nics {
            self.links.ensure_link(nic.as_str(), &up).await?;
            let port = match self.overrides.vlan {
                Some(id) => {
                    let vlan = nic::vlan_name(&nic, id);
                    (self.links)
                        .ensure_vlan(vlan.as_str(), nic.as_str(), id.get())
                        .await?;
                    self.links.ensure_link(vlan.as_str(), &up).await?;
                    vlan
                }
                None => nic.clone(),
            };
            out.push((nic, port));
        }
        Ok(out)
    }

    /// Probes every NIC with carrier in parallel; answers the NICs it
    /// considered and the winner.
    async fn probe_all(
        &self,
        hook: &std::path::Path,
    ) -> Result<(Vec<InterfaceName>, Option<(InterfaceName, Lease)>), UplinkError> {
        self.update(|r| r.state = UplinkState::Probing);
        let nics = self.nics().await?;
        // A NIC just brought up needs a moment to see its carrier.
        let names: Vec<InterfaceName> = nics.iter().map(|(n, _)| n.clone()).collect();
        let mut carriers = self.carriers(&names).await?;
        for _ in 0..20 {
            if carriers.iter().all(|c| *c) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            carriers = self.carriers(&names).await?;
        }
        let timeout = Duration::from_secs(self.config.probe_secs);
        let probes = nics
            .iter()
            .zip(carriers)
            .map(|((nic, port), carrier)| async move {
                let lease = if carrier {
                    dhcp::probe(&self.config.udhcpc, hook, port, timeout).await?
                } else {
                    None
                };
                Ok::<_, UplinkError>((nic.clone(), port.clone(), carrier, lease))
            });
        let results = futures::future::join_all(probes).await;
        let mut report = Vec::new();
        let mut leases = Vec::new();
        for r in results {
            let (nic, port, carrier, lease) = r?;
            report.push(Probe {
                nic: nic.to_string(),
                carrier,
                lease: lease.clone(),
            });
            if let Some(lease) = lease {
                leases.push(((nic, port), lease));
            }
        }
        tracing::info!(probes = ?report, "uplink probe");
        self.update(|r| r.probes = report);
        let names: Vec<(InterfaceName, Lease)> = leases
            .iter()
            .map(|((n, _), l)| (n.clone(), l.clone()))
            .collect();
        let winner = choose::choose(&names).map(|i| {
            let ((nic, port), lease) = leases.swap_remove(i);
            tracing::info!(nic = %nic, port = %port, address = %lease.address, "uplink chosen");
            (port, lease)
        });
        Ok((nics.into_iter().map(|(nic, _)| nic).collect(), winner))
    }

    /// Whether each of `nics` has carrier, in order.
    async fn carriers(&self, nics: &[InterfaceName]) -> Result<Vec<bool>, UplinkError> {
        let (sys, nics) = (self.config.sys.clone(), nics.to_vec());
        blocking(move || {
            Ok(nics
                .iter()
                .map(|n| nic::nic_facts(&sys, n.as_str()).carrier)
                .collect())
        })
        .await
    }

    /// Bridges `port` and keeps its lease with a long-lived udhcpc.
    async fn keep_lease(
        &self,
        hook: &std::path::Path,
        port: InterfaceName,
        lease: Lease,
        resumed: bool,
        shutdown: &Shutdown,
    ) -> Result<(), UplinkError> {
        let bridge = self.bridge(&port).await?;
        if resumed {
            // The address is already in place; udhcpc asks for it again at
            // once and its answer brings gateway and DNS up to date.
            self.update(|r| r.address = Some(format!("{}/{}", lease.address, lease.prefix)));
        } else {
            self.apply(&bridge, &lease).await?;
        }
        self.update(|r| {
            r.state = UplinkState::Bound;
            r.nic = Some(port.to_string());
            r.error = None;
        });
        let mut previous = Some(lease.address);
        let mut expires = expiry(&lease);
        let mut carrier = true;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let mut client = Client::spawn(&self.config.udhcpc, hook, &bridge, previous)?;
            // udhcpc starts with a `deconfig`; the address it asks for again
            // stays in place meanwhile (so the uplink never flaps), until
            // udhcpc gets it or the lease runs out.
            let mut starting = true;
            let mut held = Held::No;
            loop {
                tokio::select! {
                    event = client.events.recv() => {
                        let Some(event) = event else { break };
                        if let Some(l) = &event.lease {
                            previous = Some(l.address);
                            expires = expiry(l);
                            held = Held::No;
                        }
                        let first = std::mem::replace(&mut starting, false);
                        if first && event.kind == "deconfig" && previous.is_some() {
                            held = expires.map_or(Held::UntilLeasefail, Held::Until);
                            tracing::info!(address = ?previous, ?held, "udhcpc started; keeping the address it asks for");
                            continue;
                        }
                        let failed = event.kind == "leasefail" && held == Held::UntilLeasefail;
                        if event.kind == "deconfig" {
                            held = Held::No;
                        }
                        self.on_event(&bridge, event).await?;
                        if failed {
                            held = Held::No;
                            tracing::warn!("udhcpc did not get the address of unknown lease time again; letting it go");
                            self.lease_lost(&bridge).await?;
                        }
                    }
                    () = until(held.until()) => {
                        held = Held::No;
                        tracing::warn!("the lease ran out before udhcpc got it again");
                        self.lease_lost(&bridge).await?;
                    }
                    _ = tick.tick() => {
                        let now = self.facts(&port).await?.carrier;
                        if now != carrier {
                            tracing::warn!(nic = %port, carrier = now, "uplink carrier changed");
                            if now {
                                client.renew();
                                self.update(|r| r.state = UplinkState::Rebinding);
                            } else {
                                self.update(|r| r.state = UplinkState::NoCarrier);
                            }
                            carrier = now;
                        }
                    }
                    () = shutdown.wait() => return Ok(()),
                }
            }
            tracing::warn!("udhcpc stopped; starting it again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn on_event(&self, bridge: &InterfaceName, event: Event) -> Result<(), UplinkError> {
        tracing::info!(event = %event.kind, lease = ?event.lease, "dhcp");
        match (event.kind.as_str(), event.lease) {
            ("bound" | "renew", Some(lease)) => {
                self.apply(bridge, &lease).await?;
                self.update(|r| r.state = UplinkState::Bound);
            }
            ("deconfig", _) => self.lease_lost(bridge).await?,
            _ => {}
        }
        Ok(())
    }

    /// The lease is gone: its address leaves the bridge.
    async fn lease_lost(&self, bridge: &InterfaceName) -> Result<(), UplinkError> {
        self.links.flush_ipv4(bridge.as_str()).await?;
        self.update(|r| {
            r.state = UplinkState::Rebinding;
            r.address = None;
        });
        Ok(())
    }

    /// `br-grove` with `port` in it; the bridge carries the port's MAC.
    async fn bridge(&self, port: &InterfaceName) -> Result<InterfaceName, UplinkError> {
        let bridge: InterfaceName = BRIDGE
            .parse()
            .map_err(|_never: crate::types::TypeError| UplinkError::NoNic)?;
        let facts = self.facts(port).await?;
        let mac = facts.mac_bytes().ok_or_else(|| UplinkError::NoMac {
            nic: port.clone(),
            text: facts.mac.clone(),
        })?;
        let (index, _) = self.links.ensure_bridge(BRIDGE, mac).await?;
        let bridge_settings = LinkSettings {
            mac: Some(mac),
            ..LinkSettings::up()
        };
        self.links.ensure_link(BRIDGE, &bridge_settings).await?;
        self.links.flush_ipv4(port.as_str()).await?;
        let port_settings = LinkSettings {
            controller: Some(index),
            ..LinkSettings::up()
        };
        self.links
            .ensure_link(port.as_str(), &port_settings)
            .await?;
        // Router advertisements are accepted, so IPv6 comes by SLAAC.
        let name = bridge.to_string();
        if let Err(e) = blocking(move || Ok(Sysctls::default().slaac(&name)?)).await {
            tracing::warn!(error = %e, "cannot enable SLAAC");
        }
        self.update(|r| r.bridge = Some(BRIDGE.to_owned()));
        Ok(bridge)
    }

    async fn apply(&self, bridge: &InterfaceName, lease: &Lease) -> Result<(), UplinkError> {
        let address = Ipv4Cidr {
            addr: lease.address,
            prefix: lease.prefix,
        };
        let changed = (self.links)
            .ensure_only_address(bridge.as_str(), address.addr, address.prefix)
            .await?;
        if changed {
            self.announce(bridge, lease.address).await;
        }
        if let Some(gw) = lease.router {
            let default = Route {
                dest: Ipv4Prefix::ANY,
                gateway: Some(gw),
                source: None,
            };
            self.links.ensure_route(bridge.as_str(), &default).await?;
        }
        let (path, dns) = (self.config.resolv_conf.clone(), lease.dns.clone());
        blocking(move || write_resolv(&path, &dns)).await?;
        self.update(|r| {
            r.address = Some(address.to_string());
            r.gateway = lease.router;
            r.dns = lease.dns.clone();
            r.lease_secs = lease.lease_secs;
        });
        Ok(())
    }

    /// Tells the LAN that `address` is on `bridge` now: one unsolicited ARP
    /// (RFC 5227's announcement). A neighbour that asked for the address
    /// before it was here (an operator's browser, the DHCP server's host)
    /// learns it at once instead of at its next ARP retry, up to a second
    /// later, and switches learn the port. Best effort: the address works
    /// without it.
    async fn announce(&self, bridge: &InterfaceName, address: std::net::Ipv4Addr) {
        let ip = address.to_string();
        let mut cmd = tokio::process::Command::new(&self.config.arping);
        cmd.args(["-U", "-c", "1", "-I", bridge.as_str(), "-s", &ip, &ip])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        crate::procs::die_with_parent(&mut cmd);
        let announced = match cmd.spawn() {
            Ok(mut child) => tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .map_err(|_elapsed| "it did not finish within 2 s".to_owned())
                .and_then(|exit| exit.map_err(|e| e.to_string()))
                .and_then(|status| {
                    status
                        .success()
                        .then_some(())
                        .ok_or_else(|| format!("it exited with {status}"))
                }),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = announced {
            tracing::warn!(arping = %self.config.arping.display(), error = %e, "cannot announce the address to the LAN");
        }
    }

    async fn bring_up_static(&self) -> Result<(), UplinkError> {
        let nics = self.nics().await?;
        let names: Vec<InterfaceName> = nics.iter().map(|(n, _)| n.clone()).collect();
        let carriers = self.carriers(&names).await?;
        let port = nics
            .iter()
            .zip(carriers)
            .find(|(_, carrier)| *carrier)
            .map(|(nic, _)| nic)
            .or(nics.first())
            .map(|(_, p)| p.clone())
            .ok_or(UplinkError::NoNic)?;
        let bridge = self.bridge(&port).await?;
        let lease = Lease {
            address: self
                .overrides
                .address
                .map(|a| a.addr)
                .ok_or(UplinkError::NoNic)?,
            prefix: self.overrides.address.map(|a| a.prefix).unwrap_or(24),
            router: self.overrides.gateway,
            dns: self.overrides.dns.clone(),
            lease_secs: None,
            server: None,
        };
        self.apply(&bridge, &lease).await?;
        self.update(|r| {
            r.state = UplinkState::Static;
            r.nic = Some(port.to_string());
        });
        Ok(())
    }
}

/// How long an address stays on the bridge while a fresh udhcpc asks for
/// it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Not held: udhcpc has answered for it.
    No,
    /// Until its lease runs out.
    Until(tokio::time::Instant),
    /// Until udhcpc fails to get it (a lease of unknown length, as after a
    /// netd restart).
    UntilLeasefail,
}

impl Held {
    fn until(self) -> Option<tokio::time::Instant> {
        match self {
            Held::Until(at) => Some(at),
            Held::No | Held::UntilLeasefail => None,
        }
    }
}

/// The first NIC of `now` that `probed` does not hold, if any.
fn first_new<'a>(probed: &[InterfaceName], now: &'a [InterfaceName]) -> Option<&'a InterfaceName> {
    now.iter().find(|n| !probed.contains(n))
}

/// When `lease` runs out, counted from now, if its length is known.
fn expiry(lease: &Lease) -> Option<tokio::time::Instant> {
    let secs = lease.lease_secs?;
    Some(tokio::time::Instant::now() + Duration::from_secs(secs))
}

/// Writes `dns` as a resolv.conf at `path`, atomically. Blocking.
fn write_resolv(path: &Path, dns: &[IpAddr]) -> Result<(), UplinkError> {
    let mut text = String::from("# written by Grove's netd\n");
    for server in dns {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if let Some(dir) = path.parent() {
        let _exists = std::fs::create_dir_all(dir);
    }
    grove_daemon::fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
        UplinkError::Resolv {
            path: path.to_owned(),
            source,
        }
    })
}

/// [`crate::actor::blocking`] answering a [`UplinkError`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UplinkError> + Send + 'static,
) -> Result<T, UplinkError> {
    crate::actor::blocking(f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<InterfaceName> {
        list.iter().map(|n| n.parse().expect("a name")).collect()
    }

    #[test]
    fn only_a_nic_not_probed_before_is_new() {
        let cases: &[(&[&str], &[&str], Option<&str>)] = &[
            (&[], &[], None),
            (&[], &["eth0"], Some("eth0")),
            (&["eth0"], &["eth0"], None),
            (&["eth0"], &["eth0", "eth1"], Some("eth1")),
            // A NIC that went away is no reason to probe.
            (&["eth0", "eth1"], &["eth1"], None),
            (&["eth0"], &[], None),
            // One went, another came.
            (&["eth0"], &["eth1"], Some("eth1")),
        ];
        for (probed, now, new) in cases {
            let (probed, now) = (names(probed), names(now));
            let got = first_new(&probed, &now).map(InterfaceName::as_str);
            assert_eq!(got, *new, "{probed:?} then {now:?}");
        }
    }
}
