//! A node's daemons as a test reaches them: typed calls to their sockets,
//! their pids as the agent reports them, killing one and waiting for the
//! agent to bring it back, and the processes that live in the node.
//!
//! Calls go through the node's socket paths (`/proc/<agent>/root/run/...`)
//! and answer the daemon's own API types; anything but a 2xx, or a body
//! that is not the type asked for, is an error naming the call. Limits:
//! pids come from the agent's `/v1/services`, so they need a running agent.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;

use super::{Node, NodeError};
use crate::http::unix_request;
use crate::proc::{self, ProcId};
use crate::spec::Daemon;
use crate::wait::wait_until;

/// A call to a node's daemon that failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {node}: {daemon} {method} {path}")]
    Http {
        node: String,
        daemon: &'static str,
        method: &'static str,
        path: String,
        #[source]
        source: crate::http::HttpError,
    },
    #[error("node {node}: {daemon} answered {method} {path} with {status}: {body}")]
    Refused {
        node: String,
        daemon: &'static str,
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error(
        "node {node}: {daemon} answered {method} {path} with what is not the type asked for: {body}"
    )]
    Answer {
        node: String,
        daemon: &'static str,
        method: &'static str,
        path: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
}

impl From<CallError> for NodeError {
    fn from(e: CallError) -> Self {
        NodeError::Call(Box::new(e))
    }
}

/// What the agent says about one daemon (the fields a test needs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ServiceStatus {
    pub state: String,
    pub pid: Option<u32>,
}

impl Node {
    /// `method path` on `daemon`'s socket with `body` (JSON) if given: the
    /// status and the body, whatever the status.
    pub fn request(
        &self,
        daemon: Daemon,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), NodeError> {
        let socket = self.socket(daemon)?;
        unix_request(&socket, method, path, body.map(str::as_bytes)).map_err(|source| {
            NodeError::from(CallError::Http {
                node: self.name.clone(),
                daemon: daemon.name(),
                method,
                path: path.to_owned(),
                source,
            })
        })
    }

    /// `method path` on `daemon` with the JSON `body` if given: its 2xx
    /// answer as a `T`.
    pub fn call<T: DeserializeOwned>(
        &self,
        daemon: Daemon,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> Result<T, NodeError> {
        let (status, text) = self.request(daemon, method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(CallError::Refused {
                node: self.name.clone(),
                daemon: daemon.name(),
                method,
                path: path.to_owned(),
                status,
                body: text,
            }
            .into());
        }
        serde_json::from_str(&text).map_err(|source| {
            NodeError::from(CallError::Answer {
                node: self.name.clone(),
                daemon: daemon.name(),
                method,
                path: path.to_owned(),
                body: text,
                source,
            })
        })
    }

    /// `GET path` on `daemon`, as a `T`.
    pub fn get<T: DeserializeOwned>(&self, daemon: Daemon, path: &str) -> Result<T, NodeError> {
        self.call(daemon, "GET", path, None)
    }

    /// Waits up to `within` until `daemon` answers `GET path` with 200.
    pub fn wait_answers(&self, daemon: Daemon, path: &str, within: Duration) -> bool {
        wait_until(within, Duration::from_millis(50), || {
            matches!(self.request(daemon, "GET", path, None), Ok((200, _)))
        })
    }

    /// Waits up to `within` until netd's view at `path` (the mesh, a
    /// tenant network) names a userspace WireGuard process other than
    /// `old`, the one that was killed; true if it does and netd is still
    /// the process `netd`: the device was rebuilt without a netd restart.
    pub fn device_rebuilt(&self, path: &str, old: i32, netd: u32, within: Duration) -> bool {
        #[derive(serde::Deserialize)]
        struct Device {
            pid: Option<i32>,
        }
        let rebuilt = wait_until(within, Duration::from_millis(50), || {
            matches!(self.request(Daemon::Netd, "GET", path, None),
                Ok((200, body)) if serde_json::from_str::<Device>(&body)
                    .is_ok_and(|d| d.pid.is_some() && d.pid != Some(old)))
        });
        rebuilt && self.daemon_pid(Daemon::Netd) == Some(netd)
    }

    /// Waits up to 30 s for the agent to restart netd (a pid other than
    /// `old`), then up to 30 s more until netd's view at `path` satisfies
    /// `ok`; the view, or what was seen instead.
    pub fn wait_netd_restored<T: DeserializeOwned + std::fmt::Debug>(
        &self,
        old: u32,
        path: &str,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T, String> {
        const WITHIN: Duration = Duration::from_secs(30);
        if self.wait_restarted(Daemon::Netd, old, WITHIN).is_none() {
            return Err("netd did not come back".to_owned());
        }
        let mut last = None;
        let back = wait_until(WITHIN, Duration::from_millis(50), || {
            last = self.get::<T>(Daemon::Netd, path).ok();
            last.as_ref().is_some_and(&ok)
        });
        match last {
            Some(view) if back => Ok(view),
            _ => Err(format!("netd did not come back with {path}: {last:?}")),
        }
    }

    /// What the agent says about `daemon`.
    pub fn service(&self, daemon: Daemon) -> Result<ServiceStatus, NodeError> {
        self.get(Daemon::Agent, &format!("/v1/services/{}", daemon.name()))
    }

    /// `daemon`'s pid, while the agent reports one.
    pub fn daemon_pid(&self, daemon: Daemon) -> Option<u32> {
        self.service(daemon).ok()?.pid
    }

    /// `kill -9` of `daemon`; its pid.
    pub fn kill_daemon(&self, daemon: Daemon) -> Result<u32, NodeError> {
        let pid = self
            .daemon_pid(daemon)
            .ok_or_else(|| NodeError::DaemonDown {
                node: self.name.clone(),
                daemon: daemon.name(),
            })?;
        kill_pids(self, &[pid])?;
        Ok(pid)
    }

    /// `kill -9` of `daemon`, then waits up to `within` for the agent to
    /// have it running and ready again; answers the new pid.
    pub fn restart_daemon(&self, daemon: Daemon, within: Duration) -> Result<u32, NodeError> {
        let old = self.kill_daemon(daemon)?;
        self.wait_restarted(daemon, old, within)
            .ok_or_else(|| NodeError::NotRestarted {
                node: self.name.clone(),
                daemon: daemon.name(),
                old,
                within,
            })
    }

    /// `kill -9` of `pids` (a daemon and its children, say) at once.
    pub fn kill_pids(&self, pids: &[u32]) -> Result<(), NodeError> {
        kill_pids(self, pids)
    }

    /// Waits up to `within` until the agent reports `daemon` ready again
    /// under a pid other than `old`; that pid.
    pub fn wait_restarted(&self, daemon: Daemon, old: u32, within: Duration) -> Option<u32> {
        let mut pid = None;
        wait_until(within, Duration::from_millis(50), || {
            pid = self
                .service(daemon)
                .ok()
                .filter(|s| s.state == "ready")
                .and_then(|s| s.pid)
                .filter(|p| *p != old);
            pid.is_some()
        });
        pid
    }

    /// The last `lines` log lines of `daemon`, as the agent keeps them.
    pub fn daemon_logs(&self, daemon: Daemon, lines: usize) -> Result<String, NodeError> {
        let path = format!("/v1/services/{}/logs?lines={lines}", daemon.name());
        let (status, text) = self.request(Daemon::Agent, "GET", &path, None)?;
        if status != 200 {
            return Err(CallError::Refused {
                node: self.name.clone(),
                daemon: Daemon::Agent.name(),
                method: "GET",
                path,
                status,
                body: text,
            }
            .into());
        }
        Ok(text)
    }

    /// Where `secret` shows in what the node says: its agent's log,
    /// `daemon`'s last 500 log lines, and `daemon`'s answer to `GET path`.
    /// Empty when it shows nowhere.
    pub fn secret_seen(
        &self,
        secret: &str,
        daemon: Daemon,
        path: &str,
    ) -> Result<Vec<String>, NodeError> {
        let agent_log =
            std::fs::read_to_string(self.agent_log()).map_err(|source| NodeError::Read {
                node: self.name.clone(),
                path: self.agent_log(),
                source,
            })?;
        let logs = self.daemon_logs(daemon, 500)?;
        let (_, answer) = self.request(daemon, "GET", path, None)?;
        let places = [
            (agent_log, format!("{}", self.agent_log().display())),
            (logs, format!("{}'s logs", daemon.name())),
            (answer, format!("GET {path}")),
        ];
        Ok(places
            .into_iter()
            .filter(|(text, _)| text.contains(secret))
            .map(|(_, place)| place)
            .collect())
    }

    /// The live processes in the node's network namespace whose command
    /// name is `comm`, ascending: the node's own, never another node's or
    /// the host's.
    pub fn processes(&self, comm: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = crate::netns::pids(&self.netns)
            .into_iter()
            .filter(ProcId::is_alive)
            .map(|p| p.pid)
            .filter(|pid| proc::comm(*pid).is_some_and(|c| c == comm))
            .collect();
        pids.sort_unstable();
        pids
    }
}

fn kill_pids(node: &Node, pids: &[u32]) -> Result<(), NodeError> {
    for pid in pids {
        let pid = i32::try_from(*pid).unwrap_or(i32::MAX);
        kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(|source| NodeError::Kill {
            node: node.name.clone(),
            source: Box::new(proc::ProcError::Signal {
                pid: pid.unsigned_abs(),
                signal: Signal::SIGKILL,
                source,
            }),
        })?;
    }
    Ok(())
}
