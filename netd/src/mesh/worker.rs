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

use grove_daemon::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use super::address::MESH_LEN;
use super::input::{self, MeshSettings, Peer, PeerRequest};
use super::plan::{Plan, plan};
use super::state::StateFile;
use super::view::{self, Applied, MeshView};
use super::{MeshConfig, MeshError, blocking};
use crate::actor::{Restart, until};
use crate::netlink::{LinkSettings, Netlink};
use crate::sysctl::Sysctls;
use crate::wg::boringtun::{self, Boringtun};
use crate::wg::device::{self, Changes, Settings};
use crate::wg::{self, Backend};

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

#[derive(Debug)]
struct Worker {
    config: MeshConfig,
    ifname: String,
    backend: Backend,
    links: Netlink,
    sysctls: Sysctls,
    state: StateFile,
    process: Option<Boringtun>,
    current: Option<Current>,
    restart: Restart,
}

/// Runs the worker until `shutdown` trips or every handle is gone.
pub(crate) async fn run(
    config: MeshConfig,
    links: Netlink,
    gate: crate::state::Gate,
    mut inbox: mpsc::Receiver<Command>,
    shutdown: Shutdown,
) {
    if !gate.open(&shutdown).await {
        return;
    }
    let mut worker = Worker::new(config, links).await;
    worker.restore().await;
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                Some(command) => worker.handle(command).await,
                None => break,
            },
            how = exited(&mut worker.process) => worker.lost(&how),
            () = until(worker.restart.due()) => worker.revive().await,
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

impl Worker {
    async fn new(config: MeshConfig, links: Netlink) -> Self {
        let backend = wg::detect(&links, config.backend).await;
        let state = StateFile::locate(
            config.state_dir.as_deref(),
            Path::new(grove_daemon::CACHE_DIR),
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
            restart: Restart::default(),
        }
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
                self.restart.schedule();
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
                owner: crate::input::Owner::Node,
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
        let (sysctls, ifname, backend) = (self.sysctls.clone(), self.ifname.clone(), self.backend);
        let actual = blocking(move || {
            sysctls.no_link_local(&ifname)?;
            Ok(device::read(&ifname, backend)?)
        })
        .await?;
        let prev = self
            .current
            .as_ref()
            .map(|c| c.plan.peers.clone())
            .unwrap_or_default();
        let changes = device::diff(&prev, &actual.peers, &next.peers);
        let key = (send_key || fresh).then(|| settings.private_key.clone());
        let port =
            (actual.listen_port != Some(settings.listen_port)).then_some(settings.listen_port);
        let (sysctls, ifname) = (self.sysctls.clone(), self.ifname.clone());
        let (changes, namespace_wide) = blocking(move || {
            let wanted = Settings {
                private_key: key.as_ref(),
                listen_port: port,
            };
            device::apply(&ifname, backend, &wanted, &changes)?;
            Ok((changes, sysctls.forward_ipv6(&ifname)?))
        })
        .await?;
        if namespace_wide {
            tracing::warn!(ifname = %self.ifname, "no per-interface IPv6 forwarding on this kernel; forwarding for the whole namespace");
        }
        let address = settings.prefix.address_of(&settings.public_key);
        let up = LinkSettings {
            mtu: Some(self.config.mtu),
            ..LinkSettings::up()
        };
        self.links.ensure_link(&self.ifname, &up).await?;
        (self.links)
            .ensure_only_address(&self.ifname, address, MESH_LEN)
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
            Backend::Kernel => Ok(self.links.ensure_wireguard(&self.ifname).await?),
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
                    self.restart.started();
                    return Ok(false);
                }
                let process = Boringtun::spawn(&binary, &self.ifname).await?;
                self.process = Some(process);
                self.restart.started();
                Ok(true)
            }
        }
    }

    /// The userspace process died: schedule its restart.
    fn lost(&mut self, how: &str) {
        self.process = None;
        let wait = self.restart.lost();
        tracing::error!(
            ifname = %self.ifname,
            how,
            retry_in_ms = wait.as_millis() as u64,
            "userspace WireGuard exited; restarting it"
        );
    }

    /// Restarts the device with the current configuration.
    async fn revive(&mut self) {
        self.restart.clear();
        let Some(current) = self.current.clone() else {
            return;
        };
        match self.converge(&current.settings, &current.peers, true).await {
            Ok(_) => tracing::info!(ifname = %self.ifname, "mesh device rebuilt"),
            Err(e) => {
                tracing::error!(ifname = %self.ifname, error = %e, "mesh: cannot rebuild the device; retrying");
                self.restart.schedule();
            }
        }
    }
}
