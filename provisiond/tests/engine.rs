//! The engine's logic on a fake node: order, all or nothing, updates,
//! independence, restore and sweep, and what an answer never holds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use provisiond::api::DeploymentState;
use provisiond::capacity::GIB;
use provisiond::deployment::workload::WorkloadType;
use provisiond::driver::{disk_name, netid};
use provisiond::engine::{Engine, EngineError};

const TWIN: u32 = 7;

/// Asserts that the engine's `call` fails (`why` names the case) with an
/// error matching `pattern`.
macro_rules! assert_fails {
    ($call:expr, $why:literal, $pattern:pat) => {
        let error = $call.await.expect_err($why);
        assert!(matches!(error, $pattern), "{error}");
    };
}

fn three(contract: u64, port: u16) -> String {
    signed(
        TWIN,
        contract,
        0,
        vec![
            network(0, "net", port),
            zmount(0, "disk", GIB),
            volume(0, "data", GIB),
        ],
    )
}

/// Contract 1 at version 1: its network as [`three`] made it, and
/// `workloads`.
fn update_of_one(workloads: Vec<serde_json::Value>) -> String {
    let mut all = vec![network(0, "net", 3000)];
    all.extend(workloads);
    signed(TWIN, 1, 1, all)
}

/// An engine over `fake` on a new store, with `ssd_gib` of SSD.
async fn engine_on(fake: &FakeNode, ssd_gib: u64) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = start(&dir.path().join("s.redb"), fake, ssd_gib).await;
    (dir, engine)
}

/// Submits contract 1's three workloads.
async fn deploy_three(engine: &Engine) {
    engine
        .deploy(&submission(&three(1, 3000)))
        .await
        .expect("admitted");
}

#[tokio::test]
async fn a_deployment_is_made_in_order_and_removed_in_reverse() {
    let fake = FakeNode::default();
    let (_dir, engine) = engine_on(&fake, 100).await;
    let view = engine
        .deploy(&submission(&three(1, 3000)))
        .await
        .expect("admitted");
    assert_eq!(view.state, DeploymentState::Deploying);
    let view = settle(&engine, 1).await;
    assert_eq!(view.state, DeploymentState::Ok, "{view:?}");
    for name in ["net", "disk", "data"] {
        assert_eq!(view.workload_state(name), Some("ok"), "{name}");
    }
    let calls = fake.lock().calls.clone();
    let net = netid(TWIN, "net");
    assert_eq!(
        calls,
        vec![
            format!("ensure zmount {}", disk_name(1, "disk")),
            format!("ensure volume {}", disk_name(1, "data")),
            format!("ensure network {net}"),
        ],
        "disks and volumes first, then the network"
    );
    assert_eq!(engine.capacity().used.sru, 2 * GIB);
    engine.remove(1).await.expect("removal admitted");
    let view = settle(&engine, 1).await;
    assert_eq!(view.state, DeploymentState::Deleted);
    assert!(fake.names().is_empty(), "{:?}", fake.names());
    let calls = fake.lock().calls.clone();
    assert_eq!(
        calls[3],
        format!("remove network {net}"),
        "the network goes first"
    );
    assert_eq!(engine.capacity().used.sru, 0, "capacity released");
    assert!(engine.usage().is_empty());
}

#[tokio::test]
async fn a_failing_workload_rolls_back_its_version_with_the_daemons_words() {
    let fake = FakeNode::default();
    let net = netid(TWIN, "net");
    fake.lock().fail.insert(
        net.clone(),
        "listen_port 3000 is in use on this node".into(),
    );
    let (_dir, engine) = engine_on(&fake, 100).await;
    deploy_three(&engine).await;
    let view = settle(&engine, 1).await;
    assert_eq!(view.state, DeploymentState::Error);
    let failure = view.failure.clone().expect("a failure");
    assert_eq!(failure.workload, "net");
    assert_eq!(failure.message, "listen_port 3000 is in use on this node");
    assert_eq!(view.workload_state("net"), Some("error"));
    assert_eq!(
        view.result("net").expect("result")["message"],
        "listen_port 3000 is in use on this node"
    );
    assert_eq!(view.workload_state("disk"), Some("error"));
    assert!(fake.names().is_empty(), "rolled back: {:?}", fake.names());
    assert_eq!(engine.capacity().used.sru, 0, "nothing held");
}

#[tokio::test]
async fn a_failed_update_leaves_the_previous_version_unchanged() {
    let fake = FakeNode::default();
    let (_dir, engine) = engine_on(&fake, 100).await;
    deploy_three(&engine).await;
    assert_eq!(settle(&engine, 1).await.state, DeploymentState::Ok);
    let before = fake.lock().held.clone();
    fake.lock().fail.insert(
        disk_name(1, "more"),
        "pool ssd1 has 1 GiB free, asked 2 GiB".into(),
    );
    let update = update_of_one(vec![
        zmount(1, "disk", 2 * GIB),
        volume(0, "data", GIB),
        volume(1, "more", 2 * GIB),
    ]);
    let view = engine
        .update(1, &submission(&update))
        .await
        .expect("admitted");
    assert_eq!(view.state, DeploymentState::Updating);
    let view = settle(&engine, 1).await;
    assert_eq!(view.state, DeploymentState::Unchanged, "{view:?}");
    assert_eq!(view.version, 0, "the previous version shows");
    for name in ["net", "disk", "data"] {
        assert_eq!(view.workload_state(name), Some("unchanged"), "{name}");
        let message = view.result(name).expect("result")["message"]
            .as_str()
            .expect("text")
            .to_owned();
        assert!(
            message.contains("pool ssd1 has 1 GiB free, asked 2 GiB"),
            "{message}"
        );
    }
    assert_eq!(view.failure.expect("failure").workload, "more");
    let after = fake.lock().held.clone();
    assert!(!after.contains_key(&(WorkloadType::Volume, disk_name(1, "more"))));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same objects run"
    );
    assert_eq!(engine.capacity().used.sru, 2 * GIB, "the old holding again");
}

#[tokio::test]
async fn an_update_adds_changes_and_removes_by_name() {
    let fake = FakeNode::default();
    let (_dir, engine) = engine_on(&fake, 100).await;
    deploy_three(&engine).await;
    settle(&engine, 1).await;
    let update = update_of_one(vec![zmount(1, "disk", 3 * GIB), volume(1, "more", GIB)]);
    engine
        .update(1, &submission(&update))
        .await
        .expect("admitted");
    let view = settle(&engine, 1).await;
    assert_eq!(view.state, DeploymentState::Ok);
    assert_eq!(view.version, 1);
    let held = fake.lock().held.clone();
    assert_eq!(
        held[&(WorkloadType::Zmount, disk_name(1, "disk"))]["size"],
        3 * GIB
    );
    assert!(held.contains_key(&(WorkloadType::Volume, disk_name(1, "more"))));
    assert!(!held.contains_key(&(WorkloadType::Volume, disk_name(1, "data"))));
    assert_eq!(engine.capacity().used.sru, 4 * GIB);
    let changes = engine.changes(1).await.expect("history");
    assert!(
        changes
            .iter()
            .any(|c| c.workload == "data" && c.state == provisiond::store::WorkloadState::Deleted)
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_rule_and_changes_nothing() {
    let fake = FakeNode::default();
    let (_dir, engine) = engine_on(&fake, 10).await;
    let wire = three(1, 3000);
    let mut forged = submission(&wire);
    forged.twins[0].account_key = hex::encode(key(99).verifying_key().to_bytes());
    let mut other_node = submission(&wire);
    other_node.contract.as_mut().expect("contract").node_id = NODE + 1;
    let big = signed(TWIN, 2, 0, vec![zmount(0, "big", 11 * GIB)]);
    let cases: Vec<(&str, provisiond::api::Submission, &str)> = vec![
        ("bad signature", forged, "signature"),
        ("another node", other_node, "not this node"),
        (
            "too big",
            submission(&big),
            "asks 11 GiB of SRU, 10 GiB is free",
        ),
    ];
    for (what, s, want) in cases {
        let error = engine.deploy(&s).await.expect_err(what);
        assert!(error.to_string().contains(want), "{what}: {error}");
    }
    assert!(matches!(
        engine.deploy(&submission(&big)).await,
        Err(EngineError::Admission(
            provisiond::admission::AdmissionError::Capacity(_)
        ))
    ));
    assert!(engine.deployments(None).is_empty());
    assert!(fake.lock().calls.is_empty());
    // A second contract of the same twin may not take the same network.
    engine.deploy(&submission(&wire)).await.expect("admitted");
    let again = signed(TWIN, 3, 0, vec![network(0, "net", 3001)]);
    let error = engine.deploy(&submission(&again)).await.expect_err("taken");
    assert!(
        error.to_string().contains("already deployed by contract 1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hanging_deployment_does_not_delay_another() {
    let fake = FakeNode::default();
    fake.lock().hang.insert(netid(TWIN, "net"));
    let (_dir, engine) = engine_on(&fake, 100).await;
    deploy_three(&engine).await;
    let other = signed(
        8,
        2,
        0,
        vec![network(0, "net", 3001), zmount(0, "disk", GIB)],
    );
    let started = Instant::now();
    engine.deploy(&submission(&other)).await.expect("admitted");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = engine.deployment(2).expect("exists");
        if view.state == DeploymentState::Ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocked behind the hanging one: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        engine.deployment(1).expect("exists").state,
        DeploymentState::Deploying
    );
    // Cancelling the hanging one still removes it.
    fake.lock().hang.clear();
    engine.remove(1).await.expect("removal admitted");
    assert_eq!(settle(&engine, 1).await.state, DeploymentState::Deleted);
    assert_eq!(
        fake.names(),
        [disk_name(2, "disk"), netid(8, "net")]
            .into_iter()
            .collect()
    );
}

#[tokio::test]
async fn an_unavailable_daemon_is_waited_for_not_failed() {
    let fake = FakeNode::default();
    fake.lock().unavailable.insert(disk_name(1, "disk"), 3);
    let (_dir, engine) = engine_on(&fake, 100).await;
    deploy_three(&engine).await;
    assert_eq!(settle(&engine, 1).await.state, DeploymentState::Ok);
}

#[tokio::test]
async fn a_restart_restores_everything_makes_nothing_twice_and_sweeps_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let fake = FakeNode::default();
    let engine = start(&path, &fake, 1000).await;
    for c in 1..=100u64 {
        let wire = signed(
            u32::try_from(c).expect("small") + 100,
            c,
            0,
            vec![
                network(0, "net", 3000 + u16::try_from(c).expect("small")),
                zmount(0, "disk", GIB),
                volume(0, "data", GIB),
            ],
        );
        engine.deploy(&submission(&wire)).await.expect("admitted");
    }
    assert!(engine.settled(Duration::from_secs(30)).await);
    engine.shutdown().await;
    drop(engine);
    let made = fake.lock().made.len();
    assert_eq!(made, 300);
    // Orphans: one of a contract the store does not know, one of a
    // workload it does not want; and something that is not provisiond's.
    {
        let mut o = fake.lock();
        for name in [
            disk_name(500, "disk"),
            disk_name(1, "gone"),
            "tenant-x".to_owned(),
        ] {
            o.held
                .insert((WorkloadType::Zmount, name), serde_json::Value::Null);
        }
    }
    let started = Instant::now();
    let engine = start(&path, &fake, 1000).await;
    assert!(engine.settled(Duration::from_secs(30)).await);
    let took = started.elapsed();
    let size = std::fs::metadata(&path).expect("store").len();
    eprintln!("100 deployments restored in {took:?}; the store is {size} bytes");
    assert!(took < Duration::from_secs(2), "restore took {took:?}");
    assert_eq!(fake.lock().made.len(), made, "nothing made twice");
    let names = fake.names();
    assert!(!names.contains(&disk_name(500, "disk")));
    assert!(!names.contains(&disk_name(1, "gone")));
    assert!(names.contains("tenant-x"), "not provisiond's: left alone");
    assert_eq!(names.len(), 301);
    assert_eq!(engine.deployments(None).len(), 100);
    assert!(
        engine
            .deployments(None)
            .iter()
            .all(|d| d.state == DeploymentState::Ok)
    );
    assert_eq!(engine.capacity().used.sru, 200 * GIB);
}

#[tokio::test]
async fn a_kind_that_cannot_be_listed_neither_blocks_the_sweep_of_others_nor_spins() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeNode::default();
    {
        let mut o = fake.lock();
        o.unlistable.insert(WorkloadType::Network);
        o.held.insert(
            (WorkloadType::Zmount, disk_name(500, "orphan")),
            serde_json::Value::Null,
        );
    }
    let engine = start(&dir.path().join("s.redb"), &fake, 100).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.names().contains(&disk_name(500, "orphan")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !fake.names().contains(&disk_name(500, "orphan")),
        "the zmount orphan is swept while networks cannot be listed"
    );
    assert!(!engine.is_settled(), "not settled while a kind is unswept");
    // Two seconds of a runtime that stays missing: the tries back off
    // (from 100 ms, doubling) instead of one every 100 ms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tries = fake
        .lock()
        .listed
        .iter()
        .filter(|k| **k == WorkloadType::Network)
        .count();
    assert!(tries <= 12, "{tries} tries in 2 s");
    fake.lock().unlistable.clear();
    assert!(
        engine.settled(Duration::from_secs(12)).await,
        "settled once the kind can be listed"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn an_answer_never_holds_a_private_key() {
    let fake = FakeNode::default();
    let (_dir, engine) = engine_on(&fake, 100).await;
    let wire = three(1, 3000);
    let secret = wg_key(9);
    assert!(wire.contains(&secret));
    let view = engine.deploy(&submission(&wire)).await.expect("admitted");
    settle(&engine, 1).await;
    for text in [
        serde_json::to_string(&view).expect("json"),
        serde_json::to_string(&engine.deployment(1).expect("view")).expect("json"),
        serde_json::to_string(&engine.deployments(Some(TWIN))).expect("json"),
        serde_json::to_string(&engine.changes(1).await.expect("changes")).expect("json"),
        format!("{:?}", engine.deployment(1).expect("view")),
    ] {
        assert!(!text.contains(&secret), "{text}");
    }
    assert_eq!(
        engine.deployment(1).expect("view").deployment["workloads"][0]["data"]["wireguard_private_key"],
        ""
    );
}

#[tokio::test]
async fn the_engines_own_refusals_name_their_rule_and_change_nothing() {
    let fake = FakeNode::default();
    fake.lock().hang.insert(disk_name(1, "disk"));
    let (_dir, engine) = engine_on(&fake, 100).await;
    let wire = three(1, 3000);
    let mut bad_key = submission(&wire);
    bad_key.twins[0].account_key = "zz".into();
    let mut short_key = submission(&wire);
    short_key.twins[0].account_key = "00".repeat(31);
    let mut bad_state = submission(&wire);
    bad_state.contract.as_mut().expect("contract").state = "Active".into();
    let mut short_hash = submission(&wire);
    short_hash
        .contract
        .as_mut()
        .expect("contract")
        .deployment_hash = "abc".into();
    for (what, s, want) in [
        (
            "a key that is not hex",
            bad_key,
            "twins[0].account_key: is not hex",
        ),
        ("a key of 31 bytes", short_key, "must be 32 bytes, has 31"),
        (
            "an unknown contract state",
            bad_state,
            "\"Active\" is not Created",
        ),
        ("a short hash", short_hash, "must be 32 characters, has 3"),
    ] {
        let error = engine.deploy(&s).await.expect_err(what);
        assert!(error.to_string().contains(want), "{what}: {error}");
    }
    assert!(engine.deployments(None).is_empty());

    engine.deploy(&submission(&wire)).await.expect("admitted");
    let update = update_of_one(Vec::new());
    assert_fails!(
        engine.update(1, &submission(&update)),
        "busy",
        EngineError::Busy { contract: 1, .. }
    );
    assert_fails!(
        engine.update(2, &submission(&update)),
        "none",
        EngineError::NotFound { contract: 2 }
    );
    fake.lock().hang.clear();
    engine.remove(1).await.expect("removal admitted");
    assert_eq!(settle(&engine, 1).await.state, DeploymentState::Deleted);
    assert_fails!(
        engine.deploy(&submission(&wire)),
        "removed",
        EngineError::Removed { contract: 1 }
    );
    assert_fails!(
        engine.update(1, &submission(&update)),
        "removed",
        EngineError::Removed { contract: 1 }
    );
    assert_fails!(
        engine.remove(9),
        "none",
        EngineError::NotFound { contract: 9 }
    );
    assert!(fake.names().is_empty());

    // Without a node id, nothing is admitted.
    let other = tempfile::tempdir().unwrap();
    let store = provisiond::store::Store::open(&other.path().join("s.redb")).expect("opens");
    let blind = provisiond::engine::Engine::start(
        provisiond::engine::EngineConfig {
            node_id: None,
            node: node(100),
            retry: Duration::from_millis(10),
        },
        store,
        fake.drivers(),
    )
    .await
    .expect("starts");
    assert_fails!(
        blind.deploy(&submission(&three(5, 3005))),
        "no id",
        EngineError::NoNodeId
    );
    blind.set_node_id(NODE);
    blind
        .deploy(&submission(&three(5, 3005)))
        .await
        .expect("admitted once known");
}
