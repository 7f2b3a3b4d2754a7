//! The operator API's node-wide views in a real node: status, capacity,
//! disks, network and Prometheus metrics.

use std::time::Duration;

use agent::api::NetworkReport;
use agent::operator::capacity::NodeCapacity;
use agent::operator::status::{NodeState, StatusReport};
use grove_testbed::{DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, wait_until};

fn start(spec: NodeSpec) -> Farm {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    Farm::start(FarmSpec::with_nodes(vec![spec]))
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)))
}

fn get(node: &Node, path: &str) -> (u16, String) {
    let url = format!("{}{path}", node.api_url().expect("url"));
    http_get(&url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn json<T: serde::de::DeserializeOwned>(node: &Node, path: &str) -> T {
    let (status, body) = get(node, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn a_healthy_node_reports_ready_with_its_capacity_disks_network_and_metrics() {
    let farm = start(NodeSpec::default().disks(vec![DiskSpec::ssd(1024), DiskSpec::hdd(2048)]));
    let node = farm.node(0);
    let mut last = None;
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let s: StatusReport = json(node, "/v1/status");
        let ok = s.state == NodeState::Ready;
        last = Some(s);
        ok
    });
    assert!(ready, "never ready: {last:?}\n{}", farm.logs(30));
    let status = last.expect("status");
    assert!(status.reasons.is_empty());
    assert!(status.account.is_some_and(|a| a.starts_with('5')));

    let capacity: NodeCapacity = json(node, "/v1/capacity");
    assert_eq!(
        capacity.cru.total,
        std::thread::available_parallelism().expect("cpus").get() as u64
    );
    assert_eq!(capacity.sru.total, 1024 << 20);
    assert_eq!(capacity.hru.total, 2048 << 20);
    assert!(capacity.mru.reserved >= 2 << 30);
    assert_eq!(
        capacity.sru.free,
        capacity.sru.total - capacity.sru.reserved - capacity.sru.used
    );

    let disks: Vec<storaged::storage::Disk> = json(node, "/v1/disks");
    assert_eq!(disks.len(), 2);
    let network: NetworkReport = json(node, "/v1/network");
    assert!(
        network.interfaces.iter().any(|i| i.name == "eth0"),
        "{network:?}"
    );

    let (code, text) = get(node, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains("grove_node_state{state=\"ready\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("grove_service_up{service=\"netd\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "grove_capacity{{resource=\"sru\",kind=\"total\"}} {}",
        1024u64 << 20
    )));
}

#[test]
fn a_node_without_disks_is_degraded_and_says_why() {
    let farm = start(NodeSpec::default());
    let node = farm.node(0);
    let mut last = None;
    let degraded = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let s: StatusReport = json(node, "/v1/status");
        let ok = s.state == NodeState::Degraded && s.reasons.iter().any(|r| r.contains("no pool"));
        last = Some(s);
        ok
    });
    let status = last.expect("status");
    // Everything is up, so nothing is "still booting": it is degraded.
    assert!(degraded, "{status:?}\n{}", farm.logs(30));
    let reasons = status.reasons.join("\n");
    assert!(reasons.contains("no pool"), "{reasons}");
}
