//! The foundation, end to end: a real node in the testbed runs `agent`,
//! which runs `storaged`, `netd` and `provisiond` for real, and answers on
//! the farm LAN.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::api::NodeReport;
use agent::supervisor::{ServiceState, ServiceStatus};
use grove_testbed::{Daemon, Farm, FarmSpec, Node, NodeSpec, holds_for, http_get, wait_until};
use serde::de::DeserializeOwned;

fn start(spec: FarmSpec) -> Farm {
    Farm::start_for_test(spec)
}

/// A farm of one node, ready within 20 s.
fn one_ready_node() -> Farm {
    let farm = start(FarmSpec::nodes(1));
    wait_ready(&farm, farm.node(0), Duration::from_secs(20));
    farm
}

fn url(node: &Node, path: &str) -> String {
    format!("{}{path}", node.api_url().expect("node has a LAN address"))
}

fn get<T: DeserializeOwned>(node: &Node, path: &str) -> T {
    let (status, body) = http_get(&url(node, path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Asks the node's operator API for `path`: the answer is `status`, and
/// its body names `naming`.
fn assert_answers(node: &Node, path: &str, status: u16, naming: &str) {
    let (got, body) = http_get(&url(node, path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(got, status, "GET {path}: {body}");
    assert!(body.contains(naming), "GET {path}: {body}");
}

fn wait_ready(farm: &Farm, node: &Node, within: Duration) {
    let ready = wait_until(within, Duration::from_millis(20), || {
        matches!(http_get(&url(node, "/ready")), Ok((200, _)))
    });
    assert!(
        ready,
        "node {} not ready within {within:?}\n{}",
        node.name(),
        farm.logs(60)
    );
}

fn service(node: &Node, name: &str) -> ServiceStatus {
    get(node, &format!("/v1/services/{name}"))
}

#[test]
fn every_daemon_answers_in_its_node_and_the_operator_api_answers_on_the_lan() {
    let farm = one_ready_node();
    let node = farm.node(0);

    // Inside the node, at the production paths, as an operator would ask.
    for daemon in Daemon::ALL {
        let sock = format!("/run/grove/{}.sock", daemon.name());
        let curl = |url: &str| {
            node.exec(&["curl", "-s", "--unix-socket", &sock, url])
                .expect("curl runs in the node")
        };
        let out = curl("http://localhost/ready");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{daemon}: {out:?}");
        assert_eq!(body, r#"{"ready":true}"#, "{daemon}");
        let out = curl("http://localhost/v1/info");
        let info: grove_daemon::server::Info =
            serde_json::from_slice(&out.stdout).expect("info decodes");
        assert_eq!(info.name, daemon.name());
        if daemon != Daemon::Agent {
            assert_eq!(Some(info.pid), service(node, daemon.name()).pid, "{daemon}");
        }
    }

    // From the host, over the farm LAN.
    let report: NodeReport = get(node, "/v1/node");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(report.host.kernel, host_kernel.trim());
    // Each node has a UTS namespace of its own, named after the node.
    assert_eq!(report.host.hostname, node.name());
    assert_eq!(
        report.host.cpu.count,
        std::thread::available_parallelism().expect("cpus").get()
    );
    assert!(report.host.memory.total_bytes > report.host.memory.available_bytes);
    assert!(report.host.uptime_secs > 0.0);
    assert_eq!(report.boot.params.farm_id, Some(1));
    assert!(report.boot.errors.is_empty(), "{:?}", report.boot.errors);

    let services: Vec<ServiceStatus> = get(node, "/v1/services");
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["storaged", "netd", "provisiond"]);
    for s in &services {
        assert_eq!(s.state, ServiceState::Ready, "{s:?}");
        assert_eq!(s.restarts, 0, "{s:?}");
        assert!(s.pid.is_some());
    }
    assert_answers(node, "/v1/services/nosuchd", 404, "nosuchd");
}

#[test]
fn a_killed_netd_is_restarted_within_two_seconds() {
    let farm = one_ready_node();
    let node = farm.node(0);
    let before = service(node, "netd");
    let pid = before.pid.expect("netd runs");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 netd");
    let killed = Instant::now();
    let back = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        let s = service(node, "netd");
        s.state == ServiceState::Ready && s.pid.is_some_and(|p| p != pid)
    });
    let took = killed.elapsed();
    assert!(back, "netd not back within 2 s\n{}", farm.logs(40));
    eprintln!(
        "netd restarted and ready {} ms after kill -9",
        took.as_millis()
    );

    let after = service(node, "netd");
    assert_eq!(after.restarts, 1, "{after:?}");
    let exit = after.last_exit.expect("the kill is recorded");
    assert_eq!(exit.reason, "killed by SIGKILL");
    // The other daemons were left alone.
    assert_eq!(service(node, "storaged").restarts, 0);
    assert_eq!(service(node, "provisiond").restarts, 0);
    // Both runs' output is in the log ring.
    let logs: agent::api::ServiceLogs = get(node, "/v1/services/netd/logs?lines=100");
    let serving = logs
        .lines
        .iter()
        .filter(|l| l.text.contains("serving"))
        .count();
    assert!(
        serving >= 2,
        "expected a 'serving' line per run: {:?}",
        logs.lines
    );
}

/// `kill -9` of the agent alone: its daemons die with it, and a new agent
/// stops whatever is still draining before it starts its own, so the node
/// ends with exactly one of each daemon, each the one the new agent runs.
#[test]
fn a_new_agent_after_kill_9_of_the_agent_alone_runs_one_of_each_daemon() {
    let farm = one_ready_node();
    let node = farm.node(0);
    let daemons = [Daemon::Storaged, Daemon::Netd, Daemon::Provisiond];
    let before: Vec<u32> = daemons
        .iter()
        .map(|d| service(node, d.name()).pid.expect("the daemon runs"))
        .collect();
    for (daemon, pid) in daemons.iter().zip(&before) {
        assert_eq!(node.daemon_pids(*daemon), vec![*pid], "{daemon:?} before");
    }

    node.kill_agent_alone().expect("kill -9 the agent");
    node.start_agent().expect("a new agent starts");
    wait_ready(&farm, node, Duration::from_secs(30));

    for (daemon, old) in daemons.iter().zip(&before) {
        let now = service(node, daemon.name()).pid.expect("the daemon runs");
        assert_ne!(now, *old, "{daemon:?} is the new agent's own");
        assert_eq!(
            node.daemon_pids(*daemon),
            vec![now],
            "exactly one {daemon:?} in the node\n{}",
            farm.logs(60)
        );
    }
}

#[test]
fn bad_boot_parameters_are_reported_by_name_and_the_node_keeps_running() {
    let spec =
        NodeSpec::default().cmdline("quiet farmer_id=abc vlan:foo=5 grove.debug grove.wipe=a/b");
    let farm = start(FarmSpec::with_nodes(vec![spec]));
    let node = farm.node(0);
    wait_ready(&farm, node, Duration::from_secs(20));

    let report: NodeReport = get(node, "/v1/node");
    let errors: Vec<(&str, &str)> = report
        .boot
        .errors
        .iter()
        .map(|e| (e.param.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("farmer_id", "abc"),
            ("vlan:foo", "5"),
            ("grove.wipe", "a/b")
        ]
    );
    assert!(report.boot.errors.iter().all(|e| !e.reason.is_empty()));
    assert_eq!(report.boot.params.farm_id, None);
    assert!(report.boot.params.debug, "the good parameters still apply");

    // Still running, nothing restarting.
    let mut services: Vec<ServiceStatus> = Vec::new();
    let steady = holds_for(
        Duration::from_millis(500),
        Duration::from_millis(50),
        || {
            services = get(node, "/v1/services");
            services
                .iter()
                .all(|s| s.state == ServiceState::Ready && s.restarts == 0)
        },
    );
    assert!(steady, "{services:?}");
}

#[test]
fn a_daemon_with_a_bad_config_is_shown_failing_and_the_others_run() {
    let spec = NodeSpec::default()
        .config(
            Daemon::Netd,
            "socket = \"/run/grove/netd.sock\"\nbogus_key = 1\n",
        )
        .config(Daemon::Agent, "[supervisor]\nready_timeout_secs = 1\n");
    let farm = start(FarmSpec::with_nodes(vec![spec]));
    let node = farm.node(0);
    let shown = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        let netd = service(node, "netd");
        let provisiond = service(node, "provisiond");
        netd.restarts >= 1 && provisiond.state == ServiceState::Ready
    });
    assert!(shown, "netd failure not shown\n{}", farm.logs(40));
    let netd = service(node, "netd");
    assert_eq!(
        netd.last_exit.expect("exit recorded").reason,
        "exited with code 64"
    );
    assert_ne!(netd.state, ServiceState::Ready);
    assert_eq!(service(node, "storaged").state, ServiceState::Ready);
    let logs: agent::api::ServiceLogs = get(node, "/v1/services/netd/logs?lines=20");
    assert!(
        logs.lines.iter().any(|l| l.text.contains("bogus_key")),
        "the log names the key: {:?}",
        logs.lines
    );
    assert_answers(node, "/ready", 503, "netd");
}

#[test]
fn sigterm_stops_every_daemon_cleanly() {
    let farm = one_ready_node();
    let node = farm.node(0);
    let pids: Vec<u32> = get::<Vec<ServiceStatus>>(node, "/v1/services")
        .iter()
        .filter_map(|s| s.pid)
        .collect();
    assert_eq!(pids.len(), 3);
    let started = Instant::now();
    node.stop_agent().expect("stop");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "stop took {took:?}");
    let exit = node.agent_exit().expect("agent exited");
    assert_eq!(exit.code(), Some(0), "{exit:?}\n{}", farm.logs(30));
    for pid in pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "daemon {pid} survived"
        );
    }
}

/// Runs the workspace's binary `name` with `--config config`: its exit
/// code and stderr.
fn run_with_config(name: &str, config: &Path) -> (Option<i32>, String) {
    let binary = grove_testbed::bin_dir().expect("binaries built").join(name);
    let out = Command::new(binary)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_file_makes_each_daemon_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "bogus_key = 1\n").unwrap();
    let missing = dir.path().join("missing.toml");
    let typed = dir.path().join("agent.toml");
    std::fs::write(&typed, "[api]\nlisten = \"not-an-address\"\n").unwrap();
    let mut cases: Vec<(&str, &Path, &str)> = Vec::new();
    for daemon in Daemon::ALL {
        cases.push((daemon.name(), &bad, "bogus_key"));
        cases.push((daemon.name(), &missing, "missing.toml"));
    }
    cases.push(("agent", &typed, "listen"));
    for (name, config, named) in cases {
        let (code, stderr) = run_with_config(name, config);
        assert_eq!(code, Some(64), "{name} with {}: {stderr}", config.display());
        assert!(stderr.contains(named), "{name}: {stderr}");
    }
}
