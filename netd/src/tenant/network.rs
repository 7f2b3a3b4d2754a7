//! One tenant network as this node realises it, and everything derived
//! from it: the egress veth's addresses, the routes through WireGuard, the
//! WireGuard peers, the workloads' addresses.
//!
//! A [`Network`] is the validated request plus what the node chose for it
//! (its egress slot, its attachments); it is what the state file holds, so
//! a restart derives exactly the same addresses, routes and peers again.
//! Limits: at most [`EgressSlot::COUNT`] networks per node, and 253
//! workloads per network (`.2` to `.254` of the node's /24).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::input::{AttachKind, NetworkSpec};
use super::names::{NetId, WorkloadName};
use super::prefix::Ipv4Prefix;
use crate::netlink::Route;
use crate::wg::PublicKey;
use crate::wg::device::{Cidr, PeerConfig};

/// The network's /30 on its egress veth, out of `169.254.0.0/16`: the host
/// end takes `.1` of it, the namespace end `.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct EgressSlot(u16);

impl EgressSlot {
    /// How many /30s `169.254.0.0/16` holds.
    pub const COUNT: u16 = 16384;
    /// The prefix length on both ends.
    pub const LEN: u8 = 30;

    /// The lowest slot not in `used`.
    pub fn first_free(used: &BTreeSet<EgressSlot>) -> Option<EgressSlot> {
        (0..Self::COUNT)
            .map(EgressSlot)
            .find(|slot| !used.contains(slot))
    }

    fn base(self) -> u32 {
        u32::from(Ipv4Addr::new(169, 254, 0, 0)) + 4 * u32::from(self.0)
    }

    /// The host end's address.
    pub fn host(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }

    /// The namespace end's address.
    pub fn inside(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 2)
    }
}

impl TryFrom<u16> for EgressSlot {
    type Error = String;
    fn try_from(n: u16) -> Result<Self, String> {
        if n < Self::COUNT {
            Ok(Self(n))
        } else {
            Err(format!("egress slot {n} is not below {}", Self::COUNT))
        }
    }
}

impl From<EgressSlot> for u16 {
    fn from(slot: EgressSlot) -> u16 {
        slot.0
    }
}

/// A workload on the network's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub name: WorkloadName,
    pub kind: AttachKind,
    pub address: Ipv4Addr,
}

impl Attachment {
    /// The interface the workload runtime takes: `v-<name>` in the host
    /// namespace for a veth, `t-<name>` inside the network's namespace for
    /// a tap.
    pub fn interface(&self) -> String {
        match self.kind {
            AttachKind::Veth => self.name.veth(),
            AttachKind::Tap => self.name.tap(),
            AttachKind::Namespace => WORKLOAD_IFNAME.to_owned(),
        }
    }
}

/// The interface's name inside a workload's own namespace.
pub const WORKLOAD_IFNAME: &str = "eth0";

/// A tenant network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub spec: NetworkSpec,
    pub slot: EgressSlot,
    pub attachments: Vec<Attachment>,
}

impl Network {
    pub fn netid(&self) -> &NetId {
        &self.spec.netid
    }

    /// The routes out of `w-<netid>`: the tenant's range, and every peer's
    /// allowed IPs outside it (access peers' own addresses), from the
    /// bridge's address so replies come back over WireGuard.
    pub fn wireguard_routes(&self) -> Vec<Route> {
        let source = Some(self.spec.gateway());
        let mut dests: BTreeSet<Ipv4Prefix> = BTreeSet::from([self.spec.ip_range]);
        for peer in &self.spec.peers {
            for prefix in &peer.allowed_ips {
                if !self.spec.ip_range.covers(prefix) {
                    dests.insert(*prefix);
                }
            }
        }
        dests
            .into_iter()
            .map(|dest| Route {
                dest,
                gateway: None,
                source,
            })
            .collect()
    }

    /// The WireGuard peers.
    pub fn peers(&self) -> BTreeMap<PublicKey, PeerConfig> {
        self.spec
            .peers
            .iter()
            .map(|p| {
                let config = PeerConfig {
                    key: p.key,
                    endpoint: p.endpoint,
                    keepalive: None,
                    allowed_ips: p
                        .allowed_ips
                        .iter()
                        .map(|a| Cidr {
                            addr: a.network().into(),
                            len: a.prefix_len(),
                        })
                        .collect(),
                };
                (p.key, config)
            })
            .collect()
    }

    /// The lowest address of the subnet that neither the bridge nor a
    /// workload holds (`.2` to `.254`).
    pub fn next_address(&self) -> Option<Ipv4Addr> {
        let taken: BTreeSet<Ipv4Addr> = self.attachments.iter().map(|a| a.address).collect();
        (2..255)
            .filter_map(|n| self.spec.subnet.host(n))
            .find(|ip| !taken.contains(ip))
    }

    /// Whether `ip` may be given to a workload: a host address of the
    /// subnet other than the gateway (`.1`); `Err` says why not.
    pub fn check_address(&self, ip: Ipv4Addr) -> Result<(), String> {
        let subnet = self.spec.subnet;
        let host = (2..255).filter_map(|n| subnet.host(n)).any(|h| h == ip);
        if !host {
            return Err(format!(
                "{ip} is not a workload address of subnet {subnet} (.2 to .254; .1 is the gateway)"
            ));
        }
        match self.attachments.iter().find(|a| a.address == ip) {
            Some(other) => Err(format!("{ip} is the address of workload {}", other.name)),
            None => Ok(()),
        }
    }

    pub fn attachment(&self, name: &WorkloadName) -> Option<&Attachment> {
        self.attachments.iter().find(|a| &a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::input::{NetworkRequest, PeerRequest, parse_network};

    fn network() -> Network {
        let spec = parse_network(&NetworkRequest {
            netid: "net1".to_owned(),
            ip_range: "10.1.0.0/16".to_owned(),
            subnet: "10.1.1.0/24".to_owned(),
            private_key: base64::encode([9u8; 32]),
            listen_port: 7001,
            peers: vec![
                PeerRequest {
                    public_key: base64::encode([1u8; 32]),
                    endpoint: Some("10.77.0.11:7001".to_owned()),
                    allowed_ips: vec!["10.1.2.0/24".to_owned(), "100.64.1.2/32".to_owned()],
                },
                PeerRequest {
                    public_key: base64::encode([2u8; 32]),
                    endpoint: None,
                    allowed_ips: vec!["10.1.200.2/32".to_owned()],
                },
            ],
        })
        .expect("valid");
        Network {
            spec,
            slot: EgressSlot(3),
            attachments: Vec::new(),
        }
    }

    #[test]
    fn egress_slots_are_distinct_slash_30s() {
        assert_eq!(EgressSlot(0).host().to_string(), "169.254.0.1");
        assert_eq!(EgressSlot(0).inside().to_string(), "169.254.0.2");
        assert_eq!(EgressSlot(64).host().to_string(), "169.254.1.1");
        assert_eq!(
            EgressSlot(EgressSlot::COUNT - 1).inside().to_string(),
            "169.254.255.254"
        );
        let used = BTreeSet::from([EgressSlot(0), EgressSlot(2)]);
        assert_eq!(EgressSlot::first_free(&used), Some(EgressSlot(1)));
        assert!(EgressSlot::try_from(EgressSlot::COUNT).is_err());
    }

    #[test]
    fn routes_cover_the_range_and_access_peers_outside_it() {
        let routes: Vec<String> = network()
            .wireguard_routes()
            .iter()
            .map(|r| format!("{} src {:?}", r.dest, r.source))
            .collect();
        assert_eq!(
            routes,
            [
                "10.1.0.0/16 src Some(10.1.1.1)",
                "100.64.1.2/32 src Some(10.1.1.1)"
            ]
        );
    }

    #[test]
    fn peers_carry_their_endpoint_and_allowed_ips() {
        let peers = network().peers();
        assert_eq!(peers.len(), 2);
        let first = peers.values().find(|p| p.endpoint.is_some()).expect("one");
        let ips: Vec<String> = first.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["10.1.2.0/24", "100.64.1.2/32"]);
        assert_eq!(first.keepalive, None);
    }

    #[test]
    fn addresses_are_handed_out_lowest_first() {
        let mut net = network();
        assert_eq!(
            net.next_address().map(|a| a.to_string()).as_deref(),
            Some("10.1.1.2")
        );
        for n in 2..255 {
            net.attachments.push(Attachment {
                name: format!("w{n}").parse().expect("name"),
                kind: AttachKind::Veth,
                address: Ipv4Addr::new(10, 1, 1, n),
            });
        }
        assert_eq!(net.next_address(), None);
        net.attachments.remove(10);
        assert_eq!(net.next_address(), Some(Ipv4Addr::new(10, 1, 1, 12)));
    }
}
