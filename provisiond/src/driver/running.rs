//! What the drivers of running workloads (containers, machines) share.
//!
//! A [`Running`] holds storaged's and netd's clients, an image cache with
//! the lock that keeps its collection away from an image between its pull
//! and its use, the [`Watch`] of the workloads' lives, and a directory of
//! one entry per workload whose `meta.json` names what its removal undoes.
//! Limits: stopping a workload is its driver's; a removal assumes it is
//! stopped.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use netd::client::NetdClient;
use storaged::client::StoragedClient;
use tokio::sync::RwLock;

use super::watch::Watch;
use super::{DriverError, Meta, disk_name};
use crate::image::{Image, ImageRef, ImageStore};

/// What a running workload's disks are: storaged's volumes (a
/// container's) or vdisks (a machine's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disks {
    Volumes,
    Vdisks,
}

impl Disks {
    /// What a deployment calls one.
    fn word(self) -> &'static str {
        match self {
            Disks::Volumes => "volume",
            Disks::Vdisks => "zmount",
        }
    }
}

/// The clients, images, lives and directory of a driver of running
/// workloads.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub storaged: StoragedClient,
    pub netd: NetdClient,
    pub images: Arc<ImageStore>,
    pub watch: Arc<Watch>,
    /// What the workloads' roots and mounts are.
    disks: Disks,
    /// One entry per workload, named by its id.
    dir: PathBuf,
    /// Held shared by every `ensure` and alone by the image collection, so
    /// an image is never collected between its pull and its use.
    images_in_use: Arc<RwLock<()>>,
}

impl Running {
    pub fn new(
        storaged: StoragedClient,
        netd: NetdClient,
        images: Arc<ImageStore>,
        disks: Disks,
        dir: PathBuf,
    ) -> Self {
        Self {
            storaged,
            netd,
            images,
            watch: Arc::new(Watch::default()),
            disks,
            dir,
            images_in_use: Arc::new(RwLock::new(())),
        }
    }

    /// The directory of workload `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Runs `make` with the images held: no collection runs meanwhile.
    pub async fn holding_images<T>(&self, make: impl Future<Output = T>) -> T {
        let _using = self.images_in_use.read().await;
        make.await
    }

    /// The image `reference` in the cache, pulled once by digest.
    pub async fn pull(&self, reference: &ImageRef) -> Result<Image, DriverError> {
        self.images
            .ensure(reference)
            .await
            .map_err(|e| DriverError::Refused(e.to_string()))
    }

    /// The paths of the disks `names` of `contract`, in order; one storaged
    /// has not made yet is unavailable, to be tried again.
    pub async fn disks(&self, contract: u64, names: &[&str]) -> Result<Vec<PathBuf>, DriverError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let made: Vec<(String, PathBuf)> = match self.disks {
            Disks::Volumes => {
                let volumes = self.storaged.volumes().await?;
                volumes.into_iter().map(|v| (v.name, v.path)).collect()
            }
            Disks::Vdisks => {
                let vdisks = self.storaged.vdisks().await?;
                vdisks.into_iter().map(|v| (v.name, v.path)).collect()
            }
        };
        names
            .iter()
            .map(|name| {
                let wanted = disk_name(contract, name);
                made.iter()
                    .find_map(|(made, path)| (*made == wanted).then(|| path.clone()))
                    .ok_or_else(|| {
                        DriverError::Unavailable(format!(
                            "{} {wanted} is not made yet",
                            self.disks.word()
                        ))
                    })
            })
            .collect()
    }

    /// Removes workload `id`: no longer watched, it is stopped by `stop`;
    /// then the attachment and the root its `meta.json` names go, its
    /// directory (a failure names it `what` and `id`), and the images no
    /// workload uses.
    pub async fn remove(
        &self,
        id: &str,
        stop: impl Future<Output = Result<(), DriverError>>,
        what: &str,
    ) -> Result<(), DriverError> {
        self.watch.forget(id);
        stop.await?;
        let dir = self.dir(id);
        let at = dir.clone();
        if let Some(meta) = super::blocking(move || Ok(Meta::read(&at))).await? {
            super::detach(&self.netd, &meta.netid, id).await?;
            match self.disks {
                Disks::Volumes => self.storaged.delete_volume(&meta.rootfs).await?,
                Disks::Vdisks => self.storaged.delete_vdisk(&meta.rootfs).await?,
            };
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::Refused(format!("{what} {id}: {e}"))),
        }
        self.collect_images().await;
        Ok(())
    }

    /// Removes the cached images no workload's `meta.json` names.
    pub async fn collect_images(&self) {
        let _alone = self.images_in_use.write().await;
        super::collect_images(self.images.clone(), self.dir.clone()).await;
    }

    /// How workload `id` lives now, as its result shows it.
    pub fn life(&self, id: &str) -> Option<serde_json::Value> {
        serde_json::to_value(self.watch.life(id)?).ok()
    }

    /// The workloads whose directories `ours` accepts, with those found
    /// `running`, once each and in order.
    pub async fn objects(
        &self,
        ours: fn(&str) -> bool,
        running: impl IntoIterator<Item = String>,
    ) -> Result<Vec<String>, DriverError> {
        let dir = self.dir.clone();
        let mut ids = super::blocking(move || super::listed(&dir, ours)).await?;
        ids.extend(running);
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}
