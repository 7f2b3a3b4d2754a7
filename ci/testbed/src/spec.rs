//! What a farm should look like: LANs, nodes, NICs, disks, daemon configs.
//!
//! Plain data with `Default`s and small builder helpers, checked whole by
//! [`FarmSpec::validate`] before the testbed touches the host, so a bad
//! spec fails with a reason instead of half a farm. A LAN may sit behind
//! a NAT router onto LAN 0 ([`LanSpec::behind_nat`]). Limits: at most
//! [`MAX_NODES`] nodes (static addresses `.10`–`.99` stay below the DHCP
//! range), [`MAX_LANS`] LANs and [`MAX_NICS`] NICs per node.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Most nodes in one farm.
pub const MAX_NODES: usize = 90;
/// Most LANs in one farm.
pub const MAX_LANS: usize = 8;
/// Most NICs on one node.
pub const MAX_NICS: usize = 10;

/// The kernel command line a node gets unless its spec says otherwise.
pub const DEFAULT_CMDLINE: &str = "grove.farm=1";

/// A spec that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("a farm needs at least one LAN")]
    NoLans,
    #[error("{count} LANs requested, at most {MAX_LANS} supported")]
    TooManyLans { count: usize },
    #[error("{count} nodes requested, at most {MAX_NODES} supported")]
    TooManyNodes { count: usize },
    #[error("node {node} has {count} NICs, at most {MAX_NICS} supported")]
    TooManyNics { node: usize, count: usize },
    #[error("node {node} NIC {nic} plugs into LAN {lan}, but the farm has {lans} LANs")]
    NoSuchLan {
        node: usize,
        nic: usize,
        lan: usize,
        lans: usize,
    },
    #[error("node {node} wants static addressing but has no NIC on LAN 0 or on a LAN behind NAT")]
    StaticWithoutFirstLan { node: usize },
    #[error("LAN 0 cannot sit behind NAT: it is the LAN the NAT leads to")]
    NatOnFirstLan,
    #[error("LAN {lan} sits behind NAT and cannot also run dnsmasq")]
    NatWithDhcp { lan: usize },
    #[error("node {node} disk {disk} has size 0")]
    EmptyDisk { node: usize, disk: usize },
}

/// The Grove daemons a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Daemon {
    Agent,
    Netd,
    Storaged,
    Provisiond,
}

impl Daemon {
    pub const ALL: [Daemon; 4] = [
        Daemon::Agent,
        Daemon::Netd,
        Daemon::Storaged,
        Daemon::Provisiond,
    ];

    /// The binary and process name.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Agent => "agent",
            Daemon::Netd => "netd",
            Daemon::Storaged => "storaged",
            Daemon::Provisiond => "provisiond",
        }
    }

    /// Its config file's name inside `/etc/grove`.
    pub fn config_file(self) -> String {
        format!("{}.toml", self.name())
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The whole farm.
#[derive(Debug, Clone)]
pub struct FarmSpec {
    /// LAN 0 is the farm LAN the host reaches; more LANs are extra
    /// segments.
    pub lans: Vec<LanSpec>,
    pub nodes: Vec<NodeSpec>,
    /// Start each node's agent at once (needs the workspace binaries).
    pub start_agents: bool,
    /// Where `agent` and the daemons are; see [`crate::bin_dir`] when unset.
    pub bin_dir: Option<PathBuf>,
}

impl Default for FarmSpec {
    fn default() -> FarmSpec {
        FarmSpec {
            lans: vec![LanSpec::default()],
            nodes: vec![NodeSpec::default()],
            start_agents: true,
            bin_dir: None,
        }
    }
}

impl FarmSpec {
    /// A farm of `count` default nodes on one DHCP LAN.
    pub fn nodes(count: usize) -> FarmSpec {
        FarmSpec::with_nodes(vec![NodeSpec::default(); count])
    }

    /// A farm of these nodes on one DHCP LAN.
    pub fn with_nodes(nodes: Vec<NodeSpec>) -> FarmSpec {
        FarmSpec {
            nodes,
            ..FarmSpec::default()
        }
    }

    /// Adds one more LAN (it becomes LAN `lans.len()`).
    pub fn lan(mut self, lan: LanSpec) -> FarmSpec {
        self.lans.push(lan);
        self
    }

    /// Builds the farm without starting any agent.
    pub fn without_agents(mut self) -> FarmSpec {
        self.start_agents = false;
        self
    }

    /// Takes `agent` and the daemons from `dir`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> FarmSpec {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Checks the spec as a whole.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.lans.is_empty() {
            return Err(SpecError::NoLans);
        }
        if self.lans.len() > MAX_LANS {
            return Err(SpecError::TooManyLans {
                count: self.lans.len(),
            });
        }
        if self.lans[0].nat {
            return Err(SpecError::NatOnFirstLan);
        }
        if let Some(lan) = self.lans.iter().position(|l| l.nat && l.dhcp) {
            return Err(SpecError::NatWithDhcp { lan });
        }
        if self.nodes.len() > MAX_NODES {
            return Err(SpecError::TooManyNodes {
                count: self.nodes.len(),
            });
        }
        for (node, spec) in self.nodes.iter().enumerate() {
            if spec.nics.len() > MAX_NICS {
                return Err(SpecError::TooManyNics {
                    node,
                    count: spec.nics.len(),
                });
            }
            for (nic, n) in spec.nics.iter().enumerate() {
                if n.lan >= self.lans.len() {
                    return Err(SpecError::NoSuchLan {
                        node,
                        nic,
                        lan: n.lan,
                        lans: self.lans.len(),
                    });
                }
            }
            let home = |n: &NicSpec| n.lan == 0 || self.lans[n.lan].nat;
            if spec.addressing == Addressing::Static && !spec.nics.iter().any(home) {
                return Err(SpecError::StaticWithoutFirstLan { node });
            }
            if let Some(disk) = spec.disks.iter().position(|d| d.size_mb == 0) {
                return Err(SpecError::EmptyDisk { node, disk });
            }
        }
        Ok(())
    }
}

/// One LAN: a bridge in the LAN namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanSpec {
    /// Run dnsmasq (DHCP and DNS) on this LAN.
    pub dhcp: bool,
    /// The LAN sits behind a NAT router onto LAN 0: its nodes reach LAN 0
    /// (masqueraded), nothing on LAN 0 reaches them, and the host has no
    /// link onto it.
    pub nat: bool,
    /// How long dnsmasq's leases last (dnsmasq's minimum is 120 s).
    pub lease_secs: u32,
    /// DHCP names `.253`, an address nobody holds, as the router: the
    /// LAN's default route leads nowhere, as on a farm LAN without a way
    /// out.
    pub router_nowhere: bool,
}

impl Default for LanSpec {
    fn default() -> LanSpec {
        LanSpec {
            dhcp: true,
            nat: false,
            lease_secs: 12 * 3600,
            router_nowhere: false,
        }
    }
}

impl LanSpec {
    /// A LAN nobody hands out addresses on.
    pub fn without_dhcp() -> LanSpec {
        LanSpec {
            dhcp: false,
            ..LanSpec::default()
        }
    }

    /// The same LAN with leases of `secs` seconds.
    pub fn lease_secs(mut self, secs: u32) -> LanSpec {
        self.lease_secs = secs;
        self
    }

    /// The same LAN with a default route that leads nowhere.
    pub fn router_nowhere(mut self) -> LanSpec {
        self.router_nowhere = true;
        self
    }

    /// A LAN behind a NAT router onto LAN 0 (outbound only), without DHCP:
    /// its nodes use static addressing, with the router as gateway.
    pub fn behind_nat() -> LanSpec {
        LanSpec {
            dhcp: false,
            nat: true,
            ..LanSpec::default()
        }
    }
}

/// How a node's NICs get addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Addressing {
    /// The testbed puts `<subnet>.<10+i>/24` on the node's first NIC on LAN
    /// 0 (else on its first NIC on a LAN behind NAT), brings every NIC up
    /// and adds a default route via `<subnet>.1`.
    #[default]
    Static,
    /// NICs stay down and unaddressed: the node's own netd must do it.
    None,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// NIC `k` becomes `eth<k>` inside the node.
    pub nics: Vec<NicSpec>,
    /// Disk `j` becomes a loop device backed by `disk<j>.img`.
    pub disks: Vec<DiskSpec>,
    pub addressing: Addressing,
    /// Text of `/etc/grove/cmdline`.
    pub cmdline: String,
    /// Extra config per daemon. For [`Daemon::Agent`] the text is appended
    /// to the testbed's `[api]` section; the others become
    /// `/etc/grove/<daemon>.toml` as given.
    pub configs: BTreeMap<Daemon, String>,
}

impl Default for NodeSpec {
    fn default() -> NodeSpec {
        NodeSpec {
            nics: vec![NicSpec::default()],
            disks: Vec::new(),
            addressing: Addressing::Static,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            configs: BTreeMap::new(),
        }
    }
}

impl NodeSpec {
    pub fn nics(mut self, nics: Vec<NicSpec>) -> NodeSpec {
        self.nics = nics;
        self
    }

    pub fn disks(mut self, disks: Vec<DiskSpec>) -> NodeSpec {
        self.disks = disks;
        self
    }

    pub fn disk(mut self, disk: DiskSpec) -> NodeSpec {
        self.disks.push(disk);
        self
    }

    pub fn addressing(mut self, addressing: Addressing) -> NodeSpec {
        self.addressing = addressing;
        self
    }

    pub fn cmdline(mut self, cmdline: impl Into<String>) -> NodeSpec {
        self.cmdline = cmdline.into();
        self
    }

    pub fn config(mut self, daemon: Daemon, text: impl Into<String>) -> NodeSpec {
        self.configs.insert(daemon, text.into());
        self
    }
}

/// One NIC: a veth pair from the node to a LAN bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicSpec {
    /// Index into [`FarmSpec::lans`].
    pub lan: usize,
    /// False keeps the LAN end down, so the node sees NO-CARRIER.
    pub carrier: bool,
    /// The switch port carries the LAN tagged with this VLAN id only: the
    /// node reaches the LAN through a VLAN link, untagged frames are lost.
    pub vlan: Option<u16>,
}

impl Default for NicSpec {
    fn default() -> NicSpec {
        NicSpec {
            lan: 0,
            carrier: true,
            vlan: None,
        }
    }
}

impl NicSpec {
    /// A NIC with carrier plugged into LAN `lan`.
    pub fn on_lan(lan: usize) -> NicSpec {
        NicSpec {
            lan,
            ..NicSpec::default()
        }
    }

    /// The same NIC on a port that carries the LAN tagged with `id`.
    pub fn tagged(mut self, id: u16) -> NicSpec {
        self.vlan = Some(id);
        self
    }

    /// The same NIC with its cable pulled.
    pub fn without_carrier(mut self) -> NicSpec {
        self.carrier = false;
        self
    }
}

/// One disk: a sparse file on a loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpec {
    pub size_mb: u64,
    /// What `/sys/block/<dev>/queue/rotational` says.
    pub rotational: bool,
}

impl Default for DiskSpec {
    fn default() -> DiskSpec {
        DiskSpec::ssd(1024)
    }
}

impl DiskSpec {
    pub fn ssd(size_mb: u64) -> DiskSpec {
        DiskSpec {
            size_mb,
            rotational: false,
        }
    }

    pub fn hdd(size_mb: u64) -> DiskSpec {
        DiskSpec {
            size_mb,
            rotational: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(FarmSpec::default().validate(), Ok(()));
        assert_eq!(FarmSpec::nodes(3).validate(), Ok(()));
        assert_eq!(FarmSpec::nodes(3).nodes.len(), 3);
    }

    #[test]
    fn bad_specs_say_why() {
        let two_lans = || FarmSpec::default().lan(LanSpec::without_dhcp());
        let node = |n: NodeSpec| FarmSpec::with_nodes(vec![n]);
        let cases: Vec<(FarmSpec, SpecError)> = vec![
            (
                FarmSpec {
                    lans: vec![],
                    ..FarmSpec::default()
                },
                SpecError::NoLans,
            ),
            (
                FarmSpec {
                    lans: vec![LanSpec::default(); 9],
                    ..FarmSpec::default()
                },
                SpecError::TooManyLans { count: 9 },
            ),
            (FarmSpec::nodes(91), SpecError::TooManyNodes { count: 91 }),
            (
                node(NodeSpec::default().nics(vec![NicSpec::default(); 11])),
                SpecError::TooManyNics { node: 0, count: 11 },
            ),
            (
                node(NodeSpec::default().nics(vec![NicSpec::default(), NicSpec::on_lan(1)])),
                SpecError::NoSuchLan {
                    node: 0,
                    nic: 1,
                    lan: 1,
                    lans: 1,
                },
            ),
            (
                FarmSpec {
                    nodes: vec![NodeSpec::default().nics(vec![NicSpec::on_lan(1)])],
                    ..two_lans()
                },
                SpecError::StaticWithoutFirstLan { node: 0 },
            ),
            (
                node(NodeSpec::default().nics(vec![])),
                SpecError::StaticWithoutFirstLan { node: 0 },
            ),
            (
                node(
                    NodeSpec::default()
                        .disk(DiskSpec::ssd(10))
                        .disk(DiskSpec::hdd(0)),
                ),
                SpecError::EmptyDisk { node: 0, disk: 1 },
            ),
            (
                FarmSpec {
                    lans: vec![LanSpec::behind_nat()],
                    ..FarmSpec::default()
                },
                SpecError::NatOnFirstLan,
            ),
            (
                FarmSpec::default().lan(LanSpec {
                    dhcp: true,
                    nat: true,
                    ..LanSpec::default()
                }),
                SpecError::NatWithDhcp { lan: 1 },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.validate(), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn static_nodes_may_sit_behind_nat_only() {
        let spec = FarmSpec::with_nodes(vec![NodeSpec::default().nics(vec![NicSpec::on_lan(1)])])
            .lan(LanSpec::behind_nat());
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn unaddressed_nodes_may_sit_on_extra_lans_only() {
        let spec = FarmSpec::with_nodes(vec![
            NodeSpec::default()
                .addressing(Addressing::None)
                .nics(vec![NicSpec::on_lan(1)]),
        ])
        .lan(LanSpec::without_dhcp());
        assert_eq!(spec.validate(), Ok(()));
    }
}
