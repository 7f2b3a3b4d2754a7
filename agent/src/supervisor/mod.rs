//! Supervision of the node's daemons.
//!
//! The agent starts `storaged` and `netd` at once, and `provisiond` once both
//! answer `/ready` (see [`starts_after`]); restarts any that dies, with
//! backoff; keeps the last lines of each one's output; and on shutdown stops
//! them in the reverse order. Child processes are reaped by
//! [`reaper::Reaper`].

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

/// The daemons that must answer `/ready` before daemon `name` starts.
///
/// netd does not wait for storaged: its uplink needs no disk, and the
/// node's address is what lets operators reach it. It keeps away from its
/// state on the system cache until storaged is ready (its `--state-after`
/// flag, see [`netd::flags::Flags`]). provisiond needs both.
pub fn starts_after(name: &str) -> &'static [&'static str] {
    match name {
        provisiond::NAME => &[storaged::NAME, netd::NAME],
        _ => &[],
    }
}

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
                    after: starts_after(name).iter().map(|&n| n.to_owned()).collect(),
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
    /// boot order, each within its grace period. A service starts once those
    /// its spec names in `after` have been ready.
    pub async fn run(&self, reaper: Arc<Reaper>, shutdown: Shutdown) {
        let mut running = Vec::new();
        for service in &self.services {
            let after = service
                .after()
                .iter()
                .filter_map(|name| self.service(name))
                .map(|s| s.became_ready())
                .collect();
            let stop = Shutdown::new();
            let span = tracing::info_span!("supervise", service = service.name());
            let task = tokio::spawn(
                service
                    .clone()
                    .supervise(
                        reaper.clone(),
                        after,
                        self.policy.clone(),
                        stop.clone(),
                        shutdown.clone(),
                    )
                    .instrument(span),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisiond_waits_for_both_and_netd_does_not_wait_for_storaged() {
        assert!(starts_after(storaged::NAME).is_empty());
        assert!(starts_after(netd::NAME).is_empty());
        assert_eq!(
            starts_after(provisiond::NAME),
            &[storaged::NAME, netd::NAME]
        );
        // Every dependency is a daemon that comes earlier in the boot order,
        // so the reverse order stops a service before what it needs.
        for (k, name) in BOOT_ORDER.iter().enumerate() {
            for needed in starts_after(name) {
                let at = BOOT_ORDER.iter().position(|n| n == needed);
                assert!(at.is_some_and(|at| at < k), "{name} after {needed}");
            }
        }
        let specs =
            Supervisor::standard_specs(Path::new("/bin"), Path::new("/etc"), |_| Vec::new());
        let provisiond = specs.iter().find(|s| s.name == provisiond::NAME);
        assert_eq!(
            provisiond.map(|s| s.after.clone()),
            Some(vec![storaged::NAME.to_owned(), netd::NAME.to_owned()])
        );
    }
}
