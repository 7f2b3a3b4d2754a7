//! Node contracts against a real TFChain runtime (spec 144 under
//! chopsticks, see `../shared/tfchain/run.sh`): a tenant with a twin key of
//! its own makes a node contract with a deployment hash, the node reads it
//! back (owner, node, hash, state) and its owner's account key, follows the
//! contract's events, reports what it uses (`reportContractResources`,
//! accepted and read back from storage), a stranger can neither update nor
//! cancel it, and the owner's `cancelContract` makes it gone, seen by the
//! node within seconds.
//!
//! Contracts do not depend on chain time, so these tests never move it:
//! under chopsticks, moving chain time back (it runs 6 s ahead per block)
//! makes the next block fail to build ("Timestamp slot must match
//! `CurrentSlot`") and the extrinsic in it with it.
//!
//! Run with `TFCHAIN_WS=ws://127.0.0.1:8000 cargo test -p agent --test
//! tfchain_contracts -- --ignored --test-threads=1` (the tests share the
//! dev account Alice, so they run one at a time).

mod common;

use std::time::{Duration, Instant};

use agent::chain::backend::{Backend, TfchainBackend};
use agent::chain::contracts::ContractChange;
use agent::registry::model::{ContractResources, ContractState, DeploymentHash, Resources};
use agent::registry::tenant::{Tenant, TenantError};
use agent::tfchain::calls::Location;
use agent::tfchain::client::{ChainEvent, ChainEventKind, Tfchain, TfchainError};
use ed25519_dalek::SigningKey;
use grove_testbed::chain::{self, Proxy, now};
use subxt::{OnlineClient, SubstrateConfig};

fn url() -> String {
    std::env::var("TFCHAIN_WS")
        .expect("set TFCHAIN_WS to a TFChain RPC endpoint, e.g. ws://127.0.0.1:8000")
}

/// Alice sends 10 TFT to the account of `key`.
async fn fund(client: &OnlineClient<SubstrateConfig>, key: &SigningKey) {
    chain::fund_account(client, key.verifying_key().to_bytes())
        .await
        .expect("TFChain harness");
}

fn fresh_key() -> SigningKey {
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    seed.keys().signing().clone()
}

/// The contract watch's next change: `what` must come within `secs`.
async fn next_change(
    changes: &mut tokio::sync::mpsc::Receiver<ContractChange>,
    secs: u64,
    what: &str,
) -> ContractChange {
    tokio::time::timeout(Duration::from_secs(secs), changes.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within {secs} s"))
        .expect("the watch runs")
}

/// A new funded tenant with its twin.
async fn tenant_with_twin(client: &OnlineClient<SubstrateConfig>) -> Tenant {
    let key = fresh_key();
    fund(client, &key).await;
    let tenant = Tenant::connect(&url(), key)
        .await
        .expect("the tenant connects");
    tenant.ensure_twin().await.expect("the tenant's twin");
    tenant
}

/// A funded node with a twin, registered on a new farm of Alice's.
async fn registered_node(client: &OnlineClient<SubstrateConfig>) -> (SigningKey, u32) {
    let name = format!("grove_c_{}_{}", now(), std::process::id());
    let farm_id = chain::alice_farm(client, &name)
        .await
        .expect("TFChain harness");
    let key = fresh_key();
    let (_, node_id) = chain::registered_node(client, &url(), key.clone(), |twin| {
        chain::registration(
            farm_id,
            twin,
            "grove-contracts-test".into(),
            "02:00:00:aa:bb:dd",
            "10.77.0.11/24",
        )
    })
    .await
    .expect("TFChain harness");
    (key, node_id)
}

/// Contract `id` as the node reads it; it must be there.
async fn held(node: &Backend, id: u64) -> agent::registry::model::NodeContract {
    node.contract(id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("contract {id} is not there"))
}

async fn node_backend(key: &SigningKey) -> Backend {
    let mut backend = Backend::Tfchain(Box::new(TfchainBackend::new(
        &url(),
        key.clone(),
        Location::default(),
    )));
    backend.connect().await.expect("the node connects");
    backend
}

/// Stops the node's contract watch and waits, up to `within`, for it to
/// end.
async fn stop_watch<T>(
    shutdown: &grove_daemon::shutdown::Shutdown,
    watcher: tokio::task::JoinHandle<T>,
    within: Duration,
) -> T {
    shutdown.trigger();
    tokio::time::timeout(within, watcher)
        .await
        .expect("the watch stops on shutdown")
        .expect("the watch ran")
}

/// Waits for an event of `kind` about `contract` from the follower.
async fn event(
    rx: &mut tokio::sync::mpsc::Receiver<ChainEvent>,
    kind: ChainEventKind,
    contract: u64,
    within_secs: u64,
) -> ChainEvent {
    let within = Duration::from_secs(within_secs);
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} for contract {contract} within {within:?}"))
            .expect("the follower runs");
        if e.kind == kind && e.contract_id == Some(contract) {
            return e;
        }
        eprintln!("(other event: {e:?})");
    }
}

/// Checks that the chain refused `what` with `error`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, TenantError>, error: &str, what: &str) {
    let e = result.expect_err(what);
    assert!(
        matches!(&e, TenantError::Tfchain(TfchainError::Refused { error: got, .. }) if got == error),
        "{what}: {e:?}"
    );
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn a_tenant_makes_a_node_contract_the_node_reads_it_reports_on_it_and_sees_its_cancel() {
    let client = chain::client(&url()).await.expect("TFChain harness");
    let (node_key, node_id) = registered_node(&client).await;
    eprintln!("node {node_id} registered");

    // The tenant: a twin key of its own, funded by Alice.
    let tenant_key = fresh_key();
    fund(&client, &tenant_key).await;
    let tenant = Tenant::connect(&url(), tenant_key.clone())
        .await
        .expect("the tenant connects");
    assert_eq!(tenant.twin_id().await.unwrap(), None);
    let tenant_twin = tenant.ensure_twin().await.expect("the tenant's twin");
    assert_eq!(tenant.twin_id().await.unwrap(), Some(tenant_twin));
    eprintln!("tenant twin {tenant_twin}");

    // The node follows its contracts' events from here on.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let follower = Tfchain::connect(&url(), node_key.clone())
        .await
        .expect("connect");
    let follow = tokio::spawn(async move { follower.follow_events(node_id, tx).await });

    let hash = DeploymentHash::parse("0123456789abcdef0123456789abcdef").expect("hash");
    let contract_id = tenant
        .create_node_contract(node_id, hash.0, 0)
        .await
        .expect("createNodeContract");
    eprintln!("contract {contract_id} made by twin {tenant_twin} on node {node_id}");
    event(&mut rx, ChainEventKind::ContractCreated, contract_id, 30).await;

    // The node reads it back, and its owner's key.
    let node = node_backend(&node_key).await;
    let contract = held(&node, contract_id).await;
    assert_eq!(contract.contract_id, contract_id);
    assert_eq!(contract.node_id, node_id);
    assert_eq!(contract.twin_id, tenant_twin);
    assert_eq!(contract.deployment_hash, hash);
    assert_eq!(contract.public_ips, 0);
    assert_eq!(contract.state, ContractState::Created);
    assert_eq!(
        contract.to_admission().deployment_hash,
        *b"0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        node.node_contracts(node_id).await.unwrap(),
        vec![contract.clone()]
    );
    let owner = node
        .twin_key(tenant_twin)
        .await
        .unwrap()
        .expect("the owner's twin");
    assert_eq!(
        owner.key_bytes(),
        Some(tenant_key.verifying_key().to_bytes()),
        "the twin's account key is the tenant's"
    );
    assert_eq!(owner.account, tenant.account());
    assert_eq!(node.twin_key(4_000_000).await.unwrap(), None);
    assert_eq!(node.contract(u64::MAX / 2).await.unwrap(), None);

    // The owner updates the hash; the node sees the event and the hash.
    let hash2 = DeploymentHash::parse("fedcba9876543210fedcba9876543210").expect("hash");
    tenant
        .update_node_contract(contract_id, hash2.0)
        .await
        .expect("updateNodeContract");
    event(&mut rx, ChainEventKind::ContractUpdated, contract_id, 30).await;
    let updated = held(&node, contract_id).await;
    assert_eq!(updated.deployment_hash, hash2);
    assert_eq!(updated.state, ContractState::Created);

    // The node reports what the contract uses: accepted, and stored.
    let used = Resources {
        hru: 0,
        sru: 2 << 30,
        cru: 1,
        mru: 1 << 30,
    };
    node.report_contract_resources(node_id, &[ContractResources { contract_id, used }])
        .await
        .expect("reportContractResources accepted");
    let chain = Tfchain::connect(&url(), SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect");
    assert_eq!(
        chain.contract_resources(contract_id).await.unwrap(),
        Some(used)
    );
    // Another node may not report on it: refused for good.
    let (other_key, other_node) = registered_node(&client).await;
    let other = node_backend(&other_key).await;
    common::assert_report_refused(
        &other,
        other_node,
        contract_id,
        "NodeNotAuthorizedToComputeReport",
    )
    .await;

    // A stranger (another funded twin) can neither update nor cancel it.
    let stranger = tenant_with_twin(&client).await;
    let cancelled = stranger.cancel_contract(contract_id).await;
    assert_refused(
        cancelled,
        "TwinNotAuthorizedToCancelContract",
        "a stranger's cancel",
    );
    let e = stranger
        .update_node_contract(contract_id, hash.0)
        .await
        .expect_err("a stranger's update");
    assert!(
        matches!(&e, TenantError::Tfchain(TfchainError::Refused { .. })),
        "{e:?}"
    );
    assert_eq!(
        node.contract(contract_id).await.unwrap(),
        Some(updated.clone()),
        "refused writes changed the contract"
    );

    // The owner cancels: the node sees the event within seconds, and the
    // contract gone from storage; the node's contract watch says it is
    // gone.
    let shutdown = grove_daemon::shutdown::Shutdown::new();
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(16);
    let watcher = tokio::spawn(agent::chain::contracts::watch(
        Backend::Tfchain(Box::new(TfchainBackend::new(
            &url(),
            node_key.clone(),
            Location::default(),
        ))),
        node_id,
        changes_tx,
        shutdown.clone(),
    ));
    let first = next_change(&mut changes, 30, "the watch reads the contracts").await;
    assert_eq!(first, ContractChange::Active(updated.clone()));
    let cancelled_at = Instant::now();
    tenant
        .cancel_contract(contract_id)
        .await
        .expect("cancelContract");
    let seen = event(
        &mut rx,
        ChainEventKind::NodeContractCanceled,
        contract_id,
        10,
    )
    .await;
    eprintln!(
        "NodeContractCanceled for {contract_id} seen {:?} after the cancel was sent (block {})",
        cancelled_at.elapsed(),
        seen.block
    );
    let gone = next_change(&mut changes, 10, "the watch sees the cancel").await;
    assert_eq!(gone, ContractChange::Gone(updated.clone()));
    eprintln!(
        "the node's contract watch saw {contract_id} gone {:?} after the cancel was sent",
        cancelled_at.elapsed()
    );
    stop_watch(&shutdown, watcher, Duration::from_secs(10)).await;
    assert_eq!(node.contract(contract_id).await.unwrap(), None);
    assert!(node.node_contracts(node_id).await.unwrap().is_empty());
    assert_eq!(tenant.contract(contract_id).await.unwrap(), None);
    // Cancelling again: the chain has no such contract any more.
    let cancelled = tenant.cancel_contract(contract_id).await;
    assert_refused(cancelled, "ContractNotExists", "cancelled already");
    follow.abort();
}

/// The chain cut off when the node's contract watch starts, then cut again
/// while the tenant cancels: the watch sees the contract once the chain is
/// back, and the cancel once it is back again, each within 30 s.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn the_contract_watch_rides_out_a_chain_down_at_start_and_a_cut_during_a_cancel() {
    let client = chain::client(&url()).await.expect("TFChain harness");
    let (node_key, node_id) = registered_node(&client).await;
    let tenant = tenant_with_twin(&client).await;

    let proxy = Proxy::to(&url()).await.expect("TFChain harness");
    proxy.cut();
    let shutdown = grove_daemon::shutdown::Shutdown::new();
    let (tx, mut changes) = tokio::sync::mpsc::channel(16);
    let watcher = tokio::spawn(agent::chain::contracts::watch(
        Backend::Tfchain(Box::new(TfchainBackend::new(
            &proxy.url,
            node_key,
            Location::default(),
        ))),
        node_id,
        tx,
        shutdown.clone(),
    ));
    let hash = DeploymentHash::parse("abcdefabcdefabcdefabcdefabcdef01").expect("hash");
    let contract_id = tenant
        .create_node_contract(node_id, hash.0, 0)
        .await
        .expect("createNodeContract");
    assert!(
        changes.try_recv().is_err(),
        "nothing can be seen through a cut"
    );
    proxy.restore();
    let restored = Instant::now();
    let seen = next_change(&mut changes, 30, "the contract after the restore").await;
    match seen {
        ContractChange::Active(c) => {
            assert_eq!((c.contract_id, c.deployment_hash), (contract_id, hash))
        }
        other => panic!("{other:?}"),
    }
    eprintln!(
        "down at start: contract {contract_id} seen {:?} after the chain came back",
        restored.elapsed()
    );

    proxy.cut();
    tenant
        .cancel_contract(contract_id)
        .await
        .expect("cancelContract");
    // The outage lasts 5 s past the cancel.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let restored = Instant::now();
    let gone = next_change(&mut changes, 30, "the cancel after the restore").await;
    assert!(
        matches!(&gone, ContractChange::Gone(c) if c.contract_id == contract_id),
        "{gone:?}"
    );
    eprintln!(
        "cut during the cancel: seen {:?} after the chain came back",
        restored.elapsed()
    );
    stop_watch(&shutdown, watcher, Duration::from_secs(15)).await;
}
