//! One supervised daemon: start it, wait for `/ready`, restart it when it
//! dies, stop it on request.
//!
//! Each service runs as its own task. Restarts back off exponentially from
//! [`Policy::backoff_base`] to [`Policy::backoff_max`]; a run that lasted
//! [`Policy::stable_after`] resets the backoff. The status the API shows is
//! a snapshot of [`ServiceStatus`], updated at every transition.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grove_daemon::client::SocketClient;
use grove_daemon::shutdown::Shutdown;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::logs::{LogLine, LogRing, Stream};
use super::reaper::{Exit, Reaper};
use crate::clock::unix_ms;

/// Why one run of a service could not start or be followed to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the spawn task failed: {0}")]
    SpawnTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Spawn(#[from] super::reaper::ReaperError),
    #[error("the reaper stopped before the service exited")]
    ReaperGone(#[source] tokio::sync::oneshot::error::RecvError),
}

/// What to run for one service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub socket: PathBuf,
    /// The services that must have been ready before this one starts.
    pub after: Vec<String>,
}

/// Timing of starts, readiness and restarts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub ready_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub stop_grace: Duration,
    pub log_lines: usize,
    /// Copy every daemon line to the agent's own stderr as well.
    pub forward_logs: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            stop_grace: grove_daemon::shutdown::GRACE,
            log_lines: 500,
            forward_logs: true,
        }
    }
}

impl Policy {
    /// Delay before restart number `failures` (1-based) in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Waiting for the services it starts after.
    Waiting,
    /// Started, not yet answering `/ready`.
    Starting,
    Ready,
    /// Was ready, now does not answer `/ready`.
    Unready,
    /// Died; restarting after a delay.
    Backoff,
    Stopping,
    Stopped,
}

/// How the last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// In words, like "killed by SIGKILL".
    pub reason: String,
    pub exit: Option<Exit>,
    pub at_ms: u64,
    /// How long that run lasted.
    pub ran_ms: u64,
}

/// What `/v1/services` shows for one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started_at_ms: Option<u64>,
    /// Time from start to `/ready` in the current run.
    pub ready_after_ms: Option<u64>,
    pub last_exit: Option<ExitRecord>,
    pub next_start_in_ms: Option<u64>,
    /// CPU and memory of the running process, sampled every second.
    #[serde(default)]
    pub usage: Option<crate::hostinfo::ProcessUsage>,
}

/// A supervised daemon.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    status: Mutex<ServiceStatus>,
    logs: Arc<LogRing>,
    ready_once: watch::Sender<bool>,
    changed: Arc<watch::Sender<()>>,
}

impl Service {
    /// `changed` is signalled at every status transition.
    pub fn new(spec: ServiceSpec, log_lines: usize, changed: Arc<watch::Sender<()>>) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(ServiceStatus {
                name: spec.name.clone(),
                state: ServiceState::Waiting,
                pid: None,
                restarts: 0,
                started_at_ms: None,
                ready_after_ms: None,
                last_exit: None,
                next_start_in_ms: None,
                usage: None,
            }),
            spec,
            logs: Arc::new(LogRing::new(log_lines)),
            ready_once: watch::channel(false).0,
            changed,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The services this one starts after.
    pub fn after(&self) -> &[String] {
        &self.spec.after
    }

    pub fn program(&self) -> &std::path::Path {
        &self.spec.program
    }

    pub fn status(&self) -> ServiceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn logs(&self, n: usize) -> Vec<LogLine> {
        self.logs.tail(n)
    }

    /// Records a usage sample of process `pid`, if it is still this
    /// service's process. Not a transition: nobody is woken.
    pub fn set_usage(&self, pid: u32, usage: Option<crate::hostinfo::ProcessUsage>) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.pid == Some(pid) {
            status.usage = usage;
        }
    }

    /// Resolves once the service has been ready at least once.
    pub fn became_ready(&self) -> watch::Receiver<bool> {
        self.ready_once.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_replace(());
    }

    /// Supervises the service until `stop` trips. Waits first for every one
    /// of `after` (the services its spec names) to be ready, at most
    /// `policy.ready_timeout` in all. Once `draining` trips (the whole node is
    /// stopping), an exit is final: the service is not restarted.
    pub async fn supervise(
        self: Arc<Self>,
        reaper: Arc<Reaper>,
        after: Vec<watch::Receiver<bool>>,
        policy: Policy,
        stop: Shutdown,
        draining: Shutdown,
    ) {
        if !after.is_empty() {
            let all = async move {
                for mut ready in after {
                    // A sender gone is a service gone: nothing left to wait for.
                    let _ = ready.wait_for(|r| *r).await;
                }
            };
            let wait = tokio::time::timeout(policy.ready_timeout, all);
            tokio::select! {
                res = wait => if res.is_err() {
                    tracing::warn!(service = self.name(), "the services it starts after are not ready in time, starting anyway");
                },
                () = stop.wait() => {}
            }
        }
        let mut failures = 0u32;
        let mut pumps = JoinSet::new();
        while !stop.is_triggered() {
            let started = Instant::now();
            let outcome = self.run_once(&reaper, &policy, &stop, &mut pumps).await;
            let ran = started.elapsed();
            self.update(|s| {
                s.pid = None;
                s.usage = None;
                s.ready_after_ms = None;
                s.last_exit = Some(ExitRecord {
                    reason: match &outcome {
                        Ok(exit) => exit.to_string(),
                        Err(e) => e.to_string(),
                    },
                    exit: outcome.as_ref().ok().cloned(),
                    at_ms: unix_ms(),
                    ran_ms: ran.as_millis() as u64,
                });
            });
            if stop.is_triggered() || draining.is_triggered() {
                break;
            }
            failures = if ran >= policy.stable_after {
                1
            } else {
                failures + 1
            };
            let delay = policy.backoff(failures);
            tracing::warn!(
                service = self.name(),
                reason = %self.status().last_exit.map(|e| e.reason).unwrap_or_default(),
                restart_in_ms = delay.as_millis() as u64,
                "service stopped unexpectedly"
            );
            self.update(|s| {
                s.state = ServiceState::Backoff;
                s.next_start_in_ms = Some(delay.as_millis() as u64);
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.wait() => break,
            }
            self.update(|s| s.restarts += 1);
        }
        // The pipes close when the process is gone; a pump still reading
        // (a grandchild holding the pipe) is cut off here.
        pumps.shutdown().await;
        self.update(|s| {
            s.state = ServiceState::Stopped;
            s.next_start_in_ms = None;
        });
    }

    /// One run: spawn, wait for ready, wait for exit (or stop it).
    async fn run_once(
        self: &Arc<Self>,
        reaper: &Arc<Reaper>,
        policy: &Policy,
        stop: &Shutdown,
        pumps: &mut JoinSet<()>,
    ) -> Result<Exit, RunError> {
        self.update(|s| {
            s.state = ServiceState::Starting;
            s.next_start_in_ms = None;
        });
        let mut command = Command::new(&self.spec.program);
        command.args(&self.spec.args).env(
            grove_daemon::parent::SUPERVISOR_PID_ENV,
            std::process::id().to_string(),
        );
        let spawner = reaper.clone();
        let spawned = tokio::task::spawn_blocking(move || spawner.spawn(command))
            .await
            .map_err(RunError::SpawnTask)??;
        let started = Instant::now();
        let pid = spawned.pid;
        tracing::info!(service = self.name(), pid, "started");
        self.update(|s| {
            s.pid = Some(pid);
            s.started_at_ms = Some(unix_ms());
        });
        for (fd, stream) in [
            (spawned.stdout, Stream::Stdout),
            (spawned.stderr, Stream::Stderr),
        ] {
            if let Some(fd) = fd {
                let span = tracing::info_span!("logs", service = self.name());
                pumps.spawn(
                    pump(fd, stream, self.logs.clone(), policy.forward_logs).instrument(span),
                );
            }
        }
        let mut exit = spawned.exit;
        let health = self.watch_health(started);
        tokio::pin!(health);
        loop {
            tokio::select! {
                status = &mut exit => {
                    return status.map_err(RunError::ReaperGone);
                }
                () = &mut health => {}
                () = stop.wait() => {
                    self.update(|s| s.state = ServiceState::Stopping);
                    return Ok(terminate(pid, exit, policy.stop_grace, self.name()).await);
                }
            }
        }
    }

    /// Polls `/ready` until it answers, then keeps an eye on it.
    async fn watch_health(&self, started: Instant) {
        let client = SocketClient::new(&self.spec.socket).with_timeout(Duration::from_secs(2));
        loop {
            if matches!(client.ready().await, Ok(r) if r.ready) {
                break;
            }
            let poll = if started.elapsed() < Duration::from_secs(1) {
                5
            } else {
                50
            };
            tokio::time::sleep(Duration::from_millis(poll)).await;
        }
        let after = started.elapsed();
        tracing::info!(
            service = self.name(),
            ready_after_ms = after.as_millis() as u64,
            "ready"
        );
        self.update(|s| {
            s.state = ServiceState::Ready;
            s.ready_after_ms = Some(after.as_millis() as u64);
        });
        self.ready_once.send_replace(true);
        let mut misses = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let ok = matches!(client.ready().await, Ok(r) if r.ready);
            misses = if ok { 0 } else { misses + 1 };
            let state = if misses >= 2 {
                ServiceState::Unready
            } else {
                ServiceState::Ready
            };
            self.update(|s| s.state = state);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; returns how the process ended.
async fn terminate(
    pid: u32,
    mut exit: tokio::sync::oneshot::Receiver<Exit>,
    grace: Duration,
    name: &str,
) -> Exit {
    let pid_t = Pid::from_raw(pid as i32);
    if let Err(e) = kill(pid_t, Signal::SIGTERM) {
        tracing::warn!(service = name, pid, error = %e, "cannot send SIGTERM");
    }
    if let Ok(Ok(status)) = tokio::time::timeout(grace, &mut exit).await {
        return status;
    }
    tracing::warn!(
        service = name,
        pid,
        "did not stop within the grace period, killing"
    );
    if let Err(e) = kill(pid_t, Signal::SIGKILL) {
        tracing::warn!(service = name, pid, error = %e, "cannot send SIGKILL");
    }
    exit.await.unwrap_or(Exit::Signal {
        signal: "SIGKILL".to_owned(),
    })
}

/// Copies lines from a child's pipe into its ring (and the agent's stderr).
async fn pump(fd: OwnedFd, stream: Stream, ring: Arc<LogRing>, forward: bool) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the daemon's output");
            return;
        }
    };
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if forward {
                    use std::io::Write;
                    // The console is best-effort; the ring keeps the line.
                    let _ignored = writeln!(std::io::stderr().lock(), "{line}");
                }
                ring.push(stream, line);
            }
            Ok(None) => break,
            Err(e) => {
                ring.push(stream, format!("<unreadable output: {e}>"));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = Policy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(5), Duration::from_millis(1600));
        assert_eq!(p.backoff(20), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
    }
}
