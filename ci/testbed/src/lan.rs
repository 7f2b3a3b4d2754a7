//! One farm LAN: a bridge `br<k>` in the farm's LAN namespace, a veth from
//! the host onto it, and optionally dnsmasq serving DHCP and DNS on it.
//!
//! The bridge holds `<subnet>.1/24` (router, DHCP and DNS server) and the
//! host end `gtb<run>h<k>` holds `<subnet>.254/24`, so tests on the host
//! reach every node directly; nodes' NICs are plugged in by the node
//! module. A LAN behind NAT has no address on its bridge and no host
//! link: its gateway `.1` is the [`Nat`] router's leg, whose other leg is
//! on LAN 0. Limits: no other routing between LANs or to the outside
//! world, and STP is off (a NIC forwards as soon as it is up).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cmd::{self, CmdError};
use crate::dnsmasq::{Dnsmasq, DnsmasqError};
use crate::ifname::{IfName, IfNameError};
use crate::nat::{Legs, Nat, NatError};
use crate::run::RunId;
use crate::spec::LanSpec;
use crate::subnet::Subnet;

/// Building or running a LAN failed.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("invalid interface name for LAN {lan}")]
    Name {
        lan: usize,
        #[source]
        source: IfNameError,
    },
    #[error("could not create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not set up bridge {bridge} in {netns}")]
    Bridge {
        bridge: IfName,
        netns: String,
        #[source]
        source: CmdError,
    },
    #[error("could not set up host link {link} onto {bridge}")]
    HostLink {
        link: IfName,
        bridge: IfName,
        #[source]
        source: CmdError,
    },
    #[error("DHCP on {bridge} failed")]
    Dhcp {
        bridge: IfName,
        #[source]
        source: DnsmasqError,
    },
    #[error("NAT router in front of {bridge} failed")]
    Nat {
        bridge: IfName,
        #[source]
        source: NatError,
    },
}

/// A tap could not be put on a LAN's bridge.
#[derive(Debug, thiserror::Error)]
#[error("could not plug tap {tap} into {bridge}")]
pub struct PlugError {
    pub tap: IfName,
    pub bridge: IfName,
    #[source]
    pub source: CmdError,
}

/// One address dnsmasq has handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// A running LAN.
#[derive(Debug)]
pub struct Lan {
    index: usize,
    subnet: Subnet,
    netns: String,
    bridge: IfName,
    /// None behind NAT: the host has no leg there.
    host_link: Option<IfName>,
    dir: PathBuf,
    dhcp: bool,
    lease_secs: u32,
    /// The router DHCP names.
    router: std::net::Ipv4Addr,
    behind_nat: bool,
    nat: Option<Nat>,
    dnsmasq: Option<Dnsmasq>,
}

impl Lan {
    /// Creates bridge and host link of LAN `index` inside the (existing) LAN
    /// namespace. dnsmasq is started separately by [`Lan::start_dhcp`].
    pub fn create(
        run: &RunId,
        index: usize,
        spec: LanSpec,
        subnet: Subnet,
        run_dir: &Path,
    ) -> Result<Lan, LanError> {
        let name = |source| LanError::Name { lan: index, source };
        let bridge = IfName::new(format!("br{index}")).map_err(name)?;
        let host_link = run.host_link(index).map_err(name)?;
        let peer = IfName::new(format!("host{index}")).map_err(name)?;
        let dir = run_dir.join(format!("lan{index}"));
        std::fs::create_dir_all(&dir).map_err(|source| LanError::Dir {
            path: dir.clone(),
            source,
        })?;
        let netns = run.lan_netns();
        let lan = Lan {
            index,
            subnet,
            netns,
            bridge,
            host_link: (!spec.nat).then_some(host_link),
            dir,
            dhcp: spec.dhcp,
            lease_secs: spec.lease_secs,
            router: if spec.router_nowhere {
                subnet.host(253)
            } else {
                subnet.gateway()
            },
            behind_nat: spec.nat,
            nat: None,
            dnsmasq: None,
        };
        lan.make_bridge()?;
        if let Some(link) = &lan.host_link {
            lan.make_host_link(link, &peer)?;
        }
        Ok(lan)
    }

    /// Builds the NAT router in front of this LAN, with its outside leg on
    /// `outside` (LAN 0), if this LAN's spec asked for one.
    pub fn start_nat(&mut self, run: &RunId, outside: (&IfName, Subnet)) -> Result<(), LanError> {
        if !self.behind_nat || self.nat.is_some() {
            return Ok(());
        }
        let legs = Legs {
            lan_netns: &self.netns,
            outside,
            inside: (self.index, &self.bridge, self.subnet),
        };
        let nat = Nat::create(run, &legs).map_err(|source| LanError::Nat {
            bridge: self.bridge.clone(),
            source,
        })?;
        self.nat = Some(nat);
        Ok(())
    }

    fn make_bridge(&self) -> Result<(), LanError> {
        let ns = self.netns.as_str();
        let br = self.bridge.as_str();
        let gateway = self.subnet.cidr(1);
        let create = [
            "-n",
            ns,
            "link",
            "add",
            br,
            "type",
            "bridge",
            "stp_state",
            "0",
        ];
        let up = ["-n", ns, "link", "set", br, "up"];
        let address = ["-n", ns, "addr", "add", &gateway, "dev", br];
        let v6 = format!("{}1/64", self.subnet.ipv6_prefix());
        let address6 = ["-n", ns, "addr", "add", &v6, "dev", br, "nodad"];
        // Behind NAT the gateway address belongs to the NAT router.
        let mut steps: Vec<&[&str]> = vec![&create, &up];
        if !self.behind_nat {
            steps.push(&address);
            steps.push(&address6);
        }
        for args in steps {
            cmd::run("ip", args).map_err(|source| LanError::Bridge {
                bridge: self.bridge.clone(),
                netns: self.netns.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn make_host_link(&self, host_link: &IfName, peer: &IfName) -> Result<(), LanError> {
        let ns = self.netns.as_str();
        let link = host_link.as_str();
        let host_cidr = self.subnet.cidr(254);
        let steps: [&[&str]; 5] = [
            &[
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                peer.as_str(),
                "netns",
                ns,
            ],
            &[
                "-n",
                ns,
                "link",
                "set",
                peer.as_str(),
                "master",
                self.bridge.as_str(),
            ],
            &["-n", ns, "link", "set", peer.as_str(), "up"],
            &["addr", "add", &host_cidr, "dev", link],
            &["link", "set", link, "up"],
        ];
        for args in steps {
            cmd::run("ip", args).map_err(|source| LanError::HostLink {
                link: host_link.clone(),
                bridge: self.bridge.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Starts dnsmasq if this LAN's spec asked for DHCP.
    pub fn start_dhcp(&mut self) -> Result<(), LanError> {
        if !self.dhcp || self.dnsmasq.is_some() {
            return Ok(());
        }
        let dnsmasq = Dnsmasq::start(
            &self.netns,
            &self.bridge,
            self.subnet,
            &self.dir,
            self.lease_secs,
            self.router,
        )
        .map_err(|source| LanError::Dhcp {
            bridge: self.bridge.clone(),
            source,
        })?;
        self.dnsmasq = Some(dnsmasq);
        Ok(())
    }

    /// Stops dnsmasq, if running, and reaps it.
    pub fn stop_dhcp(&mut self) -> Result<(), LanError> {
        match self.dnsmasq.take() {
            Some(mut dnsmasq) => dnsmasq.stop().map_err(|source| LanError::Dhcp {
                bridge: self.bridge.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The namespace holding the bridge (shared by all LANs of the farm).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn bridge(&self) -> &IfName {
        &self.bridge
    }

    /// Puts `tap`, which is in the LAN's namespace already, on the bridge
    /// and sets it up.
    pub fn plug(&self, tap: &IfName) -> Result<(), PlugError> {
        let (ns, name, bridge) = (self.netns(), tap.as_str(), self.bridge.as_str());
        let args = ["-n", ns, "link", "set", name, "master", bridge, "up"];
        match cmd::run("ip", &args) {
            Ok(_) => Ok(()),
            Err(source) => Err(PlugError {
                tap: tap.clone(),
                bridge: self.bridge.clone(),
                source,
            }),
        }
    }

    /// The host's end of the veth onto this LAN (none behind NAT).
    pub fn host_link(&self) -> Option<&IfName> {
        self.host_link.as_ref()
    }

    /// The NAT router in front of this LAN, if it sits behind one.
    pub fn nat(&self) -> Option<&Nat> {
        self.nat.as_ref()
    }

    /// The bridge's address: router, DHCP and DNS server.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// The host's address on this LAN.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.subnet.host_side()
    }

    /// Whether this LAN has a DHCP server.
    pub fn dhcp(&self) -> bool {
        self.dhcp
    }

    /// Whether this LAN sits behind a NAT router onto LAN 0.
    pub fn behind_nat(&self) -> bool {
        self.behind_nat
    }

    pub fn dnsmasq_pid(&self) -> Option<u32> {
        self.dnsmasq.as_ref().map(Dnsmasq::pid)
    }

    /// dnsmasq's log (empty or absent on a LAN without DHCP).
    pub fn dnsmasq_log(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    /// The directory the LAN's dnsmasq serves by TFTP (network boots).
    pub fn tftp_dir(&self) -> PathBuf {
        crate::dnsmasq::tftp_dir(&self.dir)
    }

    /// dnsmasq's lease file.
    pub fn leases_file(&self) -> PathBuf {
        self.dir.join("leases")
    }

    /// The leases dnsmasq has handed out so far.
    pub fn leases(&self) -> Vec<Lease> {
        std::fs::read_to_string(self.leases_file())
            .map(|text| parse_leases(&text))
            .unwrap_or_default()
    }

    /// The address leased to `mac` (any case), if any.
    pub fn lease_for(&self, mac: &str) -> Option<Ipv4Addr> {
        self.leases()
            .into_iter()
            .find(|l| l.mac.eq_ignore_ascii_case(mac))
            .map(|l| l.ip)
    }
}

/// dnsmasq lease lines: `expiry mac ip hostname client-id`.
fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let _expiry = words.next()?;
            let mac = words.next()?.to_owned();
            let ip = words.next()?.parse().ok()?;
            let hostname = words.next().filter(|h| *h != "*").map(str::to_owned);
            Some(Lease { mac, ip, hostname })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines() {
        let text = "1700000000 02:aa:bb:cc:00:01 10.77.0.150 node0 01:02:aa:bb:cc:00:01\n\
                    1700000001 02:aa:bb:cc:01:00 10.77.0.151 * *\n\
                    broken line\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].hostname.as_deref(), Some("node0"));
        assert_eq!(leases[1].hostname, None);
        assert_eq!(leases[1].ip, Ipv4Addr::new(10, 77, 0, 151));
    }
}
