//! Workload drivers: the engine's only way to touch the node.
//!
//! One [`Driver`] per workload type turns a workload into one object on the
//! node (network → netd's tenant network, zmount → storaged's vdisk, volume
//! → storaged's volume) with an idempotent `ensure`, removes it by its
//! name, and lists the objects that carry provisiond's naming, so the
//! engine can sweep what no deployment wants. Object names are derived from
//! the deployment, never stored: `c<contract>-<workload>` for disks and
//! volumes, `p-<11 hex>` of (twin, network name) for networks. Limits: a
//! driver reports a refusal as the daemon's own text, and a daemon that is
//! down or slow as [`DriverError::Unavailable`], which the engine retries.

pub mod container;
pub mod machine;
pub mod network;
mod running;
pub mod storage;
pub mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use grove_daemon::client::ClientError;
use md5::{Digest, Md5};

use crate::deployment::Workload;
use crate::deployment::workload::WorkloadType;

/// What a driver call returns.
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// Why a driver call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The daemon answered and refused: the workload fails with its text.
    #[error("{0}")]
    Refused(String),
    /// The daemon could not be reached or did not answer: the outcome is
    /// unknown, and the idempotent call is tried again.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ClientError> for DriverError {
    fn from(error: ClientError) -> Self {
        match &error {
            ClientError::Status {
                status, message, ..
            } if *status != hyper::StatusCode::SERVICE_UNAVAILABLE => {
                // The daemon's own words; a bare status (a route the daemon
                // lacks) says which call was refused, and how.
                if message.trim().is_empty() {
                    DriverError::Refused(error.to_string())
                } else {
                    DriverError::Refused(message.clone())
                }
            }
            ClientError::Status { .. }
            | ClientError::Connect { .. }
            | ClientError::Http { .. }
            | ClientError::Timeout { .. } => DriverError::Unavailable(error.to_string()),
            ClientError::Build { .. } | ClientError::Decode { .. } | ClientError::Encode { .. } => {
                DriverError::Refused(error.to_string())
            }
        }
    }
}

/// Whether `error` is a 404: a delete of something already gone.
pub(crate) fn is_not_found(error: &ClientError) -> bool {
    matches!(error, ClientError::Status { status, .. } if *status == hyper::StatusCode::NOT_FOUND)
}

/// What a driver makes: one workload of one deployment.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub contract: u64,
    pub twin: u32,
    pub workload: &'a Workload,
    /// The pool the capacity ledger placed the workload's disk on.
    pub pool: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// [`Target::pool`], or the refusal of a workload that needs a disk
    /// and was placed on no pool.
    pub fn placed_on(&self) -> Result<&'a str, DriverError> {
        self.pool.ok_or_else(|| {
            DriverError::Refused(format!(
                "workload '{}' was given no pool",
                self.workload.name
            ))
        })
    }
}

/// The driver of one workload type.
pub trait Driver: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> WorkloadType;

    /// The name of the object that workload `name` of `contract` (of `twin`)
    /// is on the node.
    fn object(&self, twin: u32, contract: u64, name: &str) -> String;

    /// Makes the object, or leaves it as it is when it already matches;
    /// answers the workload's result `data` in zos's shape.
    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value>;

    /// Removes the object named `object`; an absent one is not an error.
    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()>;

    /// Every object of this type on the node named as provisiond names its
    /// objects (and nothing else).
    fn objects(&self) -> DriverFuture<'_, Vec<String>>;

    /// How the object lives now (a container's state, restarts and last
    /// exit), added to its workload's result; `None` for objects that do
    /// not run.
    fn live(&self, _object: &str) -> Option<serde_json::Value> {
        None
    }

    /// The object's output (a container's stdout and stderr), at most its
    /// last `limit` bytes; `None` for objects without output.
    fn logs(&self, _object: &str, _limit: u64) -> Option<String> {
        None
    }
}

/// The drivers of a node, by workload type.
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    by_kind: BTreeMap<WorkloadType, Arc<dyn Driver>>,
}

impl Drivers {
    pub fn new(drivers: Vec<Arc<dyn Driver>>) -> Self {
        Self {
            by_kind: drivers.into_iter().map(|d| (d.kind(), d)).collect(),
        }
    }

    /// The real drivers: storaged's and netd's clients, runc and QEMU.
    pub fn node(
        storaged: storaged::client::StoragedClient,
        netd: netd::client::NetdClient,
        containers: Arc<container::ContainerDriver>,
        machines: Arc<machine::MachineDriver>,
    ) -> Self {
        Self::new(vec![
            Arc::new(storage::DiskDriver::zmount(storaged.clone())),
            Arc::new(storage::DiskDriver::volume(storaged)),
            Arc::new(network::NetworkDriver::new(netd)),
            containers,
            machines,
        ])
    }

    pub fn get(&self, kind: WorkloadType) -> Option<&Arc<dyn Driver>> {
        self.by_kind.get(&kind)
    }

    /// The types this node has drivers for.
    pub fn kinds(&self) -> Vec<WorkloadType> {
        self.by_kind.keys().copied().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        self.by_kind.values()
    }
}

/// Runs blocking work `f` (files, `/proc`, sysfs) on the blocking pool,
/// off the runtime's two threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, DriverError>
where
    F: FnOnce() -> Result<T, DriverError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Unavailable(format!("a blocking task ended: {e}")))?
}

/// netd's attachment `name` of `kind` on network `netid` at `ip`: made, or
/// found made at that address (one at another address is made again).
pub(crate) async fn attach(
    netd: &netd::client::NetdClient,
    netid: &str,
    name: &str,
    ip: &str,
    kind: netd::tenant::input::AttachKind,
) -> Result<netd::tenant::view::AttachmentView, DriverError> {
    let network = netd.network(netid).await.map_err(|e| {
        if is_not_found(&e) {
            DriverError::Refused(format!(
                "network {netid} is not on this node: deploy its network workload first"
            ))
        } else {
            DriverError::from(e)
        }
    })?;
    let request = netd::tenant::input::AttachRequest {
        name: name.to_owned(),
        kind,
        address: Some(ip.to_owned()),
    };
    match network.attachments.iter().find(|a| a.name == name) {
        Some(a) if a.kind == kind && a.address.split('/').next() == Some(ip) => Ok(a.clone()),
        Some(_) => {
            netd.detach(netid, name).await?;
            Ok(netd.attach(netid, &request).await?)
        }
        None => Ok(netd.attach(netid, &request).await?),
    }
}

/// Removes netd's attachment `name` of network `netid`; an absent one (or
/// network) is fine.
pub(crate) async fn detach(
    netd: &netd::client::NetdClient,
    netid: &str,
    name: &str,
) -> Result<(), DriverError> {
    match netd.detach(netid, name).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a running workload's driver keeps beside it, in `meta.json` of its
/// directory, to remove it without its deployment.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Meta {
    pub netid: String,
    /// The volume or vdisk holding its root filesystem.
    pub rootfs: String,
    /// The digest its image was pulled as: what keeps it in the cache.
    #[serde(default)]
    pub image: Option<String>,
}

impl Meta {
    pub(crate) fn read(dir: &std::path::Path) -> Option<Meta> {
        let bytes = std::fs::read(dir.join("meta.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Removes from `images` every image no `*/meta.json` below `dir` names.
/// A failure leaves them for the next collection.
pub(crate) async fn collect_images(images: Arc<crate::image::ImageStore>, dir: std::path::PathBuf) {
    let collected = tokio::task::spawn_blocking(move || {
        let mut keep = std::collections::HashSet::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if let Some(digest) = Meta::read(&entry.path())
                    .and_then(|m| m.image)
                    .and_then(|d| crate::image::Digest::parse(&d))
                {
                    keep.insert(digest);
                }
            }
        }
        images.collect(&keep)
    })
    .await;
    match collected {
        Ok(Ok(removed)) if !removed.is_empty() => {
            tracing::info!(images = ?removed, "unused images removed from the cache")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot collect unused images"),
        Err(e) => tracing::warn!(error = %e, "the image collection task failed"),
    }
}

/// Keeps the last half of a log that reached `limit`. Lines written
/// during the cut are lost.
pub(crate) fn trim_log(path: &std::path::Path, limit: u64) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() < limit {
        return;
    }
    if let Ok(bytes) = std::fs::read(path) {
        let keep = &bytes[bytes.len().saturating_sub((limit / 2) as usize)..];
        if let Err(e) = std::fs::write(path, keep) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cut a log");
        }
    }
}

/// The last `limit` bytes of the log at `path`, as text.
pub(crate) fn tail(path: &std::path::Path, limit: u64) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    Some(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// `c<contract>-<workload>`: a disk's or a volume's name (at most 58 of
/// storaged's 64 characters).
pub fn disk_name(contract: u64, workload: &str) -> String {
    format!("c{contract}-{workload}")
}

/// `r<contract>-<workload>`: the volume or vdisk holding the root of a
/// running workload (not `c…`, which names the deployment's own disks).
pub fn root_name(contract: u64, workload: &str) -> String {
    format!("r{contract}-{workload}")
}

/// Whether `name` is a disk or volume name provisiond makes.
pub fn is_disk_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('c') else {
        return false;
    };
    let Some((contract, workload)) = rest.split_once('-') else {
        return false;
    };
    !contract.is_empty()
        && contract.bytes().all(|b| b.is_ascii_digit())
        && !contract.starts_with('0')
        && crate::deployment::name::Name::new(workload).is_ok()
}

/// `p-` and 11 hex digits of the MD5 of (twin, network name): a network's
/// netid on the node, 13 characters as netd allows. A twin's network of one
/// name is one netid, on every node.
pub fn netid(twin: u32, network: &str) -> String {
    short_name("p-", &format!("{twin}:{network}"), 11)
}

/// `prefix` and the first `digits` hex digits of the MD5 of `text`: a
/// short name derived from what names an object, never stored.
pub(crate) fn short_name(prefix: &str, text: &str, digits: usize) -> String {
    let mut hex = hex::encode(Md5::digest(text.as_bytes()));
    hex.truncate(digits);
    format!("{prefix}{hex}")
}

/// Whether `name` is `prefix` and `digits` lowercase hex digits: a name
/// [`short_name`] makes.
pub(crate) fn is_short_name(name: &str, prefix: &str, digits: usize) -> bool {
    name.len() == prefix.len() + digits
        && name.starts_with(prefix)
        && name[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `netid` is a netid provisiond makes.
pub fn is_netid(netid: &str) -> bool {
    is_short_name(netid, "p-", 11)
}

/// The entries of `dir` whose names `ours` accepts (none when it is
/// missing): a driver's objects as its directories show them.
pub(crate) fn listed(
    dir: &std::path::Path,
    ours: fn(&str) -> bool,
) -> Result<Vec<String>, DriverError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| ours(n))
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(DriverError::Unavailable(format!("{}: {e}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_and_nothing_else() {
        assert_eq!(disk_name(42, "data_1"), "c42-data_1");
        assert!(is_disk_name("c42-data_1"));
        for other in [
            "c-x", "c042-x", "d42-x", "c42", "c4x-y", "c42-a-b", "cache", "",
        ] {
            assert!(!is_disk_name(other), "{other}");
        }
        let id = netid(7, "net");
        assert_eq!(id, netid(7, "net"), "deterministic");
        assert_ne!(id, netid(8, "net"));
        assert_ne!(id, netid(7, "net2"));
        assert!(is_netid(&id), "{id}");
        for other in ["p-123", "q-0123456789a", "p-0123456789A", "tenant1"] {
            assert!(!is_netid(other), "{other}");
        }
    }
}
