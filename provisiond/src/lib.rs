//! `provisiond`: Deployments: validation, signatures, a durable store, capacity accounting and the workload drivers.
//!
//! The library holds all of the daemon's logic; `main.rs` only parses flags
//! and calls [`run`]. It serves its API on `/run/grove/provisiond.sock`, and
//! [`client::ProvisiondClient`] is how `agent` and the other daemons reach it.
//!
//! The parts: [`deployment`] (zos's wire format, checks, hash and
//! signatures), [`admission`] (every check before anything is touched),
//! [`store`] (the durable record of deployments, results and history),
//! [`capacity`] (the ledger that refuses what does not fit), [`update`]
//! (zos's update rules), [`engine`] (admission, then each deployment's
//! ordered work, recorded step by step, restored at start), [`driver`] (one
//! per workload type, over storaged's and netd's clients) and [`server`]
//! (the socket API, shapes in [`api`]).

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod deployment;
pub mod driver;
pub mod engine;
pub mod image;
pub mod server;
pub mod store;
pub mod update;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grove_daemon::cli::Failure;
use grove_daemon::server::{Identity, Readiness, ServerError};
use grove_daemon::shutdown::Shutdown;
use serde::Deserialize;

use crate::capacity::{Node, Pool, PoolKind};
use crate::driver::Drivers;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::store::{Store, StoreError};

/// The daemon's name: its socket, its log field, its service name in `agent`.
pub const NAME: &str = "provisiond";

/// `/etc/grove/provisiond.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API socket.
    pub socket: PathBuf,
    /// The store; `provisiond/deployments.redb` in [`grove_daemon::CACHE_DIR`]
    /// when unset.
    pub store: Option<PathBuf>,
    /// The node's id on the registry; the agent may also give it with
    /// `PUT /v1/node` once it knows it.
    pub node_id: Option<u32>,
    /// storaged's socket.
    pub storaged: PathBuf,
    /// netd's socket.
    pub netd: PathBuf,
    /// The image cache; `provisiond/images` in [`grove_daemon::CACHE_DIR`]
    /// (on an SSD pool) when unset.
    pub images: Option<PathBuf>,
    /// Container bundles and logs; `provisiond/containers` in
    /// [`grove_daemon::CACHE_DIR`] when unset.
    pub containers: Option<PathBuf>,
    /// Machine directories (launch, console, QMP); `provisiond/machines`
    /// in [`grove_daemon::CACHE_DIR`] when unset.
    pub machines: Option<PathBuf>,
    /// The machine image cache (unpacked with the owners the image has);
    /// `provisiond/machine-images` in [`grove_daemon::CACHE_DIR`] when
    /// unset.
    pub machine_images: Option<PathBuf>,
    /// QEMU.
    pub qemu: PathBuf,
    /// How machines run: `kvm`, `tcg`, or unset for KVM when `/dev/kvm` is
    /// usable, else TCG.
    pub accel: Option<driver::machine::Accel>,
    /// How long a machine has to power off before QEMU quits, seconds.
    pub machine_stop_grace: u64,
    /// netd's namespace directory.
    pub netns_dir: PathBuf,
    /// The OCI runtime.
    pub runc: PathBuf,
    /// The node's id that root in a container is; containers map 65536
    /// ids from it.
    pub uid_base: u32,
    /// Image registries (`host:port`) reached over plain HTTP: a farm's own
    /// registry on its LAN. Every other one is HTTPS.
    pub http_registries: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: grove_daemon::socket_path(NAME),
            store: None,
            node_id: None,
            storaged: grove_daemon::socket_path("storaged"),
            netd: grove_daemon::socket_path("netd"),
            images: None,
            containers: None,
            machines: None,
            machine_images: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: None,
            machine_stop_grace: 30,
            netns_dir: PathBuf::from("/run/netns"),
            runc: PathBuf::from("runc"),
            uid_base: 1_000_000,
            http_registries: Vec::new(),
        }
    }
}

/// Why `provisiond` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisiondError {
    #[error(transparent)]
    Serve(#[from] ServerError),
    #[error("cannot make the store's directory {path}: {source}")]
    StoreDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Images(#[from] image::ImageError),
    #[error("cannot read the node's cores and memory from the kernel")]
    Host,
}

impl Failure for ProvisiondError {}

/// The node's cores and memory in bytes, as the kernel reports them.
pub fn host() -> Result<(u64, u64), ProvisiondError> {
    let mut system = sysinfo::System::new();
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system.refresh_memory();
    let cores = u64::try_from(system.cpus().len()).unwrap_or(u64::MAX);
    let memory = system.total_memory();
    if cores == 0 || memory == 0 {
        return Err(ProvisiondError::Host);
    }
    Ok((cores, memory))
}

/// The node's pools as storaged reports them: mounted, of this node.
async fn pools(storaged: &storaged::client::StoragedClient, shutdown: &Shutdown) -> Vec<Pool> {
    let mut wait = Duration::from_millis(200);
    loop {
        match storaged.pools().await {
            Ok(pools) => {
                return pools
                    .into_iter()
                    .filter(|p| p.this_node && p.is_mounted())
                    .map(|p| Pool {
                        label: p.label.to_string(),
                        kind: match p.kind {
                            storaged::pool::kind::DiskKind::Ssd => PoolKind::Ssd,
                            storaged::pool::kind::DiskKind::Hdd => PoolKind::Hdd,
                        },
                        size: p.size_bytes,
                        system: p.reserved_bytes,
                    })
                    .collect();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read storaged's pools yet");
                if shutdown.is_triggered() {
                    return Vec::new();
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `set`, or `name` in provisiond's directory of [`grove_daemon::CACHE_DIR`].
fn in_cache(set: Option<&PathBuf>, name: &str) -> PathBuf {
    set.cloned()
        .unwrap_or_else(|| Path::new(grove_daemon::CACHE_DIR).join(NAME).join(name))
}

/// Opens an image cache on a blocking thread.
async fn open_images(config: image::StoreConfig) -> Result<image::ImageStore, ProvisiondError> {
    let opened = tokio::task::spawn_blocking(move || image::ImageStore::open(config))
        .await
        .map_err(EngineError::from)?;
    Ok(opened?)
}

/// Runs the daemon until `shutdown` trips: restores every deployment from
/// the store before it accepts new ones.
/// The first line `program --version` prints, or why there is none: what
/// provisiond says at start of each runtime it needs, so a node that cannot
/// run a kind of workload says so before a deployment finds out.
async fn runtime_version(program: &Path) -> Result<String, String> {
    let run = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", program.display())),
        Err(_) => {
            return Err(format!(
                "{} --version did not answer in 10 s",
                program.display()
            ));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(line) if out.status.success() => Ok(line.trim().to_owned()),
        _ => Err(format!(
            "{} --version failed: {}",
            program.display(),
            out.status
        )),
    }
}

pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProvisiondError> {
    let identity = Identity::new(NAME, env!("CARGO_PKG_VERSION"));
    let readiness = Readiness::waiting("restoring deployments");
    let path = in_cache(config.store.as_ref(), "deployments.redb");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProvisiondError::StoreDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(EngineError::from)??;
    let storaged = storaged::client::StoragedClient::new(&config.storaged)
        .with_timeout(Duration::from_secs(300));
    let netd = netd::client::NetdClient::new(&config.netd).with_timeout(Duration::from_secs(120));
    let (cores, memory) = tokio::task::spawn_blocking(host)
        .await
        .map_err(EngineError::from)??;
    let node = Node {
        cores,
        memory,
        pools: pools(&storaged, &shutdown).await,
    };
    let mut images = image::StoreConfig::new(in_cache(config.images.as_ref(), "images"));
    images.http_registries = config.http_registries.clone();
    images.owner_shift = config.uid_base;
    let images = open_images(images).await?;
    let mut machine_images =
        image::StoreConfig::new(in_cache(config.machine_images.as_ref(), "machine-images"));
    machine_images.http_registries = config.http_registries.clone();
    let machine_images = open_images(machine_images).await?;
    let containers = Arc::new(driver::container::ContainerDriver::new(
        storaged.clone(),
        netd.clone(),
        Arc::new(images),
        driver::container::ContainerConfig {
            dir: in_cache(config.containers.as_ref(), "containers"),
            netns: config.netns_dir.clone(),
            runc: config.runc.clone(),
            uid_base: config.uid_base,
        },
    ));
    let accel = config
        .accel
        .unwrap_or_else(|| driver::machine::Accel::detect(Path::new("/dev/kvm")));
    // Beside the start, not before it: QEMU's first start reads its binary
    // from the compute runtime's squashfs, seconds under emulation.
    let (qemu, runc) = (config.qemu.clone(), config.runc.clone());
    tokio::spawn(async move {
        match runtime_version(&qemu).await {
            Ok(version) => tracing::info!(?accel, %version, "machines run under QEMU"),
            Err(error) => tracing::warn!(%error, "machines cannot run: no QEMU"),
        }
        match runtime_version(&runc).await {
            Ok(version) => tracing::info!(%version, "containers run with runc"),
            Err(error) => tracing::warn!(%error, "containers cannot run: no runc"),
        }
    });
    let machines = Arc::new(driver::machine::MachineDriver::new(
        storaged.clone(),
        netd.clone(),
        Arc::new(machine_images),
        driver::machine::MachineConfig {
            dir: in_cache(config.machines.as_ref(), "machines"),
            netns: config.netns_dir.clone(),
            qemu: config.qemu.clone(),
            accel,
            stop_grace: Duration::from_secs(config.machine_stop_grace),
        },
    ));
    let watch = tokio::spawn(containers.clone().keep_running(Duration::from_secs(1)));
    let machine_watch = tokio::spawn(machines.clone().keep_running(Duration::from_secs(1)));
    let engine = Engine::start(
        EngineConfig {
            node_id: config.node_id,
            node,
            retry: Duration::from_millis(200),
        },
        store,
        Drivers::node(storaged, netd, containers, machines),
    )
    .await?;
    readiness.set_ready();
    let api = server::routes(engine.clone());
    let served =
        grove_daemon::server::serve_daemon(identity, readiness, &config.socket, api, shutdown)
            .await;
    engine.shutdown().await;
    watch.abort();
    machine_watch.abort();
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The cores are the kernel's online CPUs and the memory its
    /// `MemTotal`, read here from `/proc` on their own.
    #[test]
    fn host_reports_the_kernels_cores_and_memory() {
        let (cores, memory) = super::host().unwrap();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let processors = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(cores, processors as u64);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(memory, kib * 1024);
    }
}
