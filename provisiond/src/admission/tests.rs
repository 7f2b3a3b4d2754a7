//! Each check refuses what it must, in order, and a good deployment passes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::capacity::{GIB, Node, Pool, PoolKind};

const NODE: u32 = 11;
const CONTRACT: u64 = 5;

fn vector_a() -> (String, [u8; 32]) {
    let vectors: Value =
        serde_json::from_str(include_str!("../../tests/data/zos-vectors.json")).expect("vectors");
    let a = &vectors[0];
    let wire = a["wire_json"]
        .as_str()
        .expect("wire")
        .replace("\"contract_id\":0", &format!("\"contract_id\":{CONTRACT}"));
    let key: [u8; 32] = hex::decode(a["signers"][0]["public_key_hex"].as_str().expect("key"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    (wire, key)
}

/// The checks of node [`NODE`], which supports every type.
fn checks<'a>(
    keys: &'a BTreeMap<u32, [u8; 32]>,
    ledger: &'a Ledger,
) -> Checks<'a, BTreeMap<u32, [u8; 32]>> {
    Checks {
        node_id: NODE,
        supported: &WorkloadType::ALL,
        keys,
        ledger,
    }
}

fn ledger(ssd_gib: u64) -> Ledger {
    Ledger::new(Node {
        cores: 8,
        memory: 32 * GIB,
        pools: vec![Pool {
            label: "ssd".into(),
            kind: PoolKind::Ssd,
            size: ssd_gib * GIB,
            system: 0,
        }],
    })
}

/// Vector A, new, on node [`NODE`] with `ssd_gib` GiB of SSD.
fn create_a(ssd_gib: u64) -> Result<Admitted, AdmissionError> {
    let (wire, key) = vector_a();
    let keys: BTreeMap<u32, [u8; 32]> = [(42, key)].into();
    let ledger = ledger(ssd_gib);
    checks(&keys, &ledger).create(wire.as_bytes(), Some(&contract(&wire)))
}

fn contract(wire: &str) -> Contract {
    let hash = Deployment::parse(wire.as_bytes()).expect("parses").hash();
    Contract {
        contract_id: CONTRACT,
        node_id: NODE,
        twin_id: 42,
        state: ContractState::Created,
        deployment_hash: hash.chain_hash(),
    }
}

#[test]
fn a_good_deployment_passes_with_its_plan() {
    let admitted = create_a(100).expect("admitted");
    assert_eq!(admitted.hash.hex(), "4e37443920ba961c631febfcf4c15ec6");
    assert_eq!(admitted.steps.len(), 3);
    assert_eq!(
        admitted.allocation.resources().sru,
        10 * GIB + 500 * (1 << 20),
        "a 10 GiB disk and the 500 MiB root of a machine under one compute unit"
    );
}

type Edit = fn(&mut String, &mut Contract, &mut BTreeMap<u32, [u8; 32]>);

#[test]
fn each_rule_refuses_naming_itself() {
    let (wire, key) = vector_a();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "malformed",
            |w, _, _| w.truncate(40),
            "not in the zos wire format",
        ),
        (
            "no contract id",
            |w, _, _| *w = w.replace("\"contract_id\":5", "\"contract_id\":0"),
            "no contract_id",
        ),
        (
            "a second version as new",
            |w, _, _| *w = w.replacen("{\"version\":0", "{\"version\":1", 1),
            "version 0",
        ),
        (
            "a bad signature",
            |w, _, _| *w = w.replace("\"signature\":\"2c81", "\"signature\":\"2c82"),
            "does not verify",
        ),
        (
            "another key on the registry",
            |_, _, k| {
                k.insert(42, [9; 32]);
            },
            "twin 42",
        ),
        (
            "an unknown twin",
            |_, _, k| {
                k.clear();
            },
            "twin 42 is not known",
        ),
        (
            "no contract",
            |_, c, _| c.contract_id = 6,
            "contract 5 does not exist",
        ),
        (
            "a contract for another node",
            |_, c, _| c.node_id = 12,
            "is for node 12, not this node (11)",
        ),
        (
            "a contract of another twin",
            |_, c, _| c.twin_id = 43,
            "owned by twin 43",
        ),
        (
            "a cancelled contract",
            |_, c, _| c.state = ContractState::Deleted,
            "is Deleted, not Created",
        ),
        (
            "a contract with another hash",
            |_, c, _| c.deployment_hash[0] ^= 1,
            "another deployment hash",
        ),
    ];
    for (what, edit, message) in cases {
        let mut wire = wire.clone();
        let mut contract = contract(&vector_a().0);
        let mut keys: BTreeMap<u32, [u8; 32]> = [(42, key)].into();
        edit(&mut wire, &mut contract, &mut keys);
        let ledger = ledger(100);
        let checks = checks(&keys, &ledger);
        let error = checks
            .create(wire.as_bytes(), Some(&contract))
            .expect_err(what)
            .to_string();
        assert!(
            error.contains(message),
            "{what}: {error:?} does not say {message:?}"
        );
    }
}

#[test]
fn unsupported_types_and_capacity_are_refused() {
    let error = create_a(10)
        .expect_err("10.5 GiB asked, 10 GiB there")
        .to_string();
    assert_eq!(
        error,
        "the deployment asks 10.4 GiB of SRU, 10 GiB is free (largest single pool: 10 GiB)"
    );
    let (wire, key) = vector_a();
    let keys: BTreeMap<u32, [u8; 32]> = [(42, key)].into();
    let roomy = ledger(100);
    let checks = Checks {
        node_id: NODE,
        supported: &[
            WorkloadType::Network,
            WorkloadType::Zmount,
            WorkloadType::Volume,
        ],
        keys: &keys,
        ledger: &roomy,
    };
    let error = checks
        .create(wire.as_bytes(), Some(&contract(&wire)))
        .expect_err("no zmachine driver")
        .to_string();
    assert!(
        error.contains("workload type zmachine is not supported on this node yet"),
        "{error}"
    );
}

#[test]
fn an_update_is_checked_against_the_running_version() {
    let (wire, key) = vector_a();
    let current = Deployment::parse(wire.as_bytes()).expect("parses");
    let keys: BTreeMap<u32, [u8; 32]> = [(42, key)].into();
    let ledger = ledger(100);
    let checks = checks(&keys, &ledger);
    // The same deployment again is not version + 1.
    let error = checks
        .update(&current, wire.as_bytes(), Some(&contract(&wire)))
        .expect_err("same version")
        .to_string();
    assert_eq!(error, "the update must have version 1, it has 0");
}
