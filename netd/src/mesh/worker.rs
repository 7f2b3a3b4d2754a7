//! The mesh worker: the one task that changes `mesh0`.
//!
//! Every change, from the API, from the state file at start, or after the
//! userspace process died, goes through [`Worker::converge`]: make sure the
//! device exists (spawn or adopt boringtun, or create the kernel link), read
//! what it holds, apply only the difference to the plan, then the link's
//! MTU, state and one address, then save the state. Limits: a failed apply
//! may leave part of a change on the device; the next converge starts from
//! what the device reports, so it heals, but the API answer is an error.

use std::path::Path;
use std::time::{Duration, Instant};

use grove_daemon::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use super::address::MESH_LEN;
use super::input::{self, MeshSettings, Peer, PeerRequest};
use super::plan::{Plan, plan};
use super::state::StateFile;
use super::view::{self, Applied, MeshView};
use super::{MeshConfig, MeshError};
use crate::wg::boringtun::{self, Boringtun};
use crate::wg::device::{self, Changes, Settings};
use crate::wg::link::{Links, Sysctls};
use crate::wg::{self, Backend};

/// The first wait before restarting a userspace process that died.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A process that ran this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

/// A request to the worker.
#[derive(Debug)]
pub(crate) enum Command {
    Configure {
        settings: MeshSettings,
        reply: oneshot::Sender<Result<Applied, MeshError>>,
    },
    SetPeers {
        peers: Vec<PeerRequest>,
        reply: oneshot::Sender<Result<Applied, MeshError>>,
    },
    Show {
        reply: oneshot::Sender<Result<MeshView, MeshError>>,
    },
}

/// What was last applied.
#[derive(Debug, Clone)]
struct Current {
    settings: MeshSettings,
    peers: Vec<Peer>,
    plan: Plan,
}

/// When to restart the userspace process.
#[derive(Debug)]
struct Restart {
    backoff: Duration,
    at: Option<tokio::time::Instant>,
    started: Option<Instant>,
}

#[derive(Debug)]
struct Worker {
    config: MeshConfig,
    ifname: String,
    backend: Backend,
    links: Option<Links>,
    sysctls: Sysctls,
    state: StateFile,
    process: Option<Boringtun>,
    current: Option<Current>,
    restart: Restart,
}

/// Runs the worker until `shutdown` trips or every handle is gone.
pub(crate) async fn run(
    config: MeshConfig,
    mut inbox: mpsc::Receiver<Command>,
    shutdown: Shutdown,
) {
    let mut worker = Worker::new(config).await;
    worker.restore().await;
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                Some(command) => worker.handle(command).await,
                None => break,
            },
            how = exited(&mut worker.process) => worker.lost(&how),
            () = restart_due(worker.restart.at) => worker.revive().await,
            () = shutdown.wait() => break,
        }
    }
    if let Some(process) = worker.process.take() {
        process.stop().await;
    }
}

async fn exited(process: &mut Option<Boringtun>) -> String {
    match process {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

async fn restart_due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a blocking call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MeshError> + Send + 'static,
) -> Result<T, MeshError> {
    tokio::task::spawn_blocking(f).await?
}

impl Worker {
    async fn new(config: MeshConfig) -> Self {
        let links = match Links::connect() {
            Ok(links) => Some(links),
            Err(e) => {
                tracing::error!(error = %e, "mesh: no netlink connection yet");
                None
            }
        };
        let backend = match &links {
            Some(links) => wg::detect(links, config.backend).await,
            None => Backend::Userspace,
        };
        let state = StateFile::locate(
            config.state_dir.as_deref(),
            Path::new("/var/cache/grove"),
            Path::new(grove_daemon::RUN_DIR),
        );
        let ifname = config.interface.to_string();
        tracing::info!(ifname, %backend, state = %state.path().display(), "mesh backend chosen");
        Self {
            config,
            ifname,
            backend,
            links,
            sysctls: Sysctls::default(),
            state,
            process: None,
            current: None,
            restart: Restart {
                backoff: FIRST_BACKOFF,
                at: None,
                started: None,
            },
        }
    }

    fn links(&mut self) -> Result<&Links, MeshError> {
        if self.links.is_none() {
            self.links = Some(Links::connect()?);
        }
        self.links.as_ref().ok_or(MeshError::Stopped)
    }

    /// Rebuilds the mesh from the state file, if there is one.
    async fn restore(&mut self) {
        let state = self.state.clone();
        let loaded = blocking(move || Ok(state.load()?)).await;
        let (settings, peers) = match loaded {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "mesh: cannot restore the saved configuration");
                return;
            }
        };
        let keepalive = self.config.keepalive_secs;
        self.current = Some(Current {
            plan: plan(&settings, &peers, keepalive),
            settings: settings.clone(),
            peers: peers.clone(),
        });
        match self.converge(&settings, &peers, true).await {
            Ok(changes) => {
                tracing::info!(ifname = %self.ifname, applied = ?Applied::from(&changes), "mesh restored")
            }
            Err(e) => {
                tracing::error!(ifname = %self.ifname, error = %e, "mesh: cannot restore; retrying");
                self.schedule_restart();
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Configure { settings, reply } => {
                let result = self.configure(settings).await;
                let _gone = reply.send(result);
            }
            Command::SetPeers { peers, reply } => {
                let result = self.set_peers(&peers).await;
                let _gone = reply.send(result);
            }
            Command::Show { reply } => {
                let result = self.show().await;
                let _gone = reply.send(result);
            }
        }
    }

    async fn configure(&mut self, settings: MeshSettings) -> Result<Applied, MeshError> {
        let peers = self
            .current
            .as_ref()
            .map(|c| c.peers.clone())
            .unwrap_or_default();
        if let Some(index) = peers.iter().position(|p| p.key == settings.public_key) {
            return Err(input::InputError::OwnKey {
                index,
                key: settings.public_key,
            }
            .into());
        }
        let changes = self.converge(&settings, &peers, true).await?;
        Ok(Applied::from(&changes))
    }

    async fn set_peers(&mut self, requests: &[PeerRequest]) -> Result<Applied, MeshError> {
        let settings = self
            .current
            .as_ref()
            .map(|c| c.settings.clone())
            .ok_or(MeshError::NotConfigured)?;
        let (peers, skipped) = input::parse_peer_list(requests, &settings.public_key);
        for e in &skipped {
            tracing::warn!(ifname = %self.ifname, error = %e, "mesh peer skipped");
        }
        let changes = self.converge(&settings, &peers, false).await?;
        let mut applied = Applied::from(&changes);
        applied.skipped = skipped.iter().map(ToString::to_string).collect();
        Ok(applied)
    }

    async fn show(&mut self) -> Result<MeshView, MeshError> {
        let pid = self.process.as_ref().map(Boringtun::pid);
        let Some(current) = &self.current else {
            let mut view = view::unconfigured(&self.ifname, self.backend);
            view.pid = pid;
            return Ok(view);
        };
        let (ifname, backend) = (self.ifname.clone(), self.backend);
        let state = blocking(move || Ok(device::read(&ifname, backend)?)).await?;
        let current = (&current.settings, current.peers.as_slice(), &current.plan);
        Ok(view::view(&self.ifname, self.backend, pid, current, &state))
    }

    /// Makes the device hold `settings` and `peers`, changing only what
    /// differs, and saves them. The private key is sent when `send_key`
    /// says so or the device is new.
    async fn converge(
        &mut self,
        settings: &MeshSettings,
        peers: &[Peer],
        send_key: bool,
    ) -> Result<Changes, MeshError> {
        let next = plan(settings, peers, self.config.keepalive_secs);
        let fresh = self.ensure_device().await?;
        self.sysctls.no_link_local(&self.ifname)?;
        let (ifname, backend) = (self.ifname.clone(), self.backend);
        let actual = blocking(move || Ok(device::read(&ifname, backend)?)).await?;
        let prev = self
            .current
            .as_ref()
            .map(|c| c.plan.peers.clone())
            .unwrap_or_default();
        let changes = device::diff(&prev, &actual.peers, &next.peers);
        let key = (send_key || fresh).then(|| settings.private_key.clone());
        let port =
            (actual.listen_port != Some(settings.listen_port)).then_some(settings.listen_port);
        let ifname = self.ifname.clone();
        let changes = blocking(move || {
            let wanted = Settings {
                private_key: key.as_ref(),
                listen_port: port,
            };
            device::apply(&ifname, backend, &wanted, &changes)?;
            Ok(changes)
        })
        .await?;
        if self.sysctls.forward(&self.ifname)? {
            tracing::warn!(ifname = %self.ifname, "no per-interface IPv6 forwarding on this kernel; forwarding for the whole namespace");
        }
        let address = settings.prefix.address_of(&settings.public_key);
        let (mtu, ifname) = (self.config.mtu, self.ifname.clone());
        let links = self.links()?;
        links.ensure_up(&ifname, mtu).await?;
        links
            .ensure_only_address(&ifname, address, MESH_LEN)
            .await?;
        let (state, saved_settings, saved_peers) =
            (self.state.clone(), settings.clone(), peers.to_vec());
        blocking(move || Ok(state.save(&saved_settings, &saved_peers)?)).await?;
        tracing::info!(
            ifname = %self.ifname,
            %address,
            public_key = %settings.public_key,
            applied = ?Applied::from(&changes),
            relay = ?next.relay,
            "mesh applied"
        );
        self.current = Some(Current {
            settings: settings.clone(),
            peers: peers.to_vec(),
            plan: next,
        });
        Ok(changes)
    }

    /// Makes sure the device exists; true if it had to be created.
    async fn ensure_device(&mut self) -> Result<bool, MeshError> {
        match self.backend {
            Backend::Kernel => {
                let ifname = self.ifname.clone();
                Ok(self.links()?.ensure_wireguard(&ifname).await?)
            }
            Backend::Userspace => {
                if self.process.is_some() {
                    return Ok(false);
                }
                let binary =
                    boringtun::locate(self.config.boringtun.as_deref(), std::env::var_os("PATH"))?;
                if let Some(process) =
                    Boringtun::adopt(&binary, &self.ifname, Path::new("/proc")).await
                {
                    self.process = Some(process);
                    self.restart.started = Some(Instant::now());
                    return Ok(false);
                }
                let process = Boringtun::spawn(&binary, &self.ifname).await?;
                self.process = Some(process);
                self.restart.started = Some(Instant::now());
                Ok(true)
            }
        }
    }

    /// The userspace process died: schedule its restart.
    fn lost(&mut self, how: &str) {
        self.process = None;
        if self.restart.started.is_some_and(|s| s.elapsed() >= STABLE) {
            self.restart.backoff = FIRST_BACKOFF;
        }
        tracing::error!(
            ifname = %self.ifname,
            how,
            retry_in_ms = self.restart.backoff.as_millis() as u64,
            "userspace WireGuard exited; restarting it"
        );
        self.schedule_restart();
    }

    fn schedule_restart(&mut self) {
        self.restart.at = Some(tokio::time::Instant::now() + self.restart.backoff);
        self.restart.backoff = (self.restart.backoff * 2).min(MAX_BACKOFF);
    }

    /// Restarts the device with the current configuration.
    async fn revive(&mut self) {
        self.restart.at = None;
        let Some(current) = self.current.clone() else {
            return;
        };
        match self.converge(&current.settings, &current.peers, true).await {
            Ok(_) => tracing::info!(ifname = %self.ifname, "mesh device rebuilt"),
            Err(e) => {
                tracing::error!(ifname = %self.ifname, error = %e, "mesh: cannot rebuild the device; retrying");
                self.schedule_restart();
            }
        }
    }
}
