//! Against a real TFChain runtime (spec 144 under chopsticks, see
//! `../shared/tfchain/run.sh`): an unfunded node is told apart, a funded
//! node registers, the `Node` read back from chain storage has the node's
//! capacity and interfaces, and its uptime report is accepted.
//!
//! Run with `TFCHAIN_WS=ws://127.0.0.1:8000 cargo test -p agent --test
//! tfchain -- --ignored --test-threads=1` (the tests share the dev account
//! Alice, so they run one at a time); `ci/test` does so when `TFCHAIN_WS` is
//! set.

use std::time::{SystemTime, UNIX_EPOCH};

use agent::registry::model::{Interface, NodeRegistration, Resources};
use agent::tfchain::calls::Location;
use agent::tfchain::client::{Tfchain, TfchainError};
use subxt::dynamic::{At as _, Value};
use subxt::{OnlineClient, SubstrateConfig};

const TFT: u128 = 10_000_000;

fn url() -> String {
    std::env::var("TFCHAIN_WS")
        .expect("set TFCHAIN_WS to a TFChain RPC endpoint, e.g. ws://127.0.0.1:8000")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn farmer_submit(
    client: &OnlineClient<SubstrateConfig>,
    pallet: &str,
    call: &str,
    fields: Vec<(&str, Value)>,
) {
    let alice = subxt_signer::sr25519::dev::alice();
    let payload = subxt::dynamic::tx(
        pallet,
        call,
        subxt::ext::scale_value::Composite::named(
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)),
        ),
    );
    let at = client.at_current_block().await.expect("block");
    at.tx()
        .sign_and_submit_then_watch_default(&payload, &alice)
        .await
        .unwrap_or_else(|e| panic!("{pallet}.{call}: {e}"))
        .wait_for_finalized_success()
        .await
        .unwrap_or_else(|e| panic!("{pallet}.{call}: {e}"));
}

async fn farm_id_by_name(client: &OnlineClient<SubstrateConfig>, name: &str) -> Option<u32> {
    let at = client.at_current_block().await.expect("block");
    let address = subxt::dynamic::storage::<Vec<Value>, Value>("TfgridModule", "FarmIdByName");
    at.storage()
        .try_fetch(address, vec![Value::from_bytes(name)])
        .await
        .expect("storage")
        .map(|v| v.decode_as::<u32>().expect("u32"))
        .filter(|id| *id != 0)
}

async fn alice_farm(client: &OnlineClient<SubstrateConfig>) -> u32 {
    let alice = subxt_signer::sr25519::dev::alice()
        .public_key()
        .to_account_id();
    let at = client.at_current_block().await.expect("block");
    let twin = at
        .storage()
        .try_fetch(
            subxt::dynamic::storage::<Vec<Value>, Value>("TfgridModule", "TwinIdByAccountID"),
            vec![Value::from_bytes(alice.0)],
        )
        .await
        .expect("storage");
    if twin.is_none() {
        farmer_submit(
            client,
            "TfgridModule",
            "user_accept_tc",
            vec![
                (
                    "document_link",
                    Value::from_bytes(agent::tfchain::client::TC_LINK),
                ),
                (
                    "document_hash",
                    Value::from_bytes(agent::tfchain::client::TC_HASH),
                ),
            ],
        )
        .await;
        farmer_submit(
            client,
            "TfgridModule",
            "create_twin",
            vec![
                ("relay", Value::unnamed_variant("None", [])),
                ("pk", Value::unnamed_variant("None", [])),
            ],
        )
        .await;
    }
    let farm_name = format!("grove_{}_{}", now(), std::process::id());
    farmer_submit(
        client,
        "TfgridModule",
        "create_farm",
        vec![
            ("name", Value::from_bytes(&farm_name)),
            ("public_ips", Value::unnamed_composite([])),
        ],
    )
    .await;
    farm_id_by_name(client, &farm_name)
        .await
        .expect("the farm exists")
}

/// The agent's own chain task, as a node runs it: unfunded it says it waits
/// for funds and names its account; funded, it gets its twin.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn an_unfunded_node_shows_waiting_for_funds_then_gets_its_twin() {
    use std::sync::Arc;
    use std::time::Duration;

    use agent::boot::{BootParams, ChainBackend, ChainParams};
    use agent::chain::{Chain, ChainConfig, MeshConfig, Sources};

    let url = url();
    let client = Tfchain::connect(&url, ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect")
        .client()
        .clone();
    let farm_id = alice_farm(&client).await;
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    let account = seed.keys().public().account;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = Arc::new(Chain::default());
    let params = BootParams {
        farm_id: Some(farm_id),
        chain: ChainParams {
            backend: ChainBackend::Tfchain,
            url: Some(url.clone()),
            run_mode: None,
        },
        ..BootParams::default()
    };
    let config = ChainConfig {
        uptime_interval_secs: 3600,
        queue_dir: dir.path().join("reports"),
        ..ChainConfig::default()
    };
    let sources = Sources {
        identity: Arc::new(agent::identity::Identity::with_seed(&seed)),
        storaged: storaged::client::StoragedClient::new(dir.path().join("no-storaged.sock")),
        netd: netd::client::NetdClient::new(dir.path().join("no-netd.sock")),
        proc_root: "/proc".into(),
        mesh: MeshConfig {
            enabled: false,
            ..MeshConfig::default()
        },
    };
    let task = tokio::spawn(chain.clone().run(
        params,
        config,
        sources,
        grove_daemon::shutdown::Shutdown::new(),
    ));

    let waiting = format!("waiting for funds: send at least 1 TFT to {account}");
    let mut shown = false;
    for _ in 0..300 {
        if chain.status().funds == waiting {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown, "never showed {waiting:?}: {:?}", chain.status());
    eprintln!("/v1/chain funds: {}", chain.status().funds);

    farmer_submit(
        &client,
        "Balances",
        "transfer_keep_alive",
        vec![
            (
                "dest",
                Value::unnamed_variant(
                    "Id",
                    [Value::from_bytes(seed.keys().verifying().to_bytes())],
                ),
            ),
            ("value", Value::u128(10 * TFT)),
        ],
    )
    .await;
    let mut twin = None;
    for _ in 0..900 {
        let s = chain.status();
        if s.twin_id.is_some() && s.funds == "funded" {
            twin = s.twin_id;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    let twin = twin.unwrap_or_else(|| panic!("no twin after funding: {:?}", chain.status()));
    eprintln!("funded; twin {twin}; farmer {:?}", chain.status().farmer);
    assert_eq!(
        chain.status().farmer.as_deref(),
        Some(
            agent::identity::keys::ss58(&subxt_signer::sr25519::dev::alice().public_key().0, 42)
                .as_str()
        )
    );
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn a_node_registers_on_tfchain_and_reports_uptime() {
    let url = url();
    // A throwaway node key gives the test a client on the same backend.
    let client = Tfchain::connect(&url, ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect")
        .client()
        .clone();

    // The farmer (the dev account Alice) makes a farm.
    let farm_id = alice_farm(&client).await;
    eprintln!("farm {farm_id} created by Alice");

    // A fresh node key, not funded yet.
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    let keys = seed.keys();
    let node = Tfchain::connect(&url, keys.signing().clone())
        .await
        .expect("connect as the node");
    eprintln!("node account {}", node.account());
    assert_eq!(node.free_balance().await.expect("balance"), 0);
    let unfunded = node
        .ensure_twin(None)
        .await
        .expect_err("an unfunded account cannot send");
    assert!(
        matches!(unfunded, TfchainError::Unfunded { .. }),
        "{unfunded}"
    );
    eprintln!("unfunded: {unfunded}");

    // The farmer funds it; then it registers.
    farmer_submit(
        &client,
        "Balances",
        "transfer_keep_alive",
        vec![
            (
                "dest",
                Value::unnamed_variant("Id", [Value::from_bytes(keys.verifying().to_bytes())]),
            ),
            ("value", Value::u128(10 * TFT)),
        ],
    )
    .await;
    assert_eq!(node.free_balance().await.expect("balance"), 10 * TFT);
    let twin = node.ensure_twin(None).await.expect("twin");
    let registration = NodeRegistration {
        farm_id,
        twin_id: twin,
        resources: Resources {
            hru: 1024 << 30,
            sru: 512 << 30,
            cru: 8,
            mru: 16 << 30,
        },
        interfaces: vec![Interface {
            name: "br-grove".into(),
            mac: "02:00:00:aa:bb:cc".into(),
            ips: vec!["10.77.0.10/24".into()],
        }],
        serial_number: "grove-test-serial".into(),
        virtualized: true,
        secure_boot: false,
    };
    let location = Location {
        city: "Ghent".into(),
        country: "Belgium".into(),
        latitude: "51.0543".into(),
        longitude: "3.7174".into(),
    };
    let node_id = node
        .register(twin, &registration, &location)
        .await
        .expect("createNode");
    eprintln!("twin {twin}, node {node_id}");

    let stored = node
        .node(node_id)
        .await
        .expect("read")
        .expect("the Node is stored");
    let field = |path: &[&str]| -> u128 {
        let mut v = &stored;
        for p in path {
            v = v
                .at(*p)
                .unwrap_or_else(|| panic!("{path:?} missing in {stored:?}"));
        }
        v.as_u128()
            .unwrap_or_else(|| panic!("{path:?} not a number"))
    };
    assert_eq!(field(&["farm_id"]), u128::from(farm_id));
    assert_eq!(field(&["twin_id"]), u128::from(twin));
    assert_eq!(field(&["resources", "sru"]), 512 << 30);
    assert_eq!(field(&["resources", "mru"]), 16 << 30);
    assert_eq!(field(&["resources", "cru"]), 8);
    let interface = stored
        .at("interfaces")
        .and_then(|i| i.at(0))
        .expect("an interface");
    let name_bytes = format!("{:?}", interface.at("name").expect("name"));
    let expected: Vec<String> = b"br-grove".iter().map(|b| b.to_string()).collect();
    assert!(
        expected.iter().all(|b| name_bytes.contains(b.as_str())),
        "interface name {name_bytes} is not br-grove"
    );
    eprintln!("Node read back: {stored}");

    // Updating is an update, not a second node.
    let again = node
        .register(twin, &registration, &location)
        .await
        .expect("updateNode");
    assert_eq!(again, node_id);

    // Chain time only moves per block under chopsticks: bring it to now.
    let rpc = subxt::rpcs::RpcClient::from_insecure_url(&url)
        .await
        .expect("rpc");
    let _: serde_json::Value = rpc
        .request("dev_timeTravel", subxt::rpcs::rpc_params![now() * 1000])
        .await
        .expect("dev_timeTravel");
    node.report_uptime(42, now())
        .await
        .expect("reportUptimeV2 accepted");
    eprintln!("uptime report accepted");

    // The node follows the chain: a contract made on it, then cancelled.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let follower = Tfchain::connect(&url, keys.signing().clone())
        .await
        .expect("connect");
    let follow = tokio::spawn(async move { follower.follow_events(node_id, tx).await });
    farmer_submit(
        &client,
        "SmartContractModule",
        "create_node_contract",
        vec![
            ("node_id", Value::u128(u128::from(node_id))),
            ("deployment_hash", Value::from_bytes([0xab; 32])),
            (
                "deployment_data",
                Value::from_bytes("grove test deployment"),
            ),
            ("public_ips", Value::u128(0)),
            ("solution_provider_id", Value::unnamed_variant("None", [])),
        ],
    )
    .await;
    let created = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("an event within 30 s")
        .expect("the follower runs");
    assert_eq!(
        created.kind,
        agent::tfchain::client::ChainEventKind::ContractCreated
    );
    let contract = created.contract_id.expect("a contract id");
    assert_eq!(
        node.node_contracts(node_id).await.expect("contracts"),
        vec![contract]
    );
    eprintln!(
        "followed: contract {contract} created on node {node_id} (block {})",
        created.block
    );
    farmer_submit(
        &client,
        "SmartContractModule",
        "cancel_contract",
        vec![("contract_id", Value::u128(u128::from(contract)))],
    )
    .await;
    // Under chopsticks a user's cancel shows in storage at once, while no
    // NodeContractCanceled event arrives in time: check the storage.
    let mut gone = false;
    for _ in 0..60 {
        if node
            .node_contracts(node_id)
            .await
            .expect("contracts")
            .is_empty()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        gone,
        "contract {contract} still active after cancelContract"
    );
    eprintln!("contract {contract} cancelled: no longer among the node's active contracts");
    follow.abort();
}
