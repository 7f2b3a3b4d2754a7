//! A tenant on two real nodes with the embedded registry, through the
//! command line (`agent tenant`) and the nodes' operator API: one network
//! spanning both nodes plus a zmount and a volume on each reach `ok`; the
//! volume is a quota'd subvolume, the vdisk a file of the size asked; node
//! A's tenant namespace reaches node B's; an update grows the zmount and
//! adds a volume; a cancel frees everything within 10 s. Bad requests over
//! the API get a 4xx naming the problem and change nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::cli::tenant::NodeApi;
use agent::registry::tenant::Tenant;
use grove_daemon::client::SocketClient;
use grove_testbed::mesh::{self, Keys};
use grove_testbed::provision::{self, block_on};
use grove_testbed::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, wait_until};
use hyper::Method;
use provisiond::api::{DeploymentState, DeploymentView};
use provisiond::deployment::Deployment;
use provisiond::driver::{disk_name, netid};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const PORT: u16 = 7400;

struct Setup {
    farm: Farm,
    registry: std::cell::RefCell<Option<grove_testbed::registry::Registry>>,
    registry_url: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Setup {
    /// The registry stopped and started again with nothing: no twins,
    /// nodes or contracts.
    fn restart_registry_empty(&self) {
        drop(self.registry.borrow_mut().take());
        let state = self.farm.dir().join("registry.json");
        std::fs::remove_file(&state).expect("the registry's state");
        *self.registry.borrow_mut() = Some(
            grove_testbed::registry::Registry::start(&self.farm, self.port, None)
                .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e))),
        );
    }
}

fn start(nodes: usize) -> Setup {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    let spec = NodeSpec::default().disks(vec![DiskSpec::ssd(2048)]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec; nodes]).without_agents())
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)));
    let port = 19000 + (std::process::id() % 1000) as u16;
    let registry = grove_testbed::registry::Registry::start(&farm, port, None)
        .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e)));
    for node in farm.nodes() {
        node.set_cmdline(&format!(
            "grove.farm=1 grove.chain=embedded grove.chain.url={}",
            registry.url()
        ))
        .expect("cmdline");
        node.start_agent().expect("boot");
    }
    for node in farm.nodes() {
        wait_glue(&farm, node);
    }
    Setup {
        registry_url: registry.url().to_owned(),
        farm,
        registry: std::cell::RefCell::new(Some(registry)),
        port,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

/// Waits until the node's API answers, it is registered, and provisiond
/// was given its node id.
fn wait_glue(farm: &Farm, node: &Node) {
    node.wait_api(Duration::from_secs(60)).expect("API up");
    let api = node.api_url().expect("url");
    let mut last = String::new();
    let ready = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        let chain = http_get(&format!("{api}/v1/chain")).map(|(_, b)| b);
        let glue = http_get(&format!("{api}/v1/provision")).map(|(_, b)| b);
        last = format!("{chain:?} {glue:?}");
        // provisiond was given the node id the registry gave.
        let given = |b: &str| {
            serde_json::from_str::<Value>(b)
                .map(|v| v["node_id"].clone())
                .ok()
        };
        match (chain, glue) {
            (Ok(c), Ok(g)) => given(&c).is_some_and(|id| !id.is_null()) && given(&c) == given(&g),
            _ => false,
        }
    });
    assert!(
        ready,
        "{} not registered or provisiond not up: {last}\n{}",
        node.name(),
        farm.logs(40)
    );
}

/// A tenant's twin key file.
fn tenant_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.key"));
    agent::cli::sign::new_key(&path).expect("a key");
    path
}

/// `agent tenant ...`: (success, stdout + stderr).
fn cli(setup: &Setup, key: &Path, node: &Node, args: &[&str]) -> (bool, String) {
    grove_testbed::tenant::cli(key, &setup.registry_url, node, 120, args)
}

fn run(node: &Node, argv: &[&str]) -> (bool, String) {
    node.exec_text(argv).expect("runs")
}

/// Node `i`'s part of the network "net" (subnet 10.93.i+1.0/24), the other
/// node its peer.
fn network(farm: &Farm, keys: &[Keys; 2], i: usize) -> Value {
    let j = 1 - i;
    let other = farm.node(j).lan_ip().expect("LAN address");
    json!({"name": "net", "type": "network", "version": 0,
           "data": {"ip_range": "10.93.0.0/16", "subnet": format!("10.93.{}.0/24", i + 1),
                    "wireguard_private_key": keys[i].private, "wireguard_listen_port": PORT,
                    "peers": [{"subnet": format!("10.93.{}.0/24", j + 1),
                               "wireguard_public_key": keys[j].public,
                               "allowed_ips": [format!("10.93.{}.0/24", j + 1)],
                               "endpoint": format!("{other}:{PORT}")}]}})
}

fn disk(name: &str, kind: &str, size: u64, version: u32) -> Value {
    json!({"name": name, "type": kind, "version": version, "data": {"size": size}})
}

fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write");
    path
}

/// The contract id the command line printed.
fn contract_of(out: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("contract ")?
                .strip_suffix(": every workload is ok")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no contract in: {out}"))
}

fn provisiond(node: &Node) -> provisiond::client::ProvisiondClient {
    provision::client(node).expect("runs")
}

fn storaged(node: &Node) -> storaged::client::StoragedClient {
    storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"))
}

/// What a refused request must not change: the deployments, namespaces,
/// nft tables, subvolumes and vdisks.
fn state(node: &Node) -> String {
    let deployments: Vec<(u64, u32, DeploymentState)> =
        block_on(provisiond(node).deployments(None))
            .expect("deployments")
            .into_iter()
            .map(|d| (d.contract_id, d.version, d.state))
            .collect();
    let volumes = block_on(storaged(node).volumes()).expect("volumes");
    let vdisks = block_on(storaged(node).vdisks()).expect("vdisks");
    let (_, netns) = run(node, &["ip", "netns", "list"]);
    let (_, nft) = run(node, &["nft", "list", "tables"]);
    let subvolumes: Vec<String> = volumes
        .iter()
        .map(|v| {
            run(
                node,
                &["btrfs", "subvolume", "list", &v.path.display().to_string()],
            )
            .1
        })
        .collect();
    format!("{deployments:?}\n{volumes:?}\n{vdisks:?}\n{netns}\n{nft}\n{subvolumes:?}")
}

#[test]
fn a_tenant_deploys_a_network_across_two_nodes_updates_and_cancels_with_the_command_line() {
    let setup = start(2);
    let farm = &setup.farm;
    let (a, b) = (farm.node(0), farm.node(1));
    let key = tenant_key(setup.dir.path(), "tenant");
    let keys = [mesh::keys().expect("wg"), mesh::keys().expect("wg")];

    let mut contracts = Vec::new();
    for (i, node) in [a, b].into_iter().enumerate() {
        let file = write(
            setup.dir.path(),
            &format!("node{i}.json"),
            &json!({"version": 0, "workloads": [
                network(farm, &keys, i),
                disk("disk", "zmount", 100 * MIB, 0),
                disk("data", "volume", 50 * MIB, 0),
            ]}),
        );
        let (ok, out) = cli(&setup, &key, node, &["deploy", &file.display().to_string()]);
        assert!(ok, "{}: {out}\n{}", node.name(), farm.logs(40));
        contracts.push(contract_of(&out));
    }
    let account = agent::cli::sign::account(&key).expect("account");
    let tenant = block_on(Tenant::connect(
        setup.registry_url.as_str(),
        agent::cli::sign::signing_key(&key).expect("key"),
    ))
    .expect("registry");
    let twin = block_on(tenant.twin_id()).unwrap().expect("a twin");
    assert!(!account.is_empty());

    for (node, contract) in [a, b].into_iter().zip(&contracts) {
        let view = block_on(provisiond(node).deployment(*contract)).expect("held");
        for name in ["net", "disk", "data"] {
            assert_eq!(view.workload_state(name), Some("ok"), "{name}: {view:?}");
        }
        assert!(
            !serde_json::to_string(&view)
                .expect("json")
                .contains(&keys[0].private)
        );
        let objects = provision::objects(node).expect("storaged and netd answer");
        let path = objects
            .vdisk(&disk_name(*contract, "disk"))
            .expect("the zmount's vdisk");
        let size = provision::file_size(node, path).expect("the vdisk's size");
        assert_eq!(size, (100 * MIB).to_string());
        let vpath = objects
            .volume(&disk_name(*contract, "data"))
            .expect("the volume");
        provision::check_volume_limited(node, vpath, 50 * MIB).expect("limited");
    }

    // Node A's tenant namespace reaches node B's side of the network.
    let namespace = format!("n-{}", netid(twin, "net"));
    assert!(
        grove_testbed::tenant::reaches(
            a,
            Some(&namespace),
            "10.93.2.1".parse().expect("ip"),
            Duration::from_secs(30)
        ),
        "{namespace} on A does not reach B\n{}",
        farm.logs(40)
    );

    // The tenant lists and gets its own; the capacity shows what it holds.
    let (ok, out) = cli(&setup, &key, a, &["list"]);
    assert!(
        ok && out.contains(&format!("contract {}", contracts[0])),
        "{out}"
    );
    let (ok, out) = cli(&setup, &key, a, &["get", &contracts[0].to_string()]);
    assert!(ok && out.contains("\"state\": \"ok\""), "{out}");
    assert!(
        !out.contains(&keys[0].private),
        "no private key in an answer"
    );

    // An update grows the zmount and adds a volume.
    let update = write(
        setup.dir.path(),
        "update.json",
        &json!({"version": 1, "contract_id": contracts[0], "workloads": [
            network(farm, &keys, 0),
            disk("disk", "zmount", 200 * MIB, 1),
            disk("data", "volume", 50 * MIB, 0),
            disk("more", "volume", 20 * MIB, 1),
        ]}),
    );
    let (ok, out) = cli(&setup, &key, a, &["update", &update.display().to_string()]);
    assert!(ok, "{out}\n{}", farm.logs(40));
    let vdisk = block_on(storaged(a).vdisks())
        .expect("vdisks")
        .into_iter()
        .find(|v| v.name == disk_name(contracts[0], "disk"))
        .expect("vdisk");
    assert_eq!(vdisk.size, 200 * MIB);
    assert!(
        block_on(storaged(a).volumes())
            .expect("volumes")
            .iter()
            .any(|v| v.name == disk_name(contracts[0], "more") && v.size == 20 * MIB)
    );
    let url = a.api_url().expect("url");
    let signing = agent::cli::sign::signing_key(&key).expect("key");
    let api = block_on(NodeApi::connect(&url, signing, twin)).expect("node");
    let path = format!("/v1/deployments/{}/changes", contracts[0]);
    let changes = block_on(api.call(Method::GET, &path, b"")).expect("changes");
    let versions: Vec<u64> = changes
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["version"].as_u64())
        .collect();
    assert!(
        versions.contains(&0) && versions.contains(&1),
        "the history holds both versions: {changes}"
    );
    let held = block_on(provisiond(a).capacity())
        .expect("capacity")
        .used
        .sru;
    assert_eq!(held, 270 * MIB);

    // A workload that fails: the node's own reason, a non-zero exit, and
    // the contract cancelled again.
    let taken = write(
        setup.dir.path(),
        "taken.json",
        &json!({"version": 0, "workloads": [
            {"name": "other", "type": "network", "version": 0,
             "data": {"ip_range": "10.94.0.0/16", "subnet": "10.94.1.0/24",
                      "wireguard_private_key": keys[0].private, "wireguard_listen_port": PORT,
                      "peers": []}},
        ]}),
    );
    let (ok, out) = cli(&setup, &key, a, &["deploy", &taken.display().to_string()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("workload 'other' failed") && out.contains(&format!("{PORT}")),
        "the node's own reason: {out}"
    );
    assert!(!out.contains(&keys[0].private), "{out}");
    let failed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("contract ")?.split(' ').next()?.parse().ok())
        .expect("the contract");
    let contract = block_on(tenant.contract(failed)).unwrap().expect("kept");
    assert_eq!(
        contract.state,
        agent::registry::model::ContractState::Deleted,
        "{out}"
    );

    // Cancelling frees everything within 10 s.
    let started = Instant::now();
    let (ok, out) = cli(&setup, &key, a, &["cancel", &contracts[0].to_string()]);
    assert!(ok, "{out}\n{}", farm.logs(40));
    let freed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (_, netns) = run(a, &["ip", "netns", "list"]);
        !netns.contains(&namespace)
            && block_on(storaged(a).volumes()).is_ok_and(|v| v.is_empty())
            && block_on(storaged(a).vdisks()).is_ok_and(|v| v.is_empty())
    });
    assert!(freed, "not freed within 10 s\n{}", farm.logs(40));
    eprintln!("cancel to freed: {:?}", started.elapsed());
    let (_, nft) = run(a, &["nft", "list", "tables"]);
    assert!(!nft.contains(&netid(twin, "net")), "{nft}");
    let api = a.api_url().expect("url");
    let shown = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        http_get(&format!("{api}/v1/capacity")).is_ok_and(|(_, body)| {
            serde_json::from_str::<Value>(&body)
                .is_ok_and(|c| c["deployments"]["capacity"]["used"]["sru"] == 0)
        })
    });
    assert!(shown, "/v1/capacity shows the freed SRU");
    let (ok, out) = cli(&setup, &key, b, &["cancel", &contracts[1].to_string()]);
    assert!(ok, "{out}");
}

/// A request to the node's API, signed as given (or not at all).
fn send(
    node: &Node,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let address = node
        .api_url()
        .expect("url")
        .trim_start_matches("http://")
        .to_owned();
    let client = SocketClient::tcp(&address).with_timeout(Duration::from_secs(20));
    let (status, answer) =
        block_on(client.raw_with_headers(method, path, headers, Some(body.to_vec())))
            .expect("the node answers");
    (
        status.as_u16(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

fn signed(
    key: &ed25519_dalek::SigningKey,
    node_account: &str,
    twin: u32,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let nonce = agent::auth::nonce().expect("nonce");
    let mut headers = agent::auth::sign(
        key,
        agent::auth::Request {
            target: node_account,
            method,
            path,
            body,
        },
        (agent::clock::unix_ms() / 1000) as i64,
        &nonce,
    );
    headers.push((agent::provision::api::HEADER_TWIN, twin.to_string()));
    headers
}

fn node_account(node: &Node) -> String {
    let (_, body) = http_get(&format!("{}/v1/node", node.api_url().expect("url"))).expect("GET");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["identity"]["account"]
        .as_str()
        .expect("account")
        .to_owned()
}

fn node_id(node: &Node) -> u32 {
    let (_, body) = http_get(&format!("{}/v1/chain", node.api_url().expect("url"))).expect("GET");
    let v: Value = serde_json::from_str(&body).expect("json");
    u32::try_from(v["node_id"].as_u64().expect("node id")).expect("u32")
}

/// A signed deployment of `twin` for `contract`, with a zmount.
fn wire(key: &ed25519_dalek::SigningKey, twin: u32, contract: u64, size: u64) -> String {
    let text = agent::cli::tenant::prepare(
        &json!({"version": 0, "workloads": [disk("disk", "zmount", size, 0)]}).to_string(),
        twin,
        contract,
    )
    .expect("prepared");
    provisiond::deployment::sign::sign_ed25519(&text, twin, key).expect("signed")
}

fn hash(wire: &str) -> [u8; 32] {
    Deployment::parse(wire.as_bytes())
        .expect("parses")
        .hash()
        .chain_hash()
}

#[test]
fn bad_requests_over_the_api_get_a_4xx_naming_the_problem_and_change_nothing() {
    let setup = start(2);
    let farm = &setup.farm;
    let (a, b) = (farm.node(0), farm.node(1));
    let (key_path, other_path) = (
        tenant_key(setup.dir.path(), "t1"),
        tenant_key(setup.dir.path(), "t2"),
    );
    let key = agent::cli::sign::signing_key(&key_path).expect("key");
    let other_key = agent::cli::sign::signing_key(&other_path).expect("key");
    let tenant =
        block_on(Tenant::connect(setup.registry_url.as_str(), key.clone())).expect("registry");
    let other = block_on(Tenant::connect(
        setup.registry_url.as_str(),
        other_key.clone(),
    ))
    .expect("registry");
    let twin = block_on(tenant.ensure_twin()).expect("twin");
    let other_twin = block_on(other.ensure_twin()).expect("twin");
    let (account, a_id, b_id) = (node_account(a), node_id(a), node_id(b));

    // One good deployment of the tenant, so there is something to protect.
    let good = wire(&key, twin, 0, 10 * MIB);
    let contract = block_on(tenant.create_node_contract(a_id, hash(&good), 0)).expect("contract");
    let good = wire(&key, twin, contract, 10 * MIB);
    // A deployment sent as `as_twin`, signed by `who` for node A.
    let post = |who: &ed25519_dalek::SigningKey, as_twin: u32, body: &[u8]| {
        send(
            a,
            Method::POST,
            "/v1/deployments",
            &signed(who, &account, as_twin, "POST", "/v1/deployments", body),
            body,
        )
    };
    let (status, out) = post(&key, twin, good.as_bytes());
    assert_eq!(status, 202, "{out}");
    let settled = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        block_on(provisiond(a).deployment(contract)).is_ok_and(|d| d.state == DeploymentState::Ok)
    });
    assert!(settled, "{}", farm.logs(40));
    let before = state(a);

    // Each contract case: a deployment of its own size (a node holds one
    // active contract per hash) and its contract.
    let fresh = |contract_for: &dyn Fn(&[u8; 32]) -> u64, size: u64| {
        let probe = wire(&key, twin, 0, size);
        let id = contract_for(&hash(&probe));
        wire(&key, twin, id, size)
    };
    let on_b = fresh(
        &|h| block_on(tenant.create_node_contract(b_id, *h, 0)).expect("contract"),
        20 * MIB,
    );
    let others = fresh(
        &|h| block_on(other.create_node_contract(a_id, *h, 0)).expect("contract"),
        21 * MIB,
    );
    let cancelled = fresh(
        &|h| {
            let id = block_on(tenant.create_node_contract(a_id, *h, 0)).expect("contract");
            block_on(tenant.cancel_contract(id)).expect("cancel");
            id
        },
        22 * MIB,
    );
    let other_hash = {
        let id = block_on(tenant.create_node_contract(a_id, [b'0'; 32], 0)).expect("contract");
        wire(&key, twin, id, 20 * MIB)
    };
    let of_other_twin = wire(&other_key, other_twin, contract, 20 * MIB);

    let other_words = format!("twin {other_twin}'s");
    let missing_words = format!("twin {other_twin}");
    let unknown = agent::cli::tenant::prepare(
        &json!({"version": 0, "workloads": [{"name": "x", "type": "teleport", "data": {}}]})
            .to_string(),
        twin,
        contract,
    )
    .expect("prepared");
    // Twin `other_twin` is required to sign and does not.
    let unsigned_request = {
        let mut v: Value = serde_json::from_str(&wire(&key, twin, 0, 23 * MIB)).expect("json");
        v["signature_requirement"]["requests"]
            .as_array_mut()
            .expect("requests")
            .push(json!({"twin_id": other_twin, "required": true, "weight": 1}));
        v["signature_requirement"]["weight_required"] = json!(2);
        let text = v.to_string();
        let id = block_on(tenant.create_node_contract(a_id, hash(&text), 0)).expect("contract");
        v["contract_id"] = json!(id);
        provisiond::deployment::sign::sign_ed25519(&v.to_string(), twin, &key).expect("signed")
    };
    // Version 1 of the good deployment, its zmount smaller.
    let shrink = {
        let mut v: Value =
            serde_json::from_str(&wire(&key, twin, contract, 5 * MIB)).expect("json");
        v["version"] = json!(1);
        v["workloads"][0]["version"] = json!(1);
        provisiond::deployment::sign::sign_ed25519(&v.to_string(), twin, &key).expect("signed")
    };
    let cases: Vec<(&str, (u16, String), u16, &str)> = vec![
        (
            "bad signature",
            {
                let mut h = signed(
                    &key,
                    &account,
                    twin,
                    "POST",
                    "/v1/deployments",
                    good.as_bytes(),
                );
                for (name, value) in &mut h {
                    if *name == agent::auth::HEADER_SIGNATURE {
                        // Another valid base64 signature, of nothing sent.
                        let first = if value.starts_with('A') { "B" } else { "A" };
                        value.replace_range(0..1, first);
                    }
                }
                send(a, Method::POST, "/v1/deployments", &h, good.as_bytes())
            },
            401,
            "does not verify",
        ),
        (
            "signed for another node",
            {
                let h = signed(
                    &key,
                    &node_account(b),
                    twin,
                    "POST",
                    "/v1/deployments",
                    good.as_bytes(),
                );
                send(a, Method::POST, "/v1/deployments", &h, good.as_bytes())
            },
            401,
            "does not verify",
        ),
        (
            "the wrong twin",
            post(&key, other_twin, good.as_bytes()),
            403,
            "not the account of twin",
        ),
        (
            "a deployment of another twin",
            post(&key, twin, of_other_twin.as_bytes()),
            403,
            &other_words,
        ),
        (
            "a contract for another node",
            post(&key, twin, on_b.as_bytes()),
            403,
            "node",
        ),
        (
            "a contract of another twin",
            post(&key, twin, others.as_bytes()),
            403,
            "twin",
        ),
        (
            "a cancelled contract",
            post(&key, twin, cancelled.as_bytes()),
            403,
            "Deleted",
        ),
        (
            "another hash",
            post(&key, twin, other_hash.as_bytes()),
            403,
            "hash",
        ),
        (
            "a stale request",
            {
                let body = good.as_bytes();
                let mut h = agent::auth::sign(
                    &key,
                    agent::auth::Request {
                        target: &account,
                        method: "POST",
                        path: "/v1/deployments",
                        body,
                    },
                    (agent::clock::unix_ms() / 1000) as i64 - 600,
                    &agent::auth::nonce().expect("nonce"),
                );
                h.push((agent::provision::api::HEADER_TWIN, twin.to_string()));
                send(a, Method::POST, "/v1/deployments", &h, body)
            },
            401,
            "away from the node's clock",
        ),
        (
            "unsigned",
            send(a, Method::POST, "/v1/deployments", &[], good.as_bytes()),
            401,
            "missing",
        ),
        (
            "an unknown type",
            post(&key, twin, unknown.as_bytes()),
            400,
            "teleport",
        ),
        (
            "a missing required signature",
            post(&key, twin, unsigned_request.as_bytes()),
            403,
            &missing_words,
        ),
        (
            "a shrinking zmount",
            {
                let path = format!("/v1/deployments/{contract}");
                let body = shrink.as_bytes();
                send(
                    a,
                    Method::PUT,
                    &path,
                    &signed(&key, &account, twin, "PUT", &path, body),
                    body,
                )
            },
            400,
            "disk",
        ),
        (
            "malformed JSON",
            post(&key, twin, b"{\"version\": 0,"),
            400,
            "EOF",
        ),
        (
            "a body over the limit",
            post(&key, twin, &vec![b' '; (1 << 20) + 10]),
            413,
            "",
        ),
        (
            "another twin's deployment",
            {
                let path = format!("/v1/deployments/{contract}");
                send(
                    a,
                    Method::GET,
                    &path,
                    &signed(&other_key, &account, other_twin, "GET", &path, b""),
                    b"",
                )
            },
            404,
            "no deployment",
        ),
    ];
    for (name, (status, out), want, words) in cases {
        assert_eq!(status, want, "{name}: {out}");
        assert!(out.contains(words), "{name}: {out}");
    }

    // A replayed request: the same headers twice.
    let h = signed(&key, &account, twin, "GET", "/v1/deployments", b"");
    let (first, out) = send(a, Method::GET, "/v1/deployments", &h, b"");
    assert_eq!(first, 200, "{out}");
    let (again, out) = send(a, Method::GET, "/v1/deployments", &h, b"");
    assert_eq!(again, 401, "{out}");
    assert!(out.contains("already used"), "{out}");

    assert_eq!(state(a), before, "a refused request changed the node");

    // The tenant's own view is there, and its contract is reported.
    let url = a.api_url().expect("url");
    let api = block_on(NodeApi::connect(&url, key.clone(), twin)).expect("node");
    let mine: Vec<DeploymentView> = block_on(api.deployments()).expect("list");
    assert_eq!(
        mine.iter().map(|d| d.contract_id).collect::<Vec<_>>(),
        [contract]
    );
    let reported = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        http_get(&format!(
            "{}/v1/contracts/{contract}/resources",
            setup.registry_url.as_str()
        ))
        .is_ok_and(|(s, body)| s == 200 && body.contains(&(10 * MIB).to_string()))
    });
    assert!(
        reported,
        "the contract's resources reach the registry\n{}",
        farm.logs(40)
    );
}

/// The glue's status, `GET /v1/provision`.
fn glue(node: &Node) -> Value {
    let (_, body) =
        http_get(&format!("{}/v1/provision", node.api_url().expect("url"))).expect("GET");
    serde_json::from_str(&body).expect("json")
}

/// The registry's last resources report of `contract`, if any.
fn resources(setup: &Setup, contract: u64) -> Option<Value> {
    let (status, body) = http_get(&format!(
        "{}/v1/contracts/{contract}/resources",
        setup.registry_url
    ))
    .ok()?;
    (status == 200).then(|| serde_json::from_str(&body).expect("json"))
}

#[test]
fn only_a_cancel_removes_a_deployment_even_one_made_while_the_agent_was_down() {
    let setup = start(1);
    let node = setup.farm.node(0);
    let key = tenant_key(setup.dir.path(), "tenant");
    let mut contracts = Vec::new();
    for (i, size) in [30 * MIB, 31 * MIB].into_iter().enumerate() {
        let file = write(
            setup.dir.path(),
            &format!("d{i}.json"),
            &json!({"version": 0, "workloads": [disk("disk", "zmount", size, 0)]}),
        );
        let (ok, out) = cli(&setup, &key, node, &["deploy", &file.display().to_string()]);
        assert!(ok, "{out}\n{}", setup.farm.logs(40));
        contracts.push(contract_of(&out));
    }
    let reported = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        contracts.iter().all(|c| resources(&setup, *c).is_some())
    });
    assert!(reported, "usage reported\n{}", setup.farm.logs(40));
    let first = resources(&setup, contracts[0]).expect("reported");
    assert_eq!(first["used"]["sru"], 30 * MIB);

    // An agent restart with nothing changed queues no report.
    node.stop_agent().expect("stop");
    node.start_agent().expect("start");
    wait_glue(&setup.farm, node);
    let checked = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        glue(node)["usage_checks"].as_u64() >= Some(2)
    });
    assert!(checked, "{}\n{}", glue(node), setup.farm.logs(40));
    assert!(glue(node)["last_report"].is_null(), "{}", glue(node));
    assert_eq!(resources(&setup, contracts[0]), Some(first));

    // A cancel while the agent is down is acted on when it starts.
    node.stop_agent().expect("stop");
    let tenant = block_on(Tenant::connect(
        &setup.registry_url,
        agent::cli::sign::signing_key(&key).expect("key"),
    ))
    .expect("registry");
    block_on(tenant.cancel_contract(contracts[1])).expect("cancel");
    node.start_agent().expect("start");
    wait_glue(&setup.farm, node);
    let removed = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        block_on(provisiond(node).deployment(contracts[1]))
            .is_ok_and(|d| d.state == DeploymentState::Deleted)
    });
    assert!(removed, "{}", setup.farm.logs(40));
    let kept = block_on(provisiond(node).deployment(contracts[0])).expect("held");
    assert_eq!(kept.state, DeploymentState::Ok);

    // A registry that restarts empty forgot the contract but did not
    // cancel it: the deployment stays, and the node says so.
    setup.restart_registry_empty();
    let forgotten = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        glue(node)["forgotten"]
            .as_array()
            .is_some_and(|f| f.contains(&json!(contracts[0])))
    });
    assert!(forgotten, "{}\n{}", glue(node), setup.farm.logs(40));
    let (_, status) =
        http_get(&format!("{}/v1/status", node.api_url().expect("url"))).expect("GET");
    assert!(
        status.contains("did not cancel them"),
        "the node says it is degraded: {status}"
    );
    let kept = block_on(provisiond(node).deployment(contracts[0])).expect("held");
    assert_eq!(kept.state, DeploymentState::Ok);
    assert!(
        block_on(storaged(node).vdisks())
            .expect("vdisks")
            .iter()
            .any(|v| v.name == disk_name(contracts[0], "disk")),
        "the vdisk is kept"
    );
}
