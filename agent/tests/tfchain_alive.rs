//! "Alive within the hour" on a real TFChain runtime (spec 144 under
//! chopsticks, see `../shared/tfchain/run.sh`): a node that reported uptime
//! is alive, one registered that never did is not, and an account the chain
//! never saw is not. Read through the same path a node takes before it
//! adopts an identity found on a moved-in pool, and the farm's owner
//! through the path that checks a waiting node's identity choice.
//!
//! Run with `TFCHAIN_WS=ws://127.0.0.1:8000 cargo test -p agent --test
//! tfchain_alive -- --ignored --test-threads=1` (the dev account Alice
//! signs the farmer's calls, so tests against one chain run one at a time).

use std::time::{SystemTime, UNIX_EPOCH};

use agent::boot::{BootParams, ChainBackend, ChainParams};
use agent::identity::alive;
use agent::identity::keys::Seed;
use agent::registry::model::{Interface, NodeRegistration, Resources};
use agent::tfchain::calls::Location;
use agent::tfchain::client::Tfchain;
use subxt::dynamic::Value;
use subxt::{OnlineClient, SubstrateConfig};

const TFT: u128 = 10_000_000;

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

/// A new node key, funded by Alice, with a twin and a node in `farm_id`.
async fn registered_node(
    client: &OnlineClient<SubstrateConfig>,
    url: &str,
    farm_id: u32,
) -> (Seed, Tfchain) {
    let seed = Seed::generate().expect("seed");
    let keys = seed.keys();
    farmer_submit(
        client,
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
    let node = Tfchain::connect(url, keys.signing().clone())
        .await
        .expect("connect as the node");
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
            mac: "02:00:00:aa:bb:cd".into(),
            ips: vec!["10.77.0.11/24".into()],
        }],
        serial_number: format!("grove-alive-{twin}"),
        virtualized: true,
        secure_boot: false,
    };
    let location = Location {
        city: "Ghent".into(),
        country: "Belgium".into(),
        latitude: "51.0543".into(),
        longitude: "3.7174".into(),
    };
    node.register(twin, &registration, &location)
        .await
        .expect("createNode");
    (seed, node)
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn a_node_that_reported_uptime_is_alive_and_one_that_never_did_is_not() {
    let url = url();
    let client = Tfchain::connect(&url, ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect")
        .client()
        .clone();
    let farm_id = alice_farm(&client).await;
    let params = BootParams {
        farm_id: Some(farm_id),
        chain: ChainParams {
            backend: ChainBackend::Tfchain,
            url: Some(url.clone()),
            run_mode: None,
        },
        ..BootParams::default()
    };

    // The farm's owner, as a waiting node reads it to check a choice.
    assert_eq!(
        alive::farm_owner(&params).await.expect("farm owner"),
        agent::identity::keys::ss58(&subxt_signer::sr25519::dev::alice().public_key().0, 42)
    );

    let (reporter, node) = registered_node(&client, &url, farm_id).await;
    let (silent, _) = registered_node(&client, &url, farm_id).await;

    // The hint is the chain's own time: no time travel, which would upset
    // another client of the same chain building a block.
    let hint = node.chain_time().await.expect("chain time");
    node.report_uptime(42, hint)
        .await
        .expect("reportUptimeV2 accepted");
    let chain_now = node.chain_time().await.expect("chain time");

    let account = reporter.keys().public().account;
    let last = alive::last_uptime(&params, &account)
        .await
        .expect("read the blocks");
    let at = last.unwrap_or_else(|| panic!("the report of {account} was not found"));
    assert!(
        chain_now.abs_diff(at) < 60,
        "reported at chain time {at}, the chain says {chain_now}"
    );
    assert!(alive::alive(last, chain_now), "{account} is not alive");

    let quiet = silent.keys().public().account;
    let none = alive::last_uptime(&params, &quiet)
        .await
        .expect("read the blocks");
    assert_eq!(none, None, "{quiet} never reported");
    assert!(!alive::alive(none, chain_now));

    let stranger = Seed::generate().expect("seed").keys().public().account;
    assert_eq!(
        alive::last_uptime(&params, &stranger)
            .await
            .expect("read the blocks"),
        None
    );
}
