//! Helpers of the engine's tests: signed deployments, and a fake node.
//!
//! The fake node is a set of in-memory drivers that record every object
//! they hold and every call; a name can be told to fail with a message or
//! to hang. It tests the engine's logic only: the real drivers are tested
//! against the real daemons in the testbed.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use provisiond::api::{ContractFacts, Submission, TwinKeyFacts};
use provisiond::capacity::{GIB, Node, Pool, PoolKind};
use provisiond::deployment::Deployment;
use provisiond::deployment::workload::WorkloadType;
use provisiond::driver::{Driver, DriverError, DriverFuture, Drivers, Target, disk_name, netid};
use provisiond::engine::{Engine, EngineConfig};
use provisiond::store::Store;
use serde_json::{Value, json};

pub const NODE: u32 = 3;

pub fn key(twin: u32) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(twin % 250).expect("small") + 1; 32])
}

/// A base64 WireGuard key (any 32 bytes).
pub fn wg_key(seed: u8) -> String {
    base64::encode([seed; 32])
}

pub fn network(version: u32, name: &str, port: u16) -> Value {
    json!({"version": version, "name": name, "type": "network", "metadata": "", "description": "",
        "data": {"ip_range": "10.20.0.0/16", "subnet": "10.20.1.0/24",
                 "wireguard_private_key": wg_key(9), "wireguard_listen_port": port, "peers": []}})
}

pub fn zmount(version: u32, name: &str, size: u64) -> Value {
    json!({"version": version, "name": name, "type": "zmount", "metadata": "", "description": "",
        "data": {"size": size}})
}

pub fn volume(version: u32, name: &str, size: u64) -> Value {
    json!({"version": version, "name": name, "type": "volume", "metadata": "", "description": "",
        "data": {"size": size}})
}

/// A signed deployment's JSON text.
pub fn signed(twin: u32, contract: u64, version: u32, workloads: Vec<Value>) -> String {
    let mut d = json!({"version": version, "twin_id": twin, "contract_id": contract,
        "metadata": "", "description": "", "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": twin, "required": false, "weight": 1}],
            "weight_required": 1, "signatures": [], "signature_style": ""},
        "workloads": workloads});
    let hash = Deployment::parse(d.to_string().as_bytes())
        .expect("a valid deployment")
        .hash();
    let signature = key(twin).sign(&hash.0);
    d["signature_requirement"]["signatures"] = json!([{"twin_id": twin,
        "signature": hex::encode(signature.to_bytes()), "signature_type": "ed25519"}]);
    d.to_string()
}

/// The submission of `wire` with a matching contract on this node.
/// Version 0 of contract 1 of `twin` in the crash tests: a network, a
/// zmount and a volume.
pub fn first_version(twin: u32) -> String {
    signed(
        twin,
        1,
        0,
        vec![
            network(0, "net", 3000),
            zmount(0, "disk", GIB),
            volume(0, "data", GIB),
        ],
    )
}

/// Version 1: the zmount grown, the volume replaced by another.
pub fn second_version(twin: u32) -> String {
    signed(
        twin,
        1,
        1,
        vec![
            network(0, "net", 3000),
            zmount(1, "disk", 2 * GIB),
            volume(1, "more", GIB),
        ],
    )
}

/// The objects [`first_version`] makes for `twin`.
pub fn first_objects(twin: u32) -> BTreeSet<String> {
    [
        disk_name(1, "disk"),
        disk_name(1, "data"),
        netid(twin, "net"),
    ]
    .into()
}

/// The objects [`second_version`] leaves.
pub fn second_objects(twin: u32) -> BTreeSet<String> {
    [
        disk_name(1, "disk"),
        disk_name(1, "more"),
        netid(twin, "net"),
    ]
    .into()
}

/// Drivers for networks, zmounts and volumes, each made by `make`.
pub fn every_kind(make: impl Fn(WorkloadType) -> Arc<dyn Driver>) -> Drivers {
    Drivers::new(
        [
            WorkloadType::Network,
            WorkloadType::Zmount,
            WorkloadType::Volume,
        ]
        .into_iter()
        .map(make)
        .collect(),
    )
}

/// The object a fake driver of `kind` holds for a workload, named as the
/// real drivers name it.
pub fn object_name(kind: WorkloadType, twin: u32, contract: u64, name: &str) -> String {
    match kind {
        WorkloadType::Network => netid(twin, name),
        _ => disk_name(contract, name),
    }
}

pub fn submission(wire: &str) -> Submission {
    let d = Deployment::parse(wire.as_bytes()).expect("parses");
    Submission {
        deployment: wire.to_owned(),
        contract: Some(ContractFacts {
            contract_id: d.contract_id,
            node_id: NODE,
            twin_id: d.twin_id,
            state: "Created".into(),
            deployment_hash: d.hash().hex(),
        }),
        twins: vec![TwinKeyFacts {
            twin_id: d.twin_id,
            account_key: hex::encode(key(d.twin_id).verifying_key().to_bytes()),
        }],
    }
}

pub fn node(ssd_gib: u64) -> Node {
    Node {
        cores: 4,
        memory: 16 * GIB,
        pools: vec![Pool {
            label: "ssd1".into(),
            kind: PoolKind::Ssd,
            size: ssd_gib * GIB,
            system: 0,
        }],
    }
}

/// What the fake node holds and saw.
#[derive(Debug, Default)]
pub struct Objects {
    /// (type, name) → what it was made with.
    pub held: BTreeMap<(WorkloadType, String), Value>,
    /// Every object made from nothing, in order.
    pub made: Vec<(WorkloadType, String)>,
    /// Every call, in order: "ensure zmount c1-disk", "remove network p-…".
    pub calls: Vec<String>,
    /// Objects whose ensure fails with this message.
    pub fail: BTreeMap<String, String>,
    /// Objects whose ensure never answers.
    pub hang: BTreeSet<String>,
    /// Objects whose calls answer "unavailable" this many more times.
    pub unavailable: BTreeMap<String, u32>,
    /// Kinds whose objects cannot be listed (their runtime missing).
    pub unlistable: BTreeSet<WorkloadType>,
    /// Every listing of a kind's objects, in order.
    pub listed: Vec<WorkloadType>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeNode(pub Arc<Mutex<Objects>>);

impl FakeNode {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.0.lock().expect("not poisoned")
    }

    pub fn drivers(&self) -> Drivers {
        every_kind(|kind| {
            Arc::new(FakeDriver {
                kind,
                node: self.clone(),
            })
        })
    }

    /// The names the fake holds, of every type.
    pub fn names(&self) -> BTreeSet<String> {
        self.lock().held.keys().map(|(_, n)| n.clone()).collect()
    }
}

#[derive(Debug)]
struct FakeDriver {
    kind: WorkloadType,
    node: FakeNode,
}

impl Driver for FakeDriver {
    fn kind(&self) -> WorkloadType {
        self.kind
    }

    fn object(&self, twin: u32, contract: u64, name: &str) -> String {
        object_name(self.kind, twin, contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, Value> {
        Box::pin(async move {
            let name = self.object(target.twin, target.contract, target.workload.name.as_str());
            let data = serde_json::to_value(&target.workload.data).expect("serialises");
            let hang = {
                let mut o = self.node.lock();
                o.calls.push(format!("ensure {} {name}", self.kind));
                if let Some(n) = o.unavailable.get_mut(&name)
                    && *n > 0
                {
                    *n -= 1;
                    return Err(DriverError::Unavailable(format!("{name}: daemon down")));
                }
                if let Some(message) = o.fail.get(&name) {
                    return Err(DriverError::Refused(message.clone()));
                }
                o.hang.contains(&name)
            };
            if hang {
                std::future::pending::<()>().await;
            }
            let mut o = self.node.lock();
            if o.held.insert((self.kind, name.clone()), data).is_none() {
                o.made.push((self.kind, name.clone()));
            }
            Ok(json!({ "name": name, "pool": target.pool }))
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            let mut o = self.node.lock();
            o.calls.push(format!("remove {} {object}", self.kind));
            o.held.remove(&(self.kind, object.to_owned()));
            Ok(())
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut o = self.node.lock();
            o.listed.push(self.kind);
            if o.unlistable.contains(&self.kind) {
                return Err(DriverError::Unavailable(format!(
                    "{}: no runtime",
                    self.kind
                )));
            }
            Ok(o.held
                .keys()
                .filter(|(k, n)| {
                    *k == self.kind
                        && (provisiond::driver::is_netid(n) || provisiond::driver::is_disk_name(n))
                })
                .map(|(_, n)| n.clone())
                .collect())
        })
    }
}

pub async fn start(path: &std::path::Path, fake: &FakeNode, ssd_gib: u64) -> Engine {
    let store = Store::open(path).expect("store opens");
    Engine::start(
        EngineConfig {
            node_id: Some(NODE),
            node: node(ssd_gib),
            retry: Duration::from_millis(10),
        },
        store,
        fake.drivers(),
    )
    .await
    .expect("engine starts")
}

/// Waits until the deployment of `contract` is in a state other than
/// deploying, updating or deleting.
pub async fn settle(engine: &Engine, contract: u64) -> provisiond::api::DeploymentView {
    use provisiond::api::DeploymentState::*;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = engine.deployment(contract).expect("exists");
        if !matches!(view.state, Deploying | Updating | Deleting) && engine.is_settled() {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "contract {contract} did not settle: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
