//! The store's records, atomicity and reopening.

use super::*;

fn record(contract: u64, version: u32) -> DeploymentRecord {
    DeploymentRecord {
        contract_id: contract,
        twin_id: 7,
        version,
        hash: format!("{contract:032x}"),
        wire: format!("{{\"contract_id\":{contract},\"version\":{version}}}"),
    }
}

fn result(state: WorkloadState, message: &str) -> WorkloadResult {
    WorkloadResult {
        created: 1_700_000_000,
        state,
        message: message.to_owned(),
        data: serde_json::json!({"id": message}),
    }
}

/// A new store in a scratch directory.
fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("provision.redb")).expect("open");
    (dir, store)
}

fn put(store: &Store, contract: u64, names: &[&str]) {
    let mut batch = store.batch().expect("batch");
    batch.put_deployment(&record(contract, 0)).expect("put");
    for name in names {
        batch
            .set_result(contract, 0, name, &result(WorkloadState::Ok, name))
            .expect("result");
    }
    batch.commit().expect("commit");
}

#[test]
fn what_is_committed_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    {
        let store = Store::open(&path).expect("open");
        put(&store, 1, &["net", "disk"]);
        let mut batch = store.batch().expect("batch");
        batch.put_deployment(&record(1, 1)).expect("update");
        batch
            .set_result(1, 1, "disk", &result(WorkloadState::Error, "no room"))
            .expect("result");
        batch.commit().expect("commit");
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.deployments().expect("list"), vec![record(1, 1)]);
    assert_eq!(store.deployment(1).expect("get"), Some(record(1, 1)));
    assert_eq!(store.deployment(2).expect("get"), None);
    let results = store.results(1).expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results["disk"], result(WorkloadState::Error, "no room"));
    assert_eq!(results["net"], result(WorkloadState::Ok, "net"));
    let history = store.history(1).expect("history");
    let steps: Vec<(u32, &str, WorkloadState)> = history
        .iter()
        .map(|c| (c.version, c.workload.as_str(), c.state))
        .collect();
    assert_eq!(
        steps,
        vec![
            (0, "net", WorkloadState::Ok),
            (0, "disk", WorkloadState::Ok),
            (1, "disk", WorkloadState::Error),
        ]
    );
}

#[test]
fn an_uncommitted_batch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    {
        let store = Store::open(&path).expect("open");
        put(&store, 1, &["net"]);
        let mut batch = store.batch().expect("batch");
        batch.put_deployment(&record(2, 0)).expect("put");
        batch
            .set_result(2, 0, "disk", &result(WorkloadState::Ok, "disk"))
            .expect("result");
        batch.remove_deployment(1).expect("remove");
        drop(batch);
        assert_eq!(store.deployments().expect("list"), vec![record(1, 0)]);
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.deployments().expect("list"), vec![record(1, 0)]);
    assert!(store.results(2).expect("results").is_empty());
    assert!(store.history(2).expect("history").is_empty());
    assert_eq!(store.results(1).expect("results").len(), 1);
}

#[test]
fn removing_a_deployment_takes_only_its_own_rows() {
    let (_dir, store) = new_store();
    // 1 and 10 sort next to each other; 2 after both as numbers.
    put(&store, 1, &["a", "b"]);
    put(&store, 10, &["a"]);
    put(&store, 2, &["z"]);
    let mut batch = store.batch().expect("batch");
    batch.remove_deployment(1).expect("remove");
    batch.commit().expect("commit");
    let left: Vec<u64> = store
        .deployments()
        .expect("list")
        .iter()
        .map(|r| r.contract_id)
        .collect();
    assert_eq!(left, vec![2, 10]);
    assert!(store.results(1).expect("results").is_empty());
    assert!(store.history(1).expect("history").is_empty());
    assert_eq!(store.results(10).expect("results").len(), 1);
    assert_eq!(store.history(10).expect("history").len(), 1);
    assert_eq!(store.results(2).expect("results").len(), 1);
}

#[test]
fn removing_a_result_keeps_its_history() {
    let (_dir, store) = new_store();
    put(&store, 3, &["a", "b"]);
    let mut batch = store.batch().expect("batch");
    batch.remove_result(3, "a").expect("remove");
    batch
        .append_history(
            3,
            &Change {
                at: 1_700_000_001,
                version: 1,
                workload: "a".to_owned(),
                state: WorkloadState::Deleted,
                message: String::new(),
            },
        )
        .expect("history");
    batch.commit().expect("commit");
    let results = store.results(3).expect("results");
    assert_eq!(results.keys().collect::<Vec<_>>(), vec!["b"]);
    let history = store.history(3).expect("history");
    assert_eq!(history.len(), 3);
    assert_eq!(history[2].state, WorkloadState::Deleted);
}

#[test]
fn a_stored_deployment_restores_only_with_its_hash() {
    let wire = include_str!("../../tests/data/zos-vectors.json");
    let vectors: serde_json::Value = serde_json::from_str(wire).expect("vectors");
    let text = vectors[0]["wire_json"].as_str().expect("wire").to_owned();
    let deployment = Deployment::parse(text.as_bytes()).expect("parses");
    let record = DeploymentRecord::new(&deployment, text.as_bytes());
    assert_eq!(record.hash, vectors[0]["md5_hex"].as_str().expect("md5"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    {
        let store = Store::open(&path).expect("open");
        let mut batch = store.batch().expect("batch");
        batch.put_deployment(&record).expect("put");
        batch.commit().expect("commit");
    }
    let store = Store::open(&path).expect("reopen");
    let loaded = store.deployments().expect("list");
    assert_eq!(loaded[0].restore().expect("restores"), deployment);

    let tampered = DeploymentRecord {
        wire: text.replace("\"size\":10737418240", "\"size\":10737418241"),
        ..record.clone()
    };
    assert!(matches!(tampered.restore(), Err(RestoreError::Hash { .. })));
    let broken = DeploymentRecord {
        wire: "{".to_owned(),
        ..record
    };
    assert!(matches!(broken.restore(), Err(RestoreError::Parse { .. })));
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    let _store = Store::open(&path).expect("open");
    let error = Store::open(&path).expect_err("the file is held");
    assert!(error.to_string().contains("provision.redb"), "{error}");
}

#[test]
fn a_store_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    std::fs::write(&path, b"not a database, but someone's file").unwrap();
    assert!(Store::open(&path).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"not a database, but someone's file",
        "a file that is not a store is not rewritten"
    );
}
