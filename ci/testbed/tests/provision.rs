//! provisiond in a testbed node with the real storaged and netd: a
//! deployment of a network, a zmount and a volume reaches `ok` through
//! provisiond's socket; the node then has a quota'd subvolume, a vdisk file
//! of the size asked and the network's namespace; cancelling the contract
//! removes all of it and frees the capacity. A network alone, and a network
//! whose port netd refuses (rolled back with netd's words), show the
//! network driver on its own.

use std::time::Duration;

use grove_testbed::provision::{self, Objects, at_version, block_on, disk, network};
use grove_testbed::{Daemon, Farm, Node};
use provisiond::api::{DeploymentState, DeploymentView, Submission};
use provisiond::client::ProvisiondClient;
use provisiond::driver::{disk_name, netid};

const NODE_ID: u32 = 1;
const TWIN: u32 = 21;
const CONTRACT: u64 = 4;
const MIB: u64 = 1 << 20;

fn start() -> Farm {
    provision::start(NODE_ID, 2048).unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn client(node: &Node) -> ProvisiondClient {
    provision::client(node).expect("node runs")
}

fn deployment() -> String {
    with_workloads(
        CONTRACT,
        vec![
            network("net", 200, 3400),
            disk("disk", "zmount", 100 * MIB),
            disk("data", "volume", 50 * MIB),
        ],
    )
}

fn with_workloads(contract: u64, workloads: Vec<serde_json::Value>) -> String {
    provision::signed(TWIN, contract, workloads).expect("signs")
}

fn submission(wire: &str) -> Submission {
    provision::submission(NODE_ID, TWIN, wire).expect("parses")
}

fn wait_state(node: &Node, farm: &Farm, contract: u64, state: DeploymentState) -> DeploymentView {
    provision::wait_state(node, contract, state, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(60)))
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

#[test]
fn a_network_a_zmount_and_a_volume_are_made_and_removed_for_real() {
    let farm = start();
    let node = farm.node(0);
    let storaged = storaged(node);
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

    let objects = objects(node);
    let path = objects
        .vdisk(&disk_name(CONTRACT, "disk"))
        .expect("the zmount's vdisk");
    let size = provision::file_size(node, path).expect("the vdisk's size");
    assert_eq!(size, (100 * MIB).to_string());
    let vpath = objects
        .volume(&disk_name(CONTRACT, "data"))
        .expect("the volume");
    provision::check_volume_limited(node, vpath, 50 * MIB).expect("limited to 50 MiB");
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
    assert!(!run(node, &["stat", path]).0, "the vdisk file is gone");
    assert!(!run(node, &["stat", vpath]).0, "the subvolume is gone");
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
    assert!(netids(node).is_empty(), "{:?}", netids(node));
}

fn storaged(node: &Node) -> storaged::client::StoragedClient {
    storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"))
}

fn objects(node: &Node) -> Objects {
    provision::objects(node).expect("storaged and netd answer")
}

/// The tenant networks netd holds, sorted.
fn netids(node: &Node) -> Vec<String> {
    objects(node).networks.into_iter().map(|n| n.0).collect()
}

fn kill_and_wait(node: &Node, farm: &Farm, daemon: Daemon) {
    node.restart_daemon(daemon, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(60)));
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

#[test]
fn an_update_grows_and_adds_for_real_and_kills_of_storaged_and_provisiond_converge() {
    let farm = start();
    let node = farm.node(0);
    let storaged = storaged(node);
    let v0 = with_workloads(
        30,
        vec![
            network("net", 230, 3700),
            disk("disk", "zmount", 100 * MIB),
            disk("data", "volume", 50 * MIB),
        ],
    );
    block_on(client(node).deploy(&submission(&v0))).expect("admitted");
    // storaged killed while the disks are made: provisiond waits for it.
    kill_and_wait(node, &farm, Daemon::Storaged);
    wait_state(node, &farm, 30, DeploymentState::Ok);

    // The update grows the zmount and adds a volume; provisiond is killed
    // right after admitting it.
    let v1 = provision::signed_version(
        TWIN,
        30,
        1,
        vec![
            network("net", 230, 3700),
            at_version(disk("disk", "zmount", 150 * MIB), 1),
            disk("data", "volume", 50 * MIB),
            at_version(disk("more", "volume", 20 * MIB), 1),
        ],
    )
    .expect("signs");
    block_on(client(node).update(30, &submission(&v1))).expect("admitted");
    kill_and_wait(node, &farm, Daemon::Provisiond);
    let view = wait_state(node, &farm, 30, DeploymentState::Ok);
    assert_eq!(view.version, 1, "{view:?}");
    let objects = objects(node);
    let path = objects.vdisk(&disk_name(30, "disk")).expect("the vdisk");
    let size = provision::file_size(node, path).expect("the vdisk's size");
    assert_eq!(size, (150 * MIB).to_string(), "grown in place");
    let volumes: Vec<&str> = objects.volumes.iter().map(|v| v.0.as_str()).collect();
    assert_eq!(volumes, vec![disk_name(30, "data"), disk_name(30, "more")]);
    assert_eq!(objects.vdisks.len(), 1, "no duplicate");
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
