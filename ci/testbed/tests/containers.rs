//! Containers on a real node: provisiond pulls a busybox image by digest
//! from a real OCI registry on the farm LAN (made here, pushed with the same
//! client), and runs it under runc on the tenant network with a volume.
//!
//! Shows: the deployment (network, volume, container) reaches `ok`; the
//! container answers HTTP at its address from the tenant network; root in
//! it is not root on the node (a user namespace onto the node's
//! unprivileged range); it sees only its own processes and mounts; it
//! writes to its volume; killed, it is started again and the volume keeps
//! what it wrote; a cancel removes the container, its namespace, its root
//! volume and its bundle.

use std::time::Duration;

use grove_testbed::oci::OciRegistry;
use grove_testbed::provision::{self, block_on, cancel, settle};
use grove_testbed::{Daemon, Farm, Node, tenant, wait_until};
use provisiond::api::DeploymentState;
use provisiond::client::ProvisiondClient;
use provisiond::driver::container::container_id;
use provisiond::driver::root_name;
use provisiond::driver::{disk_name, netid};
use serde_json::{Value, json};

/// How long a contract may take to settle: its first deploy, which pulls
/// the image, or one after provisiond was killed.
const WITHIN: Duration = Duration::from_secs(120);

const NODE_ID: u32 = 1;
const TWIN: u32 = 31;
const CONTRACT: u64 = 7;
const MIB: u64 = 1 << 20;
/// provisiond's default: the node's id that root in a container is.
const UID_BASE: u32 = 1_000_000;

fn client(node: &Node) -> ProvisiondClient {
    provision::client(node).expect("node runs")
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

/// A node whose provisiond pulls from `registry` over plain HTTP.
fn start() -> (Farm, OciRegistry) {
    provision::start_with_registry(NODE_ID, 2048, "")
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn deploy(node: &Node, contract: u64, workloads: Vec<Value>) {
    provision::deploy(node, NODE_ID, TWIN, contract, workloads)
        .unwrap_or_else(|e| panic!("admitted: {e}"));
}

/// The pid of the container's first process, from runc.
fn init_pid(node: &Node, id: &str) -> Option<u32> {
    let (ok, out) = run(node, &["runc", "state", id]);
    if !ok {
        return None;
    }
    let state: serde_json::Value = serde_json::from_str(&out).ok()?;
    (state["status"] == "running")
        .then(|| state["pid"].as_u64())
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
}

#[test]
fn a_container_runs_on_its_tenant_network_with_its_volume_and_a_cancel_removes_it_whole() {
    let (farm, registry) = start();
    let node = farm.node(0);
    let image = provision::push_busybox(&registry, provision::httpd());

    let ip = "10.210.1.5";
    let container = json!({"version": 0, "name": "app", "type": "container", "metadata": "",
        "description": "", "data": {
            "image": image.reference,
            "interface": {"network": "net", "ip": ip},
            "compute_capacity": {"cpu": 1, "memory": 128 * MIB},
            "size": 128 * MIB,
            "mounts": [{"name": "data", "mountpoint": "/data"}],
            "entrypoint": ["/bin/sh", "-c",
                "echo started >> /data/boot; echo hello from $GREETING; exec httpd -f -p 80 -h /www"],
            "env": {"GREETING": "hi"}}});
    let network = provision::network("net", 210, 3410);
    let volume = provision::disk("data", "volume", 50 * MIB);
    deploy(node, CONTRACT, vec![network, volume, container]);
    let view = settle(&farm, CONTRACT, DeploymentState::Ok, WITHIN);
    let id = container_id(CONTRACT, "app");
    let result = provision::result_of(&view, "app", &id, ip);
    assert_eq!(result["data"]["live"]["state"], "running", "{result}");
    assert_eq!(result["data"]["live"]["restarts"], 0, "{result}");
    // Its output, with the environment it was given.
    let logs = || block_on(client(node).logs(CONTRACT, "app")).expect("logs");
    let said = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        logs().contains("hello from hi")
    });
    assert!(said, "{:?}", logs());
    let none = block_on(client(node).logs(CONTRACT, "data")).expect_err("a volume has none");
    assert!(none.to_string().contains("has no output"), "{none}");

    // It answers at its address from the tenant network.
    let tenant_ns = format!("n-{}", netid(TWIN, "net"));
    assert!(
        tenant::reaches(
            node,
            Some(&tenant_ns),
            ip.parse().expect("ip"),
            Duration::from_secs(30)
        ),
        "{}",
        farm.logs(40)
    );
    let url = format!("http://{ip}/index.html");
    let (ok, page) = run(
        node,
        &[
            "ip", "netns", "exec", &tenant_ns, "busybox", "wget", "-qO-", &url,
        ],
    );
    assert!(ok && page.contains("grove container"), "{page}");

    // Root inside is the node's unprivileged UID_BASE, and it sees only
    // its own processes.
    let pid = init_pid(node, &id).expect("running");
    let (_, map) = run(node, &["cat", &format!("/proc/{pid}/uid_map")]);
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &UID_BASE.to_string(), "65536"],
        "{map}"
    );
    let (_, owner) = run(node, &["stat", "-c", "%u", &format!("/proc/{pid}")]);
    assert_eq!(owner.trim(), UID_BASE.to_string());
    // The container's own view: its mount namespace (its /proc) and pid
    // namespace, entered from the node.
    let target = pid.to_string();
    let (ok, ps) = run(node, &["nsenter", "-t", &target, "-m", "-p", "/bin/ps"]);
    assert!(ok, "{ps}");
    assert!(
        !ps.contains("agent") && !ps.contains("storaged") && ps.lines().count() <= 4,
        "the container sees other processes:\n{ps}"
    );

    // Nor the node's mounts: its pools, caches and sockets are not in its
    // mount namespace.
    let mounts_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/mounts")).expect("the process runs")
    };
    let mounts = mounts_of(pid);
    assert!(mounts.contains(" /data "), "{mounts}");
    let node_mounts = mounts_of(node.agent_pid().expect("the node runs"));
    for point in node_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
    {
        if point.starts_with("/mnt") || point.starts_with("/var/cache") || point.starts_with("/run")
        {
            assert!(
                !mounts
                    .lines()
                    .any(|l| l.split_whitespace().nth(1) == Some(point)),
                "the container sees the node's {point}:\n{mounts}"
            );
        }
    }

    // It wrote to its volume.
    let storaged =
        storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"));
    let volumes = block_on(storaged.volumes()).expect("volumes");
    let data = volumes
        .iter()
        .find(|v| v.name == disk_name(CONTRACT, "data"))
        .expect("the volume")
        .path
        .join("boot");
    let boot = data.display().to_string();
    assert_eq!(run(node, &["cat", &boot]).1, "started\n");
    let root = volumes
        .iter()
        .find(|v| v.name == root_name(CONTRACT, "app"))
        .expect("the root volume");
    assert_eq!(root.size, 128 * MIB);

    // Killed, it starts again; the volume keeps what it wrote.
    assert!(run(node, &["kill", "-9", &pid.to_string()]).0);
    let again = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        init_pid(node, &id).is_some_and(|p| p != pid)
    });
    assert!(again, "not started again\n{}", farm.logs(40));
    let twice = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        run(node, &["cat", &boot]).1 == "started\nstarted\n"
    });
    assert!(twice, "{}", run(node, &["cat", &boot]).1);
    let view = block_on(client(node).deployment(CONTRACT)).expect("view");
    let live = &view.result("app").expect("a result")["data"]["live"];
    assert_eq!(live["restarts"], 1, "{live}");
    assert!(
        live["last_exit"]
            .as_str()
            .is_some_and(|e| e.starts_with("exited")),
        "{live}"
    );

    // A cancel removes everything the container had.
    cancel(&farm, CONTRACT, Duration::from_secs(60));
    assert!(!run(node, &["runc", "state", &id]).0, "runc still has it");
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    assert!(
        !netns.contains(&format!("c-{id}")) && !netns.contains(&tenant_ns),
        "{netns}"
    );
    assert!(
        block_on(storaged.volumes()).expect("volumes").is_empty(),
        "volumes left"
    );
    let (_, bundles) = run(
        node,
        &["ls", "-A", "/var/cache/grove/provisiond/containers"],
    );
    assert!(!bundles.contains(&id), "bundle left: {bundles}");
    // No container uses the image any more: it left the cache.
    let (_, images) = run(
        node,
        &["ls", "-A", "/var/cache/grove/provisiond/images/images"],
    );
    assert_eq!(images.trim(), "", "images left: {images}");
}

/// The names of what containers hold on the node: runc's containers, the
/// workload namespaces, and the root volumes.
fn holdings(node: &Node) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (_, listed) = run(node, &["runc", "list", "-q"]);
    let containers = provision::sorted(listed.lines().map(str::to_owned), |_| true);
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    let namespaces = provision::sorted(
        netns
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned),
        |n| n.starts_with("c-"),
    );
    let roots = provision::roots(node, false).unwrap_or_else(|e| panic!("{e}"));
    (containers, namespaces, roots)
}

#[test]
fn provisiond_killed_during_deploys_and_removals_leaves_each_container_once_and_adopts_them() {
    let (farm, registry) = start();
    let node = farm.node(0);
    let image = provision::push_busybox(&registry, provision::httpd());
    // The twin's network, on its own contract.
    deploy(node, 10, vec![provision::network("net", 211, 3411)]);
    settle(&farm, 10, DeploymentState::Ok, Duration::from_secs(60));

    // provisiond killed at ten moments of a container's deploy, 0 to
    // 0.9 s in: through the pull, the root filesystem, the namespace and
    // runc.
    let contracts: Vec<u64> = (11..=20).collect();
    let mut want = (Vec::new(), Vec::new(), Vec::new());
    for (i, contract) in contracts.iter().enumerate() {
        let container = json!({"version": 0, "name": "app", "type": "container",
            "metadata": "", "description": "", "data": {
                "image": image.reference,
                "interface": {"network": "net", "ip": format!("10.211.1.{}", 10 + i)},
                "compute_capacity": {"cpu": 1, "memory": 64 * MIB},
                "size": 64 * MIB}});
        let delay = Duration::from_millis(100 * u64::try_from(i).expect("small"));
        let change = provision::Change::Deploy {
            node_id: NODE_ID,
            twin: TWIN,
            workloads: vec![container],
        };
        provision::kill_during(
            &farm,
            *contract,
            change,
            delay,
            (DeploymentState::Ok, WITHIN),
        );
        let id = container_id(*contract, "app");
        want.0.push(id.clone());
        want.1.push(format!("c-{id}"));
        want.2.push(root_name(*contract, "app"));
        want.0.sort();
        want.1.sort();
        want.2.sort();
        assert_eq!(holdings(node), want, "contract {contract}: each once");
    }

    // A restarted provisiond adopts the running containers: no restart.
    let pids: Vec<Option<u32>> = want.0.iter().map(|id| init_pid(node, id)).collect();
    assert!(pids.iter().all(Option::is_some), "{pids:?}");
    farm.node(0)
        .restart_daemon(Daemon::Provisiond, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(60)));
    for contract in &contracts {
        settle(
            &farm,
            *contract,
            DeploymentState::Ok,
            Duration::from_secs(60),
        );
    }
    let after: Vec<Option<u32>> = want.0.iter().map(|id| init_pid(node, id)).collect();
    assert_eq!(after, pids, "a container was started again");

    // provisiond killed during each removal.
    for (i, contract) in contracts.iter().enumerate() {
        let delay = Duration::from_millis(100 * u64::try_from(i).expect("small"));
        provision::kill_during(
            &farm,
            *contract,
            provision::Change::Remove,
            delay,
            (DeploymentState::Deleted, WITHIN),
        );
    }
    assert_eq!(holdings(node), (vec![], vec![], vec![]), "nothing left");
}
