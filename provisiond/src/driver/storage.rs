//! The zmount and volume drivers: storaged's vdisks and volumes.
//!
//! A zmount is a vdisk and a volume a volume, both named
//! `c<contract>-<workload>` on the pool the capacity ledger chose. storaged
//! only grows them; when it refuses a size because the object is already
//! larger (a rollback or a restore after a grown update), the object is
//! kept as it is: nothing is lost and the workload still has its bytes.
//! Results are zos's: `{"volume_id"}` for a zmount, `{"id"}` for a volume.

use serde_json::json;
use storaged::client::StoragedClient;
use storaged::volume::{VdiskRequest, VolumeRequest};

use super::{Driver, DriverError, DriverFuture, Target, disk_name, is_disk_name, is_not_found};
use crate::deployment::workload::{WorkloadData, WorkloadType};

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
    let pool = target.pool.ok_or_else(|| {
        DriverError::Refused(format!(
            "workload '{}' was given no pool",
            target.workload.name
        ))
    })?;
    Ok((size, pool.to_owned()))
}

/// `zmount` → a vdisk.
#[derive(Debug, Clone)]
pub struct ZmountDriver {
    storaged: StoragedClient,
}

impl ZmountDriver {
    pub fn new(storaged: StoragedClient) -> Self {
        Self { storaged }
    }
}

impl Driver for ZmountDriver {
    fn kind(&self) -> WorkloadType {
        WorkloadType::Zmount
    }

    fn object(&self, _twin: u32, contract: u64, name: &str) -> String {
        disk_name(contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let (size, pool) = size_and_pool(&target)?;
            let name = self.object(target.twin, target.contract, target.workload.name.as_str());
            let request = VdiskRequest {
                pool: pool.clone(),
                size,
            };
            match self.storaged.ensure_vdisk(&name, &request).await {
                Ok(view) => Ok(json!({ "volume_id": view.name })),
                Err(error) => {
                    let error = DriverError::from(error);
                    let DriverError::Refused(_) = error else {
                        return Err(error);
                    };
                    let larger = self
                        .storaged
                        .vdisks()
                        .await?
                        .into_iter()
                        .any(|v| v.name == name && v.pool == pool && v.size >= size);
                    if larger {
                        Ok(json!({ "volume_id": name }))
                    } else {
                        Err(error)
                    }
                }
            }
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            match self.storaged.delete_vdisk(object).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .storaged
                .vdisks()
                .await?
                .into_iter()
                .map(|v| v.name)
                .filter(|n| is_disk_name(n))
                .collect())
        })
    }
}

/// `volume` → a volume.
#[derive(Debug, Clone)]
pub struct VolumeDriver {
    storaged: StoragedClient,
}

impl VolumeDriver {
    pub fn new(storaged: StoragedClient) -> Self {
        Self { storaged }
    }
}

impl Driver for VolumeDriver {
    fn kind(&self) -> WorkloadType {
        WorkloadType::Volume
    }

    fn object(&self, _twin: u32, contract: u64, name: &str) -> String {
        disk_name(contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let (size, pool) = size_and_pool(&target)?;
            let name = self.object(target.twin, target.contract, target.workload.name.as_str());
            let request = VolumeRequest {
                pool: pool.clone(),
                size,
            };
            match self.storaged.ensure_volume(&name, &request).await {
                Ok(view) => Ok(json!({ "id": view.name })),
                Err(error) => {
                    let error = DriverError::from(error);
                    let DriverError::Refused(_) = error else {
                        return Err(error);
                    };
                    let larger = self
                        .storaged
                        .volumes()
                        .await?
                        .into_iter()
                        .any(|v| v.name == name && v.pool == pool && v.size >= size);
                    if larger {
                        Ok(json!({ "id": name }))
                    } else {
                        Err(error)
                    }
                }
            }
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            match self.storaged.delete_volume(object).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .storaged
                .volumes()
                .await?
                .into_iter()
                .map(|v| v.name)
                .filter(|n| is_disk_name(n))
                .collect())
        })
    }
}
