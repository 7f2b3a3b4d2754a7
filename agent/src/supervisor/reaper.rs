//! The one place that waits on child processes.
//!
//! As PID 1 the agent must reap every orphan the kernel hands it; elsewhere it
//! makes itself a child subreaper so its daemons' orphans come to it too. A
//! single SIGCHLD-driven loop calls `waitpid(-1)` and routes each status to
//! whoever spawned that pid. Spawning happens under the routing table's lock,
//! so a child that dies at once is never mistaken for an orphan. Because this
//! loop reaps every child, nothing else in the agent may wait on children
//! (no `tokio::process`): all of them are spawned through [`Reaper::spawn`].

use std::collections::HashMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Why the reaper could not start or spawn.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot listen for SIGCHLD: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] Errno),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Exit {
    Code { code: i32 },
    Signal { signal: String },
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code { code } => write!(f, "exited with code {code}"),
            Exit::Signal { signal } => write!(f, "killed by {signal}"),
        }
    }
}

/// A child started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Routes child exits to their spawners; reaps orphans.
#[derive(Debug, Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    /// Starts the SIGCHLD loop. Must be called inside the tokio runtime,
    /// before any child is spawned.
    pub fn start() -> Result<Arc<Self>, ReaperError> {
        if std::process::id() != 1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(ReaperError::Subreaper)?;
        }
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Arc::new(Self::default());
        let this = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            // Reap once at start too: children may have died before the
            // handler was installed.
            loop {
                let Some(reaper) = this.upgrade() else { break };
                reaper.reap_all();
                drop(reaper);
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` with stdout and stderr piped. Blocking (fork and
    /// exec): call from a blocking thread.
    pub fn spawn(&self, command: &mut Command) -> Result<Spawned, ReaperError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = command.spawn().map_err(|source| ReaperError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id();
        waiting.insert(pid as i32, tx);
        drop(waiting);
        Ok(Spawned {
            pid,
            exit: rx,
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        })
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.route(pid, Exit::Code { code }),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => self.route(
                    pid,
                    Exit::Signal {
                        signal: signal_name(sig),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_stopped_or_continued) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
    }

    fn route(&self, pid: Pid, exit: Exit) {
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid.as_raw());
        match tx {
            // The spawner may have gone away; then nobody needs the status.
            Some(tx) => drop(tx.send(exit)),
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
        }
    }
}

fn signal_name(sig: Signal) -> String {
    sig.as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn spawn(reaper: &Reaper, script: &str) -> Spawned {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        reaper.spawn(&mut cmd).expect("spawn sh")
    }

    #[tokio::test]
    async fn routes_exit_codes_and_signals() {
        let reaper = Reaper::start().expect("reaper");
        let quick = spawn(&reaper, "exit 3").await;
        let killed = spawn(&reaper, "kill -9 $$").await;
        let code = tokio::time::timeout(Duration::from_secs(5), quick.exit)
            .await
            .expect("exit in time")
            .expect("status routed");
        assert_eq!(code, Exit::Code { code: 3 });
        let sig = tokio::time::timeout(Duration::from_secs(5), killed.exit)
            .await
            .expect("exit in time")
            .expect("status routed");
        assert_eq!(
            sig,
            Exit::Signal {
                signal: "SIGKILL".to_owned()
            }
        );
        assert_eq!(sig.to_string(), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn missing_program_is_a_named_error() {
        let reaper = Reaper::start().expect("reaper");
        let err = reaper
            .spawn(&mut Command::new("/nonexistent/netd"))
            .expect_err("no such program");
        assert!(err.to_string().contains("/nonexistent/netd"), "{err}");
    }
}
