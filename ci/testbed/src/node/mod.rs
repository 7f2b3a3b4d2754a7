//! A simulated Grove node: a network namespace with NICs on the farm LANs,
//! loop-device disks, a config directory, and the agent process running in
//! the node's own mount namespace.
//!
//! The node owns its agent as a `Child` behind a mutex, so tests can stop,
//! kill and restart it through `&Node`; stopping or killing also kills
//! every other process in the node's network or mount namespace (and the
//! agent's descendants), so no daemon outlives its node. Limits: a process
//! that leaves both namespaces and is reparented away from the agent before
//! the node is stopped is not found.

pub mod agent;
pub mod config;
pub mod daemons;
mod lifecycle;
pub mod nic;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use crate::bins::BinError;
use crate::cmd::{self, CmdError};
use crate::disk::{Disk, DiskError};
use crate::lan::Lan;
use crate::netns::{self, NetnsError};
use crate::proc::ProcError;
use crate::run::RunId;
use crate::spec::{Addressing, Daemon, NodeSpec};
use crate::subnet::Subnet;

use self::agent::AgentError;
use self::config::{ConfigDir, ConfigError};
use self::lifecycle::AgentState;
use self::nic::{Nic, NicError};

/// How long `stop_agent` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long killing a node's processes may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The operator API port.
pub const API_PORT: u16 = 8080;
/// How long an agent may take to open its operator API.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: could not create {path}")]
    Dir {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: network namespace")]
    Netns {
        node: String,
        #[source]
        source: Box<NetnsError>,
    },
    #[error("node {node}: NIC")]
    Nic {
        node: String,
        #[source]
        source: Box<NicError>,
    },
    #[error("node {node} has no NIC {index}")]
    NoSuchNic { node: String, index: usize },
    #[error("node {node}: could not configure addresses")]
    Address {
        node: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error("node {node} has no address in {subnet} yet")]
    NoLanAddress { node: String, subnet: Subnet },
    #[error("node {node}: disk")]
    Disk {
        node: String,
        #[source]
        source: Box<DiskError>,
    },
    #[error("node {node}: configuration")]
    Config {
        node: String,
        #[source]
        source: Box<ConfigError>,
    },
    #[error("node {node}: no agent binary")]
    Bins {
        node: String,
        #[source]
        source: Box<BinError>,
    },
    #[error("node {node}: starting the agent")]
    Agent {
        node: String,
        #[source]
        source: Box<AgentError>,
    },
    #[error("node {node}: the agent is already running (pid {pid})")]
    AgentRunning { node: String, pid: u32 },
    #[error("node {node}: the agent is not running")]
    AgentNotRunning { node: String },
    #[error("node {node}: the agent exited ({status}); see {log}")]
    AgentExited {
        node: String,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error(
        "node {node}: the operator API did not accept connections within {waited:?}; see {log}"
    )]
    ApiTimeout {
        node: String,
        waited: Duration,
        log: PathBuf,
    },
    #[error("node {node}: could not signal or kill its processes")]
    Kill {
        node: String,
        #[source]
        source: Box<ProcError>,
    },
    #[error("node {node}: could not reap the agent")]
    Reap {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: could not run a command")]
    Exec {
        node: String,
        #[source]
        source: Box<CmdError>,
    },
    #[error(transparent)]
    Call(Box<daemons::CallError>),
    #[error("node {node}: could not read {path}")]
    Read {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {daemon} is not running")]
    DaemonDown { node: String, daemon: &'static str },
    #[error("node {node}: the agent did not restart {daemon} (pid {old} killed) within {within:?}")]
    NotRestarted {
        node: String,
        daemon: &'static str,
        old: u32,
        within: Duration,
    },
}

/// The farm-level facts a node is built from.
#[derive(Debug)]
pub(crate) struct Placement<'a> {
    pub run: &'a RunId,
    pub run_dir: &'a Path,
    pub lans: &'a [Lan],
    pub bin_dir: Option<PathBuf>,
}

/// One running node.
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    netns: String,
    dir: PathBuf,
    config: ConfigDir,
    nics: Vec<Nic>,
    disks: Vec<Disk>,
    addressing: Addressing,
    /// The LAN the node's address is on: LAN 0, or a LAN behind NAT for a
    /// node with no NIC on LAN 0.
    home_lan: usize,
    subnet: Subnet,
    bin_dir: Option<PathBuf>,
    agent: Mutex<AgentState>,
}

impl Node {
    /// Builds node `index`: directory, namespace, NICs, disks, config,
    /// addresses. Does not start the agent. Anything left behind by a failure is
    /// found by the farm's sweep through the run id.
    pub(crate) fn create(
        index: usize,
        spec: &NodeSpec,
        at: &Placement<'_>,
    ) -> Result<Node, NodeError> {
        let name = format!("n{index}");
        let dir = at.run_dir.join(&name);
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::Dir {
            node: name.clone(),
            path: dir.clone(),
            source,
        })?;
        let netns = at.run.node_netns(index);
        netns::add(&netns).map_err(|source| NodeError::Netns {
            node: name.clone(),
            source: Box::new(source),
        })?;
        let mut nics = Vec::with_capacity(spec.nics.len());
        for (k, nic) in spec.nics.iter().enumerate() {
            let lan = &at.lans[nic.lan];
            let made = Nic::create(at.run, index, k, *nic, &netns, lan).map_err(|source| {
                NodeError::Nic {
                    node: name.clone(),
                    source: Box::new(source),
                }
            })?;
            nics.push(made);
        }
        let mut disks = Vec::with_capacity(spec.disks.len());
        for (j, disk) in spec.disks.iter().enumerate() {
            let file = dir.join(format!("disk{j}.img"));
            let made = Disk::create(file, *disk).map_err(|source| NodeError::Disk {
                node: name.clone(),
                source: Box::new(source),
            })?;
            disks.push(made);
        }
        let devices = disks.iter().map(|d| d.path().to_owned()).collect();
        let config = ConfigDir::create(dir.join("etc"), spec, devices).map_err(|source| {
            NodeError::Config {
                node: name.clone(),
                source: Box::new(source),
            }
        })?;
        let home_lan = if spec.nics.iter().any(|n| n.lan == 0) {
            0
        } else {
            spec.nics
                .iter()
                .map(|n| n.lan)
                .find(|lan| at.lans[*lan].behind_nat())
                .unwrap_or(0)
        };
        let node = Node {
            index,
            name,
            netns,
            dir,
            config,
            nics,
            disks,
            addressing: spec.addressing,
            home_lan,
            subnet: at.lans[home_lan].subnet(),
            bin_dir: at.bin_dir.clone(),
            agent: Mutex::new(AgentState::default()),
        };
        node.configure_addresses()?;
        Ok(node)
    }

    /// With static addressing: every NIC up, `<subnet>.<10+i>/24` on the
    /// first NIC on the home LAN, default route via `<subnet>.1`.
    fn configure_addresses(&self) -> Result<(), NodeError> {
        let Some(ip) = self.static_ip() else {
            return Ok(());
        };
        let first =
            self.nics
                .iter()
                .find(|n| n.lan() == self.home_lan)
                .ok_or(NodeError::NoLanAddress {
                    node: self.name.clone(),
                    subnet: self.subnet,
                })?;
        let ns = self.netns.as_str();
        let cidr = format!("{ip}/24");
        let gateway = self.subnet.gateway().to_string();
        let mut steps: Vec<Vec<&str>> = self
            .nics
            .iter()
            .map(|n| vec!["-n", ns, "link", "set", n.name().as_str(), "up"])
            .collect();
        steps.push(vec![
            "-n",
            ns,
            "addr",
            "add",
            &cidr,
            "dev",
            first.name().as_str(),
        ]);
        steps.push(vec!["-n", ns, "route", "add", "default", "via", &gateway]);
        for args in steps {
            cmd::run("ip", &args).map_err(|source| NodeError::Address {
                node: self.name.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    fn static_ip(&self) -> Option<Ipv4Addr> {
        let last = u8::try_from(10 + self.index).ok()?;
        (self.addressing == Addressing::Static).then(|| self.subnet.host(last))
    }

    /// `n<i>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The node's network namespace, `gtb-<run>-n<i>`.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The node's directory on the host (`<run dir>/n<i>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host directory the node sees as `/etc/grove`.
    pub fn config_dir(&self) -> &Path {
        self.config.path()
    }

    /// Where the agent's stdout and stderr go.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }

    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// The node's address on its home LAN (LAN 0, or the LAN behind NAT it
    /// sits on): the static one, or whatever address in that subnet its
    /// NICs carry now (after DHCP).
    pub fn lan_ip(&self) -> Result<Ipv4Addr, NodeError> {
        if let Some(ip) = self.static_ip() {
            return Ok(ip);
        }
        let out =
            cmd::run("ip", &["-n", &self.netns, "-4", "-o", "addr", "show"]).map_err(|source| {
                NodeError::Exec {
                    node: self.name.clone(),
                    source: Box::new(source),
                }
            })?;
        out.split_whitespace()
            .filter_map(|word| word.split_once('/')?.0.parse::<Ipv4Addr>().ok())
            .find(|ip| self.subnet.contains(*ip))
            .ok_or(NodeError::NoLanAddress {
                node: self.name.clone(),
                subnet: self.subnet,
            })
    }

    /// `http://<lan ip>:8080`.
    pub fn api_url(&self) -> Result<String, NodeError> {
        Ok(format!("http://{}:{API_PORT}", self.lan_ip()?))
    }

    /// Replaces `/etc/grove/cmdline` (read by the agent at its next start).
    pub fn set_cmdline(&self, text: &str) -> Result<(), NodeError> {
        self.config
            .set_cmdline(text)
            .map_err(|source| NodeError::Config {
                node: self.name.clone(),
                source: Box::new(source),
            })
    }

    /// Replaces `/etc/grove/<daemon>.toml`; for the agent, `text` follows
    /// the testbed's `[api]` section.
    pub fn set_config(&self, daemon: Daemon, text: &str) -> Result<(), NodeError> {
        self.config
            .set_config(daemon, text)
            .map_err(|source| NodeError::Config {
                node: self.name.clone(),
                source: Box::new(source),
            })
    }

    /// Plugs or pulls the cable of NIC `index`.
    pub fn nic_set_carrier(&self, index: usize, carrier: bool) -> Result<(), NodeError> {
        let nic = self.nics.get(index).ok_or_else(|| NodeError::NoSuchNic {
            node: self.name.clone(),
            index,
        })?;
        nic.set_carrier(carrier).map_err(|source| NodeError::Nic {
            node: self.name.clone(),
            source: Box::new(source),
        })
    }
}
