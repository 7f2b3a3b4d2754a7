//! Nodes on the embedded registry: registration, uptime reports, a
//! registry outage that loses nothing, a farm that does not exist, capacity
//! that follows the node, and a status that tells the truth.

mod signing;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent::chain::ChainStatus;
use agent::registry::model::{Node, UptimeReport};
use grove_testbed::{DiskSpec, Farm, FarmSpec, NodeSpec, holds_for, http_get, wait_until};

/// The registry process, killed on drop.
struct Registry {
    child: Option<Child>,
    url: String,
}

impl Registry {
    /// Farm 1 is owned by a farmer key kept beside the state file.
    fn start(farm: &Farm, state: &Path, port: u16) -> Registry {
        let key = state.with_extension("farmer.key");
        let farmer = if key.exists() {
            agent::cli::sign::account(&key).expect("the farmer key")
        } else {
            agent::cli::sign::new_key(&key).expect("a farmer key")
        };
        Registry::start_owned(farm, state, port, &farmer)
    }

    fn start_owned(farm: &Farm, state: &Path, port: u16, farmer: &str) -> Registry {
        let listen = format!("{}:{port}", farm.host_ip());
        let agent = grove_testbed::bin_dir().expect("binaries").join("agent");
        let mut cmd = Command::new(agent);
        cmd.args([
            "registry",
            "--listen",
            &listen,
            "--farm",
            "test-farm",
            "--state",
        ])
        .arg(state)
        .args(["--farmer", farmer]);
        let child = cmd
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
    Farm::start_for_test(FarmSpec::with_nodes(specs).without_agents())
}

fn port() -> u16 {
    18000 + (std::process::id() % 1000) as u16
}

#[test]
fn nodes_register_report_uptime_and_lose_nothing_in_an_outage() {
    let farm = farm(3, |_| None);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("registry.json");
    let mut registry = Registry::start(&farm, &state, port());
    for node in farm.nodes() {
        node.boot_on_registry(&registry.url)
            .expect("boots on the registry");
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

    // A node registers with what it has at once and follows its pools as
    // storaged brings them up: the registry holds each node's SSD soon.
    let mut nodes: Vec<Node> = Vec::new();
    let whole = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        nodes = registry.get("/v1/nodes?farm_id=1");
        nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n.registration.resources.sru == 512 << 20)
    });
    assert!(
        whole,
        "{nodes:?}\n{}",
        farm.nodes()
            .iter()
            .map(|n| {
                let api = n.api_url().expect("url");
                let get = |path: &str| {
                    http_get(&format!("{api}{path}"))
                        .map(|(_, body)| body)
                        .unwrap_or_default()
                };
                let log = std::fs::read_to_string(n.dir().join("agent.log")).unwrap_or_default();
                let storage: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("\"target\":\"storaged"))
                    .collect();
                format!(
                    "{}: disks {} capacity {}\n{}",
                    n.name(),
                    get("/v1/disks"),
                    get("/v1/capacity"),
                    storage.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
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

    // Each node's mesh0 has the other two as peers, from the registry, and
    // reaches them.
    let meshes: Vec<netd::mesh::view::MeshView> = farm
        .nodes()
        .iter()
        .map(|n| {
            let mut view = None;
            let peered = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
                let socket = n.socket(grove_testbed::Daemon::Netd).expect("netd");
                view = grove_testbed::unix_get(&socket, "/v1/mesh")
                    .ok()
                    .and_then(|(_, body)| {
                        serde_json::from_str::<netd::mesh::view::MeshView>(&body).ok()
                    });
                view.as_ref().is_some_and(|v| v.peers.len() == 2)
            });
            assert!(
                peered,
                "{} has no mesh peers: {view:?}\n{}",
                n.name(),
                farm.logs(20)
            );
            view.expect("mesh view")
        })
        .collect();
    for (i, n) in farm.nodes().iter().enumerate() {
        for (j, other) in meshes.iter().enumerate() {
            if i == j {
                continue;
            }
            let to = other.address.expect("a mesh address").to_string();
            let reached = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
                n.exec(&["ping", "-6", "-c", "1", "-W", "1", &to])
                    .is_ok_and(|o| o.status.success())
            });
            assert!(
                reached,
                "{} cannot reach node {j} at {to} over mesh0",
                n.name()
            );
        }
    }
    assert!(farm.nodes().iter().all(|n| chain(n).mesh_peers == 2));

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
            .is_some_and(|e| e.contains("not delivered") || e.contains("cannot reach the registry")),
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
    let dir = tempfile::tempdir().unwrap();
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
    let reasons = status(node).reasons;
    assert!(
        reasons.iter().any(|r| r.contains("farm 99 does not exist")),
        "{reasons:?}"
    );
    // The agent goes on waiting: it neither stops nor restarts a daemon.
    let url = format!("{}/v1/services", node.api_url().expect("url"));
    let mut services: Vec<agent::supervisor::ServiceStatus> = Vec::new();
    let steady = holds_for(Duration::from_secs(2), Duration::from_millis(100), || {
        if node.agent_pid().is_none() {
            return false;
        }
        services = http_get(&url)
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        !services.is_empty() && services.iter().all(|s| s.restarts == 0)
    });
    assert!(
        steady,
        "the agent stopped or restarted a daemon: {services:?}"
    );
}

/// POSTs with extra headers through curl; answers status and body.
fn post(url: &str, headers: &[(&str, String)]) -> (u16, String) {
    grove_testbed::http::curl_post(url, None, headers).expect("curl answers")
}

fn account_of(node: &grove_testbed::Node) -> String {
    let mut account = None;
    let known = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        account = chain(node).account;
        account.is_some()
    });
    assert!(known, "{} has no account", node.name());
    account.expect("an account")
}

fn wait_farmer(node: &grove_testbed::Node, farmer: &str) {
    let known = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        chain(node).farmer.as_deref() == Some(farmer)
    });
    assert!(
        known,
        "{} never learnt its farmer: {:?}",
        node.name(),
        chain(node)
    );
}

#[test]
fn only_the_farmer_changes_the_node_once_and_only_the_node_it_signed_for() {
    // Each node has a pool (so a cache that outlives the agent) and node 0
    // a foreign disk to wipe.
    let spec = || {
        NodeSpec::default()
            .disks(vec![DiskSpec::ssd(512), DiskSpec::ssd(256)])
            .config(
                grove_testbed::Daemon::Agent,
                "[chain]\nuptime_interval_secs = 2\n",
            )
    };
    let farm = Farm::start_for_test(FarmSpec::with_nodes(vec![spec(), spec()]).without_agents());
    let (node, other) = (farm.node(0), farm.node(1));
    let dir = tempfile::tempdir().unwrap();
    let farmer_key = dir.path().join("farmer.key");
    let stranger_key = dir.path().join("stranger.key");
    let farmer = signing::new_key(&farmer_key);
    signing::new_key(&stranger_key);
    let registry = Registry::start_owned(
        &farm,
        &dir.path().join("registry.json"),
        port() + 500,
        &farmer,
    );

    node.disks()[1]
        .format_ext4_with_file("data", b"farmer data")
        .expect("ext4");
    for n in [node, other] {
        n.set_cmdline(&format!("grove.farm=1 grove.chain.url={}", registry.url))
            .expect("cmdline");
        n.start_agent().expect("boot");
        n.wait_api(Duration::from_secs(30)).expect("API up");
    }
    for n in [node, other] {
        wait_farmer(n, &farmer);
    }
    let account = account_of(node);

    let api = node.api_url().expect("url");
    let other_api = other.api_url().expect("url");
    let foreign = || -> storaged::report::Disk {
        let disks: Vec<storaged::report::Disk> =
            serde_json::from_str(&http_get(&format!("{api}/v1/disks")).expect("disks").1)
                .expect("json");
        disks
            .into_iter()
            .find(|d| d.device.size_bytes == 256 << 20)
            .expect("the 256 MiB disk")
    };
    let serial = foreign().device.serial.to_string();
    let path = format!("/v1/disks/{serial}/wipe");
    let url = format!("{api}{path}");

    let (code, body) = post(&url, &[]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("signed by the farmer"), "{body}");

    let stranger = signing::request(&stranger_key, &account, &path, &[]);
    let (code, body) = post(&url, &grove_testbed::http::signed_headers(&stranger));
    assert_eq!(code, 403, "{body}");

    let seed = agent::identity::keys::Seed::from_file_text(
        &std::fs::read_to_string(&farmer_key).expect("key"),
    )
    .expect("a key");
    let old = (agent::clock::unix_ms() / 1000) as i64 - 120;
    let skewed = agent::auth::sign(
        seed.keys().signing(),
        agent::auth::Request {
            target: &account,
            method: "POST",
            path: &path,
            body: b"",
        },
        old,
        "skewed-nonce",
    );
    let (code, body) = post(&url, &skewed);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("120 s away"), "{body}");

    // Signed for the other node: refused here.
    let for_other = signing::request(&farmer_key, &account_of(other), &path, &[]);
    let (code, body) = post(&url, &grove_testbed::http::signed_headers(&for_other));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");

    assert_eq!(foreign().pool, None, "a refused request changed the disk");

    let signed_text = signing::request(&farmer_key, &account, &path, &[]);
    let signed = grove_testbed::http::signed_headers(&signed_text);
    // The same request, replayed to another node of the farm.
    let (code, body) = post(&format!("{other_api}{path}"), &signed);
    assert_eq!(
        code, 401,
        "a request for one node was taken by another: {body}"
    );
    let (code, body) = post(&url, &signed);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"class\":\"ours\""), "{body}");
    let wiped_at = Instant::now();
    let (code, body) = post(&url, &signed);
    assert_eq!(code, 401, "a replay was accepted: {body}");
    assert!(body.contains("already used"), "{body}");

    // An upgrade image sent as the body (1 GiB announced, none sent): the
    // node answers on the signature alone, and reads no byte of a body it
    // would not take. This node did not boot from a stick: the farmer's
    // upload is refused for that.
    let image = dir.path().join("upgrade.tar");
    std::fs::write(&image, b"an image the node never reads").expect("image");
    let upload = format!("{api}/v1/upgrade/image");
    let sign_upload = |key: &Path, for_node: &str| {
        let body = ["--body-file", image.to_str().unwrap()];
        signing::request(key, for_node, "/v1/upgrade/image", &body)
    };
    let farmer_upload = sign_upload(&farmer_key, &account);
    let farmer_upload = grove_testbed::http::signed_headers(&farmer_upload);
    let sum_only: Vec<_> = farmer_upload
        .iter()
        .filter(|(name, _)| *name == agent::auth::HEADER_BODY_SHA256)
        .cloned()
        .collect();
    let stranger_upload = sign_upload(&stranger_key, &account);
    let other_upload = sign_upload(&farmer_key, &account_of(other));
    for (what, headers, status, says) in [
        (
            "an upload that names no sum",
            Vec::new(),
            400,
            agent::auth::HEADER_BODY_SHA256,
        ),
        ("an unsigned upload", sum_only, 401, "signed by the farmer"),
        (
            "a stranger's upload",
            grove_testbed::http::signed_headers(&stranger_upload),
            403,
            "not the owner",
        ),
        (
            "an upload signed for another node",
            grove_testbed::http::signed_headers(&other_upload),
            401,
            "does not verify",
        ),
        (
            "the farmer's upload to a node not booted from a stick",
            farmer_upload.clone(),
            409,
            "did not boot from a Grove stick",
        ),
        (
            "the farmer's upload, replayed",
            farmer_upload,
            401,
            "already used",
        ),
    ] {
        let asked = Instant::now();
        let (code, body) = grove_testbed::http::post_head_only(&upload, &headers, 1 << 30)
            .unwrap_or_else(|e| panic!("{what}: no answer before the body: {e}"));
        assert_eq!(code, status, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{what}: answered after {:?}",
            asked.elapsed()
        );
    }

    let reboot_text = signing::request(&farmer_key, &account, "/v1/reboot", &[]);
    let reboot = grove_testbed::http::signed_headers(&reboot_text);
    let (code, body) = post(&format!("{other_api}/v1/reboot"), &reboot);
    assert_eq!(code, 401, "another node took the reboot: {body}");
    assert!(other.agent_exit().is_none(), "the other node rebooted");
    let (code, body) = post(&format!("{api}/v1/reboot"), &reboot);
    assert_eq!(code, 202, "{body}");
    let signed_at = Instant::now();
    let stopped = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        node.agent_exit().is_some()
    });
    assert!(stopped, "the agent did not stop for the reboot");
    assert_eq!(node.agent_exit().and_then(|e| e.code()), Some(0));

    // After the restart, the same requests are still spent.
    node.stop_agent().expect("clean up after the reboot");
    node.start_agent().expect("boot again");
    node.wait_api(Duration::from_secs(30))
        .expect("API up again");
    wait_farmer(node, &farmer);
    assert!(
        signed_at.elapsed() < Duration::from_secs(50),
        "the restart took {:?}: the replay would be refused for its age, not as a replay",
        signed_at.elapsed()
    );
    for (what, url, headers) in [
        ("reboot", format!("{api}/v1/reboot"), &reboot),
        ("wipe", url.clone(), &signed),
    ] {
        let (code, body) = post(&url, headers);
        assert_eq!(code, 401, "the {what} was replayed after a restart: {body}");
        assert!(body.contains("already used"), "{what}: {body}");
    }
    assert!(
        node.agent_exit().is_none(),
        "the replayed reboot stopped the agent"
    );
    // The wiped disk became a pool: the registry holds the larger SSD
    // within a minute of the wipe.
    // After the restart the node reads its registration back first.
    let mut id = None;
    let known = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        id = chain(node).node_id;
        id.is_some()
    });
    assert!(
        known,
        "the node never read its registration back: {:?}",
        chain(node)
    );
    let id = id.expect("the node is registered");
    let registered_sru = || -> Option<u64> {
        let nodes: Vec<Node> = registry.get("/v1/nodes?farm_id=1");
        nodes
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.registration.resources.sru)
    };
    let grown = wait_until(
        Duration::from_secs(60).saturating_sub(wiped_at.elapsed()),
        Duration::from_millis(500),
        || registered_sru() == Some((512 + 256) << 20),
    );
    assert!(
        grown,
        "the registered SRU is {:?} a minute after the wipe, not 768 MiB\n{}",
        registered_sru(),
        farm.logs(20)
    );
    eprintln!(
        "registered SRU followed the wiped disk within {:?}",
        wiped_at.elapsed()
    );

    // A fresh request still works.
    let fresh_text = signing::request(&farmer_key, &account, "/v1/reboot", &[]);
    let (code, body) = post(
        &format!("{api}/v1/reboot"),
        &grove_testbed::http::signed_headers(&fresh_text),
    );
    assert_eq!(code, 202, "{body}");
}

fn status(node: &grove_testbed::Node) -> agent::operator::status::StatusReport {
    let (_, body) = http_get(&format!("{}/v1/status", node.api_url().expect("url"))).expect("GET");
    serde_json::from_str(&body).expect("status")
}

/// The NICs and bridges netd reports now, as the node registers them.
fn netd_interfaces(node: &grove_testbed::Node) -> Vec<agent::registry::model::Interface> {
    let (_, body) = http_get(&format!("{}/v1/network", node.api_url().expect("url"))).expect("GET");
    let report: agent::api::NetworkReport = serde_json::from_str(&body).expect("network");
    report
        .interfaces
        .into_iter()
        .filter(|i| i.kind == "nic" || i.kind == "bridge")
        .map(|i| agent::registry::model::Interface {
            name: i.name,
            mac: i.mac,
            ips: i.addresses,
        })
        .collect()
}

/// How often the agent told the registry something new about the node.
fn registrations(node: &grove_testbed::Node) -> usize {
    std::fs::read_to_string(node.agent_log())
        .unwrap_or_default()
        .matches("the registry now holds what the node has")
        .count()
}

/// The embedded registry follows the node's capacity: a broken pool changes
/// the registered HRU within a minute, and an agent restart with nothing
/// changed sends no registration. `/v1/status` turns degraded while the
/// registry is down, names it, and clears once it is back; an agent
/// restarted with reports queued registers and delivers them.
#[test]
fn capacity_follows_the_node_and_status_tells_the_truth_about_the_registry() {
    let spec = NodeSpec::default()
        .disks(vec![DiskSpec::ssd(512), DiskSpec::hdd(512)])
        .config(
            grove_testbed::Daemon::Agent,
            "[chain]\nuptime_interval_secs = 2\n",
        );
    let farm = Farm::start_for_test(FarmSpec::with_nodes(vec![spec]).without_agents());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("registry.json");
    let port = port() + 2000;
    let mut registry = Registry::start(&farm, &state, port);
    let node = farm.node(0);
    node.boot_on_registry(&registry.url)
        .expect("boots on the registry");
    let mut last = ChainStatus::default();
    let registered = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        last = chain(node);
        last.node_id.is_some() && last.last_uptime_report.is_some() && last.connected
    });
    assert!(registered, "never registered: {last:?}\n{}", farm.logs(20));
    let id = last.node_id.expect("node id");
    let registered_node = |registry: &Registry| -> Node {
        let nodes: Vec<Node> = registry.get("/v1/nodes?farm_id=1");
        nodes
            .into_iter()
            .find(|n| n.id == id)
            .expect("the node is registered")
    };
    assert_eq!(
        registered_node(&registry).registration.resources.hru,
        512 << 20
    );
    // The first registration may come before netd knows the LAN address;
    // the node updates it once it does.
    let complete = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let n = registered_node(&registry);
        n.mesh.is_some()
            && n.registration
                .interfaces
                .iter()
                .any(|i| i.name == "eth0" && !i.ips.is_empty())
    });
    assert!(complete, "{:?}", registered_node(&registry));
    // Addresses keep arriving after the first lease: the LAN announces an
    // IPv6 prefix, and the SLAAC address comes when it comes. The node
    // follows them. "Nothing changed" below starts once the registry holds
    // the SLAAC address and everything else netd has now.
    let prefix = farm.lan_subnet().ipv6_prefix();
    let current = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let registered = registered_node(&registry).registration.interfaces;
        registered
            .iter()
            .any(|i| i.ips.iter().any(|ip| ip.starts_with(&prefix)))
            && registered == netd_interfaces(node)
    });
    assert!(
        current,
        "the registry never caught up with netd: {:?} vs {:?}",
        registered_node(&registry).registration.interfaces,
        netd_interfaces(node)
    );
    eprintln!("registered: {:?}", registered_node(&registry));
    let sent = registrations(node);
    assert!(sent >= 1, "no registration logged");
    let settled = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        status(node)
            .reasons
            .iter()
            .all(|r| !r.starts_with("chain:"))
    });
    assert!(settled, "{:?}", status(node));

    // An agent restart with nothing changed: the node is read back, found
    // the same, and nothing is sent. The count is taken with the agent
    // stopped: it logs a registration only after the registry has stored
    // it, so a count taken while it runs can miss the last one.
    node.stop_agent().expect("stop");
    let sent = registrations(node);
    node.start_agent().expect("boot");
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let reporting = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        last = chain(node);
        last.node_id == Some(id) && last.last_uptime_report.is_some()
    });
    assert!(reporting, "{last:?}\n{}", farm.logs(20));
    assert_eq!(
        registrations(node),
        sent,
        "a registration was sent though nothing changed\n{}",
        farm.logs(60)
    );

    // A pool breaks: the registry hears of it within a minute.
    let hdd = node
        .disks()
        .iter()
        .find(|d| d.rotational())
        .expect("the HDD");
    hdd.pull().expect("pull the HDD");
    let pulled = Instant::now();
    let followed = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        registered_node(&registry).registration.resources.hru == 0
    });
    assert!(
        followed,
        "HRU still {} a minute after the pool broke\n{}",
        registered_node(&registry).registration.resources.hru,
        farm.logs(20)
    );
    eprintln!(
        "registered HRU followed a broken pool in {:?}",
        pulled.elapsed()
    );

    // The registry goes down: the status says so, with the URL and for how long.
    registry.stop();
    let mut report = status(node);
    let degraded = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        report = status(node);
        report.state == agent::operator::status::NodeState::Degraded
            && report
                .reasons
                .iter()
                .any(|r| r.contains("cannot reach the registry") && r.contains(&registry.url))
    });
    assert!(degraded, "{report:?}");
    let queued = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        chain(node).queue_length >= 2
    });
    assert!(queued, "{:?}", chain(node));

    // Restarted with reports queued, while the registry is still down.
    node.stop_agent().expect("stop");
    node.start_agent().expect("boot");
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let registry = Registry::start(&farm, &state, port);
    let drained = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        last = chain(node);
        last.node_id == Some(id) && last.queue_length == 0 && last.connected
    });
    assert!(drained, "{last:?}\n{}", farm.logs(20));
    let cleared = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        report = status(node);
        report.reasons.iter().all(|r| !r.starts_with("chain:"))
    });
    assert!(cleared, "{report:?}");
    let uptime: Vec<UptimeReport> = registry.get(&format!("/v1/nodes/{id}/uptime"));
    let seqs: Vec<u64> = uptime.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] == 1),
        "a report went missing or came twice: {seqs:?}"
    );
}
