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

use agent::identity::alive;
use agent::identity::keys::Seed;
use agent::tfchain::client::Tfchain;
use grove_testbed::chain::{self, now};
use subxt::{OnlineClient, SubstrateConfig};

fn url() -> String {
    std::env::var("TFCHAIN_WS")
        .expect("set TFCHAIN_WS to a TFChain RPC endpoint, e.g. ws://127.0.0.1:8000")
}

/// A new node key, funded by Alice, with a twin and a node in `farm_id`.
async fn registered_node(
    client: &OnlineClient<SubstrateConfig>,
    url: &str,
    farm_id: u32,
) -> (Seed, Tfchain) {
    let seed = Seed::generate().expect("seed");
    let (node, _) = chain::registered_node(client, url, seed.keys().signing().clone(), |twin| {
        chain::registration(
            farm_id,
            twin,
            format!("grove-alive-{twin}"),
            "02:00:00:aa:bb:cd",
            "10.77.0.11/24",
        )
    })
    .await
    .expect("TFChain harness");
    (seed, node)
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn a_node_that_reported_uptime_is_alive_and_one_that_never_did_is_not() {
    let url = url();
    let client = chain::client(&url).await.expect("TFChain harness");
    let farm_id = chain::alice_farm(&client, &format!("grove_{}_{}", now(), std::process::id()))
        .await
        .expect("TFChain harness");
    let params = chain::boot_params(&url, farm_id);

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
