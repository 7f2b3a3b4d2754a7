//! Nodes on the embedded registry: registration, uptime reports, a
//! registry outage that loses nothing, and a farm that does not exist.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent::chain::ChainStatus;
use agent::registry::model::{Node, UptimeReport};
use grove_testbed::{DiskSpec, Farm, FarmSpec, NodeSpec, http_get, wait_until};

/// The registry process, killed on drop.
struct Registry {
    child: Option<Child>,
    url: String,
}

impl Registry {
    fn start(farm: &Farm, state: &Path, port: u16) -> Registry {
        let listen = format!("{}:{port}", farm.host_ip());
        let agent = grove_testbed::bin_dir().expect("binaries").join("agent");
        let child = Command::new(agent)
            .args([
                "registry",
                "--listen",
                &listen,
                "--farm",
                "test-farm",
                "--state",
            ])
            .arg(state)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("registry starts");
        let url = format!("http://{listen}");
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            http_get(&format!("{url}/v1/farms/1")).is_ok_and(|(s, _)| s == 200)
        });
        assert!(up, "registry did not come up on {url}");
        Registry {
            child: Some(child),
            url,
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = http_get(&format!("{}{path}", self.url)).expect("registry answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chain(node: &grove_testbed::Node) -> ChainStatus {
    let (_, body) = http_get(&format!("{}/v1/chain", node.api_url().expect("url"))).expect("GET");
    serde_json::from_str(&body).expect("chain status")
}

fn farm(nodes: usize, cmdline: impl Fn(usize) -> Option<String>) -> Farm {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    let specs = (0..nodes)
        .map(|i| {
            let spec = NodeSpec::default().disks(vec![DiskSpec::ssd(512)]).config(
                grove_testbed::Daemon::Agent,
                "[chain]\nuptime_interval_secs = 2\n",
            );
            match cmdline(i) {
                Some(c) => spec.cmdline(&c),
                None => spec,
            }
        })
        .collect();
    Farm::start(FarmSpec::with_nodes(specs).without_agents())
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)))
}

fn port() -> u16 {
    18000 + (std::process::id() % 1000) as u16
}

#[test]
fn nodes_register_report_uptime_and_lose_nothing_in_an_outage() {
    let farm = farm(3, |_| None);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("registry.json");
    let mut registry = Registry::start(&farm, &state, port());
    for node in farm.nodes() {
        node.set_cmdline(&format!(
            "grove.farm=1 grove.chain=embedded grove.chain.url={}",
            registry.url
        ))
        .expect("cmdline");
        node.start_agent().expect("boot");
        node.wait_api(Duration::from_secs(30)).expect("API up");
    }

    let mut ids = Vec::new();
    for node in farm.nodes() {
        let mut last = ChainStatus::default();
        let registered = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            last = chain(node);
            last.node_id.is_some() && last.last_uptime_report.is_some()
        });
        assert!(
            registered,
            "{} never registered: {last:?}\n{}",
            node.name(),
            farm.logs(20)
        );
        assert!(last.account.as_deref().is_some_and(|a| a.starts_with('5')));
        assert_eq!(last.farm_id, Some(1));
        ids.push(last.node_id.expect("node id"));
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");

    let nodes: Vec<Node> = registry.get("/v1/nodes?farm_id=1");
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        assert_eq!(n.registration.resources.sru, 512 << 20, "{n:?}");
        assert!(n.registration.resources.cru > 0 && n.registration.resources.mru > 0);
        assert!(
            n.registration
                .interfaces
                .iter()
                .any(|i| i.name == "eth0" && !i.ips.is_empty()),
            "{n:?}"
        );
    }

    // The registry goes away for a while; reports wait in the queue.
    let node = farm.node(0);
    let id = ids[0];
    let before: Vec<UptimeReport> = registry.get(&format!("/v1/nodes/{id}/uptime"));
    registry.stop();
    let down = Instant::now();
    let queued = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        chain(node).queue_length >= 3
    });
    let during = chain(node);
    assert!(queued, "reports did not queue up: {during:?}");
    assert!(
        during
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not delivered")),
        "{during:?}"
    );
    let outage = down.elapsed();

    let registry = Registry::start(&farm, &state, port());
    let drained = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let c = chain(node);
        c.queue_length == 0 && c.error.is_none()
    });
    assert!(drained, "queue not drained: {:?}", chain(node));
    let after: Vec<UptimeReport> = registry.get(&format!("/v1/nodes/{id}/uptime"));
    let seqs: Vec<u64> = after.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {seqs:?}"
    );
    assert!(
        after.len() >= before.len() + 3,
        "{} before, {} after",
        before.len(),
        after.len()
    );
    assert_eq!(&after[..before.len()], &before[..]);
    let first_new = after[before.len()];
    assert!(
        first_new.timestamp < before.last().expect("a report").timestamp + outage.as_secs() + 2,
        "the outage's reports were not kept"
    );
    // Each node's sequence numbers run without gaps: nothing was dropped.
    // (Registration reports share the numbering, so uptime numbers may skip
    // by one when a registration was queued in between.)
    assert!(
        seqs.windows(2).all(|w| w[1] - w[0] <= 2),
        "a report went missing: {seqs:?}"
    );
}

#[test]
fn a_farm_that_does_not_exist_is_named_and_the_node_keeps_running() {
    let farm = farm(1, |_| None);
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&farm, &dir.path().join("registry.json"), port() + 1000);
    let node = farm.node(0);
    node.set_cmdline(&format!("grove.farm=99 grove.chain.url={}", registry.url))
        .expect("cmdline");
    node.start_agent().expect("boot");
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let mut last = ChainStatus::default();
    let named = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        last = chain(node);
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("farm 99 does not exist"))
    });
    assert!(named, "{last:?}");
    assert_eq!(last.node_id, None);
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.agent_pid().is_some(), "the agent stopped");
    let services: Vec<agent::supervisor::ServiceStatus> = serde_json::from_str(
        &http_get(&format!("{}/v1/services", node.api_url().expect("url")))
            .expect("GET")
            .1,
    )
    .expect("json");
    assert!(services.iter().all(|s| s.restarts == 0));
}
