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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::chain::backend::{Backend, BackendError, TfchainBackend};
use agent::chain::contracts::ContractChange;
use agent::registry::model::{
    ContractResources, ContractState, DeploymentHash, Interface, NodeRegistration, Resources,
};
use agent::registry::tenant::{Tenant, TenantError};
use agent::tfchain::calls::Location;
use agent::tfchain::client::{ChainEvent, ChainEventKind, Tfchain, TfchainError};
use ed25519_dalek::SigningKey;
use subxt::dynamic::Value;
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

/// A call signed by the dev account Alice, the farmer.
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

async fn read(
    client: &OnlineClient<SubstrateConfig>,
    pallet: &str,
    item: &str,
    key: Value,
) -> Option<Value> {
    let at = client.at_current_block().await.expect("block");
    let address = subxt::dynamic::storage::<Vec<Value>, Value>(pallet, item);
    at.storage()
        .try_fetch(address, vec![key])
        .await
        .expect("storage")
        .map(|v| v.decode().expect("decodes").remove_context())
}

/// A farm of Alice's (her twin made first if the chain has none).
async fn alice_farm(client: &OnlineClient<SubstrateConfig>) -> u32 {
    let alice = subxt_signer::sr25519::dev::alice()
        .public_key()
        .to_account_id();
    let twin = read(
        client,
        "TfgridModule",
        "TwinIdByAccountID",
        Value::from_bytes(alice.0),
    )
    .await;
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
    let name = format!("grove_c_{}_{}", now(), std::process::id());
    farmer_submit(
        client,
        "TfgridModule",
        "create_farm",
        vec![
            ("name", Value::from_bytes(&name)),
            ("public_ips", Value::unnamed_composite([])),
        ],
    )
    .await;
    read(
        client,
        "TfgridModule",
        "FarmIdByName",
        Value::from_bytes(&name),
    )
    .await
    .and_then(|v| v.as_u128())
    .and_then(|n| u32::try_from(n).ok())
    .filter(|id| *id != 0)
    .expect("the farm exists")
}

/// Alice sends 10 TFT to the account of `key`.
async fn fund(client: &OnlineClient<SubstrateConfig>, key: &SigningKey) {
    farmer_submit(
        client,
        "Balances",
        "transfer_keep_alive",
        vec![
            (
                "dest",
                Value::unnamed_variant("Id", [Value::from_bytes(key.verifying_key().to_bytes())]),
            ),
            ("value", Value::u128(10 * TFT)),
        ],
    )
    .await;
}

fn fresh_key() -> SigningKey {
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    seed.keys().signing().clone()
}

/// A funded node with a twin, registered on a farm of Alice's.
async fn registered_node(client: &OnlineClient<SubstrateConfig>) -> (SigningKey, u32) {
    let farm_id = alice_farm(client).await;
    let key = fresh_key();
    fund(client, &key).await;
    let node = Tfchain::connect(&url(), key.clone())
        .await
        .expect("connect as the node");
    let twin = node.ensure_twin(None).await.expect("the node's twin");
    let registration = NodeRegistration {
        farm_id,
        twin_id: twin,
        resources: Resources {
            hru: 0,
            sru: 512 << 30,
            cru: 8,
            mru: 16 << 30,
        },
        interfaces: vec![Interface {
            name: "br-grove".into(),
            mac: "02:00:00:aa:bb:dd".into(),
            ips: vec!["10.77.0.11/24".into()],
        }],
        serial_number: "grove-contracts-test".into(),
        virtualized: true,
        secure_boot: false,
    };
    let location = Location {
        city: "Ghent".into(),
        country: "Belgium".into(),
        latitude: "51.05".into(),
        longitude: "3.72".into(),
    };
    let node_id = node
        .register(twin, &registration, &location)
        .await
        .expect("createNode");
    (key, node_id)
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

/// Waits for an event of `kind` about `contract` from the follower.
async fn event(
    rx: &mut tokio::sync::mpsc::Receiver<ChainEvent>,
    kind: ChainEventKind,
    contract: u64,
    within: Duration,
) -> ChainEvent {
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

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn a_tenant_makes_a_node_contract_the_node_reads_it_reports_on_it_and_sees_its_cancel() {
    let client = Tfchain::connect(&url(), SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect")
        .client()
        .clone();
    let (node_key, node_id) = registered_node(&client).await;
    eprintln!("node {node_id} registered");

    // The tenant: a twin key of its own, funded by Alice.
    let tenant_key = fresh_key();
    fund(&client, &tenant_key).await;
    let tenant = Tenant::connect(&url(), tenant_key.clone())
        .await
        .expect("the tenant connects");
    assert_eq!(tenant.twin_id().await.expect("read"), None);
    let tenant_twin = tenant.ensure_twin().await.expect("the tenant's twin");
    assert_eq!(tenant.twin_id().await.expect("read"), Some(tenant_twin));
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
    event(
        &mut rx,
        ChainEventKind::ContractCreated,
        contract_id,
        Duration::from_secs(30),
    )
    .await;

    // The node reads it back, and its owner's key.
    let node = node_backend(&node_key).await;
    let contract = node
        .contract(contract_id)
        .await
        .expect("read")
        .expect("the contract exists");
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
        node.node_contracts(node_id).await.expect("read"),
        vec![contract.clone()]
    );
    let owner = node
        .twin_key(tenant_twin)
        .await
        .expect("read")
        .expect("the owner's twin");
    assert_eq!(
        owner.key_bytes(),
        Some(tenant_key.verifying_key().to_bytes()),
        "the twin's account key is the tenant's"
    );
    assert_eq!(owner.account, tenant.account());
    assert_eq!(node.twin_key(4_000_000).await.expect("read"), None);
    assert_eq!(node.contract(u64::MAX / 2).await.expect("read"), None);

    // The owner updates the hash; the node sees the event and the hash.
    let hash2 = DeploymentHash::parse("fedcba9876543210fedcba9876543210").expect("hash");
    tenant
        .update_node_contract(contract_id, hash2.0)
        .await
        .expect("updateNodeContract");
    event(
        &mut rx,
        ChainEventKind::ContractUpdated,
        contract_id,
        Duration::from_secs(30),
    )
    .await;
    let updated = node
        .contract(contract_id)
        .await
        .expect("read")
        .expect("there");
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
        chain.contract_resources(contract_id).await.expect("read"),
        Some(used)
    );
    // Another node may not report on it: refused for good.
    let (other_key, other_node) = registered_node(&client).await;
    let other = node_backend(&other_key).await;
    let e = other
        .report_contract_resources(
            other_node,
            &[ContractResources {
                contract_id,
                used: Resources::default(),
            }],
        )
        .await
        .expect_err("another node's contract");
    assert!(
        matches!(&e, BackendError::Permanent { kind, .. } if kind == "NodeNotAuthorizedToComputeReport"),
        "{e:?}"
    );

    // A stranger (another funded twin) can neither update nor cancel it.
    let stranger_key = fresh_key();
    fund(&client, &stranger_key).await;
    let stranger = Tenant::connect(&url(), stranger_key)
        .await
        .expect("connect");
    stranger.ensure_twin().await.expect("the stranger's twin");
    let e = stranger
        .cancel_contract(contract_id)
        .await
        .expect_err("a stranger's cancel");
    assert!(
        matches!(&e, TenantError::Tfchain(TfchainError::Refused { error, .. }) if error == "TwinNotAuthorizedToCancelContract"),
        "{e:?}"
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
        node.contract(contract_id).await.expect("read"),
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
    let first = tokio::time::timeout(Duration::from_secs(30), changes.recv())
        .await
        .expect("the watch reads the contracts within 30 s")
        .expect("the watch runs");
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
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "NodeContractCanceled for {contract_id} seen {:?} after the cancel was sent (block {})",
        cancelled_at.elapsed(),
        seen.block
    );
    let gone = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("the watch sees the cancel within 10 s")
        .expect("the watch runs");
    assert_eq!(gone, ContractChange::Gone(updated.clone()));
    eprintln!(
        "the node's contract watch saw {contract_id} gone {:?} after the cancel was sent",
        cancelled_at.elapsed()
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watch stops on shutdown")
        .expect("the watch ran");
    assert_eq!(node.contract(contract_id).await.expect("read"), None);
    assert!(node.node_contracts(node_id).await.expect("read").is_empty());
    assert_eq!(tenant.contract(contract_id).await.expect("read"), None);
    // Cancelling again: the chain has no such contract any more.
    let e = tenant
        .cancel_contract(contract_id)
        .await
        .expect_err("cancelled already");
    assert!(
        matches!(&e, TenantError::Tfchain(TfchainError::Refused { error, .. }) if error == "ContractNotExists"),
        "{e:?}"
    );
    follow.abort();
}

/// A TCP proxy to the chain that the test cuts (every connection dropped,
/// new ones refused) and restores.
struct Proxy {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn to(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let target = upstream
            .strip_prefix("ws://")
            .expect("a ws:// URL")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (c, g, target) = (c.clone(), g.clone(), target.clone());
                tokio::spawn(async move {
                    let born = g.load(Ordering::SeqCst);
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let pipe = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut_off = async {
                        while !c.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = pipe => {}
                        () = cut_off => {}
                    }
                });
            }
        });
        Proxy {
            url,
            cut,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The chain cut off when the node's contract watch starts, then cut again
/// while the tenant cancels: the watch sees the contract once the chain is
/// back, and the cancel once it is back again, each within 30 s.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored"]
async fn the_contract_watch_rides_out_a_chain_down_at_start_and_a_cut_during_a_cancel() {
    let client = Tfchain::connect(&url(), SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect")
        .client()
        .clone();
    let (node_key, node_id) = registered_node(&client).await;
    let tenant_key = fresh_key();
    fund(&client, &tenant_key).await;
    let tenant = Tenant::connect(&url(), tenant_key)
        .await
        .expect("the tenant connects");
    tenant.ensure_twin().await.expect("the tenant's twin");

    let proxy = Proxy::to(&url()).await;
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
    let seen = tokio::time::timeout(Duration::from_secs(30), changes.recv())
        .await
        .expect("the contract seen within 30 s of the chain coming back")
        .expect("the watch runs");
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
    let gone = tokio::time::timeout(Duration::from_secs(30), changes.recv())
        .await
        .expect("the cancel seen within 30 s of the chain coming back")
        .expect("the watch runs");
    assert!(
        matches!(&gone, ContractChange::Gone(c) if c.contract_id == contract_id),
        "{gone:?}"
    );
    eprintln!(
        "cut during the cancel: seen {:?} after the chain came back",
        restored.elapsed()
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), watcher)
        .await
        .expect("the watch stops on shutdown")
        .expect("the watch ran");
}
