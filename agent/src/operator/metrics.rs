//! `/metrics`: the node's state in the Prometheus text exposition format.
//!
//! Hand-written (a handful of gauges and counters, no registry crate): each
//! family gets its `# HELP` and `# TYPE` line once, label values are
//! escaped as the format requires.

use std::fmt::Write;

use super::capacity::NodeCapacity;
use super::status::{NodeState, StatusReport};
use crate::hostinfo::HostInfo;
use crate::supervisor::{ServiceState, ServiceStatus};

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub status: &'a StatusReport,
    pub services: &'a [ServiceStatus],
    pub capacity: &'a NodeCapacity,
    pub boot_errors: usize,
    pub chain: &'a crate::chain::ChainStatus,
    /// Unix seconds, for ages.
    pub now_secs: u64,
    pub host: &'a HostInfo,
    /// What provisiond says of its deployments, when it answers.
    pub deployments: Option<&'a super::snapshot::DeploymentFacts>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _infallible = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one sample per daemon that has a value.
struct ServiceFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ServiceStatus) -> Option<String>,
}

pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "grove_node_state",
        "gauge",
        "1 for the node's current state.",
    );
    for (state, name) in [
        (NodeState::Booting, "booting"),
        (NodeState::Ready, "ready"),
        (NodeState::Degraded, "degraded"),
    ] {
        let v = u8::from(s.status.state == state);
        let _ = writeln!(out, "grove_node_state{{state=\"{name}\"}} {v}");
    }
    family(
        &mut out,
        "grove_node_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    let _ = writeln!(out, "grove_node_uptime_seconds {}", s.status.uptime_secs);
    family(
        &mut out,
        "grove_boot_parameter_errors",
        "gauge",
        "Boot parameters that were refused.",
    );
    let _ = writeln!(out, "grove_boot_parameter_errors {}", s.boot_errors);
    let per_service = [
        ServiceFamily {
            name: "grove_service_up",
            kind: "gauge",
            help: "1 when the daemon answers /ready.",
            value: |svc| Some(u64::from(svc.state == ServiceState::Ready).to_string()),
        },
        ServiceFamily {
            name: "grove_service_restarts_total",
            kind: "counter",
            help: "Times the agent restarted the daemon.",
            value: |svc| Some(svc.restarts.to_string()),
        },
        ServiceFamily {
            name: "grove_service_cpu_seconds_total",
            kind: "counter",
            help: "CPU time the daemon's current process has used.",
            value: |svc| svc.usage.as_ref().map(|u| u.cpu_seconds.to_string()),
        },
        ServiceFamily {
            name: "grove_service_resident_memory_bytes",
            kind: "gauge",
            help: "Resident memory of the daemon's current process.",
            value: |svc| svc.usage.as_ref().map(|u| u.rss_bytes.to_string()),
        },
    ];
    for f in per_service {
        family(&mut out, f.name, f.kind, f.help);
        for svc in s.services {
            if let Some(v) = (f.value)(svc) {
                let _ = writeln!(out, "{}{{service=\"{}\"}} {v}", f.name, escape(&svc.name));
            }
        }
    }
    if let Some(percent) = s.host.cpu.usage_percent {
        family(
            &mut out,
            "grove_node_cpu_usage_ratio",
            "gauge",
            "Share of all the node's CPUs busy over the last second, 0 to 1.",
        );
        let _ = writeln!(out, "grove_node_cpu_usage_ratio {}", percent / 100.0);
    }
    family(
        &mut out,
        "grove_node_memory_bytes",
        "gauge",
        "The node's memory: total, and available to new work.",
    );
    let _ = writeln!(
        out,
        "grove_node_memory_bytes{{kind=\"total\"}} {}",
        s.host.memory.total_bytes
    );
    let _ = writeln!(
        out,
        "grove_node_memory_bytes{{kind=\"available\"}} {}",
        s.host.memory.available_bytes
    );
    family(
        &mut out,
        "grove_capacity",
        "gauge",
        "Node capacity by resource (cru threads, mru/sru/hru bytes).",
    );
    for (resource, r) in [
        ("cru", s.capacity.cru),
        ("mru", s.capacity.mru),
        ("sru", s.capacity.sru),
        ("hru", s.capacity.hru),
    ] {
        for (kind, v) in [
            ("total", r.total),
            ("reserved", r.reserved),
            ("used", r.used),
            ("free", r.free),
        ] {
            resource_sample(&mut out, "grove_capacity", resource, kind, v);
        }
    }
    if let Some(d) = s.deployments {
        deployments(&mut out, d);
    }
    chain(&mut out, s.chain, s.now_secs);
    out
}

/// The deployments by state, and what they hold per resource.
fn deployments(out: &mut String, d: &super::snapshot::DeploymentFacts) {
    family(
        out,
        "grove_deployments",
        "gauge",
        "Deployments provisiond holds, by state.",
    );
    for state in [
        "deploying",
        "ok",
        "error",
        "updating",
        "unchanged",
        "deleting",
        "deleted",
    ] {
        let n = d.states.get(state).copied().unwrap_or(0);
        let _ = writeln!(out, "grove_deployments{{state=\"{state}\"}} {n}");
    }
    family(
        out,
        "grove_deployments_capacity",
        "gauge",
        "What deployments hold and what is free for them, by resource (cru cores, mru/sru/hru bytes).",
    );
    let c = &d.capacity;
    for (kind, r) in [("used", &c.used), ("free", &c.free)] {
        for (resource, v) in [
            ("cru", r.cru),
            ("mru", r.mru),
            ("sru", r.sru),
            ("hru", r.hru),
        ] {
            resource_sample(out, "grove_deployments_capacity", resource, kind, v);
        }
    }
}

/// One sample of `metric` labelled with a resource and a kind.
fn resource_sample(out: &mut String, metric: &str, resource: &str, kind: &str, v: u64) {
    let _infallible = writeln!(
        out,
        "{metric}{{resource=\"{resource}\",kind=\"{kind}\"}} {v}"
    );
}

/// The node on the registry.
fn chain(out: &mut String, c: &crate::chain::ChainStatus, now: u64) {
    family(
        out,
        "grove_chain_connected",
        "gauge",
        "1 when the registry answers.",
    );
    let _ = writeln!(out, "grove_chain_connected {}", u8::from(c.connected));
    family(
        out,
        "grove_chain_registered",
        "gauge",
        "1 when the node has its node id on the registry.",
    );
    let _ = writeln!(
        out,
        "grove_chain_registered {}",
        u8::from(c.node_id.is_some())
    );
    family(
        out,
        "grove_chain_queue_length",
        "gauge",
        "Uptime reports waiting to be delivered.",
    );
    let _ = writeln!(out, "grove_chain_queue_length {}", c.queue_length);
    family(
        out,
        "grove_chain_last_report_age_seconds",
        "gauge",
        "Seconds since a report was last delivered (absent before the first).",
    );
    if let Some(at) = c.last_report_at {
        let _ = writeln!(
            out,
            "grove_chain_last_report_age_seconds {}",
            now.saturating_sub(at)
        );
    }
    family(
        out,
        "grove_chain_clock_skew_seconds",
        "gauge",
        "The node's clock minus the chain's, when last read.",
    );
    if let Some(skew) = c.clock_skew_secs {
        let _ = writeln!(out, "grove_chain_clock_skew_seconds {skew}");
    }
    family(
        out,
        "grove_chain_refusals_total",
        "counter",
        "Failures and refusals from the registry, by kind.",
    );
    for (kind, n) in &c.refusals {
        let _ = writeln!(
            out,
            "grove_chain_refusals_total{{kind=\"{}\"}} {n}",
            escape(kind)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_exposition_text() {
        let status = StatusReport {
            state: NodeState::Degraded,
            reasons: vec!["x".into()],
            account: None,
            uptime_secs: 42,
        };
        let services = [ServiceStatus {
            name: "ne\"td".into(),
            state: ServiceState::Ready,
            pid: Some(3),
            restarts: 2,
            started_at_ms: None,
            ready_after_ms: None,
            last_exit: None,
            next_start_in_ms: None,
            usage: Some(crate::hostinfo::ProcessUsage {
                cpu_percent: Some(1.5),
                cpu_seconds: 2.25,
                rss_bytes: 4096,
            }),
        }];
        let host = HostInfo {
            cpu: crate::hostinfo::Cpu {
                usage_percent: Some(50.0),
                ..Default::default()
            },
            memory: crate::hostinfo::Memory {
                total_bytes: 1000,
                available_bytes: 400,
            },
            ..HostInfo::default()
        };
        let text = render(&Snapshot {
            status: &status,
            services: &services,
            capacity: &NodeCapacity::default(),
            boot_errors: 1,
            chain: &crate::chain::ChainStatus {
                connected: false,
                queue_length: 3,
                last_report_at: Some(1000),
                refusals: [
                    ("InvalidSRUInput".to_owned(), 1),
                    ("unreachable".to_owned(), 4),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            },
            now_secs: 1090,
            host: &host,
            deployments: Some(&crate::operator::snapshot::DeploymentFacts {
                capacity: provisiond::api::CapacityView {
                    total: provisiond::capacity::Resources::default(),
                    reserved: provisiond::capacity::Resources::default(),
                    used: provisiond::capacity::Resources {
                        cru: 0,
                        mru: 0,
                        sru: 3 << 30,
                        hru: 0,
                    },
                    overhead: 0,
                    free: provisiond::capacity::Resources::default(),
                    pools: Vec::new(),
                    wireguard_ports: vec![3000],
                },
                states: [("ok".to_owned(), 2), ("error".to_owned(), 1)]
                    .into_iter()
                    .collect(),
                workloads: Vec::new(),
            }),
        });
        for sample in [
            "grove_chain_connected 0\n",
            "grove_chain_queue_length 3\n",
            "grove_chain_last_report_age_seconds 90\n",
            "grove_chain_refusals_total{kind=\"InvalidSRUInput\"} 1\n",
            "grove_chain_refusals_total{kind=\"unreachable\"} 4\n",
            "grove_node_state{state=\"degraded\"} 1\n",
            "grove_node_state{state=\"ready\"} 0\n",
            "grove_service_restarts_total{service=\"ne\\\"td\"} 2\n",
            "grove_capacity{resource=\"hru\",kind=\"free\"} 0\n",
            "grove_service_cpu_seconds_total{service=\"ne\\\"td\"} 2.25\n",
            "grove_service_resident_memory_bytes{service=\"ne\\\"td\"} 4096\n",
            "grove_node_cpu_usage_ratio 0.5\n",
            "grove_node_memory_bytes{kind=\"available\"} 400\n",
            "grove_deployments{state=\"ok\"} 2\n",
            "grove_deployments{state=\"error\"} 1\n",
            "grove_deployments{state=\"deleting\"} 0\n",
            format!(
                "grove_deployments_capacity{{resource=\"sru\",kind=\"used\"}} {}\n",
                3u64 << 30
            )
            .as_str(),
        ] {
            assert!(text.contains(sample), "{sample:?} missing from {text}");
        }
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("a value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        let helps = text
            .lines()
            .filter(|l| l.starts_with("# HELP grove_capacity "))
            .count();
        assert_eq!(helps, 1);
    }
}
