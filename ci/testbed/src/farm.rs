//! A farm: LANs and nodes brought up together from a [`FarmSpec`] and torn
//! down together, also when a test panics.
//!
//! `Farm::start` validates the spec, reserves a run directory, claims
//! subnets under the host-wide lock, then builds LANs, dnsmasq, nodes and
//! agents; whatever it created is owned by the `Farm` value from the first
//! step, so a failure halfway drops a farm that tears itself down.
//! Teardown reaps its own children and then sweeps everything named after
//! the run id. Limits: needs root, and a panic while the process is
//! aborting (not unwinding) leaves the cleaning to [`crate::clean_stale`].

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::bins::{self, BinError};
use crate::lan::{Lan, LanError};
use crate::netns::{self, NetnsError};
use crate::node::{API_TIMEOUT, Node, NodeError, Placement};
use crate::run::{RunDir, RunError};
use crate::spec::{Daemon, FarmSpec, SpecError};
use crate::subnet::{Subnet, SubnetError, SubnetLock};
use crate::sweep::{self, SweepError};

/// Lines of each log shown when a farm is dropped during a panic.
const LOG_TAIL: usize = 40;

/// Starting or tearing down a farm failed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("the testbed needs root (namespaces, veths, loop devices, mounts)")]
    NotRoot,
    #[error("invalid farm spec")]
    Spec(#[from] SpecError),
    #[error("daemon binaries")]
    Bins(#[from] BinError),
    #[error("run directory")]
    Run(#[from] RunError),
    #[error("LAN subnets")]
    Subnet(#[from] SubnetError),
    #[error("LAN namespace")]
    Netns(#[from] NetnsError),
    #[error("LAN")]
    Lan(#[from] LanError),
    #[error("node")]
    Node(#[from] NodeError),
    #[error("teardown of farm {run} was not clean: {}", describe(.problems))]
    Teardown {
        run: String,
        problems: Vec<TeardownProblem>,
    },
}

/// One thing that went wrong in a teardown.
#[derive(Debug, thiserror::Error)]
pub enum TeardownProblem {
    #[error("stopping a node")]
    Node(#[source] NodeError),
    #[error("stopping dnsmasq")]
    Lan(#[source] LanError),
    #[error("sweeping")]
    Sweep(#[source] SweepError),
    #[error("still on the host: {0}")]
    Leftover(String),
}

fn describe(problems: &[TeardownProblem]) -> String {
    crate::report_all(problems)
}

/// A running farm.
#[derive(Debug)]
pub struct Farm {
    run: RunDir,
    lans: Vec<Lan>,
    nodes: Vec<Node>,
    torn_down: bool,
}

impl Farm {
    /// The suites' way in: [`Farm::start`], run as root, or a panic that
    /// says why not with the whole chain of causes.
    pub fn start_for_test(spec: FarmSpec) -> Farm {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
        );
        Farm::start(spec).unwrap_or_else(|e| panic!("farm did not start: {}", crate::report(&e)))
    }

    /// [`Farm::start_for_test`], then every node's `daemon` answering
    /// `GET path` within a minute, or a panic with the farm's logs.
    pub fn start_answering(spec: FarmSpec, daemon: Daemon, path: &str) -> Farm {
        let farm = Farm::start_for_test(spec);
        for node in farm.nodes() {
            let up = node.wait_answers(daemon, path, Duration::from_secs(60));
            assert!(
                up,
                "{daemon} of {} never answered {path}\n{}",
                node.name(),
                farm.logs(40)
            );
        }
        farm
    }

    /// Builds the farm `spec` describes and, unless told not to, starts
    /// every node's agent and waits until each operator API accepts
    /// connections.
    pub fn start(spec: FarmSpec) -> Result<Farm, TestbedError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(TestbedError::NotRoot);
        }
        spec.validate()?;
        let bin_dir = match (&spec.bin_dir, spec.start_agents) {
            (Some(dir), true) => {
                bins::check(dir)?;
                Some(dir.clone())
            }
            (None, true) => Some(bins::bin_dir()?),
            (dir, false) => dir.clone(),
        };
        let mut farm = Farm {
            run: RunDir::create()?,
            lans: Vec::new(),
            nodes: Vec::new(),
            torn_down: false,
        };
        if let Err(e) = farm.build(&spec, bin_dir) {
            eprintln!(
                "grove-testbed: farm {} failed to start: {}\n{}",
                farm.run_id(),
                crate::report(&e),
                farm.logs(LOG_TAIL)
            );
            return Err(e);
        }
        Ok(farm)
    }

    fn build(
        &mut self,
        spec: &FarmSpec,
        bin_dir: Option<std::path::PathBuf>,
    ) -> Result<(), TestbedError> {
        let run = self.run.id().clone();
        {
            let lock = SubnetLock::acquire()?;
            let subnets = lock.allocate(spec.lans.len())?;
            netns::add(&run.lan_netns())?;
            for (index, (lan, subnet)) in spec.lans.iter().zip(subnets).enumerate() {
                let made = Lan::create(&run, index, *lan, subnet, self.run.path())?;
                self.lans.push(made);
            }
        }
        if let Some((first, rest)) = self.lans.split_first_mut() {
            for lan in rest {
                lan.start_nat(&run, (first.bridge(), first.subnet()))?;
            }
        }
        for lan in &mut self.lans {
            lan.start_dhcp()?;
        }
        for (index, node) in spec.nodes.iter().enumerate() {
            let at = Placement {
                run: &run,
                run_dir: self.run.path(),
                lans: &self.lans,
                bin_dir: bin_dir.clone(),
            };
            let made = Node::create(index, node, &at)?;
            self.nodes.push(made);
        }
        if spec.start_agents {
            for node in &self.nodes {
                node.start_agent()?;
            }
            for node in &self.nodes {
                node.wait_api(API_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// The 6-hex-digit id every name of this farm carries.
    pub fn run_id(&self) -> &str {
        self.run.id().as_str()
    }

    /// The farm's run directory on the host.
    pub fn dir(&self) -> &Path {
        self.run.path()
    }

    /// Node `index`.
    ///
    /// # Panics
    /// If the farm has no such node, like slice indexing.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// LAN `index`.
    ///
    /// # Panics
    /// If the farm has no such LAN, like slice indexing.
    pub fn lan(&self, index: usize) -> &Lan {
        &self.lans[index]
    }

    /// LAN `index`, to stop or start its DHCP server.
    pub fn lan_mut(&mut self, index: usize) -> &mut Lan {
        &mut self.lans[index]
    }

    pub fn lans(&self) -> &[Lan] {
        &self.lans
    }

    /// The subnet of LAN 0, the farm LAN.
    pub fn lan_subnet(&self) -> Subnet {
        self.lan(0).subnet()
    }

    /// The host's address on LAN 0.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.lan(0).host_ip()
    }

    /// The last `lines` lines of every agent and dnsmasq log, for a failure
    /// message.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        let files = self
            .nodes
            .iter()
            .map(Node::agent_log)
            .chain(self.lans.iter().filter(|l| l.dhcp()).map(Lan::dnsmasq_log));
        for file in files {
            if let Ok(text) = std::fs::read_to_string(&file) {
                out.push_str(&log_tail(&file, &text, lines));
            }
        }
        out
    }

    /// Kills every node's processes, stops dnsmasq, detaches the disks and
    /// removes links, namespaces and the run directory; then checks that
    /// nothing of the farm is left. Runs once; later calls return `Ok`.
    pub fn teardown(&mut self) -> Result<(), TestbedError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        for node in &self.nodes {
            if let Err(e) = node.kill_agent() {
                problems.push(TeardownProblem::Node(e));
            }
        }
        for lan in &mut self.lans {
            if let Err(e) = lan.stop_dhcp() {
                problems.push(TeardownProblem::Lan(e));
            }
        }
        let run = self.run.id();
        problems.extend(sweep::sweep(run).into_iter().map(TeardownProblem::Sweep));
        problems.extend(
            sweep::leftovers(run)
                .into_iter()
                .map(TeardownProblem::Leftover),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::Teardown {
                run: run.to_string(),
                problems,
            })
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "grove-testbed: farm {} dropped during a panic; its logs:\n{}",
                self.run_id(),
                self.logs(LOG_TAIL)
            );
        }
        if let Err(e) = self.teardown() {
            eprintln!("grove-testbed: {}", crate::report(&e));
        }
    }
}

/// The last `lines` lines of `text`, the log at `file`, under a heading
/// that names it: for failure messages.
pub fn log_tail(file: &std::path::Path, text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    let mut out = format!("---- {} (last {} lines)\n", file.display(), tail.len());
    for line in tail {
        out.push_str(line);
        out.push('\n');
    }
    out
}
