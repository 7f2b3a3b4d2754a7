//! A tenant's compute across two nodes, as the tenant sees it: one network
//! on nodes A and B, a volume, a container and a machine on A, a container
//! on B, and the tenant's laptop as the network's WireGuard access peer
//! (a third node, with `boringtun-cli` and `wg` set up by hand). A second
//! tenant runs a container on A.
//!
//! Shows: both containers and the machine run and reach each other across
//! the nodes; the laptop reaches all three; the other tenant reaches none
//! of them, nor does the laptop reach it; a memory hog is killed by the OOM
//! killer and started again, which its result shows; after a power loss of
//! node A, everything there runs again exactly once (one QEMU, one runc
//! container each), the volume keeps what the container wrote, and the
//! laptop reaches the machine again.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use grove_testbed::mesh::{self, Keys};
use grove_testbed::oci::OciRegistry;
use grove_testbed::proc::ProcId;
use grove_testbed::provision::{self, block_on, client};
use grove_testbed::tenant::{self, HandPeer, HandPeerSpec};
use grove_testbed::{Daemon, Farm, Node, wait_until};
use provisiond::api::{DeploymentState, DeploymentView};
use provisiond::driver::container::container_id;
use provisiond::driver::disk_name;
use provisiond::driver::machine::machine_id;
use serde_json::{Value, json};

const TWIN: u32 = 51;
const OTHER_TWIN: u32 = 53;
/// Node ids of A, B and the laptop's node.
const NODE_IDS: [u32; 3] = [11, 12, 13];
const ON_A: u64 = 30;
const ON_B: u64 = 31;
const OTHER_ON_A: u64 = 32;
const PORT: u16 = 3430;
const MIB: u64 = 1 << 20;

const APP: &str = "10.216.1.5";
const HOG: &str = "10.216.1.6";
const VM: &str = "10.216.1.7";
const ON_B_IP: &str = "10.216.2.5";
const LAPTOP: &str = "10.216.200.2";
const STRANGER: &str = "10.217.1.5";

const REACH: Duration = Duration::from_secs(60);

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

fn deploy(node: &Node, node_id: u32, twin: u32, contract: u64, workloads: Vec<Value>) {
    let wire = provision::signed(twin, contract, workloads).expect("signs");
    let submission = provision::submission(node_id, twin, &wire).expect("a submission");
    block_on(client(node).expect("runs").deploy(&submission))
        .unwrap_or_else(|e| panic!("contract {contract} admitted: {e}"));
}

fn wait_state(farm: &Farm, node: &Node, contract: u64, within: Duration) -> DeploymentView {
    provision::wait_state(node, contract, DeploymentState::Ok, within)
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(80)))
}

/// Node `i`'s part of network "net" (subnet `10.216.<i+1>.0/24`), with the
/// other node as its peer; node A also has the laptop, and B reaches the
/// laptop through A.
fn network(farm: &Farm, keys: &[Keys; 3], i: usize) -> Value {
    let j = 1 - i;
    let other = farm.node(j).lan_ip().expect("a LAN address");
    let mut to_other = vec![format!("10.216.{}.0/24", j + 1)];
    if j == 0 {
        to_other.push(format!("{LAPTOP}/32"));
    }
    let mut peers = vec![json!({"subnet": format!("10.216.{}.0/24", j + 1),
        "wireguard_public_key": keys[j].public, "allowed_ips": to_other,
        "endpoint": format!("{other}:{PORT}")})];
    if i == 0 {
        peers.push(
            json!({"subnet": "10.216.200.0/24", "wireguard_public_key": keys[2].public,
            "allowed_ips": [format!("{LAPTOP}/32")], "endpoint": ""}),
        );
    }
    json!({"version": 0, "name": "net", "type": "network", "metadata": "", "description": "",
        "data": {"ip_range": "10.216.0.0/16", "subnet": format!("10.216.{}.0/24", i + 1),
            "wireguard_private_key": keys[i].private, "wireguard_listen_port": PORT,
            "peers": peers}})
}

fn container(
    name: &str,
    image: &str,
    (network, ip): (&str, &str),
    memory: u64,
    mounts: Value,
    script: &str,
) -> Value {
    json!({"version": 0, "name": name, "type": "container", "metadata": "", "description": "",
        "data": {"image": image, "interface": {"network": network, "ip": ip},
            "compute_capacity": {"cpu": 1, "memory": memory}, "size": 64 * MIB,
            "mounts": mounts, "entrypoint": ["/bin/sh", "-c", script], "env": {}}})
}

/// The container's network namespace on its node.
fn netns_of(contract: u64, name: &str) -> String {
    format!("c-{}", container_id(contract, name))
}

fn reaches(node: &Node, netns: Option<&str>, to: &str) -> bool {
    tenant::reaches(node, netns, ip(to), REACH)
}

/// Three pings from `netns` on `node` to `to`, none answered.
fn never_reaches(node: &Node, netns: Option<&str>, to: &str) -> bool {
    (0..3).all(|_| matches!(tenant::ping(node, netns, ip(to)), Ok(false)))
}

/// runc's containers on the node.
fn runc_list(node: &Node) -> Vec<String> {
    let (_, out) = run(node, &["runc", "list", "-q"]);
    let mut ids: Vec<String> = out.lines().map(str::to_owned).collect();
    ids.sort();
    ids
}

/// The pid of container `id`'s first process, while it runs.
fn init_pid(node: &Node, id: &str) -> Option<String> {
    let (ok, out) = run(node, &["runc", "state", id]);
    let state: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    (state["status"] == "running").then(|| state["pid"].to_string())
}

fn start() -> (Farm, OciRegistry) {
    provision::start_nodes_with_registry(
        &NODE_IDS,
        3072,
        "accel = \"tcg\"\nmachine_stop_grace = 3\n",
    )
    .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn boringtun() -> String {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("boringtun-cli"))
        .chain([std::path::PathBuf::from("/root/.cargo/bin/boringtun-cli")])
        .find(|p| p.is_file())
        .expect("boringtun-cli (ci/setup installs it)")
        .display()
        .to_string()
}

#[test]
fn a_tenants_containers_and_machine_on_two_nodes_reach_each_other_and_the_laptop_only() {
    let (farm, registry) = start();
    let (a, b, laptop_node) = (farm.node(0), farm.node(1), farm.node(2));
    let busybox = provision::push_busybox(&registry, json!({}));
    let machine_image = provision::push_machine(&registry);
    let keys: [Keys; 3] = std::array::from_fn(|_| mesh::keys().expect("wg genkey"));

    // Node A: the network, a volume, a web server writing to the volume, a
    // memory hog, and a machine.
    let serve = "echo started >> /data/boot; exec httpd -f -p 80 -h /www";
    let hog = "echo eating; x=0123456789abcdef; while :; do x=$x$x; done";
    let vm = provision::zmachine("vm", &machine_image.reference, VM, 256 * MIB, json!([]));
    deploy(
        a,
        NODE_IDS[0],
        TWIN,
        ON_A,
        vec![
            network(&farm, &keys, 0),
            provision::disk("data", "volume", 50 * MIB),
            container(
                "app",
                &busybox.reference,
                ("net", APP),
                64 * MIB,
                json!([{"name": "data", "mountpoint": "/data"}]),
                serve,
            ),
            container(
                "hog",
                &busybox.reference,
                ("net", HOG),
                64 * MIB,
                json!([]),
                hog,
            ),
            vm,
        ],
    );
    // Node B: the network and a web server.
    deploy(
        b,
        NODE_IDS[1],
        TWIN,
        ON_B,
        vec![
            network(&farm, &keys, 1),
            container(
                "b",
                &busybox.reference,
                ("net", ON_B_IP),
                64 * MIB,
                json!([]),
                "exec httpd -f -p 80 -h /www",
            ),
        ],
    );
    // Another tenant on node A.
    deploy(
        a,
        NODE_IDS[0],
        OTHER_TWIN,
        OTHER_ON_A,
        vec![
            provision::network("net", 217, PORT + 1),
            container(
                "stranger",
                &busybox.reference,
                ("net", STRANGER),
                64 * MIB,
                json!([]),
                "exec httpd -f -p 80 -h /www",
            ),
        ],
    );
    let on_a = wait_state(&farm, a, ON_A, Duration::from_secs(240));
    wait_state(&farm, b, ON_B, Duration::from_secs(120));
    wait_state(&farm, a, OTHER_ON_A, Duration::from_secs(120));
    assert_eq!(on_a.result("vm").expect("a result")["data"]["ip"], VM);

    // The containers reach each other across the nodes, and the machine.
    let app_ns = netns_of(ON_A, "app");
    let b_ns = netns_of(ON_B, "b");
    assert!(
        reaches(a, Some(&app_ns), ON_B_IP),
        "A's container does not reach B's\n{}",
        farm.logs(60)
    );
    assert!(
        reaches(b, Some(&b_ns), APP),
        "B's container does not reach A's"
    );
    let console = || block_on(client(a).expect("runs").logs(ON_A, "vm")).unwrap_or_default();
    let up = wait_until(Duration::from_secs(240), Duration::from_millis(500), || {
        console().contains(&format!("grove machine up at {VM}"))
    });
    assert!(up, "the guest never came up:\n{}", console());
    assert!(
        reaches(a, Some(&app_ns), VM),
        "the container does not reach the machine"
    );
    assert!(
        reaches(b, Some(&b_ns), VM),
        "B's container does not reach the machine"
    );

    // The laptop reaches all three through its access peer on A.
    let a_endpoint = SocketAddr::from((a.lan_ip().expect("a LAN address"), PORT));
    let laptop = HandPeer::start(
        laptop_node,
        &boringtun(),
        &HandPeerSpec {
            ifname: "wl0",
            keys: &keys[2],
            address: &format!("{LAPTOP}/32"),
            listen_port: 0,
            peer_key: &keys[0].public,
            peer_endpoint: Some(a_endpoint),
            routes: &["10.216.0.0/16"],
            netns: None,
            flags: &[],
        },
    )
    .unwrap_or_else(|e| panic!("the laptop: {}", grove_testbed::report(&e)));
    for (what, to) in [
        ("A's container", APP),
        ("B's container", ON_B_IP),
        ("the machine", VM),
    ] {
        assert!(
            reaches(laptop_node, None, to),
            "the laptop does not reach {what}\n{}",
            run(laptop_node, &["wg", "show", "wl0"]).1
        );
    }
    let (ok, page) = run(
        laptop_node,
        &[
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{ON_B_IP}/index.html"),
        ],
    );
    assert!(ok && page.contains("grove container"), "{page}");

    // The other tenant reaches none of it, nor does the laptop reach it.
    let stranger_ns = netns_of(OTHER_ON_A, "stranger");
    assert!(
        reaches(a, Some(&stranger_ns), "10.217.1.1"),
        "the other tenant's container does not reach its own gateway"
    );
    for to in [APP, VM, ON_B_IP] {
        assert!(
            never_reaches(a, Some(&stranger_ns), to),
            "the other tenant reaches {to}"
        );
    }
    assert!(
        never_reaches(laptop_node, None, STRANGER),
        "the laptop reaches the other tenant"
    );
    assert!(
        never_reaches(a, Some(&app_ns), STRANGER),
        "the container reaches the other tenant"
    );

    // The hog is killed by the OOM killer and started again.
    let mut hog_life = Value::Null;
    let killed = wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        let Ok(view) = block_on(client(a).expect("runs").deployment(ON_A)) else {
            return false;
        };
        hog_life = view.result("hog").expect("a result")["data"]["live"].clone();
        hog_life["oom_kills"].as_u64().is_some_and(|n| n >= 1)
            && hog_life["restarts"].as_u64().is_some_and(|n| n >= 1)
    });
    assert!(
        killed,
        "the hog was not OOM-killed and restarted: {hog_life}"
    );
    assert_eq!(hog_life["last_exit"], "killed: out of memory", "{hog_life}");
    let logs = block_on(client(a).expect("runs").logs(ON_A, "hog")).expect("logs");
    assert!(logs.matches("eating").count() >= 2, "{logs:?}");

    // The operator's view of node A (the dashboard reads `/v1/capacity`):
    // its workloads with their state and restarts, nothing the tenant
    // keeps private.
    let url = format!("{}/v1/capacity", a.api_url().expect("an address"));
    let mut seen = String::new();
    let listed = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        let Ok((200, body)) = grove_testbed::http::http_get(&url) else {
            return false;
        };
        seen = body;
        let view: Value = serde_json::from_str(&seen).unwrap_or(Value::Null);
        let listed = view["deployments"]["workloads"].as_array().cloned();
        let of = |name: &str| {
            listed
                .iter()
                .flatten()
                .find(|w| w["contract"] == ON_A && w["name"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        of("app")["live"] == "running"
            && of("vm")["kind"] == "zmachine"
            && of("hog")["restarts"].as_u64().is_some_and(|n| n >= 1)
    });
    assert!(listed, "node A's operator view lacks its workloads: {seen}");
    for private in [
        busybox.reference.as_str(),
        machine_image.reference.as_str(),
        APP,
        HOG,
        VM,
        "sha256:",
        "0123456789abcdef",
    ] {
        assert!(
            !seen.contains(private),
            "{private} in the operator view: {seen}"
        );
    }
    let view = block_on(client(a).expect("runs").deployment(ON_A)).expect("a view");
    assert_eq!(
        view.state,
        DeploymentState::Ok,
        "the hog fails the deployment"
    );
    assert_eq!(
        view.result("app").expect("a result")["data"]["live"]["restarts"],
        0
    );

    // Power loss of node A, then a boot on the same disks.
    let volume = provision::objects(a)
        .expect("objects")
        .volume(&disk_name(ON_A, "data"))
        .expect("the volume")
        .to_owned();
    let boot_file = format!("{volume}/boot");
    assert_eq!(run(a, &["cat", &boot_file]).1, "started\n");
    let vm_id = machine_id(ON_A, "vm");
    let mut before: Vec<String> = provision::qemus(a, &vm_id).expect("machines");
    assert_eq!(before.len(), 1, "one QEMU: {before:?}");
    // The hog may be between two runs; the others run.
    for id in [
        container_id(ON_A, "app"),
        container_id(OTHER_ON_A, "stranger"),
    ] {
        before.push(init_pid(a, &id).unwrap_or_else(|| panic!("{id} runs")));
    }
    before.extend(init_pid(a, &container_id(ON_A, "hog")));
    a.kill_agent().expect("power off node A");
    for pid in &before {
        let pid: u32 = pid.parse().expect("a pid");
        assert!(
            ProcId::of(pid).is_none_or(|p| !p.is_alive()),
            "process {pid} outlived the power loss"
        );
    }
    a.start_agent().expect("boot node A again");
    provision::wait_node_provisiond(&farm, a).unwrap_or_else(|e| panic!("{e}"));
    wait_state(&farm, a, ON_A, Duration::from_secs(240));
    wait_state(&farm, a, OTHER_ON_A, Duration::from_secs(120));
    let mut want = vec![
        container_id(ON_A, "app"),
        container_id(ON_A, "hog"),
        container_id(OTHER_ON_A, "stranger"),
    ];
    want.sort();
    let restored = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        runc_list(a) == want
    });
    assert!(
        restored,
        "each container once: {:?}, not {want:?}\n{}",
        runc_list(a),
        farm.logs(60)
    );
    let one_qemu = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        provision::qemus(a, &vm_id).is_ok_and(|q| q.len() == 1)
    });
    assert!(one_qemu, "{:?}", provision::machines(a));
    let objects = provision::objects(a).expect("objects");
    let volume = objects
        .volume(&disk_name(ON_A, "data"))
        .expect("the volume");
    let twice = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        run(a, &["cat", &format!("{volume}/boot")]).1 == "started\nstarted\n"
    });
    assert!(twice, "{}", run(a, &["cat", &format!("{volume}/boot")]).1);
    assert!(
        reaches(laptop_node, None, VM),
        "the laptop does not reach the machine after node A's boot\n{}",
        farm.logs(60)
    );
    assert!(
        reaches(b, Some(&b_ns), APP),
        "B's container does not reach A's after node A's boot"
    );
    assert!(never_reaches(a, Some(&stranger_ns), VM));
    assert_eq!(
        a.daemon_pids(Daemon::Provisiond).len(),
        1,
        "one provisiond on node A"
    );
    assert_eq!(
        provision::qemus(a, &vm_id).expect("machines").len(),
        1,
        "still one QEMU"
    );
    assert_eq!(runc_list(a), want, "still each container once");
    laptop.stop();
}
