//! A tenant's deployment on a real node of a testbed farm registered on a
//! real TFChain runtime (spec 144 under chopsticks, see
//! `../shared/tfchain/run.sh`), end to end:
//!
//! - the node boots with `grove.chain=tfchain`, shows its account while it
//!   waits for funds, and registers once Alice funds it;
//! - a tenant with a twin key of its own deploys a zmount and a volume with
//!   the command line (`agent tenant --registry ws://…`): the command line
//!   makes the twin and the node contract carrying the deployment's hash;
//!   the node reads the contract and the twin's account key from the chain,
//!   and provisions it: a vdisk of the size and a quota'd subvolume;
//! - the node reports the contract's resources, which the chain accepts and
//!   holds;
//! - the tenant's `cancelContract` removes the deployment, its vdisk and
//!   its subvolume, and the node's capacity shows nothing used.
//!
//! The node lives in its own network namespace: it reaches the chain
//! through a proxy on the farm LAN's host address.
//!
//! Run with `TFCHAIN_WS=ws://127.0.0.1:8000 cargo test -p agent --test
//! tfchain_provision -- --ignored --test-threads=1`, as root.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use agent::registry::model::Resources;
use agent::tfchain::client::Tfchain;
use grove_testbed::chain::{self, GIB, Proxy, now};
use grove_testbed::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, wait_until};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn url() -> String {
    std::env::var("TFCHAIN_WS")
        .expect("set TFCHAIN_WS to a TFChain RPC endpoint, e.g. ws://127.0.0.1:8000")
}

/// The node's `/v1/NAME` answer, when it answers.
fn api(node: &Node, name: &str) -> Option<Value> {
    let api = node.api_url().ok()?;
    let (status, body) = http_get(&format!("{api}/v1/{name}")).ok()?;
    (status == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// `agent tenant ...` against the chain: (success, stdout + stderr).
fn tenant_cli(key: &Path, node: &Node, args: &[&str]) -> (bool, String) {
    grove_testbed::tenant::cli(key, &url(), node, 180, args)
}

/// The names of storaged's volumes and vdisks on `node`.
fn disks(rt: &tokio::runtime::Runtime, node: &Node) -> (Vec<String>, Vec<String>) {
    let storaged =
        storaged::client::StoragedClient::new(node.socket(Daemon::Storaged).expect("runs"));
    let volumes = rt.block_on(storaged.volumes()).expect("volumes");
    let vdisks = rt.block_on(storaged.vdisks()).expect("vdisks");
    (
        volumes.into_iter().map(|v| v.name).collect(),
        vdisks.into_iter().map(|v| v.name).collect(),
    )
}

#[test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored, as root"]
fn a_node_on_tfchain_provisions_a_tenants_contract_reports_its_resources_and_a_cancel_removes_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run as root"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt.block_on(chain::client(&url())).expect("TFChain harness");
    let farm_id = rt
        .block_on(chain::alice_farm(
            &client,
            &format!("grove_p_{}_{}", now(), std::process::id()),
        ))
        .expect("TFChain harness");

    // One node with a 120 GiB SSD (TFChain refuses a node under 100 GiB of
    // SRU; the loop file is sparse).
    let spec = NodeSpec::default().disks(vec![DiskSpec::ssd(120 * GIB / MIB)]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]).without_agents())
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)));
    let proxy = rt
        .block_on(Proxy::on(farm.host_ip(), &url()))
        .expect("proxy");
    let node = farm.node(0);
    node.set_cmdline(&format!(
        "grove.farm={farm_id} grove.chain=tfchain grove.chain.url={}",
        proxy.url
    ))
    .expect("cmdline");
    node.start_agent().expect("boot");
    node.wait_api(Duration::from_secs(60)).expect("API up");

    // Unfunded, the node says which account waits for funds.
    let mut last = None;
    let account = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        last = api(node, "chain");
        last.as_ref()
            .is_some_and(|c| c["account"].is_string() && c["funds"] != "not needed")
    });
    assert!(account, "no account shown: {last:?}\n{}", farm.logs(40));
    let chain_view = last.take().expect("shown");
    let account = chain_view["account"].as_str().expect("account").to_owned();
    let id = subxt::utils::AccountId32::from_str(&account).expect("an SS58 account");
    rt.block_on(chain::fund_account(&client, id.0))
        .expect("TFChain harness");

    // Funded, it registers, and provisiond gets the node id.
    let registered = wait_until(Duration::from_secs(120), Duration::from_millis(250), || {
        let chain_view = api(node, "chain");
        let glue = api(node, "provision");
        last = chain_view.clone();
        match (chain_view, glue) {
            (Some(c), Some(g)) => c["node_id"].is_u64() && c["node_id"] == g["node_id"],
            _ => false,
        }
    });
    assert!(registered, "not registered: {last:?}\n{}", farm.logs(60));
    let node_id = u32::try_from(
        last.as_ref().expect("shown")["node_id"]
            .as_u64()
            .expect("node id"),
    )
    .expect("a u32");
    eprintln!("node {node_id} registered on farm {farm_id}");

    // The tenant: a key of its own, funded by Alice; the command line makes
    // its twin and the contract.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tenant.key");
    agent::cli::sign::new_key(&key).expect("a key");
    let signing = agent::cli::sign::signing_key(&key).expect("key");
    rt.block_on(chain::fund_account(
        &client,
        signing.verifying_key().to_bytes(),
    ))
    .expect("TFChain harness");
    let file = dir.path().join("deployment.json");
    let (zmount, volume) = (100 * MIB, 50 * MIB);
    std::fs::write(
        &file,
        json!({"version": 0, "workloads": [
            {"name": "disk", "type": "zmount", "version": 0, "data": {"size": zmount}},
            {"name": "data", "type": "volume", "version": 0, "data": {"size": volume}},
        ]})
        .to_string(),
    )
    .unwrap();
    let started = Instant::now();
    let (ok, out) = tenant_cli(&key, node, &["deploy", &file.display().to_string()]);
    assert!(ok, "{out}\n{}", farm.logs(60));
    eprintln!("deployed in {:?}: {out}", started.elapsed());
    let contract_id: u64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("contract ")?
                .strip_suffix(": every workload is ok")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no contract in: {out}"));

    // The contract on the chain: this node's, the tenant's twin, Created.
    let reader = rt
        .block_on(Tfchain::connect(&url(), signing.clone()))
        .expect("connect");
    let contract = rt
        .block_on(reader.contract(contract_id))
        .unwrap()
        .expect("the contract exists");
    assert_eq!(contract.node_id, node_id, "{contract:?}");
    assert_eq!(
        Some(contract.twin_id),
        rt.block_on(reader.twin()).unwrap(),
        "{contract:?}"
    );

    // The node made what the deployment asks for.
    let (volumes, vdisks) = disks(&rt, node);
    let names = |w: &str| provisiond::driver::disk_name(contract_id, w);
    assert!(vdisks.contains(&names("disk")), "{vdisks:?}");
    assert!(volumes.contains(&names("data")), "{volumes:?}");

    // It reports what the contract uses; the chain accepts and holds it.
    let mut held = None;
    let reported = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        held = rt
            .block_on(reader.contract_resources(contract_id))
            .ok()
            .flatten();
        held.as_ref()
            .is_some_and(|r: &Resources| r.sru == zmount + volume)
    });
    assert!(
        reported,
        "the chain holds {held:?} for contract {contract_id}, not sru {}\n{}",
        zmount + volume,
        farm.logs(60)
    );

    // The tenant cancels on the chain; the node removes everything.
    let started = Instant::now();
    let (ok, out) = tenant_cli(&key, node, &["cancel", &contract_id.to_string()]);
    assert!(ok, "{out}");
    assert_eq!(
        rt.block_on(reader.contract(contract_id)).unwrap(),
        None,
        "a cancelled contract is gone from the chain"
    );
    let removed = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let (volumes, vdisks) = disks(&rt, node);
        !vdisks.contains(&names("disk"))
            && !volumes.contains(&names("data"))
            && api(node, "capacity")
                .is_some_and(|c| c["deployments"]["capacity"]["used"]["sru"] == 0)
    });
    assert!(
        removed,
        "not removed: {:?} {:?}\n{}",
        disks(&rt, node),
        api(node, "capacity"),
        farm.logs(60)
    );
    eprintln!("removed {:?} after the cancel", started.elapsed());
    drop(proxy);
}
