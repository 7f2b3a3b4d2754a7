//! The zmount and volume drivers: storaged's vdisks and volumes.
//!
//! A zmount is a vdisk and a volume a volume, both named
//! `c<contract>-<workload>` on the pool the capacity ledger chose. storaged
//! only grows them; when it refuses a size because the object is already
//! larger (a rollback or a restore after a grown update), the object is
//! kept as it is: nothing is lost and the workload still has its bytes.
//! A refusal while storaged is not ready is retried, not a verdict.
//! Results are zos's: `{"volume_id"}` for a zmount, `{"id"}` for a volume.

use grove_daemon::client::ClientError;
use serde_json::json;
use storaged::client::StoragedClient;
use storaged::volume::ObjectRequest;

use super::{Driver, DriverError, DriverFuture, Target, disk_name, is_disk_name, is_not_found};
use crate::deployment::workload::{WorkloadData, WorkloadType};

/// A refusal from a storaged that is not ready (after a restart, until the
/// agent settles the node's identity again) is no verdict: the call is
/// tried again once storaged is ready.
async fn verdict(storaged: &StoragedClient, error: DriverError) -> DriverError {
    let DriverError::Refused(message) = error else {
        return error;
    };
    match storaged.ready().await {
        Ok(report) if report.ready => DriverError::Refused(message),
        Ok(report) => DriverError::Unavailable(format!(
            "storaged is not ready ({}): {message}",
            report.waiting_for.unwrap_or_default()
        )),
        Err(e) => DriverError::Unavailable(format!("storaged is not ready ({e}): {message}")),
    }
}

fn size_and_pool(target: &Target<'_>) -> Result<(u64, String), DriverError> {
    let size = match &target.workload.data {
        WorkloadData::Zmount(z) => z.size,
        WorkloadData::Volume(v) => v.size,
        other => {
            return Err(DriverError::Refused(format!(
                "workload '{}' is a {}, not a disk",
                target.workload.name,
                other.kind()
            )));
        }
    };
    let pool = target.placed_on()?;
    Ok((size, pool.to_owned()))
}

/// What a [`DiskDriver`] makes: a zmount is a vdisk, a volume a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    Vdisk,
    Volume,
}

impl Disk {
    /// The key of the object's name in the workload's result.
    fn result_key(self) -> &'static str {
        match self {
            Disk::Vdisk => "volume_id",
            Disk::Volume => "id",
        }
    }
}

/// `zmount` → a vdisk; `volume` → a volume.
#[derive(Debug, Clone)]
pub struct DiskDriver {
    storaged: StoragedClient,
    disk: Disk,
}

impl DiskDriver {
    /// The zmount driver.
    pub fn zmount(storaged: StoragedClient) -> Self {
        Self {
            storaged,
            disk: Disk::Vdisk,
        }
    }

    /// The volume driver.
    pub fn volume(storaged: StoragedClient) -> Self {
        Self {
            storaged,
            disk: Disk::Volume,
        }
    }

    /// Makes (or grows) the object `name`.
    async fn ensure_disk(&self, name: &str, pool: &str, size: u64) -> Result<(), ClientError> {
        let request = ObjectRequest {
            pool: pool.to_owned(),
            size,
            snapshot_of: None,
        };
        match self.disk {
            Disk::Vdisk => self.storaged.ensure_vdisk(name, &request).await.map(drop),
            Disk::Volume => self.storaged.ensure_volume(name, &request).await.map(drop),
        }
    }

    async fn delete_disk(&self, name: &str) -> Result<(), ClientError> {
        match self.disk {
            Disk::Vdisk => self.storaged.delete_vdisk(name).await.map(drop),
            Disk::Volume => self.storaged.delete_volume(name).await.map(drop),
        }
    }

    /// Every object of this kind: (name, pool, size).
    async fn disks(&self) -> Result<Vec<(String, String, u64)>, ClientError> {
        Ok(match self.disk {
            Disk::Vdisk => (self.storaged.vdisks().await?)
                .into_iter()
                .map(|v| (v.name, v.pool, v.size))
                .collect(),
            Disk::Volume => (self.storaged.volumes().await?)
                .into_iter()
                .map(|v| (v.name, v.pool, v.size))
                .collect(),
        })
    }
}

impl Driver for DiskDriver {
    fn kind(&self) -> WorkloadType {
        match self.disk {
            Disk::Vdisk => WorkloadType::Zmount,
            Disk::Volume => WorkloadType::Volume,
        }
    }

    fn object(&self, _twin: u32, contract: u64, name: &str) -> String {
        disk_name(contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let (size, pool) = size_and_pool(&target)?;
            let name = self.object(target.twin, target.contract, target.workload.name.as_str());
            let result = serde_json::Value::Object(
                [(self.disk.result_key().to_owned(), json!(name))]
                    .into_iter()
                    .collect(),
            );
            let Err(error) = self.ensure_disk(&name, &pool, size).await else {
                return Ok(result);
            };
            let error = verdict(&self.storaged, error.into()).await;
            let DriverError::Refused(_) = error else {
                return Err(error);
            };
            let larger = self
                .disks()
                .await?
                .into_iter()
                .any(|(n, p, s)| n == name && p == pool && s >= size);
            if larger { Ok(result) } else { Err(error) }
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            match self.delete_disk(object).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(verdict(&self.storaged, e.into()).await),
            }
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .disks()
                .await?
                .into_iter()
                .map(|(name, _, _)| name)
                .filter(|n| is_disk_name(n))
                .collect())
        })
    }
}
