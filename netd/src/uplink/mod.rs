//! The uplink: the NIC the node reaches its farm LAN and the Internet by.
//!
//! Every NIC is brought up; those with carrier are probed by DHCP in
//! parallel; the winner ([`choose`]) is bridged into `br-grove` (with the
//! NIC's MAC, so the lease follows) and a long-lived `udhcpc` keeps its
//! lease. A static address, gateway, DNS, a forced NIC and a VLAN tag come
//! from the boot parameters instead. A carrier that comes back makes udhcpc
//! renew at once, so a pulled cable or a DHCP server gone for minutes heals
//! without a restart. IPv6 comes by SLAAC on the bridge when a router
//! offers it. Limits: one uplink; no bonding.

pub mod api;
pub mod choose;
pub mod dhcp;
pub mod links;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use grove_daemon::server::Readiness;
use grove_daemon::shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use crate::types::{InterfaceName, Ipv4Cidr, VlanId};
use dhcp::{Client, Event, Lease};
use links::{LinkError, Links};

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
            probe_secs: 4,
            resolv_conf: PathBuf::from("/run/grove/resolv.conf"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// What the boot parameters say about the uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub nic: Option<InterfaceName>,
    pub address: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
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
    Link(#[from] LinkError),
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
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
    links: Links,
    report: RwLock<UplinkReport>,
}

impl Uplink {
    pub fn new(config: UplinkConfig, overrides: Overrides) -> Result<Arc<Self>, UplinkError> {
        let links = Links::connect(&config.sys)?;
        Ok(Arc::new(Self {
            report: RwLock::new(UplinkReport {
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
        }))
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn report(&self) -> UplinkReport {
        self.report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut UplinkReport)) {
        f(&mut self.report.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Brings the uplink up and keeps it up until `shutdown`. Marks
    /// `readiness` ready once the first attempt is done, whatever it found.
    pub async fn run(self: Arc<Self>, readiness: Readiness, shutdown: Shutdown) {
        if !self.config.manage {
            readiness.set_ready();
            return;
        }
        let hook = match dhcp::write_hook(&PathBuf::from(grove_daemon::RUN_DIR).join("netd")) {
            Ok(h) => h,
            Err(e) => {
                self.fail(&e.to_string());
                readiness.set_ready();
                return;
            }
        };
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
            match self.probe_all(&hook).await {
                Ok(Some((nic, lease))) => {
                    readiness.set_ready();
                    if let Err(e) = self.keep_lease(&hook, nic, lease, false, &shutdown).await {
                        self.fail(&e.to_string());
                    }
                    if shutdown.is_triggered() {
                        return;
                    }
                }
                Ok(None) => {
                    self.update(|r| r.state = UplinkState::NoLease);
                    readiness.set_ready();
                }
                Err(e) => {
                    self.fail(&e.to_string());
                    self.update(|r| r.state = UplinkState::NoLease);
                    readiness.set_ready();
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.wait() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// After a netd restart: the bridge already carries the uplink port and
    /// its address, so keep those rather than probing a bridged NIC.
    async fn resume(&self) -> Option<(InterfaceName, Lease)> {
        let ports = self.config.sys.join("class/net").join(BRIDGE).join("brif");
        let port: InterfaceName = std::fs::read_dir(ports)
            .ok()?
            .filter_map(Result::ok)
            .find_map(|e| e.file_name().to_str()?.parse().ok())?;
        let index = self.links.index(BRIDGE).await.ok()??;
        let (address, prefix) = self.links.first_ipv4(index).await.ok()??;
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

    fn fail(&self, error: &str) {
        tracing::error!(error, "uplink");
        self.update(|r| r.error = Some(error.to_owned()));
    }

    /// The NICs to consider, up, each as itself or as its VLAN link.
    async fn nics(&self) -> Result<Vec<(InterfaceName, InterfaceName)>, UplinkError> {
        let all = links::candidate_nics(&self.config.sys)?;
        let nics = match &self.overrides.nic {
            Some(n) if all.contains(n) => vec![n.clone()],
            Some(n) => return Err(UplinkError::NoSuchNic(n.clone())),
            None => all,
        };
        let mut out = Vec::new();
        for nic in nics {
            self.links.set_up(&nic).await?;
            let port = match self.overrides.vlan {
                Some(id) => self.links.ensure_vlan(&nic, id).await?,
                None => nic.clone(),
            };
            out.push((nic, port));
        }
        Ok(out)
    }

    /// Probes every NIC with carrier in parallel; answers the winner.
    async fn probe_all(
        &self,
        hook: &std::path::Path,
    ) -> Result<Option<(InterfaceName, Lease)>, UplinkError> {
        self.update(|r| r.state = UplinkState::Probing);
        let nics = self.nics().await?;
        // A NIC just brought up needs a moment to see its carrier.
        let sys = &self.config.sys;
        for _ in 0..20 {
            if nics
                .iter()
                .all(|(n, _)| links::nic_facts(sys, n.as_str()).carrier)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let timeout = Duration::from_secs(self.config.probe_secs);
        let probes = nics.iter().map(|(nic, port)| {
            let carrier = links::nic_facts(sys, nic.as_str()).carrier;
            async move {
                let lease = if carrier {
                    dhcp::probe(&self.config.udhcpc, hook, port, timeout).await?
                } else {
                    None
                };
                Ok::<_, UplinkError>((nic.clone(), port.clone(), carrier, lease))
            }
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
        Ok(choose::choose(&names).map(|i| {
            let ((nic, port), lease) = leases.swap_remove(i);
            tracing::info!(nic = %nic, port = %port, address = %lease.address, "uplink chosen");
            (port, lease)
        }))
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
        let mut carrier = true;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let mut client = Client::spawn(&self.config.udhcpc, hook, &bridge, previous)?;
            loop {
                tokio::select! {
                    event = client.events.recv() => {
                        let Some(event) = event else { break };
                        if let Some(l) = &event.lease {
                            previous = Some(l.address);
                        }
                        self.on_event(&bridge, event).await?;
                    }
                    _ = tick.tick() => {
                        let now = links::nic_facts(&self.config.sys, port.as_str()).carrier;
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
            ("deconfig", _) => {
                self.links.flush_ipv4(bridge).await?;
                self.update(|r| {
                    r.state = UplinkState::Rebinding;
                    r.address = None;
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// `br-grove` with `port` in it; the bridge carries the port's MAC.
    async fn bridge(&self, port: &InterfaceName) -> Result<InterfaceName, UplinkError> {
        let bridge: InterfaceName = BRIDGE
            .parse()
            .map_err(|_never: crate::types::TypeError| UplinkError::NoNic)?;
        let mac = parse_mac(&links::nic_facts(&self.config.sys, port.as_str()).mac);
        let index = self.links.ensure_bridge(&bridge, &mac).await?;
        self.links.flush_ipv4(port).await?;
        self.links.ensure_port(index, port).await?;
        enable_slaac(&bridge);
        self.update(|r| r.bridge = Some(BRIDGE.to_owned()));
        Ok(bridge)
    }

    async fn apply(&self, bridge: &InterfaceName, lease: &Lease) -> Result<(), UplinkError> {
        let address = Ipv4Cidr {
            addr: lease.address,
            prefix: lease.prefix,
        };
        self.links.ensure_ipv4(bridge, address).await?;
        if let Some(gw) = lease.router {
            self.links.ensure_default_route(bridge, gw).await?;
        }
        self.write_resolv(&lease.dns)?;
        self.update(|r| {
            r.address = Some(address.to_string());
            r.gateway = lease.router;
            r.dns = lease.dns.clone();
            r.lease_secs = lease.lease_secs;
        });
        Ok(())
    }

    async fn bring_up_static(&self) -> Result<(), UplinkError> {
        let nics = self.nics().await?;
        let sys = &self.config.sys;
        let port = nics
            .iter()
            .find(|(n, _)| links::nic_facts(sys, n.as_str()).carrier)
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

    fn write_resolv(&self, dns: &[IpAddr]) -> Result<(), UplinkError> {
        let mut text = String::from("# written by Grove's netd\n");
        for server in dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        let path = &self.config.resolv_conf;
        if let Some(dir) = path.parent() {
            let _exists = std::fs::create_dir_all(dir);
        }
        grove_daemon::fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
            UplinkError::Resolv {
                path: path.clone(),
                source,
            }
        })
    }
}

fn parse_mac(text: &str) -> Vec<u8> {
    text.split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

/// Accept router advertisements on the bridge, so IPv6 comes by SLAAC.
fn enable_slaac(bridge: &InterfaceName) {
    for (key, value) in [("accept_ra", "2"), ("autoconf", "1")] {
        let path = format!("/proc/sys/net/ipv6/conf/{bridge}/{key}");
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(path, error = %e, "cannot enable SLAAC");
        }
    }
}
