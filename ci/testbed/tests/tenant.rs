//! netd's tenant networks in testbed nodes: a network spanning two nodes,
//! another tenant's network on the same nodes that cannot reach it, a
//! tenant's laptop configured with plain `wg`, egress through NAT, the
//! firewall in the way of anything else, refused requests and a failure
//! midway that leave nothing behind, and restarts that restore the same
//! `ip`/`nft`/`wg` state without leaking a key.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use grove_testbed::mesh::{self, Keys};
use grove_testbed::tenant::{self, HandPeer, HandPeerSpec, NetworkBody, PeerBody};
use grove_testbed::{Daemon, Farm, FarmSpec, Node, NodeSpec, wait_until};
use netd::tenant::view::{AttachmentView, NetworkView};
use serde_json::Value;

/// Every node's netd: the testbed sets the addresses.
const NETD_TOML: &str = "[uplink]\nmanage = false\n";
/// How long a first handshake and ping may take.
const REACH: Duration = Duration::from_secs(20);

fn start(nodes: Vec<NodeSpec>) -> Farm {
    Farm::start_answering(FarmSpec::with_nodes(nodes), Daemon::Netd, "/v1/networks")
}

fn node() -> NodeSpec {
    NodeSpec::default().config(Daemon::Netd, NETD_TOML)
}

fn socket(node: &Node) -> std::path::PathBuf {
    node.socket(Daemon::Netd).expect("node runs")
}

fn get(node: &Node, path: &str) -> (u16, String) {
    grove_testbed::unix_get(&socket(node), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn post(node: &Node, path: &str, body: &str) -> (u16, String) {
    grove_testbed::unix_post(&socket(node), path, body.as_bytes())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn delete(node: &Node, path: &str) -> (u16, String) {
    grove_testbed::unix_delete(&socket(node), path).unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
}

fn create(node: &Node, body: &NetworkBody<'_>) -> NetworkView {
    let (status, answer) = post(node, "/v1/networks", &body.json());
    assert_eq!(status, 201, "{} {}: {answer}", node.name(), body.netid);
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

fn attach(node: &Node, netid: &str, name: &str, kind: &str) -> AttachmentView {
    let path = format!("/v1/networks/{netid}/attach");
    let (status, answer) = post(node, &path, &tenant::attach_body(name, kind));
    assert_eq!(status, 201, "{}: {answer}", node.name());
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

fn run(node: &Node, argv: &[&str]) -> String {
    let out = node.exec(argv).expect("runs");
    assert!(
        out.status.success(),
        "{} {argv:?}: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lan(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::from((node.lan_ip().expect("a LAN address"), port))
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().expect("an IPv4 address")
}

fn keys() -> Keys {
    mesh::keys().expect("wg genkey")
}

/// The same tenant network on nodes 0 and 1 (subnets `.1` and `.2` of
/// `range`), each the other's peer, plus `extra` peers on node 0.
fn pair<'a>(
    farm: &Farm,
    (netid, range, port): (&'a str, &'a str, u16),
    keys: &'a [Keys; 2],
    subnets: &'a [String; 2],
    extra: &[PeerBody],
) -> [NetworkBody<'a>; 2] {
    let (a, b) = (farm.node(0), farm.node(1));
    let mut a_routes = vec![subnets[0].clone()];
    a_routes.extend(extra.iter().flat_map(|p| p.allowed_ips.clone()));
    let mut on_a = vec![PeerBody {
        public_key: keys[1].public.clone(),
        endpoint: Some(lan(b, port)),
        allowed_ips: vec![subnets[1].clone()],
    }];
    on_a.extend_from_slice(extra);
    let on_b = vec![PeerBody {
        public_key: keys[0].public.clone(),
        endpoint: Some(lan(a, port)),
        allowed_ips: a_routes,
    }];
    let side = |i: usize, peers| NetworkBody {
        netid,
        ip_range: range,
        subnet: &subnets[i],
        keys: &keys[i],
        listen_port: port,
        peers,
    };
    [side(0, on_a), side(1, on_b)]
}

fn boringtun() -> String {
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("boringtun-cli"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "/root/.cargo/bin/boringtun-cli".into());
    assert!(path.is_file(), "no boringtun-cli (ci/setup installs it)");
    path.display().to_string()
}

#[test]
fn a_tenant_network_spans_nodes_and_nothing_else_gets_in() {
    let farm = start(vec![node(), node(), node()]);
    let (a, b, laptop_node) = (farm.node(0), farm.node(1), farm.node(2));

    // Tenant "red" on nodes 0 and 1, with a laptop as an access peer of
    // node 0; tenant "blue" on the same two nodes.
    let red_keys = [keys(), keys()];
    let laptop_keys = keys();
    let red_subnets = ["10.1.1.0/24".to_owned(), "10.1.2.0/24".to_owned()];
    let laptop = PeerBody {
        public_key: laptop_keys.public.clone(),
        endpoint: None,
        allowed_ips: vec!["10.1.200.2/32".to_owned()],
    };
    let red = pair(
        &farm,
        ("red", "10.1.0.0/16", 7001),
        &red_keys,
        &red_subnets,
        &[laptop],
    );
    let blue_keys = [keys(), keys()];
    let blue_subnets = ["10.2.1.0/24".to_owned(), "10.2.2.0/24".to_owned()];
    let blue = pair(
        &farm,
        ("blue", "10.2.0.0/16", 7002),
        &blue_keys,
        &blue_subnets,
        &[],
    );
    for (i, node) in [a, b].into_iter().enumerate() {
        let view = create(node, &red[i]);
        assert_eq!(view.namespace, "n-red");
        assert_eq!(view.gateway.to_string(), format!("10.1.{}.1", i + 1));
        assert_eq!(view.public_key.to_string(), red_keys[i].public);
        create(node, &blue[i]);
    }

    // The namespace holds the bridge, WireGuard (moved in; its socket stays
    // in the node's namespace) and the egress veth.
    let inside = run(a, &["ip", "-n", "n-red", "-br", "link"]);
    for ifname in ["b-red", "w-red", "egress"] {
        assert!(inside.contains(ifname), "{inside}");
    }
    let sockets = run(a, &["ss", "-uln"]);
    assert!(
        sockets.contains(":7001"),
        "WireGuard's UDP socket is outside:\n{sockets}"
    );
    let routes = run(a, &["ip", "-n", "n-red", "route"]);
    assert!(
        routes.contains("10.1.0.0/16 dev w-red proto static scope link src 10.1.1.1"),
        "{routes}"
    );

    // A workload on node 1: a veth whose free end goes into a namespace of
    // its own, configured with what netd answered.
    let web = attach(b, "red", "web", "veth");
    assert_eq!(web.address, "10.1.2.2/24");
    assert_eq!(
        (web.interface.as_str(), web.namespace.as_deref()),
        ("v-web", None)
    );
    run(b, &["ip", "netns", "add", "wl-web"]);
    run(b, &["ip", "link", "set", "v-web", "netns", "wl-web"]);
    let shown = run(b, &["ip", "-n", "wl-web", "link", "show", "v-web"]);
    assert!(shown.contains(&web.mac), "{shown}");
    run(
        b,
        &[
            "ip",
            "-n",
            "wl-web",
            "addr",
            "add",
            &web.address,
            "dev",
            "v-web",
        ],
    );
    run(b, &["ip", "-n", "wl-web", "link", "set", "v-web", "up"]);
    run(
        b,
        &[
            "ip",
            "-n",
            "wl-web",
            "route",
            "add",
            "default",
            "via",
            &web.gateway.to_string(),
        ],
    );

    // A workload with a namespace of its own, made by netd at the address
    // asked: `eth0` up with its MAC and address, `lo` up, a default route.
    let (status, answer) = post(
        b,
        "/v1/networks/red/attach",
        &tenant::attach_at_body("app", "namespace", "10.1.2.9"),
    );
    assert_eq!(status, 201, "{answer}");
    let app: AttachmentView = serde_json::from_str(&answer).expect("a view");
    assert_eq!(
        (
            app.interface.as_str(),
            app.namespace.as_deref(),
            app.address.as_str()
        ),
        ("eth0", Some("c-app"), "10.1.2.9/24")
    );
    let inside = run(b, &["ip", "-n", "c-app", "addr", "show", "eth0"]);
    assert!(
        inside.contains("inet 10.1.2.9/24") && inside.contains(&app.mac),
        "{inside}"
    );
    let routes = run(b, &["ip", "-n", "c-app", "route"]);
    assert!(routes.contains("default via 10.1.2.1 dev eth0"), "{routes}");
    assert!(run(b, &["ip", "-n", "c-app", "link", "show", "lo"]).contains("UP"));
    assert!(tenant::reaches(b, Some("c-app"), ip("10.1.1.1"), REACH));
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.9"), REACH));
    // Another workload takes the address over: the network's namespace,
    // which knew the first one's MAC, reaches the second at once, not
    // after its neighbour entry has timed out.
    assert_eq!(delete(b, "/v1/networks/red/attach/app").0, 200);
    let (status, answer) = post(
        b,
        "/v1/networks/red/attach",
        &tenant::attach_at_body("app2", "namespace", "10.1.2.9"),
    );
    assert_eq!(status, 201, "{answer}");
    assert!(
        tenant::ping(b, Some("n-red"), ip("10.1.2.9")).expect("ping runs"),
        "the first ping went to the MAC of the workload that left:\n{}",
        run(b, &["ip", "-n", "n-red", "neigh"])
    );

    // Red reaches red across the nodes: the other bridge and the workload.
    assert!(
        tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH),
        "n-red on node 0 cannot reach node 1's bridge\n{}",
        farm.logs(30)
    );
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.2"), REACH));
    assert!(tenant::reaches(b, Some("wl-web"), ip("10.1.1.1"), REACH));
    // Blue reaches blue.
    assert!(tenant::reaches(a, Some("n-blue"), ip("10.2.2.1"), REACH));

    // Blue cannot reach red, on the other node or on its own.
    for to in ["10.1.2.1", "10.1.2.2", "10.1.1.1"] {
        assert!(
            !tenant::ping(a, Some("n-blue"), ip(to)).expect("ping runs"),
            "blue reaches red's {to}"
        );
    }
    // Not even with a route pointing into red's namespace: the firewall
    // drops new traffic towards it from the node and from other tenants.
    let red_view: NetworkView =
        serde_json::from_str(&get(a, "/v1/networks/red").1).expect("a view");
    let red_inside = red_view.egress.inside_address.to_string();
    let route_to_red = |op: &str| {
        let argv = [
            "ip",
            "route",
            op,
            "10.1.1.0/24",
            "via",
            red_inside.as_str(),
            "dev",
            "e-red",
        ];
        run(a, &argv);
    };
    route_to_red("add");
    assert!(
        !tenant::ping(a, None, ip("10.1.1.1")).expect("ping runs"),
        "the node gets into red"
    );
    assert!(
        !tenant::ping(a, Some("n-blue"), ip("10.1.1.1")).expect("ping runs"),
        "blue gets into red through the node"
    );
    route_to_red("del");

    // Egress: red's namespace reaches the farm's host through NAT, and the
    // host sees the node's address, not the tenant's.
    assert!(
        tenant::reaches(a, Some("n-red"), farm.host_ip(), REACH),
        "no egress from n-red\n{}",
        run(a, &["nft", "list", "ruleset"])
    );
    let counted = run(
        a,
        &["ip", "netns", "exec", "n-red", "nft", "list", "ruleset"],
    );
    assert!(
        counted.contains("oifname \"egress\" masquerade"),
        "{counted}"
    );

    // The laptop: a third node with a userspace WireGuard set up by hand
    // with `wg`, peering with node 0 only; it reaches node 0's bridge, and
    // node 1's through node 0.
    let spec = HandPeerSpec {
        ifname: "wl0",
        keys: &laptop_keys,
        address: "10.1.200.2/32",
        listen_port: 0,
        peer_key: &red_keys[0].public,
        peer_endpoint: Some(lan(a, 7001)),
        routes: &["10.1.0.0/16"],
        netns: None,
        flags: &[],
    };
    let hand = HandPeer::start(laptop_node, &boringtun(), &spec)
        .unwrap_or_else(|e| panic!("laptop: {}", grove_testbed::report(&e)));
    assert!(
        tenant::reaches(laptop_node, None, ip("10.1.1.1"), REACH),
        "the laptop cannot reach node 0\n{}",
        run(laptop_node, &["wg", "show", "wl0"])
    );
    assert!(
        tenant::reaches(laptop_node, None, ip("10.1.2.2"), REACH),
        "the laptop cannot reach node 1's workload"
    );
    assert!(!tenant::ping(laptop_node, None, ip("10.2.1.1")).expect("ping runs"));
    let seen: NetworkView = serde_json::from_str(&get(a, "/v1/networks/red").1).expect("a view");
    let peer = seen
        .peers
        .iter()
        .find(|p| p.public_key.to_string() == laptop_keys.public)
        .expect("the laptop is a peer");
    assert!(
        peer.rx_bytes > 0 && peer.live_endpoint.is_some(),
        "{peer:?}"
    );
    hand.stop();

    // Deleting a network takes everything of it away, and only it.
    let (status, answer) = delete(a, "/v1/networks/blue");
    assert_eq!(status, 200, "{answer}");
    assert!(!run(a, &["ip", "netns", "list"]).contains("n-blue"));
    assert!(!run(a, &["ip", "link"]).contains("e-blue"));
    assert!(!run(a, &["nft", "list", "ruleset"]).contains("grove-n-blue"));
    assert_eq!(get(a, "/v1/networks/blue").0, 404);
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH));
}

/// Everything a refused request must leave as it was: the node's own
/// namespaces, links, IPv4 addresses (IPv6 comes by SLAAC at any time and
/// is not the tenant networks'), firewall, saved networks and userspace
/// WireGuard processes.
fn state(node: &Node) -> String {
    let mut out = String::new();
    for argv in [
        &["ip", "netns", "list"][..],
        &["ip", "link", "show"],
        &["ip", "-4", "addr", "show"],
        &["nft", "list", "ruleset"],
        &[
            "sh",
            "-c",
            "ls /run/grove/netd/networks /var/cache/grove/netd/networks 2>/dev/null || true",
        ],
    ] {
        out.push_str(&run(node, argv));
    }
    // The node's own userspace WireGuard processes, not the host's.
    let boringtun = node.processes("boringtun-cli");
    out.push_str(&format!("boringtun-cli: {boringtun:?}\n"));
    out
}

#[test]
fn bad_requests_get_a_4xx_and_failures_leave_nothing_half_made() {
    let broken = node().config(
        Daemon::Netd,
        format!("{NETD_TOML}\n[tenant]\nboringtun = \"/bin/false\"\n"),
    );
    let farm = start(vec![node(), broken]);
    let (a, broken) = (farm.node(0), farm.node(1));
    let k = keys();
    let good = NetworkBody {
        netid: "net1",
        ip_range: "10.1.0.0/16",
        subnet: "10.1.1.0/24",
        keys: &k,
        listen_port: 7001,
        peers: vec![PeerBody {
            public_key: keys().public,
            endpoint: Some("10.9.9.9:7001".parse().expect("endpoint")),
            allowed_ips: vec!["10.1.2.0/24".to_owned()],
        }],
    };
    create(a, &good);
    attach(a, "net1", "web", "veth");
    // The mesh holds a port, and a link holds a name netd would need.
    let mesh_keys = keys();
    let (status, answer) = grove_testbed::unix_put(
        &socket(a),
        "/v1/mesh",
        mesh::mesh_body(&mesh_keys, true).as_bytes(),
    )
    .expect("PUT /v1/mesh");
    assert_eq!(status, 200, "{answer}");
    run(a, &["ip", "link", "add", "e-taken", "type", "bridge"]);
    let before = state(a);

    let with = |f: &dyn Fn(&mut NetworkBody<'_>)| {
        let mut body = good.clone();
        f(&mut body);
        body.json()
    };
    let cases: Vec<(String, &str, u16)> = vec![
        (
            with(&|b| {
                b.netid = "net2";
                b.listen_port = 7002;
            }),
            "subnet 10.1.1.0/24 overlaps subnet 10.1.1.0/24 of network net1",
            409,
        ),
        (with(&|_| {}), "network net1 already exists", 409),
        (
            with(&|b| {
                b.netid = "net2";
                b.subnet = "10.1.3.0/24";
            }),
            "listen_port 7001 is the port of network net1",
            409,
        ),
        (
            with(&|b| {
                b.netid = "net2";
                b.subnet = "10.1.3.0/24";
                b.listen_port = mesh::PORT;
            }),
            "listen_port 51820 is in use on this node",
            409,
        ),
        (
            with(&|b| {
                b.netid = "taken";
                b.subnet = "10.1.3.0/24";
                b.listen_port = 7002;
            }),
            "interface e-taken already exists",
            409,
        ),
        (
            with(&|b| b.netid = "abcdefghijklmn"),
            "netid \"abcdefghijklmn\" is 14 characters, at most 13",
            400,
        ),
        (with(&|b| b.netid = "Net_2"), "has 'N'", 400),
        (
            with(&|b| {
                b.netid = "net2";
                b.subnet = "10.2.3.0/24";
            }),
            "subnet: 10.2.3.0/24 is not inside ip_range 10.1.0.0/16",
            400,
        ),
        (
            with(&|b| {
                b.netid = "net2";
                b.ip_range = "10.1.0.0/24";
            }),
            "is a /24, not a /16",
            400,
        ),
        (
            with(&|b| b.netid = "net2").replace(&good.keys.private, "not base64!"),
            "private_key: private key is not base64",
            400,
        ),
        (
            with(&|b| b.netid = "net2").replace(&good.keys.private, "AQEBAQEBAQEBAQEBAQEBAQ=="),
            "private key decodes to 16 bytes, not 32",
            400,
        ),
        (
            with(&|b| {
                b.netid = "net2";
                b.peers[0].public_key = "short".to_owned();
            }),
            "peer 0: public_key",
            400,
        ),
        (
            with(&|b| {
                b.netid = "net2";
                b.peers[0].allowed_ips = vec!["10.1.1.0/25".to_owned()];
            }),
            "overlaps this node's subnet",
            400,
        ),
        (
            r#"{"netid":"net2","colour":"red"}"#.to_owned(),
            "colour",
            400,
        ),
        ("{".to_owned(), "bad request body", 400),
    ];
    for (body, why, want) in &cases {
        let (status, answer) = post(a, "/v1/networks", body);
        assert_eq!(status, *want, "{body}: {answer}");
        let error: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{body}: {message:?} lacks {why:?}");
        assert!(
            !answer.contains(&k.private),
            "a private key in an answer: {answer}"
        );
    }
    let attach_cases: Vec<(&str, String, &str, u16)> = vec![
        (
            "/v1/networks/nope/attach",
            tenant::attach_body("vm", "tap"),
            "no network nope",
            404,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_body("web", "tap"),
            "workload web is already attached to network net1",
            409,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_body("vm", "macvlan"),
            "kind",
            400,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_body("a-very-long-name", "veth"),
            "workload name",
            400,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_at_body("app", "namespace", "10.1.1"),
            "is not an IPv4 address",
            400,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_at_body("app", "namespace", "10.1.9.5"),
            "10.1.9.5 is not a workload address of subnet 10.1.1.0/24",
            409,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_at_body("app", "namespace", "10.1.1.1"),
            "(.2 to .254; .1 is the gateway)",
            409,
        ),
        (
            "/v1/networks/net1/attach",
            tenant::attach_at_body("app", "namespace", "10.1.1.2"),
            "10.1.1.2 is the address of workload web",
            409,
        ),
    ];
    for (path, body, why, want) in &attach_cases {
        let (status, answer) = post(a, path, body);
        assert_eq!(status, *want, "{path} {body}: {answer}");
        assert!(
            answer.contains(why),
            "{path} {body}: {answer} lacks {why:?}"
        );
    }
    assert_eq!(delete(a, "/v1/networks/nope").0, 404);
    assert_eq!(delete(a, "/v1/networks/net1/attach/nope").0, 404);
    assert_eq!(state(a), before, "a refused request changed the node");

    // A failure midway (the userspace WireGuard cannot start, after the
    // namespace, bridge and veth were made) takes back what it made.
    let before = state(broken);
    let (status, answer) = post(broken, "/v1/networks", &good.json());
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("/bin/false"), "{answer}");
    assert_eq!(
        state(broken),
        before,
        "a failed creation left something behind"
    );
    assert_eq!(get(broken, "/v1/networks").1, "[]");

    // Detach, then delete: back to a node without tenant networks.
    assert_eq!(delete(a, "/v1/networks/net1/attach/web").0, 200);
    assert!(!run(a, &["ip", "link"]).contains("v-web"));
    assert_eq!(delete(a, "/v1/networks/net1").0, 200);
    run(a, &["ip", "link", "del", "e-taken"]);
    let left = state(a);
    assert!(
        !left.contains("n-net1") && !left.contains("grove-n-net1"),
        "{left}"
    );
}

/// Waits until the agent has restarted netd (a pid other than `old`) and
/// network `netid` is back, on a userspace process other than `not_pid`.
fn wait_restored(
    farm: &Farm,
    node: &Node,
    old: u32,
    netid: &str,
    not_pid: Option<i32>,
) -> NetworkView {
    let path = format!("/v1/networks/{netid}");
    node.wait_netd_restored(old, &path, |v: &NetworkView| {
        v.pid.is_some() && v.pid != not_pid
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(40)))
}

/// [`tenant::snapshot`] without what a new device changes: interface
/// indexes, and the order of links that follows them.
fn loose(text: &str) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            let line = match line.split_once(": ") {
                Some((index, rest)) if index.chars().all(|c| c.is_ascii_digit()) => rest,
                _ => line,
            };
            line.split_whitespace()
                .map(|w| match w.split_once("@if") {
                    Some((name, _)) => name.to_owned(),
                    None => w.to_owned(),
                })
                .filter(|w| !w.starts_with("link-netnsid"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn a_restarted_netd_restores_networks_exactly_and_keys_never_leak() {
    let farm = start(vec![node(), node()]);
    let (a, b) = (farm.node(0), farm.node(1));
    let red_keys = [keys(), keys()];
    let subnets = ["10.1.1.0/24".to_owned(), "10.1.2.0/24".to_owned()];
    let red = pair(
        &farm,
        ("red", "10.1.0.0/16", 7001),
        &red_keys,
        &subnets,
        &[],
    );
    create(a, &red[0]);
    create(b, &red[1]);
    attach(a, "red", "web", "veth");
    let vm = attach(a, "red", "vm", "tap");
    assert_eq!(
        (vm.interface.as_str(), vm.namespace.as_deref()),
        ("t-vm", Some("n-red"))
    );
    attach(a, "red", "app", "namespace");
    let app_before = run(a, &["ip", "-n", "c-app", "-br", "addr"]);
    assert!(
        tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH),
        "{}",
        farm.logs(30)
    );
    let exact = tenant::snapshot(a, "red").expect("snapshot");
    assert_eq!(exact.matches("inet 10.1.1.1/24").count(), 1, "{exact}");
    assert_eq!(
        exact.matches("table inet grove-n-red").count(),
        1,
        "{exact}"
    );
    for route in [
        "10.1.0.0/16 dev w-red",
        "default via 169.254.0.1 dev egress",
    ] {
        assert_eq!(exact.matches(route).count(), 1, "{route}:\n{exact}");
    }

    // netd killed: the agent restarts it, and it adopts the running device.
    let view: NetworkView = a.get(Daemon::Netd, "/v1/networks/red").expect("view");
    let boringtun = view.pid.expect("userspace WireGuard");
    let netd = a.kill_daemon(Daemon::Netd).expect("kill -9 netd");
    let back = wait_restored(&farm, a, netd, "red", None);
    assert_eq!(
        back.pid,
        Some(boringtun),
        "the device was adopted, not rebuilt"
    );
    let after = tenant::snapshot(a, "red").expect("snapshot");
    assert_eq!(after, exact, "a netd restart changed the node");
    assert_eq!(
        run(a, &["ip", "-n", "c-app", "-br", "addr"]),
        app_before,
        "a workload's own namespace is kept as it was"
    );
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH));

    // netd and its device killed together: rebuilt from the saved network.
    let netd = a.daemon_pid(Daemon::Netd).expect("netd runs");
    a.kill_pids(&[netd, u32::try_from(boringtun).expect("a pid")])
        .expect("kill -9 netd and its device");
    let back = wait_restored(&farm, a, netd, "red", Some(boringtun));
    let settled = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        tenant::snapshot(a, "red").is_ok_and(|s| loose(&s) == loose(&exact))
    });
    assert!(
        settled,
        "{}\n---\n{}",
        loose(&tenant::snapshot(a, "red").expect("snapshot")),
        loose(&exact)
    );
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH));

    // The device alone killed: the same netd starts a new one.
    let same_netd = a.daemon_pid(Daemon::Netd).expect("netd runs");
    let boringtun = back.pid.expect("userspace WireGuard");
    a.kill_pids(&[u32::try_from(boringtun).expect("a pid")])
        .expect("kill -9 the device");
    assert!(
        a.device_rebuilt(
            "/v1/networks/red",
            boringtun,
            same_netd,
            Duration::from_secs(20)
        ),
        "the device was not rebuilt, or netd itself did not keep running\n{}",
        farm.logs(30)
    );
    assert!(tenant::reaches(a, Some("n-red"), ip("10.1.2.1"), REACH));
    assert!(tenant::reaches(b, Some("n-red"), ip("10.1.1.1"), REACH));

    // The saved network is the owner's alone.
    let mode = run(
        a,
        &[
            "sh",
            "-c",
            "stat -c %a /var/cache/grove/netd/networks/red.json 2>/dev/null || stat -c %a /run/grove/netd/networks/red.json",
        ],
    );
    assert_eq!(mode.trim(), "600");

    // No private key in any log line or answer.
    let netd_logs = a.daemon_logs(Daemon::Netd, 500).expect("logs");
    assert!(netd_logs.contains("tenant network restored"), "{netd_logs}");
    for node in [a, b] {
        for k in &red_keys {
            let seen = node
                .secret_seen(&k.private, Daemon::Netd, "/v1/networks")
                .expect("the node answers");
            assert!(seen.is_empty(), "a private key in {seen:?}");
        }
    }
}
