//! provisiond in a testbed node with the real storaged and netd: a
//! deployment of a network, a zmount and a volume reaches `ok` through
//! provisiond's socket; the node then has a quota'd subvolume, a vdisk file
//! of the size asked and the network's namespace; cancelling the contract
//! removes all of it and frees the capacity. A network alone, and a network
//! whose port netd refuses (rolled back with netd's words), show the
//! network driver on its own.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use grove_testbed::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, wait_until};
use provisiond::api::{ContractFacts, DeploymentState, DeploymentView, Submission, TwinKeyFacts};
use provisiond::client::ProvisiondClient;
use provisiond::deployment::Deployment;
use provisiond::deployment::sign::sign_ed25519;
use provisiond::driver::{disk_name, netid};
use serde_json::json;

const NODE_ID: u32 = 1;
const TWIN: u32 = 21;
const CONTRACT: u64 = 4;
const MIB: u64 = 1 << 20;
const SSD: DiskSpec = DiskSpec {
    size_mb: 2048,
    rotational: false,
};

fn start() -> Farm {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    let spec = NodeSpec::default()
        .disks(vec![SSD])
        .config(Daemon::Netd, "[uplink]\nmanage = false\n")
        .config(Daemon::Provisiond, format!("node_id = {NODE_ID}\n"));
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]))
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)));
    let node = farm.node(0);
    assert!(
        node.wait_answers(Daemon::Provisiond, "/v1/capacity", Duration::from_secs(90)),
        "provisiond never answered\n{}",
        farm.logs(60)
    );
    farm
}

fn client(node: &Node) -> ProvisiondClient {
    ProvisiondClient::new(node.socket(Daemon::Provisiond).expect("node runs"))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[21; 32])
}

fn deployment() -> String {
    with_workloads(
        CONTRACT,
        vec![
            network("net", 200, 3400),
            json!(
            {"version": 0, "name": "disk", "type": "zmount", "metadata": "", "description": "",
             "data": {"size": 100 * MIB}}),
            json!(
            {"version": 0, "name": "data", "type": "volume", "metadata": "", "description": "",
             "data": {"size": 50 * MIB}}),
        ],
    )
}

fn network(name: &str, range: u8, port: u16) -> serde_json::Value {
    json!({"version": 0, "name": name, "type": "network", "metadata": "", "description": "",
           "data": {"ip_range": format!("10.{range}.0.0/16"), "subnet": format!("10.{range}.1.0/24"),
                    "wireguard_private_key": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
                    "wireguard_listen_port": port, "peers": []}})
}

fn with_workloads(contract: u64, workloads: Vec<serde_json::Value>) -> String {
    let wire = json!({"version": 0, "twin_id": TWIN, "contract_id": contract,
        "metadata": "", "description": "", "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": TWIN, "required": false, "weight": 1}],
            "weight_required": 1, "signatures": [], "signature_style": ""},
        "workloads": workloads});
    sign_ed25519(&wire.to_string(), TWIN, &key()).expect("signs")
}

fn submission(wire: &str) -> Submission {
    let d = Deployment::parse(wire.as_bytes()).expect("parses");
    Submission {
        deployment: wire.to_owned(),
        contract: Some(ContractFacts {
            contract_id: d.contract_id,
            node_id: NODE_ID,
            twin_id: TWIN,
            state: "Created".into(),
            deployment_hash: d.hash().hex(),
        }),
        twins: vec![TwinKeyFacts {
            twin_id: TWIN,
            account_key: hex::encode(key().verifying_key().to_bytes()),
        }],
    }
}

fn wait_state(node: &Node, farm: &Farm, contract: u64, state: DeploymentState) -> DeploymentView {
    let client = client(node);
    let mut last = None;
    let reached = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let view = block_on(client.deployment(contract)).expect("deployment answers");
        let done = view.state == state;
        last = Some(view);
        done
    });
    let last = last.expect("asked at least once");
    assert!(reached, "never {state:?}: {last:?}\n{}", farm.logs(60));
    last
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

#[test]
fn a_network_a_zmount_and_a_volume_are_made_and_removed_for_real() {
    let farm = start();
    let node = farm.node(0);
    let storaged =
        storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"));
    let wire = deployment();
    let admitted = block_on(client(node).deploy(&submission(&wire))).expect("admitted");
    assert_eq!(admitted.state, DeploymentState::Deploying);
    let view = wait_state(node, &farm, CONTRACT, DeploymentState::Ok);
    for name in ["net", "disk", "data"] {
        assert_eq!(view.workload_state(name), Some("ok"), "{name}: {view:?}");
    }
    assert!(
        !serde_json::to_string(&view)
            .expect("json")
            .contains("yAnz5TF")
    );

    let vdisk = block_on(storaged.vdisks())
        .expect("vdisks")
        .into_iter()
        .find(|v| v.name == disk_name(CONTRACT, "disk"))
        .expect("the zmount's vdisk");
    let path = vdisk.path.display().to_string();
    let (ok, size) = run(node, &["stat", "-c", "%s", &path]);
    assert!(ok, "{size}");
    assert_eq!(size.trim(), (100 * MIB).to_string());
    let volume = block_on(storaged.volumes())
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == disk_name(CONTRACT, "data"))
        .expect("the volume");
    let vpath = volume.path.display().to_string();
    let (ok, out) = run(node, &["btrfs", "subvolume", "show", &vpath]);
    assert!(ok, "a subvolume: {out}");
    let (ok, out) = run(node, &["btrfs", "qgroup", "show", "-re", "--raw", &vpath]);
    assert!(
        ok && out.contains(&(50 * MIB).to_string()),
        "limited to 50 MiB: {out}"
    );
    let namespace = format!("n-{}", netid(TWIN, "net"));
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(netns.contains(&namespace), "{netns}");
    let capacity = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(capacity.used.sru, 150 * MIB);
    assert_eq!(capacity.wireguard_ports, vec![3400]);

    block_on(client(node).remove(CONTRACT)).expect("removal admitted");
    wait_state(node, &farm, CONTRACT, DeploymentState::Deleted);
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(!netns.contains(&namespace), "{netns}");
    assert!(!run(node, &["stat", &path]).0, "the vdisk file is gone");
    assert!(!run(node, &["stat", &vpath]).0, "the subvolume is gone");
    assert!(block_on(storaged.vdisks()).expect("vdisks").is_empty());
    assert!(block_on(storaged.volumes()).expect("volumes").is_empty());
    let capacity = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(capacity.used.sru, 0);
}

#[test]
fn a_network_alone_is_made_and_a_refused_one_fails_with_netds_words() {
    let farm = start();
    let node = farm.node(0);
    let first = with_workloads(5, vec![network("net", 201, 3500)]);
    block_on(client(node).deploy(&submission(&first))).expect("admitted");
    let view = wait_state(node, &farm, 5, DeploymentState::Ok);
    let id = netid(TWIN, "net");
    assert_eq!(
        view.result("net").expect("result")["data"]["netid"],
        id.as_str()
    );
    let namespace = format!("n-{id}");
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(netns.contains(&namespace), "{netns}");

    // Another network on the same port: netd refuses, the deployment says so.
    let second = with_workloads(6, vec![network("other", 202, 3500)]);
    block_on(client(node).deploy(&submission(&second))).expect("admitted");
    let view = wait_state(node, &farm, 6, DeploymentState::Error);
    let failure = view.failure.expect("a failure");
    assert_eq!(failure.workload, "other");
    assert!(
        failure.message.contains("listen_port 3500") && failure.message.contains(&id),
        "netd's own words: {}",
        failure.message
    );
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(
        !netns.contains(&format!("n-{}", netid(TWIN, "other"))),
        "{netns}"
    );

    block_on(client(node).remove(5)).expect("removal admitted");
    wait_state(node, &farm, 5, DeploymentState::Deleted);
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(!netns.contains(&namespace), "{netns}");
    let networks: Vec<serde_json::Value> = block_on(
        netd::client::NetdClient::new(node.socket(Daemon::Netd).expect("runs")).networks(),
    )
    .expect("networks")
    .into_iter()
    .map(|n| json!(n.netid))
    .collect();
    assert!(networks.is_empty(), "{networks:?}");
}

/// The tenant networks netd holds.
fn netids(node: &Node) -> Vec<String> {
    let netd = netd::client::NetdClient::new(node.socket(Daemon::Netd).expect("runs"));
    let mut ids: Vec<String> = block_on(netd.networks())
        .expect("networks")
        .into_iter()
        .map(|n| n.netid)
        .collect();
    ids.sort();
    ids
}

fn kill_and_wait(node: &Node, farm: &Farm, daemon: Daemon) {
    let old = node
        .kill_daemon(daemon)
        .unwrap_or_else(|e| panic!("kill {daemon:?}: {e}\n{}", farm.logs(40)));
    assert!(
        node.wait_restarted(daemon, old, Duration::from_secs(60))
            .is_some(),
        "{daemon:?} was not restarted\n{}",
        farm.logs(60)
    );
}

#[test]
fn kills_of_provisiond_and_netd_during_deploy_and_remove_converge() {
    let farm = start();
    let node = farm.node(0);
    let contracts: Vec<u64> = (10..14).collect();
    let mut want = Vec::new();
    // provisiond killed at a later moment after each admission.
    for (i, contract) in contracts.iter().enumerate() {
        let range = 210 + u8::try_from(i).expect("small");
        let name = format!("n{contract}");
        let port = 3600 + u16::try_from(i).expect("small");
        let wire = with_workloads(*contract, vec![network(&name, range, port)]);
        block_on(client(node).deploy(&submission(&wire))).expect("admitted");
        std::thread::sleep(Duration::from_millis(40 * u64::try_from(i).expect("small")));
        kill_and_wait(node, &farm, Daemon::Provisiond);
        wait_state(node, &farm, *contract, DeploymentState::Ok);
        want.push(netid(TWIN, &name));
        want.sort();
        assert_eq!(
            netids(node),
            want,
            "contract {contract}: one network each, no orphan"
        );
    }
    // netd killed right after an admission: provisiond waits for it.
    let wire = with_workloads(20, vec![network("n20", 220, 3620)]);
    block_on(client(node).deploy(&submission(&wire))).expect("admitted");
    kill_and_wait(node, &farm, Daemon::Netd);
    wait_state(node, &farm, 20, DeploymentState::Ok);
    want.push(netid(TWIN, "n20"));
    want.sort();
    assert_eq!(netids(node), want);
    // provisiond killed during each removal.
    for (i, contract) in contracts.iter().chain([20].iter()).enumerate() {
        block_on(client(node).remove(*contract)).expect("removal admitted");
        std::thread::sleep(Duration::from_millis(30 * u64::try_from(i).expect("small")));
        kill_and_wait(node, &farm, Daemon::Provisiond);
        wait_state(node, &farm, *contract, DeploymentState::Deleted);
    }
    assert!(netids(node).is_empty(), "{:?}", netids(node));
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(!netns.contains("n-p-"), "{netns}");
    let capacity = block_on(client(node).capacity()).expect("capacity");
    assert!(capacity.wireguard_ports.is_empty(), "{capacity:?}");
}

fn disk(version: u32, name: &str, kind: &str, size: u64) -> serde_json::Value {
    json!({"version": version, "name": name, "type": kind, "metadata": "", "description": "",
           "data": {"size": size}})
}

fn signed_version(contract: u64, version: u32, workloads: Vec<serde_json::Value>) -> String {
    let wire = json!({"version": version, "twin_id": TWIN, "contract_id": contract,
        "metadata": "", "description": "", "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": TWIN, "required": false, "weight": 1}],
            "weight_required": 1, "signatures": [], "signature_style": ""},
        "workloads": workloads});
    sign_ed25519(&wire.to_string(), TWIN, &key()).expect("signs")
}

#[test]
fn an_update_grows_and_adds_for_real_and_kills_of_storaged_and_provisiond_converge() {
    let farm = start();
    let node = farm.node(0);
    let storaged =
        storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"));
    let v0 = signed_version(
        30,
        0,
        vec![
            network("net", 230, 3700),
            disk(0, "disk", "zmount", 100 * MIB),
            disk(0, "data", "volume", 50 * MIB),
        ],
    );
    block_on(client(node).deploy(&submission(&v0))).expect("admitted");
    // storaged killed while the disks are made: provisiond waits for it.
    kill_and_wait(node, &farm, Daemon::Storaged);
    wait_state(node, &farm, 30, DeploymentState::Ok);

    // The update grows the zmount and adds a volume; provisiond is killed
    // right after admitting it.
    let v1 = signed_version(
        30,
        1,
        vec![
            network("net", 230, 3700),
            disk(1, "disk", "zmount", 150 * MIB),
            disk(0, "data", "volume", 50 * MIB),
            disk(1, "more", "volume", 20 * MIB),
        ],
    );
    block_on(client(node).update(30, &submission(&v1))).expect("admitted");
    kill_and_wait(node, &farm, Daemon::Provisiond);
    let view = wait_state(node, &farm, 30, DeploymentState::Ok);
    assert_eq!(view.version, 1, "{view:?}");
    let vdisk = block_on(storaged.vdisks())
        .expect("vdisks")
        .into_iter()
        .find(|v| v.name == disk_name(30, "disk"))
        .expect("the vdisk");
    let (ok, size) = run(
        node,
        &["stat", "-c", "%s", &vdisk.path.display().to_string()],
    );
    assert!(ok, "{size}");
    assert_eq!(size.trim(), (150 * MIB).to_string(), "grown in place");
    let mut volumes: Vec<String> = block_on(storaged.volumes())
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect();
    volumes.sort();
    assert_eq!(volumes, vec![disk_name(30, "data"), disk_name(30, "more")]);
    assert_eq!(
        block_on(storaged.vdisks()).expect("vdisks").len(),
        1,
        "no duplicate"
    );
    let capacity = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(capacity.used.sru, 220 * MIB);

    // A removal with provisiond killed in its middle frees everything.
    block_on(client(node).remove(30)).expect("removal admitted");
    std::thread::sleep(Duration::from_millis(30));
    kill_and_wait(node, &farm, Daemon::Provisiond);
    wait_state(node, &farm, 30, DeploymentState::Deleted);
    assert!(block_on(storaged.vdisks()).expect("vdisks").is_empty());
    assert!(block_on(storaged.volumes()).expect("volumes").is_empty());
    assert!(netids(node).is_empty());
    let capacity = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(capacity.used.sru, 0);
}
