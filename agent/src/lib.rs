//! `agent`: the node's first daemon and its only link to the outside.
//!
//! It reads the boot parameters from the kernel command line, supervises
//! `storaged`, `netd` and `provisiond` (start in order, restart with backoff,
//! keep their output), reaps zombies as PID 1, and serves the operator API on
//! the farm LAN. Identity, the chain and signed changes build on this.

pub mod api;
pub mod auth;
pub mod boot;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod config;
pub mod hostinfo;
pub mod identity;
pub mod operator;
pub mod registry;
pub mod supervisor;
pub mod tfchain;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;

use crate::boot::Cmdline;
use crate::config::Config;
use crate::supervisor::reaper::{Reaper, ReaperError};
use crate::supervisor::{Policy, Supervisor};

/// The agent's name: its socket and its log field.
pub const NAME: &str = "agent";

/// Inputs that come from flags rather than the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kernel command line (normally `/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The `/proc` to read host facts from.
    pub proc_root: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cmdline: PathBuf::from("/proc/cmdline"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    #[error("cannot find the daemon binaries: {0}")]
    BinDir(#[source] std::io::Error),
    #[error("cannot listen on {addr} for the operator API: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("operator API on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] ServerError),
}

impl Failure for AgentError {
    fn is_config(&self) -> bool {
        match self {
            AgentError::Listen { .. } | AgentError::BinDir(_) => true,
            AgentError::Reaper(_) | AgentError::Serve { .. } | AgentError::Socket(_) => false,
        }
    }
}

/// Runs the agent until `shutdown` trips.
pub async fn run(config: Config, options: Options, shutdown: Shutdown) -> Result<(), AgentError> {
    let cmdline = Arc::new(Cmdline::read(&options.cmdline));
    for e in &cmdline.errors {
        tracing::warn!(param = %e.param, value = %e.value, reason = %e.reason, "refused boot parameter");
    }
    let reaper = Reaper::global()?;
    let bin_dir = match &config.supervisor.bin_dir {
        Some(dir) => dir.clone(),
        None => own_dir().map_err(AgentError::BinDir)?,
    };
    let policy = Policy {
        ready_timeout: Duration::from_secs(config.supervisor.ready_timeout_secs),
        log_lines: config.supervisor.log_lines,
        forward_logs: config.supervisor.forward_logs,
        ..Policy::default()
    };
    let params = cmdline.params.clone();
    let specs = Supervisor::standard_specs(&bin_dir, &config.supervisor.config_dir, |name| {
        daemon_flags(name, &params)
    });
    let supervisor = Arc::new(Supervisor::new(specs, policy));

    let listen = config.api.listen;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: listen,
            source,
        })?;
    let socket = grove_daemon::server::bind_unix(&config.api.socket).await?;
    tracing::info!(operator_api = %listen, socket = %config.api.socket.display(), "serving");

    let identity = Identity::new(NAME, env!("CARGO_PKG_VERSION"));
    let readiness = Readiness::waiting("storaged, netd, provisiond");
    let node_identity = Arc::new(identity::Identity::default());
    let storage_ready = supervisor
        .service(storaged::NAME)
        .map(|s| s.became_ready())
        .unwrap_or_else(|| tokio::sync::watch::channel(false).1);
    let identity_task = tokio::spawn(node_identity.clone().maintain(
        storaged::client::StoragedClient::default(),
        storage_ready,
        config.identity.cache_dir.clone(),
    ));
    let chain = Arc::new(chain::Chain::default());
    let chain_task = tokio::spawn(chain.clone().run(
        cmdline.params.clone(),
        config.chain.clone(),
        chain::Sources {
            identity: node_identity.clone(),
            storaged:
                storaged::client::StoragedClient::default().with_timeout(Duration::from_secs(2)),
            netd: netd::client::NetdClient::default().with_timeout(Duration::from_secs(2)),
            proc_root: options.proc_root.clone(),
            mesh: config.mesh.clone(),
        },
    ));
    let reboot = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let snapshot = Arc::new(operator::snapshot::Snapshot::default());
    let snapshot_task = tokio::spawn(snapshot.clone().refresh_forever(
        storaged::client::StoragedClient::default().with_timeout(Duration::from_secs(2)),
        netd::client::NetdClient::default().with_timeout(Duration::from_secs(2)),
        options.proc_root.clone(),
    ));
    let state = api::ApiState {
        snapshot,
        verifier: Arc::new(auth::RequestVerifier::at(
            &config.identity.cache_dir.join("auth").join("nonces.json"),
            (clock::unix_ms() / 1000) as i64,
        )),
        shutdown: shutdown.clone(),
        reboot: reboot.clone(),
        chain,
        storaged: storaged::client::StoragedClient::default().with_timeout(Duration::from_secs(2)),
        netd: netd::client::NetdClient::default().with_timeout(Duration::from_secs(2)),
        started: std::time::Instant::now(),
        identity: node_identity,
        supervisor: supervisor.clone(),
        cmdline,
        proc_root: options.proc_root,
    };
    let app = grove_daemon::server::standard_routes(identity, readiness.clone())
        .merge(api::routes(state));

    let readiness_task = tokio::spawn(track_readiness(supervisor.clone(), readiness));
    let tcp_task = tokio::spawn(api::serve_tcp(
        tcp,
        app.clone(),
        api::ConnectionLimits::from_config(&config.api),
        shutdown.clone(),
    ));
    let unix_task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(socket, app)
                .with_graceful_shutdown(async move { shutdown.wait().await })
                .await
        }
    });
    supervisor.run(reaper, shutdown).await;
    readiness_task.abort();
    identity_task.abort();
    chain_task.abort();
    snapshot_task.abort();
    let (tcp, unix) = tokio::join!(tcp_task, unix_task);
    if let Err(e) = std::fs::remove_file(&config.api.socket) {
        tracing::debug!(error = %e, "agent socket already gone");
    }
    if let Err(e) = tcp {
        tracing::error!(error = %e, "API task failed");
    }
    match unix {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(AgentError::Serve {
                addr: listen,
                source,
            });
        }
        Err(e) => tracing::error!(error = %e, "API task failed"),
    }
    if reboot.load(std::sync::atomic::Ordering::SeqCst) {
        reboot_now();
    }
    Ok(())
}

/// Keeps the agent's `/ready` in step with its daemons.
async fn track_readiness(supervisor: Arc<Supervisor>, readiness: Readiness) {
    let mut changes = supervisor.changes();
    loop {
        let waiting = supervisor.not_ready();
        if waiting.is_empty() {
            readiness.set_ready();
        } else {
            readiness.set_waiting(&waiting.join(", "));
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
}

/// Restarts the machine when the agent is its init; elsewhere (a
/// development host, the testbed) the agent has stopped and that is all.
fn reboot_now() {
    if std::process::id() != 1 {
        tracing::warn!("reboot requested; not PID 1, so the agent only stops");
        return;
    }
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(error = %e, "reboot failed");
}

/// What each daemon learns from the boot parameters, as flags.
fn daemon_flags(name: &str, params: &boot::BootParams) -> Vec<String> {
    match name {
        storaged::NAME => params
            .wipe
            .iter()
            .flat_map(|s| ["--wipe".to_owned(), s.to_string()])
            .collect(),
        netd::NAME => {
            let net = &params.network;
            let mut flags = Vec::new();
            let mut add = |flag: &str, value: String| {
                flags.push(format!("--{flag}"));
                flags.push(value);
            };
            if let Some(nic) = &net.uplink {
                add("uplink", nic.to_string());
            }
            if let Some(address) = net.address {
                add("address", address.to_string());
            }
            if let Some(gateway) = net.gateway {
                add("gateway", gateway.to_string());
            }
            for dns in &net.dns {
                add("dns", dns.to_string());
            }
            if let Some(vlan) = net.vlan {
                add("vlan", vlan.get().to_string());
            }
            flags
        }
        _ => Vec::new(),
    }
}

fn own_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent().map(PathBuf::from).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no parent directory", exe.display()),
        )
    })
}
