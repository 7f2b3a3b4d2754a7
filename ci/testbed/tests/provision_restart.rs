//! provisiond in a testbed node with the real storaged and netd, across a
//! whole-node restart and beside a stuck netd. After a power loss and a
//! boot, every deployment is `ok` again with the very objects it had: the
//! vdisk files with their bytes, the subvolumes with their qgroup limits,
//! the tenant network's namespace, each made once, and the same capacity
//! used. A deployment whose network creation hangs (netd stopped by
//! SIGSTOP) does not delay another twin's deployment of disks.

use std::time::{Duration, Instant};

use grove_testbed::provision::{self, Objects, block_on, disk, network};
use grove_testbed::{Daemon, Farm, Node, wait_until};
use provisiond::api::{DeploymentState, DeploymentView};
use provisiond::client::ProvisiondClient;
use provisiond::driver::{disk_name, netid};
use storaged::client::StoragedClient;

const NODE_ID: u32 = 1;
const MIB: u64 = 1 << 20;
/// The bytes written into each vdisk before the restart, and where.
const MARK: &str = "grove-kept";
const MARK_AT: u64 = 4096;

fn start() -> Farm {
    provision::start(NODE_ID, 2048).unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn deploy(node: &Node, twin: u32, contract: u64, workloads: Vec<serde_json::Value>) {
    let wire = provision::signed(twin, contract, workloads).expect("signs");
    let submission = provision::submission(NODE_ID, twin, &wire).expect("parses");
    let admitted = block_on(client(node).deploy(&submission)).expect("admitted");
    assert_eq!(admitted.state, DeploymentState::Deploying, "{admitted:?}");
}

/// Twin 22's deployment: a zmount and a volume.
fn twin_22_disks() -> Vec<serde_json::Value> {
    vec![
        disk("root", "zmount", 64 * MIB),
        disk("home", "volume", 30 * MIB),
    ]
}

fn client(node: &Node) -> ProvisiondClient {
    provision::client(node).expect("node runs")
}

fn view(node: &Node, contract: u64) -> DeploymentView {
    block_on(client(node).deployment(contract)).expect("deployment answers")
}

fn wait_state(
    node: &Node,
    farm: &Farm,
    contract: u64,
    state: DeploymentState,
    within: Duration,
) -> DeploymentView {
    provision::wait_state(node, contract, state, within)
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(60)))
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

fn objects(node: &Node) -> Objects {
    provision::objects(node).expect("storaged and netd answer")
}

/// The file length of each vdisk and the mark read back from it.
fn vdisk_contents(node: &Node, objects: &Objects) -> Vec<(String, String)> {
    objects
        .vdisks
        .iter()
        .map(|(_, _, path)| {
            let (ok, size) = run(node, &["stat", "-c", "%s", path]);
            assert!(ok, "{path}: {size}");
            let (ok, mark) = run(
                node,
                &[
                    "dd",
                    &format!("if={path}"),
                    "bs=1",
                    &format!("skip={MARK_AT}"),
                    &format!("count={}", MARK.len()),
                    "status=none",
                ],
            );
            assert!(ok, "{path}: {mark}");
            (size.trim().to_owned(), mark)
        })
        .collect()
}

fn netns_list(node: &Node) -> String {
    run(node, &["ip", "netns", "list"]).1
}

#[test]
fn a_whole_node_restart_restores_every_deployment_once_with_its_contents() {
    let farm = start();
    let node = farm.node(0);
    // Twin 21: a network, a zmount and a volume; twin 22: a zmount and a
    // volume; twin 21 again: a network alone.
    deploy(
        node,
        21,
        40,
        vec![
            network("net", 240, 3800),
            disk("disk", "zmount", 100 * MIB),
            disk("data", "volume", 50 * MIB),
        ],
    );
    deploy(node, 22, 41, twin_22_disks());
    deploy(node, 21, 42, vec![network("lan", 241, 3801)]);
    let within = Duration::from_secs(60);
    for contract in [40, 41, 42] {
        wait_state(node, &farm, contract, DeploymentState::Ok, within);
    }

    let before = objects(node);
    let mut want_vdisks = vec![disk_name(40, "disk"), disk_name(41, "root")];
    want_vdisks.sort();
    let mut want_volumes = vec![disk_name(40, "data"), disk_name(41, "home")];
    want_volumes.sort();
    let mut want_networks = vec![netid(21, "net"), netid(21, "lan")];
    want_networks.sort();
    let names = |v: &[(String, u64, String)]| v.iter().map(|o| o.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before.vdisks), want_vdisks, "{before:?}");
    assert_eq!(names(&before.volumes), want_volumes, "{before:?}");
    assert_eq!(
        before
            .networks
            .iter()
            .map(|n| n.0.clone())
            .collect::<Vec<_>>(),
        want_networks
    );
    // A mark inside each vdisk and a file in each volume, on disk before
    // the power goes.
    for (_, _, path) in &before.vdisks {
        let script = format!(
            "printf '{MARK}' | dd of={path} bs=1 seek={MARK_AT} conv=notrunc status=none && sync {path}"
        );
        let (ok, out) = run(node, &["sh", "-c", &script]);
        assert!(ok, "{out}");
    }
    for (name, _, path) in &before.volumes {
        let script = format!("echo {name} > {path}/kept.txt && sync {path}/kept.txt");
        let (ok, out) = run(node, &["sh", "-c", &script]);
        assert!(ok, "{out}");
    }
    let contents_before = vdisk_contents(node, &before);
    let sizes: Vec<(String, String)> = [100 * MIB, 64 * MIB]
        .iter()
        .map(|size| (size.to_string(), MARK.to_owned()))
        .collect();
    assert_eq!(
        contents_before, sizes,
        "c40-disk then c41-root, each marked"
    );
    let used_before = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(used_before.used.sru, (100 + 50 + 64 + 30) * MIB);
    let mut ports = used_before.wireguard_ports.clone();
    ports.sort_unstable();
    assert_eq!(ports, vec![3800, 3801]);

    // Power loss, then a boot on the same disks.
    let daemons = [Daemon::Storaged, Daemon::Netd, Daemon::Provisiond];
    let pids_before: Vec<Option<u32>> = daemons.iter().map(|d| node.daemon_pid(*d)).collect();
    assert!(pids_before.iter().all(Option::is_some), "{pids_before:?}");
    node.kill_agent().expect("power off the node");
    for daemon in daemons {
        assert!(
            node.daemon_pids(daemon).is_empty(),
            "{daemon:?} outlived the power loss"
        );
    }
    node.start_agent().expect("boot the node again");
    let booted = Instant::now();
    provision::wait_provisiond(&farm).unwrap_or_else(|e| panic!("{e}"));
    for (daemon, old) in daemons.iter().zip(&pids_before) {
        let new = node.daemon_pid(*daemon);
        assert!(
            new.is_some() && new != *old,
            "{daemon:?}: {old:?} then {new:?}"
        );
    }
    for contract in [40, 41, 42] {
        wait_state(node, &farm, contract, DeploymentState::Ok, within);
    }
    // netd and storaged rebuild what they had before they answer, and the
    // agent starts provisiond only once both are ready: the objects are
    // there as soon as the deployments say `ok`, each exactly once.
    let after = objects(node);
    assert_eq!(after, before, "restored objects\n{}", farm.logs(80));
    let namespaces = netns_list(node);
    for (_, ns) in &after.networks {
        assert_eq!(
            namespaces.matches(ns.as_str()).count(),
            1,
            "{ns}: {namespaces}"
        );
    }
    eprintln!(
        "every deployment ok with its objects {} ms after the boot",
        booted.elapsed().as_millis()
    );
    for contract in [40, 41, 42] {
        let view = view(node, contract);
        assert_eq!(view.state, DeploymentState::Ok, "{view:?}");
        assert_eq!(view.version, 0, "{view:?}");
        for w in view.deployment["workloads"].as_array().expect("workloads") {
            assert_eq!(w["result"]["state"], "ok", "{contract}: {w}");
        }
    }
    assert_eq!(vdisk_contents(node, &before), contents_before);
    for (name, size, path) in &before.volumes {
        provision::check_volume_limited(node, path, *size).expect("a limited subvolume");
        let (ok, out) = run(node, &["cat", &format!("{path}/kept.txt")]);
        assert!(ok && out == format!("{name}\n"), "{path}: {out}");
    }
    let used_after = block_on(client(node).capacity()).expect("capacity");
    assert_eq!(used_after.used, used_before.used);
    let mut ports_after = used_after.wireguard_ports.clone();
    ports_after.sort_unstable();
    assert_eq!(ports_after, ports);
    // Asked again after the checks above: still nothing made twice.
    assert_eq!(objects(node), before);
}

/// Sends SIGSTOP or SIGCONT to `pid`.
fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal netd");
}

#[test]
fn a_network_stuck_in_netd_does_not_delay_another_twins_disks() {
    let farm = start();
    let node = farm.node(0);
    let netd = node.daemon_pid(Daemon::Netd).expect("netd runs");
    // The agent's supervisor only marks a daemon that misses its /ready
    // probes as unready; it never restarts a live one, so a stopped netd
    // stays the same stopped process.
    signal(netd, nix::sys::signal::Signal::SIGSTOP);
    let stopped = Instant::now();
    deploy(node, 21, 50, vec![network("net", 250, 3900)]);
    // Twin 22's disks, admitted while twin 21's network waits on netd.
    let started = Instant::now();
    deploy(node, 22, 51, twin_22_disks());
    let within = Duration::from_secs(30);
    let b = wait_state(node, &farm, 51, DeploymentState::Ok, within);
    let took = started.elapsed();
    // netd stays stopped until the agent's probes find it unready (two
    // missed probes, 2 s apart): twin 21's network waits all along.
    let unready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        node.service(Daemon::Netd)
            .is_ok_and(|s| s.state == "unready")
    });
    assert!(unready, "the agent never saw netd stop\n{}", farm.logs(40));
    let a = view(node, 50);
    assert_eq!(
        a.state,
        DeploymentState::Deploying,
        "twin 21's network still waits on the stopped netd: {a:?}"
    );
    assert_eq!(b.workload_state("root"), Some("ok"), "{b:?}");
    assert_eq!(b.workload_state("home"), Some("ok"), "{b:?}");
    assert_eq!(
        node.daemon_pid(Daemon::Netd),
        Some(netd),
        "netd was not restarted while stopped"
    );
    assert!(
        took < Duration::from_secs(10),
        "twin 22's deployment took {took:?} beside a stuck network"
    );
    eprintln!(
        "twin 22 ok {} ms after admission while twin 21's network hangs",
        took.as_millis()
    );
    let storaged = StoragedClient::new(node.socket(Daemon::Storaged).expect("node runs"));
    let vdisks: Vec<String> = block_on(storaged.vdisks())
        .expect("vdisks")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vdisks, vec![disk_name(51, "root")]);

    signal(netd, nix::sys::signal::Signal::SIGCONT);
    eprintln!("netd was stopped for {} ms", stopped.elapsed().as_millis());
    let within = Duration::from_secs(60);
    let a = wait_state(node, &farm, 50, DeploymentState::Ok, within);
    assert_eq!(a.workload_state("net"), Some("ok"), "{a:?}");
    assert_eq!(
        objects(node)
            .networks
            .into_iter()
            .map(|n| n.0)
            .collect::<Vec<_>>(),
        vec![netid(21, "net")],
        "one network, made once"
    );
    assert_eq!(
        node.daemon_pid(Daemon::Netd),
        Some(netd),
        "the same netd made it"
    );
}
