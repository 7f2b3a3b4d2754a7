//! Node contracts on the embedded registry over HTTP, as a tenant and a
//! node use them, and the registry as an outside party the node cannot
//! trust to be there, be quick, or tell the truth: down at start, gone and
//! back, restarted empty, slow, refusing, and lying. Every fault ends in
//! an error the caller can act on, within the client's deadline, never a
//! crash or a hang.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::chain::backend::{Backend, BackendError};
use agent::registry::client::{EmbeddedClient, RegistryReader};
use agent::registry::embedded::{Embedded, routes};
use agent::registry::model::{
    ContractResources, ContractState, DeploymentHash, Interface, NodeRegistration, Resources,
};
use agent::registry::tenant::{Tenant, TenantError};
use axum::Json;
use axum::http::StatusCode;
use axum::routing::get;
use ed25519_dalek::SigningKey;
use grove_daemon::client::ClientError;
use serde_json::json;

const HASH: &str = "0123456789abcdef0123456789abcdef";
const HASH2: &str = "fedcba9876543210fedcba9876543210";

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

fn account(k: &SigningKey) -> String {
    agent::identity::keys::ss58(&k.verifying_key().to_bytes(), 42)
}

/// A server on `listener` until the handle is dropped or aborted.
struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve_router(listener: tokio::net::TcpListener, router: axum::Router) -> Served {
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Served { addr, task }
}

/// The embedded registry with state `path`, on `addr` (port 0: any).
async fn serve(path: &Path, addr: SocketAddr) -> Served {
    let registry = Embedded::open(path, &[account(&key(1))]).expect("open");
    let owner = registry
        .ensure_twin(&account(&key(1)), None)
        .expect("farmer twin");
    registry.create_farm("farm-one", owner.id).expect("farm");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    serve_router(listener, routes(Arc::new(registry))).await
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// A port nothing listens on, and the registry URL on it.
async fn free_port() -> (SocketAddr, String) {
    let free = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind")
        .local_addr()
        .expect("address");
    (free, format!("http://{free}"))
}

/// A node of `k` registered on the registry at `url`.
async fn node(url: &str, k: &SigningKey) -> (EmbeddedClient, u32) {
    let client = EmbeddedClient::new(url, k.clone()).expect("client");
    let twin = client.ensure_twin().await.expect("node twin");
    let registration = NodeRegistration {
        farm_id: 1,
        twin_id: twin.id,
        resources: Resources {
            hru: 0,
            sru: 4 << 30,
            cru: 2,
            mru: 4 << 30,
        },
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            ips: vec!["10.0.0.2/24".into()],
        }],
        serial_number: "S".into(),
        virtualized: true,
        secure_boot: false,
    };
    let n = client.register(&registration, None).await.expect("node");
    (client, n.id)
}

fn status(e: &TenantError) -> Option<u16> {
    match e {
        TenantError::Embedded(ClientError::Status { status, .. }) => Some(status.as_u16()),
        _ => None,
    }
}

#[tokio::test]
async fn a_tenant_makes_updates_and_cancels_a_contract_the_node_reads_and_reports_on() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("r.json"), any_port()).await;
    let url = served.url();
    let (node_client, node_id) = node(&url, &key(2)).await;
    let backend = Backend::Embedded(Box::new(node_client));

    let tenant_key = key(5);
    let tenant = Tenant::connect(&url, tenant_key.clone())
        .await
        .expect("tenant");
    assert_eq!(tenant.twin_id().await.unwrap(), None);
    let twin = tenant.create_twin().await.expect("twin");
    assert_eq!(tenant.ensure_twin().await.expect("again"), twin, "one twin");
    let hash = DeploymentHash::parse(HASH).expect("hash");
    let id = tenant
        .create_node_contract(node_id, hash.0, 0)
        .await
        .expect("contract");

    // The node reads the contract and its owner's key.
    let contract = backend.contract(id).await.unwrap().expect("there");
    assert_eq!(
        (contract.node_id, contract.twin_id, contract.state),
        (node_id, twin, ContractState::Created)
    );
    assert_eq!(contract.deployment_hash, hash);
    assert_eq!(&contract.to_admission().deployment_hash, HASH.as_bytes());
    assert_eq!(
        backend.node_contracts(node_id).await.expect("list"),
        vec![contract.clone()]
    );
    let owner = backend.twin_key(twin).await.unwrap().expect("there");
    assert_eq!(
        owner.key_bytes(),
        Some(tenant_key.verifying_key().to_bytes())
    );
    assert_eq!(backend.twin_key(999).await.unwrap(), None);
    assert_eq!(backend.contract(999).await.unwrap(), None);

    // Update, then the node's report arrives and is readable.
    let hash2 = DeploymentHash::parse(HASH2).expect("hash");
    tenant
        .update_node_contract(id, hash2.0)
        .await
        .expect("update");
    assert_eq!(
        tenant
            .contract(id)
            .await
            .unwrap()
            .expect("there")
            .deployment_hash,
        hash2
    );
    let used = Resources {
        hru: 0,
        sru: 1 << 30,
        cru: 1,
        mru: 1 << 29,
    };
    backend
        .report_contract_resources(
            node_id,
            &[ContractResources {
                contract_id: id,
                used,
            }],
        )
        .await
        .expect("report");
    let reader = RegistryReader::new(&url).expect("reader");
    let report = reader
        .contract_resources(id)
        .await
        .unwrap()
        .expect("the report arrived");
    assert_eq!((report.node_id, report.used), (node_id, used));

    // Refusals, each with the rule in words, and nothing changed.
    let stranger = Tenant::connect(&url, key(6)).await.expect("stranger");
    stranger.ensure_twin().await.expect("stranger's twin");
    let e = stranger.cancel_contract(id).await.expect_err("stranger");
    assert_eq!(status(&e), Some(403), "{e}");
    let e = stranger
        .update_node_contract(id, hash.0)
        .await
        .expect_err("stranger");
    assert_eq!(status(&e), Some(403), "{e}");
    let e = tenant
        .create_node_contract(node_id, [b'X'; 32], 0)
        .await
        .expect_err("not hex");
    assert_eq!(status(&e), Some(400), "{e}");
    assert!(e.to_string().contains("lowercase hex"), "{e}");
    let e = tenant
        .create_node_contract(77, hash.0, 0)
        .await
        .expect_err("no node");
    assert_eq!(status(&e), Some(404), "{e}");
    assert!(e.to_string().contains("no node with id 77"), "{e}");
    let e = tenant
        .create_node_contract(node_id, hash.0, 2)
        .await
        .expect_err("public IPs");
    assert_eq!(status(&e), Some(400), "{e}");
    // A node reporting for a contract that is not on it.
    let (other_client, other_node) = node(&url, &key(7)).await;
    let other = Backend::Embedded(Box::new(other_client));
    common::assert_report_refused(&other, other_node, id, "http_403").await;
    let after = backend.contract(id).await.unwrap().expect("there");
    assert_eq!(after.deployment_hash, hash2);
    assert_eq!(after.state, ContractState::Created);
    assert_eq!(
        reader.contract_resources(id).await.unwrap().map(|r| r.used),
        Some(used)
    );

    // Cancel: Deleted, off the node's list, never updated again.
    tenant.cancel_contract(id).await.expect("cancel");
    assert_eq!(
        backend.contract(id).await.unwrap().expect("kept").state,
        ContractState::Deleted
    );
    assert!(
        backend
            .node_contracts(node_id)
            .await
            .expect("list")
            .is_empty()
    );
    let e = tenant
        .update_node_contract(id, hash.0)
        .await
        .expect_err("cancelled");
    assert_eq!(status(&e), Some(409), "{e}");
    assert!(e.to_string().contains("is Deleted"), "{e}");
    served.stop().await;
}

#[tokio::test]
async fn down_at_start_gone_and_back_and_restarted_empty() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("r.json");
    let (free, url) = free_port().await;
    let backend = Backend::Embedded(Box::new(EmbeddedClient::new(&url, key(2)).expect("client")));
    let started = Instant::now();
    let e = backend.contract(1).await.expect_err("down at start");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    let e = backend.node_contracts(1).await.expect_err("down at start");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Up: a contract is made.
    let served = serve(&state, free).await;
    let (client, node_id) = node(&url, &key(2)).await;
    let backend = Backend::Embedded(Box::new(client));
    let tenant = Tenant::connect(&url, key(5)).await.expect("tenant");
    let id = tenant
        .create_node_contract(node_id, DeploymentHash::parse(HASH).expect("hash").0, 0)
        .await
        .expect("contract");
    let before = backend.contract(id).await.unwrap().expect("there");

    // Gone, then back with its state: the same contract.
    served.stop().await;
    let e = backend.contract(id).await.expect_err("gone");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    let served = serve(&state, free).await;
    assert_eq!(backend.contract(id).await.expect("back"), Some(before));
    assert_eq!(
        backend.node_contracts(node_id).await.expect("back").len(),
        1
    );
    served.stop().await;

    // Restarted empty: the contract is not there, the node is unknown.
    let served = serve(&dir.path().join("empty.json"), free).await;
    assert_eq!(backend.contract(id).await.unwrap(), None);
    let e = backend.node_contracts(node_id).await.expect_err("no node");
    assert!(
        matches!(&e, BackendError::Permanent { message, .. } if message.contains(&format!("no node with id {node_id}"))),
        "{e:?}"
    );
    served.stop().await;
}

#[tokio::test]
async fn a_slow_a_refusing_and_a_lying_registry_are_errors_or_left_out_never_believed() {
    // Slow: accepts, never answers. The client's deadline ends it.
    let slow = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let slow_addr = slow.local_addr().expect("address");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = slow.accept().await {
            held.push(socket);
        }
    });
    let backend = Backend::Embedded(Box::new(
        EmbeddedClient::new(&format!("http://{slow_addr}"), key(2)).expect("client"),
    ));
    let started = Instant::now();
    let e = backend.contract(1).await.expect_err("slow");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a slow registry held the read for {:?}",
        started.elapsed()
    );
    hold.abort();

    // Refusing: 503 to everything.
    let refusing = serve_router(
        tokio::net::TcpListener::bind(any_port())
            .await
            .expect("bind"),
        axum::Router::new().fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }),
    )
    .await;
    let backend = Backend::Embedded(Box::new(
        EmbeddedClient::new(&refusing.url(), key(2)).expect("client"),
    ));
    for e in [
        backend.contract(1).await.expect_err("refused"),
        backend.twin_key(1).await.expect_err("refused"),
    ] {
        assert!(
            matches!(&e, BackendError::Unreachable(m) if m.contains("503")),
            "{e:?}"
        );
    }
    let e = backend
        .report_contract_resources(1, &[])
        .await
        .expect_err("refused");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    refusing.stop().await;

    // Lying: another node's contract and a dead one among node 1's, a
    // twin whose served key is not its account's, a contract that is not
    // JSON, and a contract for another node answered for id 7.
    let liar_key = account(&key(8));
    let honest = agent::registry::model::TwinKey::new(5, key(5).verifying_key().to_bytes());
    let contract = |id: u64, node: u32, state: &str| {
        json!({"contract_id": id, "node_id": node, "twin_id": 5,
               "deployment_hash": HASH, "public_ips": 0, "state": state})
    };
    let (ours, theirs, dead) = (
        contract(1, 1, "Created"),
        contract(2, 2, "Created"),
        contract(3, 1, "Deleted"),
    );
    let list = json!([ours.clone(), theirs, dead]);
    let other_node = contract(7, 2, "Created");
    let twin = json!({"id": 5, "account": honest.account, "relay": null,
                      "account_key": agent::registry::model::TwinKey::new(5, key(8).verifying_key().to_bytes()).account_key});
    let wrong_id = json!({"id": 6, "account": liar_key, "relay": null,
                          "account_key": agent::registry::model::TwinKey::new(6, key(8).verifying_key().to_bytes()).account_key});
    let liar = serve_router(
        tokio::net::TcpListener::bind(any_port())
            .await
            .expect("bind"),
        axum::Router::new()
            .route(
                "/v1/nodes/1/contracts",
                get(move || async move { Json(list) }),
            )
            .route("/v1/twins/5", get(move || async move { Json(twin) }))
            .route("/v1/twins/9", get(move || async move { Json(wrong_id) }))
            .route(
                "/v1/twins/10",
                get(|| async {
                    Json(json!({"id": 10, "account": "farmer-1", "relay": null, "account_key": null}))
                }),
            )
            .route("/v1/contracts/6", get(|| async { "{not json" }))
            .route(
                "/v1/contracts/7",
                get(move || async move { Json(other_node) }),
            ),
    )
    .await;
    let backend = Backend::Embedded(Box::new(
        EmbeddedClient::new(&liar.url(), key(2)).expect("client"),
    ));
    let listed = backend.node_contracts(1).await.expect("a list");
    assert_eq!(
        listed.iter().map(|c| c.contract_id).collect::<Vec<_>>(),
        [1],
        "only node 1's active contract is believed"
    );
    let e = backend
        .twin_key(5)
        .await
        .expect_err("a key not the account's");
    assert!(e.to_string().contains("not the key of its account"), "{e}");
    let e = backend
        .twin_key(9)
        .await
        .expect_err("another twin answered");
    assert!(e.to_string().contains("answered twin 6"), "{e}");
    let e = backend.twin_key(10).await.expect_err("not an account");
    assert!(e.to_string().contains("is not an account"), "{e}");
    let e = backend.contract(6).await.expect_err("not JSON");
    assert!(matches!(e, BackendError::Unreachable(_)), "{e:?}");
    // A contract for another node reads as what it is: the node's own
    // check (provisiond's admission) sees it is not its node's.
    let read = backend.contract(7).await.unwrap().expect("there");
    assert_eq!(read.node_id, 2);
    liar.stop().await;
}

/// Waits for the next change from the watcher.
async fn next_change(
    rx: &mut tokio::sync::mpsc::Receiver<agent::chain::contracts::ContractChange>,
    within: Duration,
) -> agent::chain::contracts::ContractChange {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no contract change within {within:?}"))
        .expect("the watcher runs")
}

#[tokio::test]
async fn the_node_sees_its_contracts_made_updated_and_cancelled_within_seconds_even_after_an_outage()
 {
    use agent::chain::contracts::{ContractChange, watch};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("r.json");
    let (free, url) = free_port().await;
    // The registry is down when the watcher starts.
    let shutdown = grove_daemon::shutdown::Shutdown::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let node_key = key(2);
    let watcher_backend = Backend::Embedded(Box::new(
        EmbeddedClient::new(&url, node_key.clone()).expect("client"),
    ));
    let served = serve(&state, free).await;
    let (_, node_id) = node(&url, &node_key).await;
    served.stop().await;
    let watcher = tokio::spawn(watch(watcher_backend, node_id, tx, shutdown.clone()));

    let served = serve(&state, free).await;
    let tenant = Tenant::connect(&url, key(5)).await.expect("tenant");
    let hash = DeploymentHash::parse(HASH).expect("hash");
    let id = tenant
        .create_node_contract(node_id, hash.0, 0)
        .await
        .expect("contract");
    let made = Instant::now();
    match next_change(&mut rx, Duration::from_secs(20)).await {
        ContractChange::Active(c) => assert_eq!((c.contract_id, c.deployment_hash), (id, hash)),
        other => panic!("{other:?}"),
    }
    eprintln!("made, seen after {:?}", made.elapsed());
    let hash2 = DeploymentHash::parse(HASH2).expect("hash");
    tenant
        .update_node_contract(id, hash2.0)
        .await
        .expect("update");
    match next_change(&mut rx, Duration::from_secs(5)).await {
        ContractChange::Active(c) => assert_eq!(c.deployment_hash, hash2),
        other => panic!("{other:?}"),
    }

    // Gone and back: the watcher keeps going, and sees the cancel made
    // once the registry is back.
    served.stop().await;
    // An outage of 3 s: longer than a poll, so the watcher meets it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let served = serve(&state, free).await;
    tenant.cancel_contract(id).await.expect("cancel");
    let cancelled = Instant::now();
    match next_change(&mut rx, Duration::from_secs(20)).await {
        ContractChange::Gone(c) => assert_eq!(c.contract_id, id),
        other => panic!("{other:?}"),
    }
    eprintln!("cancel seen after {:?}", cancelled.elapsed());
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher stops on shutdown")
        .expect("the watcher ran");
    served.stop().await;
}
