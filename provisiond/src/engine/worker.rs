//! One deployment's task: it runs the deployment's job, step by step.
//!
//! Each step writes its intent to the store (the workload's result `init`
//! with what is about to happen), calls the driver, and writes the result;
//! a job's end is written together with its last change. A driver whose
//! daemon is unavailable is called again with a growing wait, since its
//! calls are idempotent; a refusal fails the step with the daemon's words.
//! When the job changes under it (a removal while applying), the task drops
//! what it was doing and starts the new job. Limits: a store that keeps
//! failing stops the task's progress (it retries and logs), never its
//! honesty: nothing is done that was not first recorded.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Engine, EngineError, EngineRecord, Job, now, result};
use crate::api::{DeploymentState, Failure};
use crate::capacity::Allocation;
use crate::deployment::{Deployment, Workload};
use crate::driver::{Driver, DriverError, DriverFuture, Target};
use crate::store::{Change, DeploymentRecord, Store, StoreError, WorkloadResult, WorkloadState};
use crate::update::rank;

const MAX_RETRY: Duration = Duration::from_secs(10);

/// How a step ended.
enum Outcome<T> {
    Done(T),
    Failed(String),
    /// The job changed; stop.
    Aborted,
}

/// What the task knows of its deployment when it picks its job.
struct Snapshot {
    generation: u64,
    job: Option<Job>,
    busy: bool,
    state: DeploymentState,
    deployment: Deployment,
    target: Option<Deployment>,
    allocation: Allocation,
    wake: Arc<tokio::sync::Notify>,
}

impl Snapshot {
    /// The version an apply or rollback job is about, and the one that runs
    /// now if it still runs; `None`, logged, for a job without its version.
    fn versions(
        &self,
        job: &str,
        previous_running: bool,
    ) -> Option<(&Deployment, Option<&Deployment>)> {
        let Some(target) = &self.target else {
            tracing::error!(job, "a job without the version it is about; dropped");
            return None;
        };
        Some((target, previous_running.then_some(&self.deployment)))
    }
}

/// One run of a deployment's job: every step is the same contract's, and
/// stops once the job changes (the deployment's generation moves on).
struct Task<'a> {
    engine: &'a Engine,
    contract: u64,
    generation: u64,
}

fn sorted(d: &Deployment, reverse: bool) -> Vec<Workload> {
    let mut out = d.workloads.clone();
    out.sort_by_key(|w| rank(w.kind));
    if reverse {
        out.reverse();
    }
    out
}

pub(super) async fn run(engine: Engine, contract: u64) {
    loop {
        let Some(s) = snapshot(&engine, contract) else {
            return;
        };
        let task = Task {
            engine: &engine,
            contract,
            generation: s.generation,
        };
        match s.job.clone() {
            None => {
                if s.busy {
                    if matches!(s.state, DeploymentState::Ok | DeploymentState::Unchanged) {
                        converge(&task, &s).await;
                    }
                    engine.idle(contract, s.generation);
                }
                s.wake.notified().await;
            }
            Some(Job::Apply {
                target,
                allocation,
                previous_running,
            }) => apply(&task, &s, &target, &allocation, previous_running).await,
            Some(Job::RollBack {
                failure,
                previous_running,
                ..
            }) => rollback(&task, &s, &failure, previous_running).await,
            Some(Job::Remove { .. }) => remove(&task, &s).await,
        }
    }
}

fn snapshot(engine: &Engine, contract: u64) -> Option<Snapshot> {
    let state = engine.state();
    let entry = state.entries.get(&contract)?;
    Some(Snapshot {
        generation: entry.generation,
        job: entry.engine.job.clone(),
        busy: entry.busy,
        state: entry.engine.state,
        deployment: entry.deployment.clone(),
        target: entry.target.clone(),
        allocation: entry.engine.allocation.clone(),
        wake: entry.wake.clone(),
    })
}

impl Engine {
    fn current(&self, contract: u64, generation: u64) -> bool {
        self.state()
            .entries
            .get(&contract)
            .is_some_and(|e| e.generation == generation)
    }

    fn idle(&self, contract: u64, generation: u64) {
        if let Some(e) = self.state().entries.get_mut(&contract)
            && e.generation == generation
            && e.engine.job.is_none()
        {
            e.busy = false;
        }
    }

    fn driver(&self, w: &Workload) -> Result<Arc<dyn Driver>, String> {
        self.shared
            .drivers
            .get(w.kind)
            .cloned()
            .ok_or_else(|| format!("workload type {} has no driver on this node", w.kind))
    }

    /// Writes to the store, trying again while it fails.
    async fn persist(&self, f: impl Fn(&Store) -> Result<(), StoreError> + Send + Sync + 'static) {
        let f = Arc::new(f);
        let mut wait = self.shared.retry;
        loop {
            let store = self.shared.store.clone();
            let g = f.clone();
            let done: Result<(), EngineError> =
                match tokio::task::spawn_blocking(move || g(&store)).await {
                    Ok(r) => r.map_err(EngineError::from),
                    Err(e) => Err(e.into()),
                };
            match done {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, "cannot record a step; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }
}

impl Task<'_> {
    /// Records workload `name`'s result (and its history entry). Not
    /// fsynced on its own: the job's end makes it durable, and a crash
    /// before that starts the job over, whose steps are idempotent.
    async fn record(&self, version: u32, name: &str, r: WorkloadResult) {
        let contract = self.contract;
        let (n, stored) = (name.to_owned(), r.clone());
        self.engine
            .persist(move |store| {
                let mut batch = store.batch()?;
                batch.set_result(contract, version, &n, &stored)?;
                batch.commit_unsynced()
            })
            .await;
        if let Some(e) = self.engine.state().entries.get_mut(&contract) {
            e.results.insert(name.to_owned(), r);
        }
    }

    /// Records that workload `name` is in `state`, saying `message`.
    async fn mark(
        &self,
        version: u32,
        name: &str,
        state: WorkloadState,
        message: impl Into<String>,
    ) {
        self.record(version, name, result(state, message)).await;
    }

    /// The deployment's engine record as it stands, while it is held.
    fn held_record(&self) -> Option<EngineRecord> {
        self.engine
            .state()
            .entries
            .get(&self.contract)
            .map(|e| e.engine.clone())
    }

    /// Workload `name`'s result as it stands.
    fn result_of(&self, name: &str) -> Option<WorkloadResult> {
        self.engine
            .state()
            .entries
            .get(&self.contract)
            .and_then(|e| e.results.get(name).cloned())
    }

    /// Forgets workload `name`'s result; its history says it was deleted.
    async fn forget(&self, version: u32, name: &str, message: &str) {
        let contract = self.contract;
        let (n, m) = (name.to_owned(), message.to_owned());
        self.engine
            .persist(move |store| {
                let mut batch = store.batch()?;
                batch.remove_result(contract, &n)?;
                batch.append_history(
                    contract,
                    &Change {
                        at: now(),
                        version,
                        workload: n.clone(),
                        state: WorkloadState::Deleted,
                        message: m.clone(),
                    },
                )?;
                batch.commit_unsynced()
            })
            .await;
        if let Some(e) = self.engine.state().entries.get_mut(&contract) {
            e.results.remove(name);
        }
    }

    /// Calls a driver, again while its daemon is unavailable.
    async fn call<'a, T>(&self, f: impl Fn() -> DriverFuture<'a, T>) -> Outcome<T> {
        let (engine, contract, generation) = (self.engine, self.contract, self.generation);
        let mut wait = engine.shared.retry;
        loop {
            if !engine.current(contract, generation) {
                return Outcome::Aborted;
            }
            let Some(wake) = engine
                .state()
                .entries
                .get(&contract)
                .map(|e| e.wake.clone())
            else {
                return Outcome::Aborted;
            };
            let call = f();
            tokio::pin!(call);
            // A job that changes (a removal) stops a call that hangs.
            let answer = loop {
                tokio::select! {
                    answer = &mut call => break answer,
                    () = wake.notified() => {
                        if !engine.current(contract, generation) {
                            wake.notify_one();
                            return Outcome::Aborted;
                        }
                    }
                }
            };
            match answer {
                Ok(v) => return Outcome::Done(v),
                Err(DriverError::Refused(message)) => return Outcome::Failed(message),
                Err(DriverError::Unavailable(message)) => {
                    tracing::warn!(%message, "a daemon is unavailable; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn ensure(
        &self,
        d: &Deployment,
        w: &Workload,
        allocation: &Allocation,
    ) -> Outcome<serde_json::Value> {
        let driver = match self.engine.driver(w) {
            Ok(d) => d,
            Err(message) => return Outcome::Failed(message),
        };
        let pool = allocation
            .disks
            .iter()
            .find(|p| p.disk.workload == w.name.as_str())
            .map(|p| p.pool.as_str());
        let target = Target {
            contract: self.contract,
            twin: d.twin_id,
            workload: w,
            pool,
        };
        self.call(|| driver.ensure(target)).await
    }

    async fn delete(&self, d: &Deployment, w: &Workload) -> Outcome<()> {
        let driver = match self.engine.driver(w) {
            Ok(d) => d,
            Err(message) => return Outcome::Failed(message),
        };
        let object = driver.object(d.twin_id, self.contract, w.name.as_str());
        self.call(|| driver.remove(&object)).await
    }

    /// Ends a job: writes `engine` (and `record`, the new stored version)
    /// in one transaction, unless the job changed meanwhile.
    async fn finish(
        &self,
        engine: EngineRecord,
        record: Option<(DeploymentRecord, Deployment)>,
        hold: Option<Allocation>,
    ) {
        let contract = self.contract;
        let _admit = self.engine.shared.admit.lock().await;
        if !self.engine.current(contract, self.generation) {
            return;
        }
        let (e, r) = (engine.clone(), record.as_ref().map(|r| r.0.clone()));
        self.engine
            .persist(move |store| {
                let mut batch = store.batch()?;
                if let Some(r) = &r {
                    batch.put_deployment(r)?;
                }
                batch.put_engine(contract, &e)?;
                batch.commit()
            })
            .await;
        let mut state = self.engine.state();
        match hold {
            Some(a) => state.ledger.hold(contract, a),
            None => {
                if engine.job.is_none() {
                    state.ledger.release(contract);
                }
            }
        }
        if let Some(entry) = state.entries.get_mut(&contract) {
            let settled = engine.job.is_none();
            match &engine.job {
                Some(Job::Apply { .. } | Job::RollBack { .. }) => {}
                _ => entry.target = None,
            }
            entry.engine = engine;
            if let Some((r, d)) = record {
                entry.record = r;
                entry.deployment = d;
            }
            entry.generation += 1;
            entry.busy = !settled;
        }
    }
}

async fn apply(
    task: &Task<'_>,
    s: &Snapshot,
    target_record: &DeploymentRecord,
    allocation: &Allocation,
    previous_running: bool,
) {
    let Some((target, previous)) = s.versions("apply", previous_running) else {
        return;
    };
    let version = target.version;
    let fail = |w: &Workload, message: String| {
        let failure = Failure {
            version,
            workload: w.name.to_string(),
            message,
        };
        (w.name.to_string(), failure)
    };
    let mut failed = None;
    for w in sorted(target, false) {
        let name = w.name.as_str();
        if previous.and_then(|p| p.workload(name)) == Some(&w) {
            continue;
        }
        task.mark(
            version,
            name,
            WorkloadState::Init,
            format!("deploying version {version}"),
        )
        .await;
        match task.ensure(target, &w, allocation).await {
            Outcome::Done(data) => {
                let mut r = result(WorkloadState::Ok, "");
                r.data = data;
                task.record(version, name, r).await;
            }
            Outcome::Failed(message) => {
                failed = Some(fail(&w, message));
                break;
            }
            Outcome::Aborted => return,
        }
    }
    if failed.is_none()
        && let Some(previous) = previous
    {
        for w in sorted(previous, true) {
            let name = w.name.as_str();
            if target.workload(name).is_some() {
                continue;
            }
            let why = format!("removing: not in version {version}");
            task.mark(version, name, WorkloadState::Init, why.clone())
                .await;
            match task.delete(previous, &w).await {
                Outcome::Done(()) => task.forget(version, name, &why).await,
                Outcome::Failed(message) => {
                    failed = Some(fail(&w, message));
                    break;
                }
                Outcome::Aborted => return,
            }
        }
    }
    let Some(mut record) = task.held_record() else {
        return;
    };
    match failed {
        None => {
            // The removed workloads were held while the update ran.
            let mut allocation = allocation.clone();
            allocation
                .disks
                .retain(|p| target.workload(&p.disk.workload).is_some());
            record.state = DeploymentState::Ok;
            record.allocation = allocation.clone();
            record.failure = None;
            record.job = None;
            task.finish(
                record,
                Some((target_record.clone(), target.clone())),
                Some(allocation.clone()),
            )
            .await;
            tracing::info!(version, "deployment applied");
        }
        Some((name, failure)) => {
            tracing::warn!(version, workload = %name, cause = %failure.message, "a workload failed; rolling back");
            task.mark(
                version,
                &name,
                WorkloadState::Error,
                failure.message.clone(),
            )
            .await;
            record.job = Some(Job::RollBack {
                failed: target_record.clone(),
                failure,
                previous_running,
            });
            task.finish(record, None, None).await;
        }
    }
}

async fn rollback(task: &Task<'_>, s: &Snapshot, failure: &Failure, previous_running: bool) {
    let Some((failed, previous)) = s.versions("rollback", previous_running) else {
        return;
    };
    let version = failed.version;
    let cause = format!(
        "workload '{}' failed: {}",
        failure.workload, failure.message
    );
    for w in sorted(failed, true) {
        let name = w.name.as_str();
        if previous.is_some_and(|p| p.workload(name).is_some()) {
            continue;
        }
        let is_cause = name == failure.workload;
        if !is_cause {
            task.mark(
                version,
                name,
                WorkloadState::Init,
                format!("rolling back: {cause}"),
            )
            .await;
        }
        let removed = match task.delete(failed, &w).await {
            Outcome::Done(()) => None,
            Outcome::Failed(message) => Some(message),
            Outcome::Aborted => return,
        };
        if let Some(message) = &removed {
            tracing::warn!(workload = name, %message, "rollback could not remove a workload");
        }
        match (previous, is_cause, removed) {
            (_, true, None) => {}
            (_, _, Some(message)) => {
                task.mark(
                    version,
                    name,
                    WorkloadState::Error,
                    format!("{cause}; rollback could not remove it: {message}"),
                )
                .await;
            }
            (Some(_), false, None) => {
                task.forget(version, name, &format!("rolled back: {cause}"))
                    .await
            }
            (None, false, None) => {
                task.mark(
                    version,
                    name,
                    WorkloadState::Error,
                    format!("rolled back: {cause}"),
                )
                .await;
            }
        }
    }
    if let Some(previous) = previous {
        let message = format!("update to version {version} failed: {cause}");
        for w in sorted(previous, false) {
            let name = w.name.as_str();
            let mut r = result(WorkloadState::Unchanged, message.clone());
            if failed.workload(name) != Some(&w) {
                task.mark(
                    version,
                    name,
                    WorkloadState::Init,
                    format!("rolling back to version {}", previous.version),
                )
                .await;
                match task.ensure(previous, &w, &s.allocation).await {
                    Outcome::Done(data) => r.data = data,
                    Outcome::Failed(m) => {
                        r = result(
                            WorkloadState::Error,
                            format!("{message}; rollback failed: {m}"),
                        );
                    }
                    Outcome::Aborted => return,
                }
            } else if let Some(old) = task.result_of(name) {
                r.data = old.data;
            }
            task.record(previous.version, name, r).await;
        }
    }
    let Some(mut record) = task.held_record() else {
        return;
    };
    record.job = None;
    record.failure = Some(failure.clone());
    let hold = if previous_running {
        record.state = DeploymentState::Unchanged;
        Some(record.allocation.clone())
    } else {
        record.state = DeploymentState::Error;
        record.allocation = Allocation::default();
        None
    };
    task.finish(record, None, hold).await;
    tracing::info!(version, "rolled back");
}

async fn remove(task: &Task<'_>, s: &Snapshot) {
    let mut versions = vec![&s.deployment];
    if let Some(t) = &s.target {
        versions.push(t);
    }
    let version = versions.iter().map(|d| d.version).max().unwrap_or(0);
    let mut seen = BTreeSet::new();
    let mut steps: Vec<(&Deployment, Workload)> = Vec::new();
    for d in &versions {
        for w in sorted(d, true) {
            if seen.insert((w.kind, w.name.to_string())) {
                steps.push((d, w));
            }
        }
    }
    steps.sort_by_key(|(_, w)| std::cmp::Reverse(rank(w.kind)));
    for (d, w) in steps {
        let name = w.name.as_str();
        task.mark(
            version,
            name,
            WorkloadState::Init,
            "removing: the contract was cancelled",
        )
        .await;
        match task.delete(d, &w).await {
            Outcome::Done(()) => {
                task.mark(
                    version,
                    name,
                    WorkloadState::Deleted,
                    "the contract was cancelled",
                )
                .await;
            }
            Outcome::Failed(message) => {
                tracing::warn!(workload = name, %message, "cannot remove a workload; the next start sweeps it");
                task.mark(
                    version,
                    name,
                    WorkloadState::Error,
                    format!("cannot remove: {message}"),
                )
                .await;
            }
            Outcome::Aborted => return,
        }
    }
    let Some(mut record) = task.held_record() else {
        return;
    };
    record.state = DeploymentState::Deleted;
    record.job = None;
    record.allocation = Allocation::default();
    task.finish(record, None, None).await;
    tracing::info!("deployment removed");
}

/// After a restart: makes sure every workload of a settled deployment is
/// there, writing only what changed.
async fn converge(task: &Task<'_>, s: &Snapshot) {
    let d = &s.deployment;
    for w in sorted(d, false) {
        let name = w.name.as_str();
        let before = task.result_of(name);
        let after = match task.ensure(d, &w, &s.allocation).await {
            Outcome::Done(data) => {
                let mut r = before
                    .clone()
                    .unwrap_or_else(|| result(WorkloadState::Ok, ""));
                if r.state != WorkloadState::Unchanged {
                    r.state = WorkloadState::Ok;
                    r.message = String::new();
                }
                r.data = data;
                r
            }
            Outcome::Failed(message) => result(WorkloadState::Error, message),
            Outcome::Aborted => return,
        };
        let same = before.as_ref().is_some_and(|b| {
            b.state == after.state && b.message == after.message && b.data == after.data
        });
        if !same {
            task.record(d.version, name, after).await;
        }
    }
}
