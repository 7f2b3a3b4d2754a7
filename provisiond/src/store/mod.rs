//! The durable store of deployments, their workloads' results and history.
//!
//! One redb file: ACID transactions on copy-on-write B-trees, committed with
//! fsync, so a crash at any moment leaves either the old or the new state,
//! never half of a change. A deployment, its results and its history entries
//! change together in one [`Batch`]. Deployments are kept as the JSON their
//! client sent (the node re-parses and re-hashes it on load, so a record
//! that no longer matches its hash is noticed); results and history as JSON.
//! All calls block: the engine runs them on a blocking thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::deployment::Deployment;

/// contract id → [`DeploymentRecord`] as JSON.
const DEPLOYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("deployments");
/// (contract id, workload name) → [`WorkloadResult`] as JSON.
const RESULTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("results");
/// (contract id, sequence) → [`Change`] as JSON.
const HISTORY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("history");

/// contract id → the engine's record of the deployment (its status, what it
/// holds, the job in progress) as JSON; see [`crate::engine::EngineRecord`].
const ENGINE: TableDefinition<u64, &[u8]> = TableDefinition::new("engine");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("the store failed to {op}: {source}")]
    Db {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("cannot encode {what} for the store: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("the store holds a {what} of contract {contract} that does not decode: {source}")]
    Decode {
        what: &'static str,
        contract: u64,
        source: serde_json::Error,
    },
}

fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |source| StoreError::Db {
        op,
        source: Box::new(source.into()),
    }
}

/// A workload's state, with zos's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    Init,
    Ok,
    Error,
    /// An update failed and the previous version still runs.
    Unchanged,
    Deleted,
    Paused,
}

/// The node's result for one workload, in zos's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// Unix seconds.
    pub created: i64,
    pub state: WorkloadState,
    pub message: String,
    pub data: serde_json::Value,
}

/// One step of a deployment's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Unix seconds.
    pub at: i64,
    pub version: u32,
    pub workload: String,
    pub state: WorkloadState,
    pub message: String,
}

/// A deployment as the node accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub contract_id: u64,
    pub twin_id: u32,
    pub version: u32,
    /// The deployment hash in hex.
    pub hash: String,
    /// The deployment as its client sent it.
    pub wire: String,
}

/// Why a stored deployment cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the stored deployment of contract {contract} no longer parses: {source}")]
    Parse {
        contract: u64,
        source: crate::deployment::DeploymentError,
    },
    #[error(
        "the stored deployment of contract {contract} hashes to {found}, it was accepted as {recorded}"
    )]
    Hash {
        contract: u64,
        recorded: String,
        found: String,
    },
}

impl DeploymentRecord {
    /// The record of a deployment accepted from `wire`.
    pub fn new(deployment: &Deployment, wire: &[u8]) -> Self {
        Self {
            contract_id: deployment.contract_id,
            twin_id: deployment.twin_id,
            version: deployment.version,
            hash: deployment.hash().hex(),
            wire: String::from_utf8_lossy(wire).into_owned(),
        }
    }

    /// Parses the stored deployment again and checks it still has the hash
    /// it was accepted with.
    pub fn restore(&self) -> Result<Deployment, RestoreError> {
        let contract = self.contract_id;
        let deployment = Deployment::parse(self.wire.as_bytes())
            .map_err(|source| RestoreError::Parse { contract, source })?;
        let found = deployment.hash().hex();
        if found != self.hash {
            return Err(RestoreError::Hash {
                contract,
                recorded: self.hash.clone(),
                found,
            });
        }
        Ok(deployment)
    }
}

/// The provisioning store.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    contract: u64,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        what,
        contract,
        source,
    })
}

impl Store {
    /// Opens the store at `path`, creating it if needed. After a crash redb
    /// finds its last committed state before this returns.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let opened = |source: redb::Error| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        };
        if !path.exists() {
            Self::create(path).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|e| opened(e.into()))?;
        let txn = db.begin_write().map_err(|e| opened(e.into()))?;
        {
            txn.open_table(DEPLOYMENTS).map_err(|e| opened(e.into()))?;
            txn.open_table(RESULTS).map_err(|e| opened(e.into()))?;
            txn.open_table(HISTORY).map_err(|e| opened(e.into()))?;
            txn.open_table(ENGINE).map_err(|e| opened(e.into()))?;
        }
        txn.commit().map_err(|e| opened(e.into()))?;
        Ok(Self { db })
    }

    /// Makes a new, empty store beside `path` and renames it into place, so
    /// a crash while the file is first written leaves no file rather than
    /// one redb cannot read.
    fn create(path: &Path) -> Result<(), Box<redb::Error>> {
        let boxed = |e: redb::Error| Box::new(e);
        let mut temp = path.as_os_str().to_owned();
        temp.push(".new");
        let temp = PathBuf::from(temp);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(boxed(e.into())),
        }
        {
            let db = Database::create(&temp).map_err(|e| boxed(e.into()))?;
            let txn = db.begin_write().map_err(|e| boxed(e.into()))?;
            txn.open_table(DEPLOYMENTS).map_err(|e| boxed(e.into()))?;
            txn.commit().map_err(|e| boxed(e.into()))?;
        }
        let io = |e: std::io::Error| boxed(e.into());
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&temp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Starts a change; nothing is visible or durable until [`Batch::commit`].
    pub fn batch(&self) -> Result<Batch, StoreError> {
        let txn = self.db.begin_write().map_err(db("begin a write"))?;
        Ok(Batch { txn })
    }

    /// The deployment of `contract`.
    pub fn deployment(&self, contract: u64) -> Result<Option<DeploymentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db("begin a read"))?;
        let table = txn
            .open_table(DEPLOYMENTS)
            .map_err(db("open deployments"))?;
        match table.get(contract).map_err(db("read a deployment"))? {
            Some(bytes) => Ok(Some(decode("deployment", contract, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every deployment, by contract id.
    pub fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db("begin a read"))?;
        let table = txn
            .open_table(DEPLOYMENTS)
            .map_err(db("open deployments"))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db("list deployments"))? {
            let (key, bytes) = entry.map_err(db("list deployments"))?;
            out.push(decode("deployment", key.value(), bytes.value())?);
        }
        Ok(out)
    }

    /// The results of `contract`'s workloads, by name.
    pub fn results(&self, contract: u64) -> Result<BTreeMap<String, WorkloadResult>, StoreError> {
        let txn = self.db.begin_read().map_err(db("begin a read"))?;
        let table = txn.open_table(RESULTS).map_err(db("open results"))?;
        let mut out = BTreeMap::new();
        let range = table.range((contract, "")..).map_err(db("read results"))?;
        for entry in range {
            let (key, bytes) = entry.map_err(db("read results"))?;
            let (owner, name) = key.value();
            if owner != contract {
                break;
            }
            out.insert(name.to_owned(), decode("result", contract, bytes.value())?);
        }
        Ok(out)
    }

    /// The engine's records, by contract id, as the engine wrote them.
    pub fn engine_records<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<BTreeMap<u64, T>, StoreError> {
        let txn = self.db.begin_read().map_err(db("begin a read"))?;
        let table = txn.open_table(ENGINE).map_err(db("open engine"))?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(db("list engine records"))? {
            let (key, bytes) = entry.map_err(db("list engine records"))?;
            out.insert(
                key.value(),
                decode("engine record", key.value(), bytes.value())?,
            );
        }
        Ok(out)
    }

    /// `contract`'s history, oldest first.
    pub fn history(&self, contract: u64) -> Result<Vec<Change>, StoreError> {
        let txn = self.db.begin_read().map_err(db("begin a read"))?;
        let table = txn.open_table(HISTORY).map_err(db("open history"))?;
        let mut out = Vec::new();
        let range = table
            .range((contract, 0)..=(contract, u64::MAX))
            .map_err(db("read history"))?;
        for entry in range {
            let (_, bytes) = entry.map_err(db("read history"))?;
            out.push(decode("history entry", contract, bytes.value())?);
        }
        Ok(out)
    }
}

/// One atomic change to the store.
pub struct Batch {
    txn: redb::WriteTransaction,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batch(..)")
    }
}

impl Batch {
    /// Records (or replaces) a deployment.
    pub fn put_deployment(&mut self, record: &DeploymentRecord) -> Result<(), StoreError> {
        let bytes = encode("deployment", record)?;
        let mut table = self
            .txn
            .open_table(DEPLOYMENTS)
            .map_err(db("open deployments"))?;
        table
            .insert(record.contract_id, bytes.as_slice())
            .map_err(db("write a deployment"))?;
        Ok(())
    }

    /// Sets a workload's result and appends it to the deployment's history.
    pub fn set_result(
        &mut self,
        contract: u64,
        version: u32,
        workload: &str,
        result: &WorkloadResult,
    ) -> Result<(), StoreError> {
        let bytes = encode("result", result)?;
        {
            let mut table = self.txn.open_table(RESULTS).map_err(db("open results"))?;
            table
                .insert((contract, workload), bytes.as_slice())
                .map_err(db("write a result"))?;
        }
        self.append_history(
            contract,
            &Change {
                at: result.created,
                version,
                workload: workload.to_owned(),
                state: result.state,
                message: result.message.clone(),
            },
        )
    }

    /// Removes a workload's result (a workload removed by an update); its
    /// history stays.
    pub fn remove_result(&mut self, contract: u64, workload: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(RESULTS).map_err(db("open results"))?;
        table
            .remove((contract, workload))
            .map_err(db("remove a result"))?;
        Ok(())
    }

    /// Appends one entry to `contract`'s history.
    pub fn append_history(&mut self, contract: u64, change: &Change) -> Result<(), StoreError> {
        let bytes = encode("history entry", change)?;
        let mut table = self.txn.open_table(HISTORY).map_err(db("open history"))?;
        let next = match table
            .range((contract, 0)..=(contract, u64::MAX))
            .map_err(db("read history"))?
            .next_back()
        {
            Some(last) => last.map_err(db("read history"))?.0.value().1 + 1,
            None => 0,
        };
        table
            .insert((contract, next), bytes.as_slice())
            .map_err(db("append history"))?;
        Ok(())
    }

    /// Records (or replaces) the engine's record of `contract`.
    pub fn put_engine<T: Serialize>(
        &mut self,
        contract: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode("engine record", record)?;
        let mut table = self.txn.open_table(ENGINE).map_err(db("open engine"))?;
        table
            .insert(contract, bytes.as_slice())
            .map_err(db("write an engine record"))?;
        Ok(())
    }

    /// Forgets a deployment wholly: the record, its results, its history.
    pub fn remove_deployment(&mut self, contract: u64) -> Result<(), StoreError> {
        {
            let mut table = self
                .txn
                .open_table(DEPLOYMENTS)
                .map_err(db("open deployments"))?;
            table.remove(contract).map_err(db("remove a deployment"))?;
        }
        {
            let mut table = self.txn.open_table(ENGINE).map_err(db("open engine"))?;
            table
                .remove(contract)
                .map_err(db("remove an engine record"))?;
        }
        {
            let mut table = self.txn.open_table(RESULTS).map_err(db("open results"))?;
            table
                .retain(|(owner, _), _| owner != contract)
                .map_err(db("remove results"))?;
        }
        let mut table = self.txn.open_table(HISTORY).map_err(db("open history"))?;
        table
            .retain_in((contract, 0)..=(contract, u64::MAX), |_, _| false)
            .map_err(db("remove history"))?;
        Ok(())
    }

    /// Makes the change durable: after this returns, a crash keeps it.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(db("commit"))
    }

    /// Commits without waiting for the disk: the change is visible at once
    /// and becomes durable with the next [`Batch::commit`]; a crash before
    /// that loses it (and only it), whole.
    pub fn commit_unsynced(mut self) -> Result<(), StoreError> {
        self.txn.set_durability(redb::Durability::None);
        self.txn.commit().map_err(db("commit"))
    }
}

#[cfg(test)]
mod tests;
