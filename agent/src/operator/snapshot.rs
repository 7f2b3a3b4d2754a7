//! What the daemons last said, refreshed in the background.
//!
//! `/v1/status`, `/v1/capacity` and `/metrics` read this snapshot instead
//! of asking storaged and netd on every request, so an operator's dashboard
//! or a Prometheus scrape costs the node no socket round trips and answers
//! in microseconds; the facts are at most [`REFRESH`] old. Each refresh
//! also samples the host's and every daemon's CPU and memory usage (the
//! daemons' go into their service status). A daemon that did not answer
//! leaves its typed cause in place of the fact; it becomes text only where
//! an answer shows it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use grove_daemon::client::ClientError;
use netd::uplink::UplinkReport;
use storaged::report::Capacity;

use crate::hostinfo::{HostInfo, Sampler};
use crate::supervisor::Supervisor;

/// How often the snapshot is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The last answers, or why there is none.
#[derive(Debug, Clone)]
pub struct Facts {
    pub capacity: Result<Capacity, FactError>,
    pub uplink: Result<UplinkReport, FactError>,
    pub host: HostInfo,
    /// What the agent itself uses.
    pub agent: Option<crate::hostinfo::ProcessUsage>,
    /// What deployments hold, from provisiond.
    pub deployments: Result<DeploymentFacts, FactError>,
}

/// Why a daemon's fact is missing from the snapshot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FactError {
    #[error("{daemon} not asked yet")]
    NotAsked { daemon: &'static str },
    /// The daemon's last answer was an error (shared by every reader of the
    /// snapshot until the next refresh).
    #[error(transparent)]
    Call(Arc<ClientError>),
}

impl From<ClientError> for FactError {
    fn from(e: ClientError) -> Self {
        Self::Call(Arc::new(e))
    }
}

/// provisiond's capacity and its deployments counted by state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentFacts {
    pub capacity: provisiond::api::CapacityView,
    /// How many deployments are in each state (`ok`, `deploying`, ...).
    pub states: std::collections::BTreeMap<String, u64>,
    /// The workloads that run (containers and machines), without anything
    /// the tenant keeps private: no image, address, environment or key.
    #[serde(default)]
    pub workloads: Vec<WorkloadFact>,
}

/// One running workload, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadFact {
    pub contract: u64,
    pub name: String,
    /// `container` or `zmachine`.
    pub kind: String,
    /// The workload's result state (`ok`, `error`, ...).
    pub state: String,
    /// How it runs now (`running`, `restarting`), when it runs.
    pub live: Option<String>,
    pub restarts: u64,
    /// When it last started running, milliseconds since the epoch.
    pub since_ms: Option<u64>,
}

/// The running workloads of `views`: their names, states and restarts.
pub fn workload_facts(views: &[provisiond::api::DeploymentView]) -> Vec<WorkloadFact> {
    let mut out = Vec::new();
    for view in views {
        let Some(workloads) = view.deployment["workloads"].as_array() else {
            continue;
        };
        for w in workloads {
            let kind = w["type"].as_str().unwrap_or_default();
            if !["container", "zmachine"].contains(&kind) {
                continue;
            }
            let live = &w["result"]["data"]["live"];
            out.push(WorkloadFact {
                contract: view.contract_id,
                name: w["name"].as_str().unwrap_or_default().to_owned(),
                kind: kind.to_owned(),
                state: w["result"]["state"].as_str().unwrap_or("init").to_owned(),
                live: live["state"].as_str().map(str::to_owned),
                restarts: live["restarts"].as_u64().unwrap_or(0),
                since_ms: live["since_ms"].as_u64(),
            });
        }
    }
    out
}

async fn deployment_facts(
    client: &provisiond::client::ProvisiondClient,
) -> Result<DeploymentFacts, FactError> {
    let (capacity, list) = tokio::join!(client.capacity(), client.deployments(None));
    let list = list?;
    let workloads = workload_facts(&list);
    let mut states = std::collections::BTreeMap::new();
    for d in list {
        let name = serde_json::to_value(d.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *states.entry(name).or_insert(0) += 1;
    }
    Ok(DeploymentFacts {
        capacity: capacity?,
        states,
        workloads,
    })
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            capacity: Err(FactError::NotAsked { daemon: "storaged" }),
            uplink: Err(FactError::NotAsked { daemon: "netd" }),
            host: HostInfo::default(),
            agent: None,
            deployments: Err(FactError::NotAsked {
                daemon: "provisiond",
            }),
        }
    }
}

/// The shared snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    facts: RwLock<Arc<Facts>>,
}

impl Snapshot {
    pub fn get(&self) -> Arc<Facts> {
        self.facts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refreshes the snapshot every [`REFRESH`] for as long as it runs.
    pub async fn refresh_forever(
        self: Arc<Self>,
        storaged: storaged::client::StoragedClient,
        netd: netd::client::NetdClient,
        provisiond: provisiond::client::ProvisiondClient,
        supervisor: Arc<Supervisor>,
    ) {
        let mut tick = tokio::time::interval(REFRESH);
        let mut sampler = Some(Sampler::new());
        loop {
            tick.tick().await;
            let daemons: Vec<(String, u32)> = supervisor
                .statuses()
                .into_iter()
                .filter_map(|s| Some((s.name, s.pid?)))
                .collect();
            let own = std::process::id();
            let pids: Vec<u32> = daemons
                .iter()
                .map(|(_, pid)| *pid)
                .chain(std::iter::once(own))
                .collect();
            let mut taken = sampler.take().unwrap_or_default();
            let sample = tokio::task::spawn_blocking(move || {
                let sample = taken.sample(&pids);
                (taken, sample)
            });
            let (capacity, uplink, deployments, sample) = tokio::join!(
                storaged.capacity(),
                netd.uplink(),
                deployment_facts(&provisiond),
                sample
            );
            let (host, agent) = match sample {
                Ok((taken, (host, usage))) => {
                    sampler = Some(taken);
                    for (name, pid) in &daemons {
                        if let Some(service) = supervisor.service(name) {
                            service.set_usage(*pid, usage.get(pid).copied());
                        }
                    }
                    (host, usage.get(&own).copied())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sampling the host failed");
                    (HostInfo::default(), None)
                }
            };
            let facts = Facts {
                capacity: capacity.map_err(FactError::from),
                uplink: uplink.map_err(FactError::from),
                host,
                agent,
                deployments,
            };
            *self.facts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(facts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_facts_show_state_and_restarts_and_nothing_private() {
        let view = provisiond::api::DeploymentView {
            contract_id: 7,
            twin_id: 31,
            version: 0,
            state: provisiond::api::DeploymentState::Ok,
            failure: None,
            deployment: serde_json::json!({"workloads": [
                {"name": "net", "type": "network", "data": {"wireguard_private_key": ""},
                 "result": {"state": "ok"}},
                {"name": "app", "type": "container",
                 "data": {"image": "r/app@sha256:00", "env": {"TOKEN": "s3cret"}},
                 "result": {"state": "ok", "data": {"ip": "10.1.1.5",
                    "live": {"state": "running", "restarts": 2, "since_ms": 1000}}}},
                {"name": "vm", "type": "zmachine", "data": {"env": {"SSH_KEY": "ssh-ed25519 AAAA"}},
                 "result": {"state": "error", "message": "no image"}},
            ]}),
        };
        let facts = workload_facts(&[view]);
        assert_eq!(
            facts,
            vec![
                WorkloadFact {
                    contract: 7,
                    name: "app".into(),
                    kind: "container".into(),
                    state: "ok".into(),
                    live: Some("running".into()),
                    restarts: 2,
                    since_ms: Some(1000),
                },
                WorkloadFact {
                    contract: 7,
                    name: "vm".into(),
                    kind: "zmachine".into(),
                    state: "error".into(),
                    live: None,
                    restarts: 0,
                    since_ms: None,
                },
            ]
        );
        let text = serde_json::to_string(&facts).expect("serialises");
        for private in ["s3cret", "ssh-ed25519", "10.1.1.5", "sha256", "TOKEN"] {
            assert!(!text.contains(private), "{private} in {text}");
        }
    }
}
