//! Supervision of the node's daemons.
//!
//! The agent starts `storaged`, then `netd`, then `provisiond`, each after the
//! one before it answers `/ready`; restarts any that dies, with backoff; keeps
//! the last lines of each one's output; and on shutdown stops them in the
//! reverse order. Child processes are reaped by [`reaper::Reaper`].

pub mod leftovers;
pub mod logs;
pub mod reaper;
pub mod service;

use std::path::Path;
use std::sync::Arc;

use grove_daemon::shutdown::Shutdown;
use tokio::sync::watch;
use tracing::Instrument;

use reaper::Reaper;
pub use service::{Policy, Service, ServiceSpec, ServiceState, ServiceStatus};

/// The daemons the agent supervises, in boot order.
pub const BOOT_ORDER: [&str; 3] = [storaged::NAME, netd::NAME, provisiond::NAME];

/// The node's supervised daemons.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Arc<Service>>,
    policy: Policy,
    changed: Arc<watch::Sender<()>>,
}

impl Supervisor {
    pub fn new(specs: Vec<ServiceSpec>, policy: Policy) -> Self {
        let changed = Arc::new(watch::channel(()).0);
        let services = specs
            .into_iter()
            .map(|spec| Service::new(spec, policy.log_lines, changed.clone()))
            .collect();
        Self {
            services,
            policy,
            changed,
        }
    }

    /// Signalled whenever any service's status changes.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Specs for the standard daemons: binaries in `bin_dir`, each given
    /// `--config <config_dir>/<name>.toml` when that file exists, then the
    /// flags `extra` gives for it.
    pub fn standard_specs(
        bin_dir: &Path,
        config_dir: &Path,
        extra: impl Fn(&str) -> Vec<String>,
    ) -> Vec<ServiceSpec> {
        BOOT_ORDER
            .iter()
            .map(|name| {
                let config = config_dir.join(format!("{name}.toml"));
                let mut args = if config.exists() {
                    vec!["--config".to_owned(), config.display().to_string()]
                } else {
                    Vec::new()
                };
                args.extend(extra(name));
                ServiceSpec {
                    name: (*name).to_owned(),
                    program: bin_dir.join(name),
                    args,
                    socket: grove_daemon::socket_path(name),
                }
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(|s| s.status()).collect()
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// Names of the services that are not ready now.
    pub fn not_ready(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.status().state != ServiceState::Ready)
            .map(|s| s.name().to_owned())
            .collect()
    }

    /// Stops what a previous agent left running of these daemons (see
    /// [`leftovers`]), before any of them is started.
    pub async fn stop_leftovers(&self, proc_root: &Path) {
        let programs: Vec<_> = self
            .services
            .iter()
            .map(|s| s.program().to_owned())
            .collect();
        let proc_root = proc_root.to_owned();
        let grace = self.policy.stop_grace;
        let stopped =
            tokio::task::spawn_blocking(move || leftovers::stop(&proc_root, &programs, grace))
                .await;
        match stopped {
            Ok((found, left)) if !left.is_empty() => {
                tracing::error!(found = ?found, left = ?left, "daemons a previous agent left could not be stopped");
            }
            Ok((found, _)) if !found.is_empty() => {
                tracing::warn!(found = ?found, "stopped the daemons a previous agent left");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "looking for leftover daemons failed"),
        }
    }

    /// Runs every service until `shutdown` trips, then stops them in reverse
    /// boot order, each within its grace period.
    pub async fn run(&self, reaper: Arc<Reaper>, shutdown: Shutdown) {
        let mut running = Vec::new();
        let mut after = None;
        for service in &self.services {
            let stop = Shutdown::new();
            let span = tracing::info_span!("supervise", service = service.name());
            let task = tokio::spawn(
                service
                    .clone()
                    .supervise(
                        reaper.clone(),
                        after.take(),
                        self.policy.clone(),
                        stop.clone(),
                        shutdown.clone(),
                    )
                    .instrument(span),
            );
            after = Some(service.became_ready());
            running.push((service.name().to_owned(), stop, task));
        }
        shutdown.wait().await;
        for (name, stop, task) in running.into_iter().rev() {
            stop.trigger();
            if let Err(e) = task.await {
                tracing::error!(service = %name, error = %e, "supervision task failed");
            }
        }
    }
}
