//! Running a node: starting, stopping and killing its agent, waiting for
//! its API, and running commands inside it.
//!
//! The agent `Child` lives behind a mutex in the [`Node`], so all of this
//! works through `&Node` from any test thread; stopping and killing hunt
//! every process in the node's network and mount namespaces and the agent's
//! descendants, keeping the mount namespace open meanwhile so its identity
//! cannot be reused. Limits: `exec` needs a running agent (it enters the
//! agent's namespaces), and a stop waits at most [`STOP_GRACE`].

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Output};
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bins;
use crate::cmd;
use crate::netns;
use crate::proc::{self, NsId, ProcError, ProcId};
use crate::spec::Daemon;
use crate::wait::wait_until;

use super::{API_PORT, KILL_TIMEOUT, Node, NodeError, STOP_GRACE, agent};

/// The agent process and what is needed to clean up after it.
#[derive(Debug, Default)]
pub(super) struct AgentState {
    child: Option<Child>,
    id: Option<ProcId>,
    /// The agent's mount namespace, held open so its identity cannot be
    /// reused by another namespace while leftovers are hunted.
    mnt: Option<(File, NsId)>,
    exit: Option<ExitStatus>,
}

impl AgentState {
    /// Notices an agent that exited on its own.
    fn refresh(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit = Some(status);
            self.child = None;
        }
    }
}

impl Node {
    fn state(&self) -> MutexGuard<'_, AgentState> {
        self.agent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's pid while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        let mut state = self.state();
        state.refresh();
        state.child.as_ref().map(Child::id)
    }

    /// How the agent last ended, if it has since it was last started.
    pub fn agent_exit(&self) -> Option<ExitStatus> {
        let mut state = self.state();
        state.refresh();
        state.exit
    }

    /// The host path of `daemon`'s control socket inside the node:
    /// `/proc/<agent pid>/root/run/grove/<daemon>.sock`.
    pub fn socket(&self, daemon: Daemon) -> Result<PathBuf, NodeError> {
        let pid = self.running_pid()?;
        Ok(PathBuf::from(format!(
            "/proc/{pid}/root/run/grove/{}.sock",
            daemon.name()
        )))
    }

    fn running_pid(&self) -> Result<u32, NodeError> {
        self.agent_pid().ok_or_else(|| NodeError::AgentNotRunning {
            node: self.name.clone(),
        })
    }

    /// Runs `argv` inside the node's mount and network namespaces (those of
    /// its agent). The output is returned whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, NodeError> {
        let pid = self.running_pid()?.to_string();
        let mut args = vec!["-t", pid.as_str(), "-m", "-n", "--"];
        args.extend_from_slice(argv);
        cmd::output("nsenter", &args).map_err(|source| NodeError::Exec {
            node: self.name.clone(),
            source: Box::new(source),
        })
    }

    /// [`Node::exec`], read as whether it succeeded and its stdout followed
    /// by its stderr.
    pub fn exec_text(&self, argv: &[&str]) -> Result<(bool, String), NodeError> {
        let out = self.exec(argv)?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// Runs `argv` in the node's network namespace only (`ip netns exec`),
    /// with the host's filesystem. Works without an agent.
    pub fn exec_in_netns(&self, argv: &[&str]) -> Result<Output, NodeError> {
        let mut args = vec!["netns", "exec", self.netns.as_str()];
        args.extend_from_slice(argv);
        cmd::output("ip", &args).map_err(|source| NodeError::Exec {
            node: self.name.clone(),
            source: Box::new(source),
        })
    }

    /// Runs `f` on a thread inside the node's network namespace (sockets it
    /// opens belong to the node). Works without an agent.
    pub fn in_netns<T, F>(&self, f: F) -> Result<T, NodeError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        netns::run_in(&self.netns, f).map_err(|source| NodeError::Netns {
            node: self.name.clone(),
            source: Box::new(source),
        })
    }

    /// Waits until the agent's operator API accepts connections, checked
    /// from inside the node on `127.0.0.1:8080`, so it works whatever the
    /// addressing. Fails at once if the agent exits.
    pub fn wait_api(&self, timeout: Duration) -> Result<(), NodeError> {
        let api = SocketAddr::from((Ipv4Addr::LOCALHOST, API_PORT));
        let up = wait_until(timeout, Duration::from_millis(20), || {
            self.agent_pid().is_none()
                || self
                    .in_netns(|| TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_ok())
                    .unwrap_or(false)
        });
        if let Some(status) = self.agent_exit() {
            return Err(NodeError::AgentExited {
                node: self.name.clone(),
                status,
                log: self.agent_log(),
            });
        }
        if !up {
            return Err(NodeError::ApiTimeout {
                node: self.name.clone(),
                waited: timeout,
                log: self.agent_log(),
            });
        }
        self.running_pid().map(drop)
    }

    /// Boots the node in farm 1 on the embedded registry at `url`: the
    /// kernel command line says so, the agent starts, and its operator API
    /// answers within 30 s.
    pub fn boot_on_registry(&self, url: &str) -> Result<(), NodeError> {
        self.set_cmdline(&format!(
            "grove.farm=1 grove.chain=embedded grove.chain.url={url}"
        ))?;
        self.start_agent()?;
        self.wait_api(Duration::from_secs(30))
    }

    /// Starts the agent: a boot with fresh `/run`, `/var/cache` and `/mnt`.
    pub fn start_agent(&self) -> Result<(), NodeError> {
        let mut state = self.state();
        state.refresh();
        if let Some(child) = &state.child {
            return Err(NodeError::AgentRunning {
                node: self.name.clone(),
                pid: child.id(),
            });
        }
        let bin_dir = match &self.bin_dir {
            Some(dir) => bins::check(dir).map(|()| dir.clone()),
            None => bins::bin_dir(),
        }
        .map_err(|source| NodeError::Bins {
            node: self.name.clone(),
            source: Box::new(source),
        })?;
        let child = agent::spawn(
            &self.netns,
            &self.name,
            &bin_dir,
            self.config.path(),
            &self.agent_log(),
        )
        .map_err(|source| NodeError::Agent {
            node: self.name.clone(),
            source: Box::new(source),
        })?;
        let pid = child.id();
        state.id = ProcId::of(pid);
        state.mnt = File::open(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .and_then(|f| proc::ns_of(pid, "mnt").map(|id| (f, id)));
        state.child = Some(child);
        state.exit = None;
        Ok(())
    }

    /// A clean shutdown: SIGTERM to the agent, up to [`STOP_GRACE`] for it
    /// to exit, then SIGKILL; then every process left in the node dies.
    pub fn stop_agent(&self) -> Result<(), NodeError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let mut tree = Vec::new();
        if let (Some(child), Some(id)) = (&mut state.child, state.id) {
            tree = proc::descendants(child.id());
            proc::signal(id, Signal::SIGTERM).map_err(|source| self.kill_error(source))?;
            wait_until(STOP_GRACE, Duration::from_millis(50), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
        }
        self.kill_all(state, tree)
    }

    /// Power loss: SIGKILL to the agent and every process in the node at
    /// once.
    pub fn kill_agent(&self) -> Result<(), NodeError> {
        let mut state = self.state();
        self.kill_all(&mut state, Vec::new())
    }

    /// The agent alone dies by SIGKILL, as when it crashes, and is reaped;
    /// nothing else in the node is touched, so its daemons meet whatever
    /// the agent arranged for its death.
    pub fn kill_agent_alone(&self) -> Result<(), NodeError> {
        let mut state = self.state();
        state.refresh();
        if let Some(id) = state.id {
            proc::signal(id, Signal::SIGKILL).map_err(|source| self.kill_error(source))?;
        }
        self.reap(&mut state)?;
        Ok(())
    }

    /// The processes in the node's network namespace that run `daemon`'s
    /// binary, zombies excepted.
    pub fn daemon_pids(&self, daemon: Daemon) -> Vec<u32> {
        netns::pids(&self.netns)
            .into_iter()
            .filter(|p| p.is_alive())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{}/exe", p.pid)).is_ok_and(|exe| {
                    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.as_deref().map(|n| n.trim_end_matches(" (deleted)")) == Some(daemon.name())
                })
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Waits for the agent process, if this node started one, and forgets
    /// it.
    fn reap(&self, state: &mut AgentState) -> Result<(), NodeError> {
        if let Some(mut child) = state.child.take() {
            let status = child.wait().map_err(|source| NodeError::Reap {
                node: self.name.clone(),
                source,
            })?;
            state.exit = Some(status);
        }
        state.id = None;
        Ok(())
    }

    /// Kills the agent, `tree` and everything in the node's namespaces, then
    /// reaps the agent and lets go of its mount namespace.
    fn kill_all(&self, state: &mut AgentState, mut tree: Vec<ProcId>) -> Result<(), NodeError> {
        if let Some(child) = &state.child {
            tree.extend(proc::descendants(child.id()));
        }
        tree.extend(state.id);
        let mnt = state.mnt.as_ref().map(|(_, id)| *id);
        let what = format!("processes of node {}", self.name);
        let killed = proc::kill_until_gone(&what, KILL_TIMEOUT, || {
            let mut all = netns::pids(&self.netns);
            if let Some(id) = mnt {
                all.extend(proc::in_ns("mnt", id));
            }
            for p in &tree {
                all.extend(proc::descendants(p.pid));
            }
            all.extend(tree.iter().copied());
            all
        });
        self.reap(state)?;
        state.mnt = None;
        killed.map_err(|source| self.kill_error(source))
    }

    fn kill_error(&self, source: ProcError) -> NodeError {
        NodeError::Kill {
            node: self.name.clone(),
            source: Box::new(source),
        }
    }
}
