//! A stranger on the farm LAN against the embedded registry, with plain
//! curl: overwriting another node, joining without a key, forging uptime,
//! squatting a farm, replaying a write, an oversize body, and malformed
//! entries in the registry that the nodes' meshes survive. Every attack is
//! refused and the victim's state is checked unchanged.

use std::time::Duration;

use agent::registry::model::{Farm as RegistryFarm, Node, UptimeReport};
use ed25519_dalek::SigningKey;
use grove_testbed::{DiskSpec, Farm, FarmSpec, NodeSpec, http_get, wait_until};
use serde_json::{Value, json};

fn port() -> u16 {
    21000 + (std::process::id() % 1000) as u16
}

fn key(path: &std::path::Path) -> SigningKey {
    grove_testbed::registry::new_farmer_key(path).expect("a key");
    let seed = agent::identity::keys::Seed::from_file_text(
        &std::fs::read_to_string(path).expect("the key"),
    )
    .expect("a seed");
    seed.keys().signing().clone()
}

fn account(k: &SigningKey) -> String {
    agent::identity::keys::ss58(&k.verifying_key().to_bytes(), 42)
}

fn wireguard_key(k: &SigningKey) -> String {
    agent::identity::keys::wireguard_public_key(&k.verifying_key())
}

/// POSTs `body` to the registry, signed with `signer` when given.
fn post(url: &str, path: &str, body: &[u8], signer: Option<&SigningKey>) -> (u16, String) {
    let mut headers = Vec::new();
    if let Some(k) = signer {
        let nonce = agent::auth::nonce().expect("nonce");
        headers = agent::auth::sign(
            k,
            agent::auth::Request {
                target: agent::auth::REGISTRY,
                method: "POST",
                path,
                body,
            },
            (agent::clock::unix_ms() / 1000) as i64,
            &nonce,
        );
    }
    post_with(url, path, body, &headers)
}

fn post_with(url: &str, path: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
    grove_testbed::http::curl_post(&format!("{url}{path}"), Some(body), headers)
        .expect("curl answers")
}

fn get<T: serde::de::DeserializeOwned>(url: &str, path: &str) -> T {
    let (status, body) = http_get(&format!("{url}{path}")).expect("registry answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn mesh_view(node: &grove_testbed::Node) -> Option<netd::mesh::view::MeshView> {
    let socket = node.socket(grove_testbed::Daemon::Netd).ok()?;
    let (_, body) = grove_testbed::unix_get(&socket, "/v1/mesh").ok()?;
    serde_json::from_str(&body).ok()
}

/// Waits until every node of `farm` has `n` mesh peers.
fn wait_peers(farm: &Farm, n: usize, why: &str) {
    for node in farm.nodes() {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
            last = mesh_view(node);
            last.as_ref().is_some_and(|v| v.peers.len() == n)
        });
        assert!(
            ok,
            "{why}: {} does not have {n} mesh peers: {last:?}\n{}",
            node.name(),
            farm.logs(30)
        );
    }
}

/// `field` of every node's mesh view, as text, in node order.
fn of_every_node<T: ToString>(
    farm: &Farm,
    what: &str,
    field: impl Fn(netd::mesh::view::MeshView) -> Option<T>,
) -> Vec<String> {
    farm.nodes()
        .iter()
        .map(|n| mesh_view(n).and_then(&field).expect(what).to_string())
        .collect()
}

/// Waits until the peers of every node of `farm` are the other nodes and
/// `extra` (WireGuard keys), nothing else.
fn wait_peer_keys(farm: &Farm, extra: &[String], why: &str) {
    let keys = of_every_node(farm, "a mesh key", |v| v.public_key);
    for (i, node) in farm.nodes().iter().enumerate() {
        let mut expected: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, k)| k.clone())
            .chain(extra.iter().cloned())
            .collect();
        expected.sort();
        let mut last = None;
        let ok = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
            let mut now: Vec<String> = mesh_view(node)
                .map(|v| v.peers.iter().map(|p| p.public_key.to_string()).collect())
                .unwrap_or_default();
            now.sort();
            let ok = now == expected;
            last = Some(now);
            ok
        });
        assert!(
            ok,
            "{why}: {} has peers {last:?}, not {expected:?}\n{}",
            node.name(),
            farm.logs(30)
        );
    }
}

/// Every node pings every other over mesh0.
fn assert_mesh_reaches(farm: &Farm) {
    let addresses = of_every_node(farm, "a mesh address", |v| v.address);
    for (i, n) in farm.nodes().iter().enumerate() {
        for (j, to) in addresses.iter().enumerate() {
            if i == j {
                continue;
            }
            let reached = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
                n.exec(&["ping", "-6", "-c", "1", "-W", "1", to])
                    .is_ok_and(|o| o.status.success())
            });
            assert!(reached, "{} cannot reach node {j} at {to}", n.name());
        }
    }
}

fn registration(farm_id: u32, twin_id: u32, mesh: Value) -> Value {
    json!({
        "farm_id": farm_id,
        "twin_id": twin_id,
        "resources": {"hru": 0, "sru": 1, "cru": 1, "mru": 1},
        "interfaces": [],
        "serial_number": "attacker",
        "virtualized": true,
        "secure_boot": false,
        "mesh": mesh,
    })
}

#[test]
fn a_stranger_on_the_lan_cannot_speak_for_a_node_or_a_farm() {
    let specs = (0..3)
        .map(|_| {
            NodeSpec::default().disks(vec![DiskSpec::ssd(512)]).config(
                grove_testbed::Daemon::Agent,
                "[chain]\nuptime_interval_secs = 2\n",
            )
        })
        .collect();
    let farm = Farm::start_for_test(FarmSpec::with_nodes(specs).without_agents());
    let registry =
        grove_testbed::registry::Registry::start(&farm, port(), None).expect("the registry");
    let url = registry.url().to_owned();
    let farmer = registry.farmer().to_owned();
    assert!(
        registry.farmer_key().is_some_and(|k| k.exists()),
        "the farmer key is in the run directory"
    );
    for node in farm.nodes() {
        node.boot_on_registry(&url).expect("boots on the registry");
    }
    wait_peers(&farm, 2, "the farm's mesh");
    // The nodes update their own records until their SLAAC addresses (the
    // LAN announces a prefix) are in: the victim's record is taken after.
    let prefix = farm.lan_subnet().ipv6_prefix();
    let mut nodes: Vec<Node> = Vec::new();
    let settled = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        nodes = get(&url, "/v1/nodes?farm_id=1");
        nodes.len() == 3
            && nodes.iter().all(|n| {
                n.registration
                    .interfaces
                    .iter()
                    .any(|i| i.ips.iter().any(|ip| ip.starts_with(&prefix)))
            })
    });
    assert!(
        settled,
        "the nodes never registered their SLAAC addresses: {nodes:?}"
    );
    let victim = nodes[0].clone();
    let victim_path = format!("/v1/nodes/{}", victim.id);
    let farm_before: RegistryFarm = get(&url, "/v1/farms/1");
    let twins_before: Value = get(&url, "/v1/twins");

    let dir = tempfile::tempdir().unwrap();
    let attacker = key(&dir.path().join("attacker.key"));
    let (code, body) = post(
        &url,
        "/v1/twins",
        json!({"account": account(&attacker), "relay": null})
            .to_string()
            .as_bytes(),
        Some(&attacker),
    );
    assert_eq!(code, 200, "a twin for one's own account: {body}");
    let attacker_twin: agent::registry::model::Twin = serde_json::from_str(&body).expect("twin");

    // Overwrite another node: its mesh key and endpoint.
    let hijack = registration(
        1,
        victim.registration.twin_id,
        json!({"public_key": wireguard_key(&attacker), "endpoints": ["10.99.0.1:51820"], "public_endpoint": true}),
    )
    .to_string();
    let (code, body) = post(&url, "/v1/nodes", hijack.as_bytes(), None);
    assert_eq!(code, 401, "unsigned overwrite: {body}");
    let (code, body) = post(&url, "/v1/nodes", hijack.as_bytes(), Some(&attacker));
    assert_eq!(code, 403, "overwrite signed by a stranger: {body}");

    // Join without the key: a mesh key that is not one's own account's.
    let stolen = registration(
        1,
        attacker_twin.id,
        json!({"public_key": victim.mesh.as_ref().expect("mesh").public_key, "endpoints": ["10.99.0.1:51820"], "public_endpoint": true}),
    )
    .to_string();
    let (code, body) = post(&url, "/v1/nodes", stolen.as_bytes(), Some(&attacker));
    assert_eq!(code, 400, "a node with another's mesh key: {body}");
    assert!(body.contains("is not the WireGuard key"), "{body}");
    let stranger_twin =
        json!({"account": account(&SigningKey::from_bytes(&[7; 32])), "relay": null}).to_string();
    let (code, body) = post(&url, "/v1/twins", stranger_twin.as_bytes(), None);
    assert_eq!(code, 401, "an unsigned twin: {body}");
    let (code, body) = post(&url, "/v1/twins", stranger_twin.as_bytes(), Some(&attacker));
    assert_eq!(code, 403, "a twin for another account: {body}");

    // Forge the victim's uptime with the highest sequence number.
    let uptime_path = format!("/v1/nodes/{}/uptime", victim.id);
    let forged = json!({"seq": u64::MAX, "uptime": 1, "timestamp": 1}).to_string();
    let (code, body) = post(&url, &uptime_path, forged.as_bytes(), None);
    assert_eq!(code, 401, "unsigned uptime: {body}");
    let (code, body) = post(&url, &uptime_path, forged.as_bytes(), Some(&attacker));
    assert_eq!(code, 403, "uptime signed by a stranger: {body}");

    // Squat a farm: a new one, or the existing one's name.
    for name in ["farm-two", "farm-one"] {
        let squat = json!({"name": name, "twin_id": attacker_twin.id}).to_string();
        let (code, body) = post(&url, "/v1/farms", squat.as_bytes(), None);
        assert_eq!(code, 401, "{name} unsigned: {body}");
        let (code, body) = post(&url, "/v1/farms", squat.as_bytes(), Some(&attacker));
        assert_eq!(code, 403, "{name} by a stranger: {body}");
    }
    let claim = json!({"name": "farm-one", "twin_id": farm_before.twin_id}).to_string();
    let (code, body) = post(&url, "/v1/farms", claim.as_bytes(), Some(&attacker));
    assert_eq!(
        code, 403,
        "the farm for its owner's twin, by a stranger: {body}"
    );

    // A replayed write, and an oversize body.
    let twin_body = json!({"account": account(&attacker), "relay": null}).to_string();
    let nonce = agent::auth::nonce().expect("nonce");
    let headers = agent::auth::sign(
        &attacker,
        agent::auth::Request {
            target: agent::auth::REGISTRY,
            method: "POST",
            path: "/v1/twins",
            body: twin_body.as_bytes(),
        },
        (agent::clock::unix_ms() / 1000) as i64,
        &nonce,
    );
    let (code, body) = post_with(&url, "/v1/twins", twin_body.as_bytes(), &headers);
    assert_eq!(code, 200, "{body}");
    let (code, body) = post_with(&url, "/v1/twins", twin_body.as_bytes(), &headers);
    assert_eq!(code, 401, "a replayed write: {body}");
    assert!(body.contains("already used"), "{body}");
    let huge = registration(
        1,
        attacker_twin.id,
        json!({"public_key": wireguard_key(&attacker), "endpoints": vec!["10.99.0.1:51820"; 5000], "public_endpoint": true}),
    )
    .to_string();
    let (code, body) = post(&url, "/v1/nodes", huge.as_bytes(), Some(&attacker));
    assert_eq!(code, 413, "an oversize body: {body}");

    // The victim is as it was, and its own reports still go in.
    let now: Node = get(&url, &victim_path);
    assert_eq!(
        (&now.registration, &now.mesh),
        (&victim.registration, &victim.mesh)
    );
    assert_eq!(get::<RegistryFarm>(&url, "/v1/farms/1"), farm_before);
    assert_eq!(get::<Vec<Node>>(&url, "/v1/nodes?farm_id=1").len(), 3);
    assert!(
        http_get(&format!("{url}/v1/farms/2")).is_ok_and(|(s, _)| s == 404),
        "a squatted farm exists"
    );
    let twins: Value = get(&url, "/v1/twins");
    assert_eq!(
        twins.as_array().map(Vec::len),
        twins_before.as_array().map(|t| t.len() + 1),
        "only the attacker's own twin was added"
    );
    let reports: Vec<UptimeReport> = get(&url, &uptime_path);
    let seen = reports.len();
    assert!(reports.iter().all(|r| r.seq != u64::MAX), "{reports:?}");
    let more = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        get::<Vec<UptimeReport>>(&url, &uptime_path).len() > seen
    });
    assert!(more, "the victim's own reports stopped");
    assert_mesh_reaches(&farm);

    // Entries the registry itself would refuse, put in its state file (an
    // old registry's state, a bug): a twin whose account is not one, and a
    // node with a malformed endpoint. Beside them, a well-formed extra node
    // shows that the nodes still take the rest of the list.
    let marker = key(&dir.path().join("marker.key"));
    let post_node = |k: &SigningKey, endpoint: &str| {
        let (code, body) = post(
            &url,
            "/v1/twins",
            json!({"account": account(k), "relay": null})
                .to_string()
                .as_bytes(),
            Some(k),
        );
        assert_eq!(code, 200, "{body}");
        let twin: agent::registry::model::Twin = serde_json::from_str(&body).expect("twin");
        let node = registration(
            1,
            twin.id,
            json!({"public_key": wireguard_key(k), "endpoints": [endpoint], "public_endpoint": true}),
        )
        .to_string();
        let (code, body) = post(&url, "/v1/nodes", node.as_bytes(), Some(k));
        assert_eq!(code, 200, "{body}");
        twin.id
    };
    let bad = key(&dir.path().join("bad.key"));
    let bad_endpoint_twin = post_node(&bad, "192.0.2.7:51820");
    wait_peer_keys(
        &farm,
        &[wireguard_key(&bad)],
        "a node that joined with its own key",
    );
    drop(registry);
    let state_path = farm.dir().join("registry.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    state["twins"]["900"] = json!({"id": 900, "account": "not-an-account", "relay": null});
    state["nodes"]["900"] = json!(registration(
        1,
        900,
        json!({"public_key": "garbage", "endpoints": ["192.0.2.9:51820"], "public_endpoint": true})
    ));
    state["nodes"]["900"]["id"] = json!(900);
    state["nodes"]["900"]["created_at"] = json!(0);
    state["nodes"]["900"]["updated_at"] = json!(0);
    let bad_node = state["nodes"]
        .as_object_mut()
        .expect("nodes")
        .values_mut()
        .find(|n| n["twin_id"] == json!(bad_endpoint_twin))
        .expect("the node with the bad endpoint");
    bad_node["mesh"]["endpoints"] = json!(["not-an-endpoint"]);
    std::fs::write(&state_path, serde_json::to_vec(&state).expect("json")).expect("write state");
    let registry = grove_testbed::registry::Registry::start(&farm, port(), Some(&farmer))
        .expect("the registry again");
    assert_eq!(registry.url(), url);
    let served: Vec<Value> = get(&url, "/v1/nodes?farm_id=1");
    assert_eq!(served.len(), 5, "the bad entries are served");
    post_node(&marker, "192.0.2.8:51820");
    // The other real nodes and the marker; the two bad entries skipped.
    wait_peer_keys(
        &farm,
        &[wireguard_key(&marker)],
        "bad entries beside good ones",
    );
    assert_mesh_reaches(&farm);
    let now: Node = get(&url, &victim_path);
    assert_eq!(
        (&now.registration, &now.mesh),
        (&victim.registration, &victim.mesh)
    );
}
