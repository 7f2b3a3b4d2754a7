//! netd's node mesh `mesh0` in testbed nodes: reachability between public
//! nodes and nodes behind NAT (through a relay), peer changes that keep
//! sessions, refused requests that change nothing, restarts that restore
//! the same device, and a private key that never leaks.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use grove_testbed::mesh::{self, Keys, PeerEntry};
use grove_testbed::{Daemon, Farm, FarmSpec, LanSpec, NicSpec, Node, NodeSpec, wait_until};
use netd::mesh::view::{Applied, MeshView, PeerView};
use serde_json::Value;

/// Every node's netd: the testbed sets the addresses, and NAT'd nodes keep
/// their sessions alive every second.
const NETD_TOML: &str = "[uplink]\nmanage = false\n\n[mesh]\nkeepalive_secs = 1\n";

fn start(spec: FarmSpec) -> Farm {
    Farm::start_answering(spec, Daemon::Netd, "/v1/mesh")
}

/// A node on LAN 0, or on the LAN behind NAT.
fn node(behind_nat: bool) -> NodeSpec {
    let nic = if behind_nat {
        NicSpec::on_lan(1)
    } else {
        NicSpec::on_lan(0)
    };
    NodeSpec::default()
        .nics(vec![nic])
        .config(Daemon::Netd, NETD_TOML)
}

fn get(node: &Node, path: &str) -> (u16, String) {
    node.request(Daemon::Netd, "GET", path, None)
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn put(node: &Node, path: &str, body: &str) -> (u16, String) {
    node.request(Daemon::Netd, "PUT", path, Some(body))
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn view(node: &Node) -> MeshView {
    node.get(Daemon::Netd, "/v1/mesh")
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)))
}

fn peer<'a>(view: &'a MeshView, keys: &Keys) -> &'a PeerView {
    view.peers
        .iter()
        .find(|p| p.public_key.to_string() == keys.public)
        .unwrap_or_else(|| panic!("no peer {} in {view:?}", keys.public))
}

fn configure(node: &Node, keys: &Keys, public_endpoint: bool) {
    let (status, body) = put(node, "/v1/mesh", &mesh::mesh_body(keys, public_endpoint));
    assert_eq!(status, 200, "{}: {body}", node.name());
}

fn set_peers(node: &Node, peers: &[PeerEntry]) -> Applied {
    let (status, body) = put(node, "/v1/mesh/peers", &mesh::peers_body(peers));
    assert_eq!(status, 200, "{}: {body}", node.name());
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The region as seen by node `me`: every other node.
fn others(me: usize, all: &[PeerEntry]) -> Vec<PeerEntry> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .map(|(_, p)| p.clone())
        .collect()
}

fn entry(farm: &Farm, index: usize, keys: &Keys, public_endpoint: bool) -> PeerEntry {
    let ip = farm.node(index).lan_ip().expect("a LAN address");
    PeerEntry {
        public_key: keys.public.clone(),
        endpoint: SocketAddr::from((ip, mesh::PORT)),
        public_endpoint,
    }
}

fn address(node: &Node) -> Ipv6Addr {
    view(node).address.expect("configured")
}

/// Pings until an answer comes (within 20 s); its hop limit.
fn reach(farm: &Farm, from: &Node, to: Ipv6Addr) -> u8 {
    let mut hops = None;
    let reached = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        hops = mesh::ping(from, to, Duration::from_secs(1)).expect("ping runs");
        hops.is_some()
    });
    assert!(
        reached,
        "{} cannot reach {to} over the mesh\n{:?}\n{}",
        from.name(),
        view(from),
        farm.logs(30)
    );
    hops.expect("an answer")
}

fn ipv4_reaches(from: &Node, to: Ipv4Addr) -> bool {
    let out = from
        .exec(&["ping", "-4", "-n", "-c", "1", "-W", "1", &to.to_string()])
        .expect("ping runs");
    out.status.success()
}

#[test]
fn three_public_nodes_and_two_behind_nat_reach_each_other() {
    let spec = FarmSpec::with_nodes(vec![
        node(false),
        node(false),
        node(false),
        node(true),
        node(true),
    ])
    .lan(LanSpec::behind_nat());
    let farm = start(spec);
    let nodes = farm.nodes();
    let keys: Vec<Keys> = (0..5).map(|_| mesh::keys().expect("wg genkey")).collect();
    let public = [true, true, true, false, false];

    // The NAT lets the NAT'd LAN out and nothing in.
    let outside = farm.node(0).lan_ip().expect("address");
    let inside = farm.node(3).lan_ip().expect("address");
    assert!(
        ipv4_reaches(&nodes[3], outside),
        "NAT'd node cannot get out"
    );
    assert!(
        !ipv4_reaches(&nodes[0], inside),
        "LAN 0 reaches behind the NAT"
    );

    for (i, node) in nodes.iter().enumerate() {
        configure(node, &keys[i], public[i]);
    }
    let all: Vec<PeerEntry> = (0..5)
        .map(|i| entry(&farm, i, &keys[i], public[i]))
        .collect();
    let addrs: Vec<Ipv6Addr> = nodes.iter().map(address).collect();

    // The three public nodes first: each answers the other two directly.
    let first: Vec<PeerEntry> = all[..3].to_vec();
    for (i, node) in nodes.iter().enumerate().take(3) {
        let applied = set_peers(node, &others(i, &first));
        assert_eq!((applied.added, applied.removed), (2, 0), "{applied:?}");
    }
    for (i, node) in nodes.iter().enumerate().take(3) {
        for j in (0..3).filter(|j| *j != i) {
            assert_eq!(reach(&farm, node, addrs[j]), 64, "{i} -> {j} is direct");
        }
    }

    // Adding two peers leaves the session between node 0 and node 1 alone:
    // no new handshake (its age keeps growing) and its counters go on.
    let mut before = peer(&view(&nodes[0]), &keys[1]).clone();
    let aged = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        before = peer(&view(&nodes[0]), &keys[1]).clone();
        before.latest_handshake_secs_ago.is_some_and(|age| age >= 1)
    });
    assert!(aged, "no session with node 1 a second old: {before:?}");
    let age_before = before
        .latest_handshake_secs_ago
        .expect("a session with node 1");
    for (i, node) in nodes.iter().enumerate() {
        let applied = set_peers(node, &others(i, &all));
        if i < 3 {
            assert_eq!(
                (
                    applied.added,
                    applied.updated,
                    applied.removed,
                    applied.unchanged
                ),
                (2, 0, 0, 2),
                "node {i}: only the new peers change"
            );
        }
    }
    assert_eq!(reach(&farm, &nodes[0], addrs[1]), 64);
    let after = peer(&view(&nodes[0]), &keys[1]).clone();
    let age_after = after.latest_handshake_secs_ago.expect("still a session");
    assert!(
        age_after >= age_before,
        "a new handshake: {before:?} then {after:?}"
    );
    assert!(
        after.rx_bytes > before.rx_bytes,
        "{before:?} then {after:?}"
    );
    assert!(
        after.tx_bytes > before.tx_bytes,
        "{before:?} then {after:?}"
    );

    // The NAT'd nodes reach every public node and are reached from each.
    for nat in [3, 4] {
        for pubn in 0..3 {
            reach(&farm, &nodes[nat], addrs[pubn]);
            reach(&farm, &nodes[pubn], addrs[nat]);
        }
    }

    // The two NAT'd nodes reach each other through the relay, the public
    // node with the lowest key: one hop more.
    let relay = (0..3)
        .min_by_key(|i| view(&nodes[*i]).public_key.expect("configured"))
        .expect("three public nodes");
    assert_eq!(
        reach(&farm, &nodes[3], addrs[4]),
        63,
        "3 -> 4 goes through a relay"
    );
    assert_eq!(
        reach(&farm, &nodes[4], addrs[3]),
        63,
        "4 -> 3 goes through a relay"
    );
    let seen = view(&nodes[3]);
    let relay_key = view(&nodes[relay]).public_key;
    assert_eq!(seen.relay, relay_key, "{seen:?}");
    assert_eq!(peer(&seen, &keys[4]).via, relay_key, "{seen:?}");
    assert!(
        peer(&seen, &keys[4]).allowed_ips.is_empty(),
        "no direct peer"
    );
    let relay_view = view(&nodes[relay]);
    let relaying: BTreeSet<String> = relay_view
        .relay_for
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        relaying,
        BTreeSet::from([keys[3].public.clone(), keys[4].public.clone()])
    );
    // The relay learnt node 3's endpoint from its keepalives: the NAT's.
    let through = peer(&relay_view, &keys[3]);
    let nat_ip = farm.lan(1).nat().expect("a NAT").wan_ip();
    assert_eq!(
        through.endpoint.map(|e| e.ip()),
        Some(nat_ip.into()),
        "{through:?}"
    );
    assert!(through.rx_bytes > 0, "{through:?}");
    // A public node that is not the relay still reaches them directly.
    let other = (0..3).find(|i| *i != relay).expect("another public node");
    assert_eq!(reach(&farm, &nodes[other], addrs[3]), 64);
}

#[test]
fn bad_requests_get_a_4xx_and_change_nothing() {
    let farm = start(FarmSpec::with_nodes(vec![node(false), node(false)]));
    let (a, b) = (farm.node(0), farm.node(1));
    let keys: Vec<Keys> = (0..2).map(|_| mesh::keys().expect("wg genkey")).collect();

    // Peers before the node's own settings.
    let (status, body) = put(b, "/v1/mesh/peers", "[]");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("PUT /v1/mesh first"), "{body}");

    configure(a, &keys[0], true);
    set_peers(a, &[entry(&farm, 1, &keys[1], true)]);
    let before = get(a, "/v1/mesh");
    let addr_before = a
        .exec(&["ip", "-6", "addr", "show", "dev", "mesh0"])
        .expect("ip");

    let short = "AQEBAQEBAQEBAQEBAQEBAQ==";
    let mesh_with = |key: &str, port: &str, prefix: &str| {
        format!(r#"{{"private_key":"{key}","listen_port":{port},"prefix":"{prefix}"}}"#)
    };
    let peers_with = |key: &str, endpoint: &str| {
        format!(r#"[{{"public_key":"{key}","endpoints":["{endpoint}"],"public_endpoint":true}}]"#)
    };
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "/v1/mesh",
            mesh_with("not base64!", "51820", mesh::PREFIX),
            "private_key: private key is not base64",
        ),
        (
            "/v1/mesh",
            mesh_with(short, "51820", mesh::PREFIX),
            "decodes to 16 bytes, not 32",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[0].private, "0", mesh::PREFIX),
            "listen_port: 0",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[0].private, "70000", mesh::PREFIX),
            "listen_port",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[0].private, "51820", "fd7e:57be:d000::/64"),
            "is a /64",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[0].private, "51820", "2001:db8:1::/48"),
            "not a unique local",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[0].private, "51820", "fd7e:57be:d000:1::/48"),
            "bits set past",
        ),
        (
            "/v1/mesh",
            mesh_with(&keys[1].private, "51820", mesh::PREFIX),
            "is this node's own key",
        ),
        ("/v1/mesh", "{".to_owned(), "bad request body"),
        (
            "/v1/mesh/peers",
            r#"[{"public_key":"x","public_endpoint":true,"color":"red"}]"#.to_owned(),
            "color",
        ),
    ];
    for (path, body, why) in &bad {
        let (status, answer) = put(a, path, body);
        assert!(
            (400..500).contains(&status),
            "{path} {body}: {status} {answer}"
        );
        let error: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(why),
            "{path} {body}: {message:?} lacks {why:?}"
        );
        for k in &keys {
            assert!(
                !answer.contains(&k.private),
                "a private key in an answer: {answer}"
            );
        }
    }
    // A bad peer in a list is skipped and named; the good peer beside it
    // stays as it was.
    let good = mesh::peers_body(&[entry(&farm, 1, &keys[1], true)]);
    let good = good
        .trim()
        .strip_prefix('[')
        .and_then(|g| g.strip_suffix(']'))
        .expect("a JSON list")
        .to_owned();
    let one = |list: String| {
        list.trim()
            .strip_prefix('[')
            .and_then(|g| g.strip_suffix(']'))
            .expect("a JSON list")
            .to_owned()
    };
    let skipped: Vec<(String, &str)> = vec![
        (
            one(peers_with("not base64!", "10.0.0.1:51820")),
            "peer 1: public_key",
        ),
        (
            one(peers_with(short, "10.0.0.1:51820")),
            "decodes to 16 bytes",
        ),
        (good.clone(), "is also peer 0"),
        (
            one(peers_with(&keys[0].public, "10.0.0.1:51820")),
            "this node's own key",
        ),
        (
            one(peers_with(
                &mesh::keys().expect("wg genkey").public,
                "10.0.0.1",
            )),
            "is not ip:port",
        ),
        (
            one(peers_with(
                &mesh::keys().expect("wg genkey").public,
                "node1:51820",
            )),
            "is not ip:port",
        ),
        (
            one(peers_with(
                &mesh::keys().expect("wg genkey").public,
                "10.0.0.1:0",
            )),
            "has port 0",
        ),
        (
            format!(
                r#"{{"public_key":"{}","public_endpoint":true}}"#,
                mesh::keys().expect("wg genkey").public
            ),
            "no endpoints",
        ),
    ];
    for (bad_peer, why) in &skipped {
        let body = format!("[{good},{bad_peer}]");
        let (status, answer) = put(a, "/v1/mesh/peers", &body);
        assert_eq!(status, 200, "{body}: {answer}");
        let applied: Applied =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(applied.skipped.len(), 1, "{body}: {applied:?}");
        assert!(
            applied.skipped[0].contains(why),
            "{body}: {:?} lacks {why:?}",
            applied.skipped
        );
        assert_eq!(
            (applied.added, applied.removed, applied.unchanged),
            (0, 0, 1),
            "{body}"
        );
    }
    assert_eq!(
        get(a, "/v1/mesh"),
        before,
        "a refused request or a skipped peer changed the mesh"
    );
    let addr_after = a
        .exec(&["ip", "-6", "addr", "show", "dev", "mesh0"])
        .expect("ip");
    assert_eq!(addr_after.stdout, addr_before.stdout);
}

/// What `ip` and `wg` say about `mesh0` on `node`, with the interface
/// index dropped when `keep_index` is false (a new process makes a new
/// interface) and `wg`'s peers sorted (their order is the device's).
fn snapshot(node: &Node, keep_index: bool) -> String {
    let mut out = String::new();
    let commands: [&[&str]; 7] = [
        &["ip", "-6", "addr", "show", "dev", "mesh0"],
        &["ip", "-6", "route", "show", "table", "all", "dev", "mesh0"],
        &["wg", "show", "mesh0", "allowed-ips"],
        &["wg", "show", "mesh0", "persistent-keepalive"],
        &["wg", "show", "mesh0", "public-key"],
        &["wg", "show", "mesh0", "listen-port"],
        &["wg", "show", "mesh0", "endpoints"],
    ];
    for argv in commands {
        let run = node.exec(argv).expect("runs");
        assert!(run.status.success(), "{argv:?}: {run:?}");
        let text = String::from_utf8_lossy(&run.stdout);
        let mut lines: Vec<&str> = text
            .lines()
            .map(|line| match line.split_once(": ") {
                Some((index, rest)) if !keep_index && index.chars().all(|c| c.is_ascii_digit()) => {
                    rest
                }
                _ => line,
            })
            .collect();
        if argv[0] == "wg" {
            lines.sort_unstable();
        }
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Waits until the agent has restarted netd (a pid other than `old`) and
/// the mesh is back, on a userspace process other than `not_pid` if given.
fn wait_restored(farm: &Farm, node: &Node, old: u32, not_pid: Option<i32>) -> MeshView {
    node.wait_netd_restored(old, "/v1/mesh", |v: &MeshView| {
        v.configured && v.pid.is_some() && v.pid != not_pid && !v.peers.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(40)))
}

#[test]
fn a_restarted_netd_restores_mesh0_exactly_and_the_key_never_leaks() {
    let spec =
        FarmSpec::with_nodes(vec![node(false), node(false), node(true)]).lan(LanSpec::behind_nat());
    let farm = start(spec);
    let nodes = farm.nodes();
    let keys: Vec<Keys> = (0..3).map(|_| mesh::keys().expect("wg genkey")).collect();
    let public = [true, true, false];
    let all: Vec<PeerEntry> = (0..3)
        .map(|i| entry(&farm, i, &keys[i], public[i]))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        configure(node, &keys[i], public[i]);
        set_peers(node, &others(i, &all));
    }
    let nat = &nodes[2];
    let addrs: Vec<Ipv6Addr> = nodes.iter().map(address).collect();
    reach(&farm, nat, addrs[0]);
    reach(&farm, &nodes[1], addrs[2]);
    let exact = snapshot(nat, true);
    let loose = snapshot(nat, false);
    assert_eq!(exact.matches("inet6 ").count(), 1, "one address:\n{exact}");
    let routes: Vec<&str> = exact
        .lines()
        .filter(|l| l.contains("proto kernel"))
        .collect();
    let unique: BTreeSet<&str> = routes.iter().copied().collect();
    assert_eq!(routes.len(), unique.len(), "duplicate routes:\n{exact}");

    // netd killed: the agent restarts it, it adopts the running device.
    let boringtun = view(nat).pid.expect("userspace WireGuard");
    let netd = nat.kill_daemon(Daemon::Netd).expect("kill -9 netd");
    let back = wait_restored(&farm, nat, netd, None);
    assert_eq!(
        back.pid,
        Some(boringtun),
        "the device was adopted, not rebuilt"
    );
    assert_eq!(snapshot(nat, true), exact);
    reach(&farm, nat, addrs[0]);

    // netd and its device killed together: rebuilt from the state file.
    let netd = nat.daemon_pid(Daemon::Netd).expect("netd runs");
    let boringtun = back.pid.expect("userspace WireGuard");
    nat.kill_pids(&[netd, u32::try_from(boringtun).expect("a pid")])
        .expect("kill -9 netd and its device");
    let back = wait_restored(&farm, nat, netd, Some(boringtun));
    assert_eq!(snapshot(nat, false), loose);
    reach(&farm, nat, addrs[0]);
    reach(&farm, &nodes[1], addrs[2]);

    // The device alone killed: netd starts a new one and re-applies.
    let boringtun = back.pid.expect("userspace WireGuard");
    nat.kill_pids(&[u32::try_from(boringtun).expect("a pid")])
        .expect("kill -9 the device");
    let same_netd = nat.daemon_pid(Daemon::Netd).expect("netd runs");
    assert!(
        nat.device_rebuilt("/v1/mesh", boringtun, same_netd, Duration::from_secs(20)),
        "the device was not rebuilt, or netd itself did not keep running\n{}",
        farm.logs(30)
    );
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        snapshot(nat, false) == loose
    });
    assert!(settled, "{}\n---\n{loose}", snapshot(nat, false));
    reach(&farm, nat, addrs[0]);

    // The state file is the owner's alone.
    let mode = nat
        .exec(&[
            "sh",
            "-c",
            "stat -c %a /var/cache/grove/netd/mesh.json 2>/dev/null || stat -c %a /run/grove/netd/mesh.json",
        ])
        .expect("stat");
    assert_eq!(
        String::from_utf8_lossy(&mode.stdout).trim(),
        "600",
        "{mode:?}"
    );

    // No private key in any log line or answer.
    let netd_logs = nat.daemon_logs(Daemon::Netd, 500).expect("logs");
    assert!(
        netd_logs.contains("mesh applied"),
        "netd's log is there: {netd_logs}"
    );
    for node in nodes {
        for k in &keys {
            let seen = node
                .secret_seen(&k.private, Daemon::Netd, "/v1/mesh")
                .expect("the node answers");
            assert!(seen.is_empty(), "a private key in {seen:?}");
        }
    }
}
