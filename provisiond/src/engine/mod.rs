//! The engine: admits deployments synchronously, then makes, updates and
//! removes them asynchronously, one ordered task per deployment.
//!
//! Admission runs every check of [`crate::admission`] under one lock,
//! reserves the capacity in the ledger and records the deployment and its
//! job in the store before answering, so an answered deployment survives a
//! crash. Each deployment's task then applies its job step by step through
//! the [`Driver`]s, recording each step's intent before the driver call and
//! its result after, and a failed step turns the job into a rollback to the
//! version that ran before (or to nothing). At start the engine restores
//! every deployment from the store, drives each to its recorded target, and
//! removes objects with provisiond's naming that no deployment wants.
//! Limits: the node's capacity is read once at start; an object a refused
//! removal left behind stays until the next start sweeps it.

pub mod record;
mod view;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::admission::{AdmissionError, Checks, Contract, ContractState};
use crate::api::{
    CapacityView, ChangeView, ContractUsage, DeploymentState, DeploymentView, Submission,
};
use crate::capacity::{Ledger, Node};
use crate::deployment::Deployment;
use crate::deployment::workload::{WorkloadData, WorkloadType};
use crate::driver::{Driver, Drivers};
use crate::store::{
    DeploymentRecord, RestoreError, Store, StoreError, WorkloadResult, WorkloadState,
};

pub use record::{EngineRecord, Job};

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("{field}: {problem}")]
    Submission { field: String, problem: String },
    #[error("the node's id is not known yet")]
    NoNodeId,
    #[error(
        "contract {contract} already has a deployment: update it with PUT /v1/deployments/{contract}"
    )]
    Exists { contract: u64 },
    #[error("no deployment of contract {contract}")]
    NotFound { contract: u64 },
    #[error("workload '{name}' of contract {contract} has no output")]
    NoLogs { contract: u64, name: String },
    #[error("the deployment of contract {contract} was removed")]
    Removed { contract: u64 },
    #[error("the deployment of contract {contract} is busy ({state:?}); try again when it settles")]
    Busy {
        contract: u64,
        state: DeploymentState,
    },
    #[error("network '{name}' of twin {twin} is already deployed by contract {other}")]
    NetworkTaken { name: String, twin: u32, other: u64 },
    #[error("the deployment's contract_id is {found}, the request is for {asked}")]
    OtherContract { asked: u64, found: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a blocking store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl EngineError {
    fn submission(field: impl Into<String>, problem: impl Into<String>) -> Self {
        EngineError::Submission {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The node's id on the registry, when already known.
    pub node_id: Option<u32>,
    /// The node's cores, memory and pools.
    pub node: Node,
    /// The first wait before a driver call that found its daemon
    /// unavailable is tried again; it doubles up to 10 s.
    pub retry: Duration,
}

/// One deployment in memory.
#[derive(Debug)]
struct Entry {
    /// The version the node stands on (the store's deployment record).
    record: DeploymentRecord,
    deployment: Deployment,
    engine: EngineRecord,
    /// The parsed target of the job, when it has one.
    target: Option<Deployment>,
    results: BTreeMap<String, WorkloadResult>,
    /// Raised each time the job changes, so the task drops what it was doing.
    generation: u64,
    wake: Arc<Notify>,
    /// The task has work it has not finished (a job, or the check after a
    /// restore).
    busy: bool,
}

impl Entry {
    /// Every deployment version this entry may have objects of.
    fn versions(&self) -> Vec<&Deployment> {
        let mut out = Vec::new();
        if self.engine.state != DeploymentState::Deleted {
            out.push(&self.deployment);
            if let Some(target) = &self.target {
                out.push(target);
            }
        }
        out
    }
}

#[derive(Debug)]
struct State {
    ledger: Ledger,
    entries: BTreeMap<u64, Entry>,
    /// Contracts whose stored deployment could not be read back: their
    /// objects are never swept.
    unreadable: BTreeSet<u64>,
    swept: bool,
}

impl State {
    /// The entry of `contract`, which must be there.
    fn entry(&self, contract: u64) -> Result<&Entry, EngineError> {
        self.entries
            .get(&contract)
            .ok_or(EngineError::NotFound { contract })
    }
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    drivers: Drivers,
    node_id: AtomicU32,
    retry: Duration,
    /// Serialises admissions and job changes.
    admit: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    tasks: Mutex<JoinSet<()>>,
}

/// The engine's handle.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn result(state: WorkloadState, message: impl Into<String>) -> WorkloadResult {
    WorkloadResult {
        created: now(),
        state,
        message: message.into(),
        data: serde_json::Value::Null,
    }
}

/// The deployment `record` holds, and the version `job` is about.
fn restore(
    record: &DeploymentRecord,
    job: Option<&Job>,
) -> Result<(Deployment, Option<Deployment>), RestoreError> {
    let target = match job {
        Some(Job::Apply { target, .. }) => Some(target),
        Some(Job::RollBack { failed, .. }) => Some(failed),
        Some(Job::Remove { also: Some(also) }) => Some(also),
        _ => None,
    };
    Ok((
        record.restore()?,
        target.map(DeploymentRecord::restore).transpose()?,
    ))
}

/// A `queued` result for each workload of `deployment` that has no result
/// in `known` yet.
fn queued(
    deployment: &Deployment,
    known: Option<&BTreeMap<String, WorkloadResult>>,
) -> BTreeMap<String, WorkloadResult> {
    deployment
        .workloads
        .iter()
        .filter(|w| known.is_none_or(|r| !r.contains_key(w.name.as_str())))
        .map(|w| (w.name.to_string(), result(WorkloadState::Init, "queued")))
        .collect()
}

/// The twins' account keys, by twin.
type Keys = BTreeMap<u32, [u8; 32]>;

/// The registry's facts as admission reads them.
fn facts(submission: &Submission) -> Result<(Option<Contract>, Keys), EngineError> {
    let contract = match &submission.contract {
        None => None,
        Some(c) => {
            let state = match c.state.as_str() {
                "Created" => ContractState::Created,
                "GracePeriod" => ContractState::GracePeriod,
                "Deleted" => ContractState::Deleted,
                other => {
                    return Err(EngineError::submission(
                        "contract.state",
                        format!("{other:?} is not Created, GracePeriod or Deleted"),
                    ));
                }
            };
            let Ok(deployment_hash) = <[u8; 32]>::try_from(c.deployment_hash.as_bytes()) else {
                return Err(EngineError::submission(
                    "contract.deployment_hash",
                    format!("must be 32 characters, has {}", c.deployment_hash.len()),
                ));
            };
            Some(Contract {
                contract_id: c.contract_id,
                node_id: c.node_id,
                twin_id: c.twin_id,
                state,
                deployment_hash,
            })
        }
    };
    let mut keys = BTreeMap::new();
    for (i, twin) in submission.twins.iter().enumerate() {
        let field = format!("twins[{i}].account_key");
        let bytes = hex::decode(&twin.account_key)
            .map_err(|e| EngineError::submission(&field, format!("is not hex: {e}")))?;
        let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            return Err(EngineError::submission(
                &field,
                format!("must be 32 bytes, has {}", bytes.len()),
            ));
        };
        keys.insert(twin.twin_id, key);
    }
    Ok((contract, keys))
}

impl Engine {
    /// Restores every deployment from `store`, then starts their tasks and
    /// the sweep of objects no deployment wants. New work is accepted as
    /// soon as this returns.
    pub async fn start(
        config: EngineConfig,
        store: Store,
        drivers: Drivers,
    ) -> Result<Self, EngineError> {
        let store = Arc::new(store);
        let loaded = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || load(&store)).await??
        };
        let mut state = State {
            ledger: Ledger::new(config.node),
            entries: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            swept: false,
        };
        for (contract, loaded) in loaded {
            let Loaded {
                record,
                engine,
                results,
            } = loaded;
            let Some(engine) = engine else {
                tracing::error!(
                    contract,
                    "a stored deployment has no engine record; it is left alone"
                );
                state.unreadable.insert(contract);
                continue;
            };
            let (deployment, target) = match restore(&record, engine.job.as_ref()) {
                Ok(restored) => restored,
                Err(error) => {
                    tracing::error!(contract, %error, "a stored deployment or its job cannot be restored; it is left alone");
                    state.unreadable.insert(contract);
                    continue;
                }
            };
            match (&engine.job, engine.state) {
                (Some(Job::Apply { allocation, .. }), _) => {
                    state.ledger.hold(contract, allocation.clone());
                }
                (_, DeploymentState::Deleted | DeploymentState::Error) => {}
                _ => state.ledger.hold(contract, engine.allocation.clone()),
            }
            let busy = engine.job.is_some()
                || matches!(
                    engine.state,
                    DeploymentState::Ok | DeploymentState::Unchanged
                );
            state.entries.insert(
                contract,
                Entry {
                    record,
                    deployment,
                    engine,
                    target,
                    results,
                    generation: 0,
                    wake: Arc::new(Notify::new()),
                    busy,
                },
            );
        }
        let engine = Engine {
            shared: Arc::new(Shared {
                store,
                drivers,
                node_id: AtomicU32::new(config.node_id.unwrap_or(0)),
                retry: config.retry,
                admit: tokio::sync::Mutex::new(()),
                state: Mutex::new(state),
                tasks: Mutex::new(JoinSet::new()),
            }),
        };
        let live: Vec<u64> = engine
            .state()
            .entries
            .iter()
            .filter(|(_, e)| e.engine.state != DeploymentState::Deleted)
            .map(|(c, _)| *c)
            .collect();
        tracing::info!(
            deployments = live.len(),
            "deployments restored from the store"
        );
        for contract in live {
            engine.spawn_task(contract);
        }
        let sweeper = engine.clone();
        engine.tasks().spawn(async move { sweeper.sweep().await });
        Ok(engine)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state is still whole
        // (every change to it is a single assignment), so keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tasks(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.shared
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn_task(&self, contract: u64) {
        let engine = self.clone();
        let span = tracing::info_span!("deployment", contract);
        self.tasks().spawn(tracing::Instrument::instrument(
            async move { worker::run(engine, contract).await },
            span,
        ));
    }

    /// Stops every task. Every step is in the store, so the next start
    /// takes up where this one stopped.
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks());
        tasks.shutdown().await;
        // A store write already on a blocking thread runs to its end.
        while Arc::strong_count(&self.shared.store) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sets the node's id (the agent knows it once the node is registered).
    pub fn set_node_id(&self, node_id: u32) {
        self.shared.node_id.store(node_id, Ordering::SeqCst);
    }

    pub fn node_id(&self) -> Option<u32> {
        match self.shared.node_id.load(Ordering::SeqCst) {
            0 => None,
            id => Some(id),
        }
    }

    /// Whether every deployment has reached its recorded target and the
    /// sweep is done.
    pub fn is_settled(&self) -> bool {
        let state = self.state();
        state.swept && state.entries.values().all(|e| !e.busy)
    }

    /// Waits until [`Self::is_settled`], or `deadline` passes.
    pub async fn settled(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if self.is_settled() {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Checks and accepts a new deployment; its workloads are made after
    /// this returns.
    pub async fn deploy(&self, submission: &Submission) -> Result<DeploymentView, EngineError> {
        let (contract, keys) = facts(submission)?;
        let wire = submission.deployment.as_bytes();
        let _admit = self.shared.admit.lock().await;
        let node_id = self.node_id().ok_or(EngineError::NoNodeId)?;
        let supported = self.shared.drivers.kinds();
        let admitted = {
            let state = self.state();
            let checks = Checks {
                node_id,
                supported: &supported,
                keys: &keys,
                ledger: &state.ledger,
            };
            let admitted = checks.create(wire, contract.as_ref())?;
            let id = admitted.deployment.contract_id;
            match state.entries.get(&id) {
                Some(e) if e.engine.state == DeploymentState::Deleted => {
                    return Err(EngineError::Removed { contract: id });
                }
                Some(_) => return Err(EngineError::Exists { contract: id }),
                None if state.unreadable.contains(&id) => {
                    return Err(EngineError::Exists { contract: id });
                }
                None => {}
            }
            check_networks(&state, &admitted.deployment)?;
            admitted
        };
        let deployment = admitted.deployment;
        let id = deployment.contract_id;
        let record = DeploymentRecord::new(&deployment, wire);
        let engine = EngineRecord {
            state: DeploymentState::Deploying,
            allocation: Default::default(),
            failure: None,
            job: Some(Job::Apply {
                target: record.clone(),
                allocation: admitted.allocation.clone(),
                previous_running: false,
            }),
        };
        let queued = queued(&deployment, None);
        self.store_admitted(id, Some(&record), &engine, deployment.version, &queued)
            .await?;
        {
            let mut state = self.state();
            state.ledger.hold(id, admitted.allocation);
            state.entries.insert(
                id,
                Entry {
                    record,
                    target: Some(deployment.clone()),
                    deployment,
                    engine,
                    results: queued,
                    generation: 0,
                    wake: Arc::new(Notify::new()),
                    busy: true,
                },
            );
        }
        tracing::info!(contract = id, "deployment admitted");
        self.spawn_task(id);
        self.deployment(id)
    }

    /// Checks and accepts an update of contract `contract_id`'s deployment.
    pub async fn update(
        &self,
        contract_id: u64,
        submission: &Submission,
    ) -> Result<DeploymentView, EngineError> {
        let (contract, keys) = facts(submission)?;
        let wire = submission.deployment.as_bytes();
        let _admit = self.shared.admit.lock().await;
        let node_id = self.node_id().ok_or(EngineError::NoNodeId)?;
        let supported = self.shared.drivers.kinds();
        let (admitted, previous_running, wake) = {
            let state = self.state();
            let entry = state.entry(contract_id)?;
            match entry.engine.state {
                DeploymentState::Deleted | DeploymentState::Deleting => {
                    return Err(EngineError::Removed {
                        contract: contract_id,
                    });
                }
                s if entry.engine.job.is_some() => {
                    return Err(EngineError::Busy {
                        contract: contract_id,
                        state: s,
                    });
                }
                _ => {}
            }
            let checks = Checks {
                node_id,
                supported: &supported,
                keys: &keys,
                ledger: &state.ledger,
            };
            let admitted = checks.update(&entry.deployment, wire, contract.as_ref())?;
            if admitted.deployment.contract_id != contract_id {
                return Err(EngineError::OtherContract {
                    asked: contract_id,
                    found: admitted.deployment.contract_id,
                });
            }
            check_networks(&state, &admitted.deployment)?;
            let running = matches!(
                entry.engine.state,
                DeploymentState::Ok | DeploymentState::Unchanged
            );
            (admitted, running, entry.wake.clone())
        };
        let deployment = admitted.deployment;
        let target = DeploymentRecord::new(&deployment, wire);
        let mut engine = self.engine_record(contract_id)?;
        engine.state = if previous_running {
            DeploymentState::Updating
        } else {
            DeploymentState::Deploying
        };
        engine.job = Some(Job::Apply {
            target,
            allocation: admitted.allocation.clone(),
            previous_running,
        });
        let queued = {
            let state = self.state();
            queued(
                &deployment,
                state.entries.get(&contract_id).map(|e| &e.results),
            )
        };
        self.store_admitted(contract_id, None, &engine, deployment.version, &queued)
            .await?;
        {
            let mut state = self.state();
            state.ledger.hold(contract_id, admitted.allocation);
            if let Some(entry) = state.entries.get_mut(&contract_id) {
                entry.engine = engine;
                entry.target = Some(deployment);
                entry.results.extend(queued);
                entry.generation += 1;
                entry.busy = true;
            }
        }
        tracing::info!(contract = contract_id, "update admitted");
        wake.notify_one();
        self.deployment(contract_id)
    }

    /// Removes the deployment of a cancelled contract: every workload, and
    /// the capacity it held.
    pub async fn remove(&self, contract_id: u64) -> Result<DeploymentView, EngineError> {
        let _admit = self.shared.admit.lock().await;
        let (mut engine, also, wake) = {
            let state = self.state();
            let entry = state.entry(contract_id)?;
            if matches!(
                entry.engine.state,
                DeploymentState::Deleted | DeploymentState::Deleting
            ) {
                drop(state);
                return self.deployment(contract_id);
            }
            let also = match &entry.engine.job {
                Some(Job::Apply { target, .. }) => Some(target.clone()),
                Some(Job::RollBack { failed, .. }) => Some(failed.clone()),
                Some(Job::Remove { also }) => also.clone(),
                None => None,
            };
            (entry.engine.clone(), also, entry.wake.clone())
        };
        engine.state = DeploymentState::Deleting;
        engine.job = Some(Job::Remove { also });
        {
            let engine = engine.clone();
            self.write(move |store| {
                let mut batch = store.batch()?;
                batch.put_engine(contract_id, &engine)?;
                batch.commit()
            })
            .await?;
        }
        {
            let mut state = self.state();
            if let Some(entry) = state.entries.get_mut(&contract_id) {
                entry.engine = engine;
                entry.generation += 1;
                entry.busy = true;
            }
        }
        tracing::info!(contract = contract_id, "removal admitted");
        wake.notify_one();
        self.deployment(contract_id)
    }

    fn engine_record(&self, contract: u64) -> Result<EngineRecord, EngineError> {
        Ok(self.state().entry(contract)?.engine.clone())
    }

    /// Stores an admitted version of contract `id` in one batch: its
    /// record when it is new, the engine's record, and the results of its
    /// queued workloads.
    async fn store_admitted(
        &self,
        id: u64,
        record: Option<&DeploymentRecord>,
        engine: &EngineRecord,
        version: u32,
        queued: &BTreeMap<String, WorkloadResult>,
    ) -> Result<(), EngineError> {
        let (record, engine, queued) = (record.cloned(), engine.clone(), queued.clone());
        self.write(move |store| {
            let mut batch = store.batch()?;
            if let Some(record) = &record {
                batch.put_deployment(record)?;
            }
            batch.put_engine(id, &engine)?;
            for (name, r) in &queued {
                batch.set_result(id, version, name, r)?;
            }
            batch.commit()
        })
        .await
    }

    /// Runs a store write on a blocking thread.
    async fn write(
        &self,
        f: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), EngineError> {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await??;
        Ok(())
    }

    /// The deployment of `contract`.
    pub fn deployment(&self, contract: u64) -> Result<DeploymentView, EngineError> {
        let state = self.state();
        let entry = state.entry(contract)?;
        Ok(view::deployment(entry, &self.live(entry)))
    }

    /// What the drivers say of `entry`'s running objects.
    fn live(&self, entry: &Entry) -> impl Fn(WorkloadType, &str) -> Option<serde_json::Value> {
        let drivers = self.shared.drivers.clone();
        let (twin, contract) = (entry.record.twin_id, entry.record.contract_id);
        move |kind, name| {
            let driver = drivers.get(kind)?;
            driver.live(&driver.object(twin, contract, name))
        }
    }

    /// The output of workload `name` of `contract` (a container's), at
    /// most its last `limit` bytes.
    pub fn logs(&self, contract: u64, name: &str, limit: u64) -> Result<String, EngineError> {
        let state = self.state();
        let entry = state.entry(contract)?;
        let kind = entry
            .deployment
            .workload(name)
            .map(|w| w.kind)
            .ok_or_else(|| EngineError::NoLogs {
                contract,
                name: name.to_owned(),
            })?;
        let driver = self
            .shared
            .drivers
            .get(kind)
            .ok_or_else(|| EngineError::NoLogs {
                contract,
                name: name.to_owned(),
            })?;
        let object = driver.object(entry.record.twin_id, contract, name);
        driver
            .logs(&object, limit)
            .ok_or_else(|| EngineError::NoLogs {
                contract,
                name: name.to_owned(),
            })
    }

    /// Every deployment, or those of `twin`.
    pub fn deployments(&self, twin: Option<u32>) -> Vec<DeploymentView> {
        let state = self.state();
        state
            .entries
            .values()
            .filter(|e| twin.is_none_or(|t| e.record.twin_id == t))
            .map(|e| view::deployment(e, &self.live(e)))
            .collect()
    }

    /// `contract`'s history.
    pub async fn changes(&self, contract: u64) -> Result<Vec<ChangeView>, EngineError> {
        if !self.state().entries.contains_key(&contract) {
            return Err(EngineError::NotFound { contract });
        }
        let store = self.shared.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.history(contract)).await??)
    }

    /// What the node has, keeps, lends to deployments and has free.
    pub fn capacity(&self) -> CapacityView {
        let state = self.state();
        let mut ports = BTreeSet::new();
        for entry in state.entries.values() {
            for d in entry.versions() {
                for w in &d.workloads {
                    if let WorkloadData::Network(n) = &w.data {
                        ports.insert(n.wireguard_listen_port);
                    }
                }
            }
        }
        CapacityView {
            total: state.ledger.total(),
            reserved: state.ledger.reserved(),
            used: state.ledger.used(),
            overhead: state.ledger.overhead(),
            free: state.ledger.free(),
            pools: state.ledger.pools(),
            wireguard_ports: ports.into_iter().collect(),
        }
    }

    /// What each contract holds.
    pub fn usage(&self) -> Vec<ContractUsage> {
        let state = self.state();
        state
            .entries
            .keys()
            .filter_map(|c| {
                let r = state.ledger.allocation(*c)?.resources();
                Some(ContractUsage {
                    contract_id: *c,
                    cru: r.cru,
                    mru: r.mru,
                    sru: r.sru,
                    hru: r.hru,
                    public_ips: 0,
                })
            })
            .collect()
    }

    /// Removes every object with provisiond's naming that no deployment
    /// wants. A kind whose objects cannot be listed (its daemon down, its
    /// runtime missing) is tried again later, each wait twice the one
    /// before up to [`SWEEP_RETRY_MAX`], while the other kinds are swept.
    async fn sweep(&self) {
        let mut pending: Vec<Arc<dyn Driver>> = self.shared.drivers.all().cloned().collect();
        let mut wait = self.shared.retry.max(Duration::from_millis(100));
        loop {
            let mut failed = Vec::new();
            for driver in pending {
                match driver.objects().await {
                    Ok(objects) => self.sweep_kind(driver.as_ref(), objects).await,
                    Err(error) => {
                        tracing::warn!(kind = %driver.kind(), %error, retry_in = ?wait, "cannot list objects to sweep; trying again later");
                        failed.push(driver);
                    }
                }
            }
            if failed.is_empty() {
                break;
            }
            pending = failed;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SWEEP_RETRY_MAX);
        }
        self.state().swept = true;
    }

    /// Removes those of `objects` (one driver's) that no deployment wants.
    async fn sweep_kind(&self, driver: &dyn Driver, objects: Vec<String>) {
        // Wanted is read after listing: an object made after the list was
        // taken is not in it, and one in it belongs to a deployment the
        // engine already knows.
        let (wanted, unreadable) = {
            let state = self.state();
            let mut wanted = BTreeSet::new();
            for (contract, entry) in &state.entries {
                for d in entry.versions() {
                    for w in d.workloads.iter().filter(|w| w.kind == driver.kind()) {
                        wanted.insert(driver.object(d.twin_id, *contract, w.name.as_str()));
                    }
                }
            }
            (wanted, state.unreadable.clone())
        };
        for object in objects {
            if wanted.contains(&object) || protected(&object, &unreadable) {
                continue;
            }
            match driver.remove(&object).await {
                Ok(()) => {
                    tracing::info!(kind = %driver.kind(), %object, "removed an object no deployment wants")
                }
                Err(error) => {
                    tracing::warn!(kind = %driver.kind(), %object, %error, "cannot remove an object no deployment wants")
                }
            }
        }
    }
}

/// The longest wait between two tries at listing a kind's objects for the
/// sweep.
pub const SWEEP_RETRY_MAX: Duration = Duration::from_secs(10);

/// An object that may belong to a deployment the store could not read
/// back: a disk named for its contract, or any network when such a
/// deployment exists (a netid does not name its contract).
fn protected(object: &str, unreadable: &BTreeSet<u64>) -> bool {
    if unreadable.is_empty() {
        return false;
    }
    if crate::driver::is_netid(object) {
        return true;
    }
    unreadable
        .iter()
        .any(|c| object.starts_with(&format!("c{c}-")))
}

/// Refuses a network another contract of the node already deploys under
/// the same netid (the same twin and name).
fn check_networks(state: &State, deployment: &Deployment) -> Result<(), EngineError> {
    for w in &deployment.workloads {
        let WorkloadData::Network(_) = &w.data else {
            continue;
        };
        let id = crate::driver::netid(deployment.twin_id, w.name.as_str());
        for (contract, entry) in &state.entries {
            if *contract == deployment.contract_id {
                continue;
            }
            let taken = entry.versions().iter().any(|d| {
                d.workloads.iter().any(|o| {
                    matches!(o.data, WorkloadData::Network(_))
                        && crate::driver::netid(d.twin_id, o.name.as_str()) == id
                })
            });
            if taken {
                return Err(EngineError::NetworkTaken {
                    name: w.name.to_string(),
                    twin: deployment.twin_id,
                    other: *contract,
                });
            }
        }
    }
    Ok(())
}

/// One deployment as the store holds it.
struct Loaded {
    record: DeploymentRecord,
    engine: Option<EngineRecord>,
    results: BTreeMap<String, WorkloadResult>,
}

fn load(store: &Store) -> Result<BTreeMap<u64, Loaded>, StoreError> {
    let mut engines: BTreeMap<u64, EngineRecord> = store.engine_records()?;
    let mut out = BTreeMap::new();
    for record in store.deployments()? {
        let contract = record.contract_id;
        out.insert(
            contract,
            Loaded {
                engine: engines.remove(&contract),
                results: store.results(contract)?,
                record,
            },
        );
    }
    Ok(out)
}
