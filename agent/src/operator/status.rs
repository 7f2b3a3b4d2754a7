//! The node's overall state for `/v1/status`: booting, ready or degraded,
//! with the reasons.
//!
//! A pure function of what the agent and the daemons report, so every rule
//! is unit-tested. A node is booting until its daemons first come up (at
//! most [`BOOT_GRACE`]); after that, anything wrong makes it degraded, and
//! each problem is named.

use std::time::Duration;

use netd::uplink::{UplinkReport, UplinkState};
use serde::{Deserialize, Serialize};
use storaged::report::Capacity;

use crate::identity::store::IdentityReport;
use crate::supervisor::{ServiceState, ServiceStatus};

/// How long a node may take to come up before "booting" turns "degraded".
pub const BOOT_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Booting,
    Ready,
    Degraded,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub state: NodeState,
    pub reasons: Vec<String>,
    pub account: Option<String>,
    pub uptime_secs: u64,
}

/// What the status is made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub agent_uptime: Duration,
    pub services: &'a [ServiceStatus],
    pub boot_errors: usize,
    /// `Err` holds why storaged could not be asked.
    pub capacity: Result<&'a Capacity, String>,
    pub uplink: Result<&'a UplinkReport, String>,
    pub identity: Option<&'a IdentityReport>,
    /// Why the node has no identity, while it waits for the farmer.
    pub waiting: Option<&'a crate::identity::choice::WaitingReport>,
    /// What is wrong with the node on the registry (see
    /// [`crate::chain::ChainStatus::problems`]).
    pub chain: &'a [String],
}

pub fn evaluate(i: &Inputs<'_>) -> StatusReport {
    let mut reasons = Vec::new();
    let mut coming_up = false;
    for s in i.services {
        match s.state {
            ServiceState::Ready => {}
            ServiceState::Waiting | ServiceState::Starting if s.restarts == 0 => {
                coming_up = true;
                reasons.push(format!("{} is starting", s.name));
            }
            other => {
                let why = s
                    .last_exit
                    .as_ref()
                    .map(|e| format!(" (last run {})", e.reason))
                    .unwrap_or_default();
                reasons.push(format!("{} is {other:?}{why}", s.name).to_lowercase());
            }
        }
    }
    if i.boot_errors > 0 {
        reasons.push(format!(
            "{} boot parameter(s) refused, see /v1/node",
            i.boot_errors
        ));
    }
    match &i.capacity {
        Ok(c) => {
            if let Some(d) = &c.cache.degraded {
                reasons.push(format!("storage: {d}"));
            }
            for pool in &c.broken_pools {
                reasons.push(format!("storage: pool {pool} is broken"));
            }
        }
        Err(e) => {
            coming_up = true;
            reasons.push(format!("storage does not answer: {e}"));
        }
    }
    match &i.uplink {
        Ok(u) => {
            match u.state {
                UplinkState::Bound | UplinkState::Static | UplinkState::Unmanaged => {}
                UplinkState::Probing => {
                    coming_up = true;
                    reasons.push("network: looking for an uplink".to_owned());
                }
                UplinkState::NoLease => reasons.push("network: no NIC got a DHCP lease".to_owned()),
                UplinkState::NoCarrier => {
                    reasons.push("network: the uplink has no carrier".to_owned())
                }
                UplinkState::Rebinding => {
                    reasons.push("network: the uplink lost its lease".to_owned())
                }
            }
            if let Some(e) = &u.error {
                reasons.push(format!("network: {e}"));
            }
        }
        Err(e) => {
            coming_up = true;
            reasons.push(format!("network does not answer: {e}"));
        }
    }
    match (i.identity, i.waiting) {
        (Some(id), _) => reasons.extend(id.warnings.iter().map(|w| format!("identity: {w}"))),
        (None, Some(w)) => {
            reasons.extend(w.reasons.iter().map(|r| format!("identity: {r}")));
            reasons.push(format!("identity: {}", w.answer));
        }
        (None, None) => {
            coming_up = true;
            reasons.push("identity: not loaded yet".to_owned());
        }
    }
    reasons.extend(i.chain.iter().cloned());
    let state = if reasons.is_empty() {
        NodeState::Ready
    } else if coming_up && i.agent_uptime < BOOT_GRACE {
        NodeState::Booting
    } else {
        NodeState::Degraded
    };
    StatusReport {
        state,
        reasons,
        account: i.identity.map(|id| id.public.account.clone()),
        uptime_secs: i.agent_uptime.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::PublicIdentity;
    use crate::identity::store::Source;

    fn service(name: &str, state: ServiceState, restarts: u32) -> ServiceStatus {
        ServiceStatus {
            name: name.to_owned(),
            state,
            pid: Some(1),
            restarts,
            started_at_ms: None,
            ready_after_ms: None,
            last_exit: None,
            next_start_in_ms: None,
            usage: None,
        }
    }

    fn capacity() -> Capacity {
        serde_json::from_value(serde_json::json!({
            "ssd": {"total_bytes": 1, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": 1},
            "hdd": {"total_bytes": 0, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": 0},
            "cache": {"mount_point": "/var/cache/grove", "pool": "grove-a", "kind": "ssd", "degraded": null},
            "broken_pools": []
        }))
        .expect("capacity")
    }

    fn uplink(state: &str) -> UplinkReport {
        serde_json::from_value(serde_json::json!({
            "state": state, "nic": "eth0", "bridge": "br-grove", "vlan": null,
            "address": "10.0.0.2/24", "gateway": "10.0.0.1", "dns": [], "lease_secs": null,
            "probes": [], "error": null
        }))
        .expect("uplink")
    }

    fn identity() -> IdentityReport {
        IdentityReport {
            public: PublicIdentity {
                account: "5Abc".into(),
                public_key: "00".into(),
                wireguard_public_key: "AA==".into(),
            },
            source: Source::Cache,
            copies: vec!["grove-a".into()],
            warnings: vec![],
        }
    }

    /// Five seconds after boot, no boot errors, storaged and netd answering,
    /// no chain problem.
    fn healthy<'a>(
        services: &'a [ServiceStatus],
        capacity: &'a Capacity,
        uplink: &'a UplinkReport,
        identity: Option<&'a IdentityReport>,
    ) -> Inputs<'a> {
        Inputs {
            agent_uptime: Duration::from_secs(5),
            services,
            boot_errors: 0,
            capacity: Ok(capacity),
            uplink: Ok(uplink),
            identity,
            waiting: None,
            chain: &[],
        }
    }

    #[test]
    fn all_well_is_ready() {
        let services = [service("storaged", ServiceState::Ready, 0)];
        let (c, u, id) = (capacity(), uplink("bound"), identity());
        let r = evaluate(&healthy(&services, &c, &u, Some(&id)));
        assert_eq!(r.state, NodeState::Ready, "{r:?}");
        assert_eq!(r.account.as_deref(), Some("5Abc"));
    }

    #[test]
    fn coming_up_is_booting_then_degraded_after_the_grace() {
        let services = [service("netd", ServiceState::Starting, 0)];
        let (c, u) = (capacity(), uplink("probing"));
        let mut inputs = healthy(&services, &c, &u, None);
        assert_eq!(evaluate(&inputs).state, NodeState::Booting);
        inputs.agent_uptime = BOOT_GRACE;
        assert_eq!(evaluate(&inputs).state, NodeState::Degraded);
    }

    #[test]
    fn a_node_waiting_for_its_identity_says_why_and_how_to_answer() {
        let services = [service("netd", ServiceState::Ready, 0)];
        let (c, u) = (capacity(), uplink("bound"));
        let waiting = crate::identity::choice::WaitingReport {
            reasons: vec!["pool grove-a is another node's pool (account 5A)".into()],
            accounts: vec!["5A".into()],
            target: Some("machine:m".into()),
            answer: "waiting for the farmer's signed choice: POST /v1/identity/choice".into(),
        };
        let r = evaluate(&Inputs {
            agent_uptime: BOOT_GRACE,
            services: &services,
            boot_errors: 0,
            capacity: Ok(&c),
            uplink: Ok(&u),
            identity: None,
            waiting: Some(&waiting),
            chain: &[],
        });
        assert_eq!(r.state, NodeState::Degraded, "{r:?}");
        assert!(
            r.reasons
                .contains(&"identity: pool grove-a is another node's pool (account 5A)".to_owned()),
            "{:?}",
            r.reasons
        );
        assert!(
            r.reasons
                .iter()
                .any(|w| w.contains("POST /v1/identity/choice")),
            "{:?}",
            r.reasons
        );
        assert!(!r.reasons.iter().any(|w| w.contains("not loaded yet")));
    }

    #[test]
    fn every_problem_is_named() {
        let mut dead = service("netd", ServiceState::Backoff, 3);
        dead.last_exit = Some(crate::supervisor::service::ExitRecord {
            reason: "exited with code 64".into(),
            exit: None,
            at_ms: 0,
            ran_ms: 10,
        });
        let services = [dead];
        let mut c = capacity();
        c.cache.degraded = Some("no SSD pool".into());
        c.broken_pools = vec!["grove-b".parse().expect("label")];
        let u = uplink("no_lease");
        let mut id = identity();
        id.warnings = vec!["pool grove-c holds another node's identity".into()];
        let r = evaluate(&Inputs {
            boot_errors: 2,
            ..healthy(&services, &c, &u, Some(&id))
        });
        assert_eq!(r.state, NodeState::Degraded);
        let all = r.reasons.join("\n");
        for needle in [
            "netd is backoff",
            "code 64",
            "2 boot parameter",
            "no SSD pool",
            "grove-b",
            "DHCP",
            "grove-c",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        let unreachable = evaluate(&Inputs {
            agent_uptime: Duration::from_secs(500),
            services: &[],
            boot_errors: 0,
            capacity: Err("connection refused".into()),
            uplink: Err("connection refused".into()),
            identity: Some(&identity()),
            waiting: None,
            chain: &[],
        });
        assert_eq!(unreachable.state, NodeState::Degraded);
        assert_eq!(unreachable.reasons.len(), 2);
    }

    #[test]
    fn a_chain_problem_makes_the_node_degraded_with_its_reason() {
        let services = [service("storaged", ServiceState::Ready, 0)];
        let (c, u, id) = (capacity(), uplink("bound"), identity());
        let chain = vec!["chain: waiting for funds: send at least 1 TFT to 5Abc".to_owned()];
        let r = evaluate(&Inputs {
            chain: &chain,
            ..healthy(&services, &c, &u, Some(&id))
        });
        assert_eq!(r.state, NodeState::Degraded, "{r:?}");
        assert_eq!(r.reasons, chain);
    }
}
