//! `agent`: the node's first daemon and its only link to the outside.
//!
//! It reads the boot parameters from the kernel command line, supervises
//! `storaged`, `netd` and `provisiond` (start in order, restart with backoff,
//! keep their output), reaps zombies as PID 1, and serves the operator API on
//! the farm LAN. Identity, the chain and signed changes build on this.

#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod boot;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod config;
pub mod hostinfo;
pub mod hotplug;
pub mod identity;
pub mod mounts;
pub mod operator;
pub mod power_button;
pub mod provision;
pub mod registry;
pub mod stop;
pub mod supervisor;
pub mod tasks;
pub mod tfchain;
pub mod upgrade;
pub mod watchdog;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;

use crate::boot::{BootParams, Cmdline};
use crate::config::Config;
use crate::stop::{Stop, StopReason};
use crate::supervisor::reaper::{Reaper, ReaperError};
use crate::supervisor::{Policy, Supervisor};
use crate::tasks::{Detached, Tasks};

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
    #[error("a blocking step of the agent failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl Failure for AgentError {
    fn is_config(&self) -> bool {
        match self {
            AgentError::Listen { .. } | AgentError::BinDir(_) => true,
            AgentError::Reaper(_)
            | AgentError::Serve { .. }
            | AgentError::Socket(_)
            | AgentError::Task(_) => false,
        }
    }
}

/// Runs the agent until `shutdown` trips, then drains: the daemons stop in
/// reverse boot order, the API servers finish their answers, the owned
/// tasks end. A reboot asked through the API is acted on only after that.
pub async fn run(config: Config, options: Options, shutdown: Shutdown) -> Result<(), AgentError> {
    let reaper = Reaper::global()?;
    tokio::task::spawn_blocking(init_machine)
        .await
        .map_err(AgentError::Task)?;
    // Reading the command line and looking for config files block.
    let (cmdline, supervisor) = {
        let (path, config) = (options.cmdline.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            let cmdline = read_cmdline(&path);
            build_supervisor(&config, &cmdline.params).map(|s| (cmdline, s))
        })
        .await
        .map_err(AgentError::Task)??
    };
    let listeners = Listeners::bind(&config.api).await?;
    let stop = Stop::new(shutdown.clone());

    let mut tasks = Tasks::default();
    let mut state = start_tasks(&mut tasks, &config, &options, cmdline, &supervisor, &stop);
    let watchdog = arm_watchdog().await;
    state.watchdog = watchdog.as_ref().map(|(w, _)| w.report());
    if std::process::id() == 1 {
        // Drivers for what appears from now on (a USB stick the controller
        // finds late, hardware plugged in later).
        if let Err(e) = hotplug::spawn(PathBuf::from("/sys"), PathBuf::from(hotplug::MODPROBE)) {
            tracing::error!(error = %e, "cannot listen for new devices; hardware that appears later gets no driver");
        }
        // The power button powers the machine off, cleanly.
        let pressed = stop.clone();
        let watched = tokio::task::spawn_blocking(move || {
            power_button::watch(Path::new("/sys"), Path::new("/dev"), move || {
                pressed.request(StopReason::Signal)
            })
        });
        if let Err(e) = watched.await {
            tracing::error!(error = %e, "cannot watch the power button");
        }
        // The machine's own screen, when the agent is its init.
        let (view, port) = (state.clone(), config.api.listen.port());
        tasks.spawn_until(
            "console",
            &shutdown,
            operator::console::show_forever(move || api::console_view(&view, port)),
        );
    }
    // Where the last upgrade stands, read before any daemon starts; a
    // system on trial marks its slot good once ready.
    let standing = state.upgrades.look().await;
    let view = state.clone();
    let detached = state.detached.clone();
    tasks.spawn_until(
        "upgrade",
        &shutdown,
        state
            .upgrades
            .clone()
            .settle(standing, move || api::status_report(&view), stop.clone()),
    );
    let readiness = Readiness::waiting("storaged, netd, provisiond");
    tasks.spawn_until(
        "readiness",
        &shutdown,
        track_readiness(supervisor.clone(), readiness.clone()),
    );
    let app = grove_daemon::server::standard_routes(
        Identity::new(NAME, env!("CARGO_PKG_VERSION")),
        readiness,
    )
    .merge(api::routes(state));
    let servers = listeners.serve(app, &shutdown);

    supervisor.stop_leftovers(&options.proc_root).await;
    supervisor.run(reaper, shutdown).await;
    tasks.drain(grove_daemon::shutdown::GRACE).await;
    // Before the servers: a request waiting for its work then gets its
    // answer, and its connection closes.
    detached.drain(grove_daemon::shutdown::GRACE).await;
    let served = servers.drain(grove_daemon::shutdown::GRACE).await;
    if let Err(e) = tokio::fs::remove_file(&config.api.socket).await {
        tracing::debug!(error = %e, "agent socket already gone");
    }
    if let Some((watchdog, beater)) = watchdog {
        tokio::task::spawn_blocking(move || watchdog.close())
            .await
            .map_err(AgentError::Task)?;
        // Its next beat finds the watchdog closed.
        if let Err(e) = beater.await {
            tracing::error!(error = %e, "the watchdog's heartbeat task failed");
        }
    }
    let reason = stop.reason();
    tokio::task::spawn_blocking(move || end_machine(reason))
        .await
        .map_err(AgentError::Task)?;
    for (_name, result) in served {
        result?;
    }
    Ok(())
}

/// Reads the kernel command line and logs every refused key.
fn read_cmdline(path: &Path) -> Arc<Cmdline> {
    let cmdline = Cmdline::read(path);
    for e in &cmdline.errors {
        tracing::warn!(param = %e.param, value = %e.value, reason = %e.reason, "refused boot parameter");
    }
    Arc::new(cmdline)
}

/// The supervisor of the standard daemons, each given the flags its own
/// crate builds from the boot parameters.
fn build_supervisor(config: &Config, params: &BootParams) -> Result<Arc<Supervisor>, AgentError> {
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
    let specs = Supervisor::standard_specs(&bin_dir, &config.supervisor.config_dir, |name| {
        daemon_flags(name, params)
    });
    Ok(Arc::new(Supervisor::new(specs, policy)))
}

/// What each daemon learns from the boot parameters, as flags built by the
/// daemon's own crate. netd, which starts beside storaged, also learns
/// where storaged answers, to keep off its state until the cache is there.
fn daemon_flags(name: &str, params: &BootParams) -> Vec<String> {
    match name {
        storaged::NAME => params.storaged_flags().to_args(),
        netd::NAME => netd::flags::Flags {
            state_after: Some(grove_daemon::socket_path(storaged::NAME)),
            ..params.netd_flags()
        }
        .to_args(),
        _ => Vec::new(),
    }
}

/// Starts the tasks that keep the node's identity, the chain and the
/// operator snapshot up to date, and returns the API's state over them.
fn start_tasks(
    tasks: &mut Tasks<()>,
    config: &Config,
    options: &Options,
    cmdline: Arc<Cmdline>,
    supervisor: &Arc<Supervisor>,
    stop: &Stop,
) -> api::ApiState {
    let shutdown = stop.shutdown();
    let storaged = || storaged::client::StoragedClient::default().with_timeout(CLIENT_TIMEOUT);
    let netd = || netd::client::NetdClient::default().with_timeout(CLIENT_TIMEOUT);

    let node_identity = Arc::new(identity::Identity::default());
    tasks.spawn_until(
        "identity",
        shutdown,
        node_identity.clone().maintain(
            storaged::client::StoragedClient::default(),
            config.identity.cache_dir.clone(),
            cmdline.params.clone(),
        ),
    );
    let chain = Arc::new(chain::Chain::default());
    tasks.spawn_until(
        "chain",
        shutdown,
        chain.clone().run(
            cmdline.params.clone(),
            config.chain.clone(),
            chain::Sources {
                identity: node_identity.clone(),
                storaged: storaged(),
                netd: netd(),
                proc_root: options.proc_root.clone(),
                mesh: config.mesh.clone(),
            },
            shutdown.clone(),
        ),
    );
    let provisioning = Arc::new(provision::Provisioning::default());
    tasks.spawn_until(
        "provisioning",
        shutdown,
        provisioning.clone().run(
            provision::GlueSources {
                chain: chain.clone(),
                identity: node_identity.clone(),
                params: cmdline.params.clone(),
                config: config.chain.clone(),
                reported: config
                    .identity
                    .cache_dir
                    .join("provision")
                    .join("reported.json"),
            },
            shutdown.clone(),
        ),
    );
    let snapshot = Arc::new(operator::snapshot::Snapshot::default());
    tasks.spawn_until(
        "snapshot",
        shutdown,
        snapshot.clone().refresh_forever(
            storaged(),
            netd(),
            provisiond::client::ProvisiondClient::default().with_timeout(CLIENT_TIMEOUT),
            supervisor.clone(),
        ),
    );
    api::ApiState {
        snapshot,
        verifier: Arc::new(auth::RequestVerifier::at(
            &config.identity.cache_dir.join("auth").join("nonces.json"),
            (clock::unix_ms() / 1000) as i64,
        )),
        stop: stop.clone(),
        chain,
        provisioning,
        storaged: storaged(),
        netd: netd(),
        started: std::time::Instant::now(),
        identity: node_identity,
        supervisor: supervisor.clone(),
        detached: Detached::new(),
        upgrades: Arc::new(upgrade::Upgrades::new(
            upgrade::running_version(Path::new("/etc/os-release")),
            cmdline.params.upgrade.slot,
            cmdline
                .params
                .upgrade
                .deadline_secs
                .map_or(upgrade::DEFAULT_DEADLINE, Duration::from_secs),
            upgrade::Paths::default(),
        )),
        cmdline,
        watchdog: None,
    }
}

/// How long the agent may take to drain once it is asked to stop: each
/// daemon, stopped one after another, within its grace and a little more,
/// then the tasks and the API servers within theirs. As the machine's init
/// it reboots or powers off only after the drain; a drain cut short ends
/// the process, and the kernel then panics and reboots (`panic=10`).
pub const DRAIN: Duration = Duration::from_secs(
    3 * (grove_daemon::shutdown::GRACE.as_secs() + 1)
        + 2 * grove_daemon::shutdown::GRACE.as_secs()
        + 5,
);

/// How long the agent waits for a daemon's answer on its own behalf.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The operator API's two listeners, bound before anything else starts so a
/// port in use is a configuration error at once.
struct Listeners {
    tcp: tokio::net::TcpListener,
    tcp_addr: SocketAddr,
    limits: api::ConnectionLimits,
    unix: tokio::net::UnixListener,
}

impl Listeners {
    async fn bind(api: &config::ApiConfig) -> Result<Self, AgentError> {
        let tcp = tokio::net::TcpListener::bind(api.listen)
            .await
            .map_err(|source| AgentError::Listen {
                addr: api.listen,
                source,
            })?;
        let unix = grove_daemon::server::bind_unix(&api.socket).await?;
        tracing::info!(operator_api = %api.listen, socket = %api.socket.display(), "serving");
        Ok(Self {
            tcp,
            tcp_addr: api.listen,
            limits: api::ConnectionLimits::from_config(api),
            unix,
        })
    }

    /// Serves `app` on both until `shutdown` trips, then lets the answers
    /// in flight finish.
    fn serve(self, app: axum::Router, shutdown: &Shutdown) -> Tasks<Result<(), AgentError>> {
        let mut servers = Tasks::default();
        let addr = self.tcp_addr;
        let serve_error = move |source| AgentError::Serve { addr, source };
        let tcp = self.tcp;
        let limits = self.limits;
        let stop = shutdown.clone();
        let tcp_app = app.clone();
        servers.spawn("operator api (tcp)", async move {
            api::serve_tcp(tcp, tcp_app, limits, stop).await;
            Ok(())
        });
        let stop = shutdown.clone();
        servers.spawn("operator api (socket)", async move {
            axum::serve(self.unix, app)
                .with_graceful_shutdown(async move { stop.wait().await })
                .await
                .map_err(serve_error)
        });
        servers
    }
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

/// Arms the machine's hardware watchdog when the agent is its init and
/// there is one, and starts the heartbeat that keeps it fed; it is closed
/// (disarmed) after the drain, before a reboot or power-off.
async fn arm_watchdog() -> Option<(watchdog::Watchdog, tokio::task::JoinHandle<()>)> {
    if std::process::id() != 1 {
        return None;
    }
    let armed = tokio::task::spawn_blocking(|| {
        let device = watchdog::find(Path::new("/sys"), Path::new("/dev"))?;
        match watchdog::Watchdog::arm(&device) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(device = %device.path.display(), error = %e, "cannot arm the watchdog");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()?;
    let beater = tokio::spawn(armed.beater().run());
    Some((armed, beater))
}

/// What the machine does once the agent, its init, has stopped: restart
/// for a farmer's reboot, power off for a signal (SIGTERM, or SIGINT from
/// Ctrl-Alt-Del on the console, which [`init_machine`] turns into one).
/// Elsewhere (a development host, the testbed) the agent has stopped and
/// that is all.
fn end_machine(reason: StopReason) {
    use nix::sys::reboot::RebootMode;
    let mode = match reason {
        StopReason::Reboot => RebootMode::RB_AUTOBOOT,
        StopReason::Signal => RebootMode::RB_POWER_OFF,
    };
    if std::process::id() != 1 {
        if reason == StopReason::Reboot {
            tracing::warn!("reboot requested; not PID 1, so the agent only stops");
        }
        return;
    }
    tracing::info!(?mode, "the node's services stopped; ending the machine");
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(mode);
    tracing::error!(error = %e, ?mode, "the kernel refused to end the machine");
}

/// As the machine's init: Ctrl-Alt-Del sends the agent SIGINT, so it
/// stops the node cleanly, rather than the kernel restarting it at once.
fn init_machine() {
    if std::process::id() != 1 {
        return;
    }
    mounts::mount_missing();
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(error = %e, "Ctrl-Alt-Del still restarts the machine at once");
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
