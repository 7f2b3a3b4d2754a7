//! Virtual machines on a real node: provisiond pulls a direct-boot machine
//! image by digest from a real OCI registry on the farm LAN (made here from
//! the Debian kernel `image/build` unpacked, a small initrd and busybox),
//! and runs it under QEMU (TCG) on the tenant network with a zmount.
//!
//! Shows: the deployment (network, zmount, zmachine, container) reaches
//! `ok`; the guest boots from its root disk (an ext4 file system of the
//! image's files), takes its address from `ip=`, sees the zmount as a disk
//! whose serial is the zmount's name, and answers ping from the tenant
//! network; its console is served as its logs; the container on the same
//! network reaches it, another tenant's network does not; `kill -9
//! provisiond` leaves it running, and the restarted daemon adopts it (same
//! QEMU, one QEMU); a cancel stops it and removes its tap, its root disk
//! and its directory.
//! A machine bigger than the node's memory, or that fits only without the
//! memory its QEMU needs, is refused up front; one whose
//! flist is not an OCI image pinned by digest fails with that reason and
//! its deployment is rolled back.

use std::net::Ipv4Addr;
use std::time::Duration;

use grove_testbed::oci::OciRegistry;
use grove_testbed::provision::{self, ProvisionError, block_on, cancel, client, settle};
use grove_testbed::{Daemon, Farm, Node, tenant, wait_until};
use provisiond::api::DeploymentState;
use provisiond::driver::container::container_id;
use provisiond::driver::machine::machine_id;
use provisiond::driver::root_name;
use provisiond::driver::{disk_name, netid};
use serde_json::{Value, json};

/// How long a contract may take to settle: its first deploy, which pulls
/// the image, or one after provisiond was killed.
const WITHIN: Duration = Duration::from_secs(180);

const NODE_ID: u32 = 1;
const TWIN: u32 = 41;
/// A second tenant, with a network of its own on the node.
const OTHER_TWIN: u32 = 43;
const CONTRACT: u64 = 9;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

/// A node with one SSD of `ssd_mb` whose provisiond pulls from `registry`
/// over plain HTTP and runs machines under TCG, with a short power-down
/// grace (the test guest has no ACPI daemon).
fn start(ssd_mb: u64) -> (Farm, OciRegistry) {
    provision::start_with_registry(NODE_ID, ssd_mb, "accel = \"tcg\"\nmachine_stop_grace = 3\n")
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn deploy(node: &Node, contract: u64, workloads: Vec<Value>) -> Result<(), ProvisionError> {
    provision::deploy(node, NODE_ID, TWIN, contract, workloads)
}

fn node_machines(node: &Node) -> Vec<(String, String)> {
    provision::machines(node).unwrap_or_else(|e| panic!("{e}"))
}

fn qemus(node: &Node, id: &str) -> Vec<String> {
    provision::qemus(node, id).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_machine_boots_on_its_tenant_network_with_its_zmount_survives_provisiond_and_a_cancel_removes_it()
 {
    let (farm, registry) = start(2048);
    let node = farm.node(0);
    let image = provision::push_machine(&registry);

    // A machine bigger than the node is refused up front, changing nothing.
    let huge = provision::zmachine("vm", &image.reference, "10.212.1.5", 4096 * GIB, json!([]));
    let err = deploy(node, 4, vec![provision::network("net", 212, 3412), huge])
        .expect_err("a machine bigger than the node is refused")
        .to_string();
    assert!(err.contains("MRU"), "{err}");
    assert!(
        block_on(client(node).expect("runs").deployment(4)).is_err(),
        "a refused deployment left a record"
    );
    // One that fits only without its QEMU is refused too: the node needs
    // memory to run it beside what its guest gets.
    let free = block_on(client(node).expect("runs").capacity())
        .expect("capacity")
        .free
        .mru;
    let exact = provision::zmachine(
        "vm",
        &image.reference,
        "10.212.1.5",
        free / MIB * MIB,
        json!([]),
    );
    let err = deploy(node, 4, vec![provision::network("net", 212, 3412), exact])
        .expect_err("a machine that leaves QEMU no room is refused")
        .to_string();
    assert!(err.contains("more to run it"), "{err}");
    // A zos flist URL is no image this node can run: the machine fails with
    // that reason and its deployment is rolled back whole.
    let unpinned = provision::zmachine(
        "vm",
        "https://hub.grid.tf/tf-official-vms/ubuntu-22.04.flist",
        "10.212.1.5",
        256 * MIB,
        json!([]),
    );
    deploy(
        node,
        3,
        vec![provision::network("net", 212, 3412), unpinned],
    )
    .unwrap_or_else(|e| panic!("admitted: {e}"));
    let view = settle(&farm, 3, DeploymentState::Error, Duration::from_secs(60));
    let result = view.result("vm").expect("a result");
    assert_eq!(result["state"], "error", "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains("pinned by digest"), "{result}");
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(
        !netns.contains(&netid(TWIN, "net")),
        "the network was left: {netns}"
    );
    // Its contract is cancelled, which frees the network's name.
    cancel(&farm, 3, Duration::from_secs(60));

    let ip = "10.212.1.5";
    let addr: Ipv4Addr = ip.parse().expect("an IPv4 address");
    let busybox = provision::push_busybox(&registry, provision::httpd());
    let container = json!({"version": 0, "name": "app", "type": "container", "metadata": "",
        "description": "", "data": {
            "image": busybox.reference,
            "interface": {"network": "net", "ip": "10.212.1.6"},
            "compute_capacity": {"cpu": 1, "memory": 64 * MIB},
            "size": 64 * MIB, "mounts": [], "entrypoint": [], "env": {}}});
    let vm = provision::zmachine(
        "vm",
        &image.reference,
        ip,
        256 * MIB,
        json!([{"name": "data", "mountpoint": "/data"}]),
    );
    deploy(
        node,
        CONTRACT,
        vec![
            provision::network("net", 212, 3412),
            provision::disk("data", "zmount", 100 * MIB),
            vm,
            container,
        ],
    )
    .unwrap_or_else(|e| panic!("admitted: {e}"));
    let view = settle(&farm, CONTRACT, DeploymentState::Ok, WITHIN);
    let id = machine_id(CONTRACT, "vm");
    let result = provision::result_of(&view, "vm", &id, ip);
    assert_eq!(result["data"]["live"]["accel"], "tcg", "{result}");
    assert_eq!(
        result["data"]["console"],
        format!("/v1/deployments/{CONTRACT}/workloads/vm/logs"),
        "{result}"
    );

    // It boots, from its root disk, with its address and its zmount.
    let logs = || block_on(client(node).expect("runs").logs(CONTRACT, "vm")).unwrap_or_default();
    let up = wait_until(Duration::from_secs(240), Duration::from_millis(500), || {
        logs().contains(&format!("grove machine up at {ip}"))
    });
    assert!(
        up,
        "the guest never came up:\n{}\n{}",
        logs(),
        farm.logs(40)
    );
    let console = logs();
    assert!(console.contains("disk vdb serial=data"), "{console}");
    let tenant_ns = format!("n-{}", netid(TWIN, "net"));
    assert!(
        tenant::reaches(node, Some(&tenant_ns), addr, Duration::from_secs(60)),
        "the guest does not answer ping\n{console}\n{}",
        farm.logs(40)
    );
    // A container on the same network reaches it; another tenant's
    // network does not.
    let container_ns = format!("c-{}", container_id(CONTRACT, "app"));
    assert!(
        tenant::reaches(node, Some(&container_ns), addr, Duration::from_secs(30)),
        "the container on its network does not reach the machine"
    );
    provision::deploy(
        node,
        NODE_ID,
        OTHER_TWIN,
        5,
        vec![provision::network("other", 215, 3415)],
    )
    .unwrap_or_else(|e| panic!("admitted: {e}"));
    settle(&farm, 5, DeploymentState::Ok, Duration::from_secs(60));
    let other_ns = format!("n-{}", netid(OTHER_TWIN, "other"));
    assert!(
        (0..3).all(|_| matches!(tenant::ping(node, Some(&other_ns), addr), Ok(false))),
        "another tenant's network reaches the machine"
    );
    cancel(&farm, 5, Duration::from_secs(60));

    // kill -9 provisiond: the machine keeps running and is adopted.
    let before = qemus(node, &id);
    assert_eq!(before.len(), 1, "one QEMU: {before:?}");
    let old = node
        .kill_daemon(Daemon::Provisiond)
        .unwrap_or_else(|e| panic!("kill provisiond: {e}"));
    assert!(
        node.wait_restarted(Daemon::Provisiond, old, Duration::from_secs(60))
            .is_some(),
        "provisiond was not restarted\n{}",
        farm.logs(60)
    );
    let view = settle(
        &farm,
        CONTRACT,
        DeploymentState::Ok,
        Duration::from_secs(120),
    );
    assert_eq!(view.result("vm").expect("a result")["data"]["id"], id);
    assert_eq!(qemus(node, &id), before, "the machine was started again");
    assert!(
        tenant::reaches(node, Some(&tenant_ns), addr, Duration::from_secs(30)),
        "the adopted guest does not answer"
    );

    // A cancel powers it off and removes its tap, disks and directory.
    cancel(&farm, CONTRACT, Duration::from_secs(90));
    assert!(qemus(node, &id).is_empty(), "QEMU still runs");
    let (_, links) = run(node, &["ip", "-all", "netns", "exec", "ip", "-o", "link"]);
    assert!(
        !links.contains(&format!("t-{id}")),
        "the tap is left: {links}"
    );
    let storaged =
        storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"));
    let vdisks: Vec<String> = block_on(storaged.vdisks())
        .expect("vdisks")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(
        !vdisks.contains(&root_name(CONTRACT, "vm"))
            && !vdisks.contains(&disk_name(CONTRACT, "data")),
        "disks left: {vdisks:?}"
    );
    let (_, dirs) = run(node, &["ls", "-A", "/var/cache/grove/provisiond/machines"]);
    assert!(
        !dirs.contains(&id),
        "the machine's directory is left: {dirs}"
    );
    let (_, images) = run(
        node,
        &[
            "ls",
            "-A",
            "/var/cache/grove/provisiond/machine-images/images",
        ],
    );
    assert_eq!(
        images.trim(),
        "",
        "the image is left in the cache: {images}"
    );
}

/// What machines hold on the node: QEMU processes by name, taps on the
/// tenant network, root vdisks.
fn holdings(node: &Node) -> (Vec<String>, Vec<String>, Vec<String>) {
    let qemus = provision::sorted(node_machines(node).into_iter().map(|(_, c)| c), |_| true);
    let tenant_ns = format!("n-{}", netid(TWIN, "net"));
    let (_, links) = run(node, &["ip", "-n", &tenant_ns, "-o", "link"]);
    let taps = provision::sorted(
        links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned()),
        |n| n.starts_with("t-"),
    );
    let roots = provision::roots(node, true).unwrap_or_else(|e| panic!("{e}"));
    (qemus, taps, roots)
}

#[test]
fn provisiond_killed_during_machine_deploys_and_removals_leaves_each_machine_once() {
    let (farm, registry) = start(4096);
    let node = farm.node(0);
    let image = provision::push_machine(&registry);
    deploy(node, 20, vec![provision::network("net", 213, 3413)])
        .unwrap_or_else(|e| panic!("admitted: {e}"));
    settle(&farm, 20, DeploymentState::Ok, Duration::from_secs(60));

    // provisiond killed at ten moments of a machine's deploy, 0 to 2.25 s
    // in: through the pull, the root disk's filling, the tap and QEMU; then
    // at a moment of its removal. One machine at a time: each removal
    // collects the image, so each deploy pulls it again.
    for i in 0..10u64 {
        let contract = 21 + i;
        let ip = format!("10.213.1.{}", 10 + i);
        let vm = provision::zmachine("vm", &image.reference, &ip, 256 * MIB, json!([]));
        let change = provision::Change::Deploy {
            node_id: NODE_ID,
            twin: TWIN,
            workloads: vec![vm],
        };
        let delay = Duration::from_millis(250 * i);
        provision::kill_during(
            &farm,
            contract,
            change,
            delay,
            (DeploymentState::Ok, WITHIN),
        );
        let id = machine_id(contract, "vm");
        let once = (
            vec![id.clone()],
            vec![format!("t-{id}")],
            vec![root_name(contract, "vm")],
        );
        assert_eq!(holdings(node), once, "contract {contract}: once");
        // The guest boots from a root disk that was filled whole.
        let up = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
            block_on(client(node).expect("runs").logs(contract, "vm"))
                .is_ok_and(|l| l.contains("grove machine up at"))
        });
        assert!(
            up,
            "contract {contract}'s guest never came up\n{}",
            farm.logs(40)
        );

        let delay = Duration::from_millis(200 * (i % 5));
        provision::kill_during(
            &farm,
            contract,
            provision::Change::Remove,
            delay,
            (DeploymentState::Deleted, WITHIN),
        );
        assert_eq!(
            holdings(node),
            (Vec::new(), Vec::new(), Vec::new()),
            "contract {contract}: removed whole"
        );
    }
}
