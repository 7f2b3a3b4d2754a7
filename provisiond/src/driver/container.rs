//! The container driver: a `container` workload is an OCI image run under
//! runc, in a network namespace of its own on its tenant network, with its
//! volumes mounted.
//!
//! `ensure` makes, in order and each idempotently: the image in the cache
//! ([`crate::image::ImageStore`], pulled once by digest); the root
//! filesystem, a storaged volume `r<contract>-<workload>` that starts as a
//! writable snapshot of the unpacked image, limited to `size`; the network
//! namespace, which netd makes on the tenant bridge at the address asked
//! (`c-<id>`, `eth0`, default route); the runc bundle (`config.json` from
//! `oci-spec`'s defaults, which are `runc spec`'s: default capabilities,
//! `no_new_privileges`, masked and read-only paths); then runc. The
//! container's id is `k-` and 10 hex digits of the MD5 of (contract,
//! workload). Root in the container is not root on the node: a user
//! namespace maps the container's ids 0–65535 to the node's `uid_base`…,
//! and images are unpacked with their owners moved there. CPU and memory
//! are limited through the cgroup `/grove/<id>`. stdout and stderr go to a
//! size-limited log. A [`Watch`] looks at every container each second and
//! starts one that stopped again, with a backoff, counting restarts and
//! OOM kills. A restarted provisiond finds its containers running (runc's
//! state) and adopts them: nothing starts twice.
//!
//! Limits: runc's seccomp profile is not set (runc 1.1's default spec has
//! none); `/sys` is an empty read-only tmpfs (sysfs cannot be mounted from
//! a user namespace into netd's network namespace, and the node's is not
//! the tenant's to read); the exit code of a container adopted after a provisiond restart
//! is not known; the log keeps its last half when it reaches its limit, and
//! lines written during that cut are lost.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd::client::NetdClient;
use netd::tenant::input::AttachKind;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, ProcessBuilder,
    RootBuilder, Spec,
};

use serde_json::json;
use storaged::client::StoragedClient;
use storaged::volume::VolumeRequest;

use super::running::{Disks, Running};
use super::watch::Watch;
use super::{Driver, DriverError, DriverFuture, Meta, Target, netid, root_name};
use crate::deployment::workload::WorkloadType;
use crate::deployment::workload::container::Container;
use crate::image::ImageStore;

/// How many ids of the node a container's user namespace maps.
pub const ID_RANGE: u32 = 65_536;
/// The most a container's log keeps.
pub const LOG_LIMIT: u64 = 1 << 20;
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);
/// runc's state directory (its default for root), named on every call.
const RUNC_ROOT: &str = "/run/runc";
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `k-` and 10 hex digits of the MD5 of (contract, workload): a
/// container's id, its bundle's and namespace's name (netd's names allow
/// 13 characters).
pub fn container_id(contract: u64, workload: &str) -> String {
    super::short_name("k-", &format!("{contract}:{workload}"), 10)
}

/// Whether `id` is a container id provisiond makes.
pub fn is_container_id(id: &str) -> bool {
    super::is_short_name(id, "k-", 10)
}

/// Where the driver keeps things and what it runs.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Bundles and logs, one directory per container.
    pub dir: PathBuf,
    /// netd's namespace directory: a container joins `<netns>/c-<id>`.
    pub netns: PathBuf,
    pub runc: PathBuf,
    /// The node's id that is root in every container.
    pub uid_base: u32,
}

/// Gives a volume's top directory to the containers' root (`base`), once:
/// a new volume is root's of the node, which root in a container is not.
fn hand_over(path: &Path, base: u32) -> Result<(), DriverError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| DriverError::Refused(format!("volume {}: {e}", path.display())))?;
    if meta.uid() == 0 {
        std::os::unix::fs::chown(path, Some(base), Some(base))
            .map_err(|e| DriverError::Refused(format!("volume {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The OOM kills container `id`'s memory cgroup counted.
fn oom_kills(id: &str) -> u64 {
    let path = Path::new("/sys/fs/cgroup/memory/grove")
        .join(id)
        .join("memory.oom_control");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `container` → runc.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    /// Its bundles' directory is [`ContainerConfig::dir`].
    running: Running,
    config: ContainerConfig,
}

impl ContainerDriver {
    pub fn new(
        storaged: StoragedClient,
        netd: NetdClient,
        images: Arc<ImageStore>,
        config: ContainerConfig,
    ) -> Self {
        let dir = config.dir.clone();
        Self {
            running: Running::new(storaged, netd, images, Disks::Volumes, dir),
            config,
        }
    }

    /// The containers' lives, for results and the dashboard.
    pub fn watch(&self) -> Arc<Watch> {
        self.running.watch.clone()
    }

    /// Looks at every container every `every`, and starts again (with a
    /// backoff) those that stopped. Runs until dropped.
    pub async fn keep_running(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            for id in self.running.watch.ids() {
                self.look_after(&id).await;
            }
        }
    }

    async fn look_after(&self, id: &str) {
        let Ok(state) = self.runc_state(id).await else {
            return;
        };
        let running = state.as_deref() == Some("running");
        // Each run has a cgroup of its own (a start deletes the stopped
        // container first), so any OOM kill it counts is this run's.
        let oom_killed = !running && {
            let cgroup = id.to_owned();
            super::blocking(move || Ok(oom_kills(&cgroup)))
                .await
                .unwrap_or(0)
                > 0
        };
        let due = self.running.watch.observe(id, running, |life| {
            life.last_exit = Some(if oom_killed {
                life.oom_kills += 1;
                "killed: out of memory".to_owned()
            } else {
                format!("exited ({})", state.as_deref().unwrap_or("gone"))
            });
        });
        if due {
            let started = self.start(id).await;
            if let Err(e) = &started {
                tracing::warn!(container = id, error = %e, "cannot start the container again");
            }
            self.running.watch.started(id, started.is_ok());
        }
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.running.dir(id)
    }

    async fn runc(&self, args: &[&str]) -> Result<std::process::Output, DriverError> {
        let run = tokio::process::Command::new(&self.config.runc)
            .arg("--root")
            .arg(RUNC_ROOT)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(RUNC_TIMEOUT, run)
            .await
            .map_err(|_elapsed| {
                DriverError::Unavailable(format!("runc {args:?} took over {RUNC_TIMEOUT:?}"))
            })?
            .map_err(|e| DriverError::Refused(format!("cannot run runc: {e}")))
    }

    /// runc's status of `id` (`running`, `stopped`, …), `None` when runc
    /// has no such container.
    async fn runc_state(&self, id: &str) -> Result<Option<String>, DriverError> {
        // runc keeps a directory per container it knows: without one there
        // is nothing to ask (the common case of a new container).
        if !tokio::fs::try_exists(Path::new(RUNC_ROOT).join(id))
            .await
            .unwrap_or(true)
        {
            return Ok(None);
        }
        let out = self.runc(&["state", id]).await?;
        if !out.status.success() {
            return Ok(None);
        }
        let state: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| DriverError::Unavailable(format!("runc state {id}: {e}")))?;
        Ok(state["status"].as_str().map(str::to_owned))
    }

    /// Starts the container from its bundle unless it runs: a stopped one
    /// is deleted first.
    async fn start(&self, id: &str) -> Result<(), DriverError> {
        match self.runc_state(id).await?.as_deref() {
            Some("running") => return Ok(()),
            Some(_) => {
                self.runc(&["delete", "--force", id]).await?;
            }
            None => {}
        }
        let bundle = self.bundle(id);
        let log_path = bundle.join("log");
        let (path, owned) = (log_path.clone(), id.to_owned());
        let (log, err) = super::blocking(move || {
            super::trim_log(&path, LOG_LIMIT);
            let failed =
                |e: std::io::Error| DriverError::Refused(format!("the log of {owned}: {e}"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(failed)?;
            let err = log.try_clone().map_err(failed)?;
            Ok((log, err))
        })
        .await?;
        let bundle_text = bundle.display().to_string();
        let pid_file = bundle.join("pid").display().to_string();
        let run = tokio::process::Command::new(&self.config.runc)
            .args([
                "run",
                "--detach",
                "--bundle",
                &bundle_text,
                "--pid-file",
                &pid_file,
                id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(RUNC_TIMEOUT, run)
            .await
            .map_err(|_elapsed| {
                DriverError::Unavailable(format!("runc run {id} took over {RUNC_TIMEOUT:?}"))
            })?
            .map_err(|e| DriverError::Refused(format!("cannot run runc: {e}")))?;
        if !status.success() {
            let tail = tokio::fs::read_to_string(&log_path)
                .await
                .unwrap_or_default();
            let last = tail.lines().last().unwrap_or("no output").to_owned();
            return Err(DriverError::Refused(format!(
                "runc could not start container {id}: {last}"
            )));
        }
        Ok(())
    }

    /// netd's namespace `c-<id>` on `netid` at `ip`.
    async fn attach(&self, netid: &str, id: &str, ip: &str) -> Result<PathBuf, DriverError> {
        let view = super::attach(&self.running.netd, netid, id, ip, AttachKind::Namespace).await?;
        let ns = view.namespace.ok_or_else(|| {
            DriverError::Refused(format!("netd gave container {id} no namespace"))
        })?;
        Ok(self.config.netns.join(ns))
    }

    /// The spec of container `id`.
    fn spec(
        &self,
        id: &str,
        c: &Container,
        image: &crate::image::Image,
        rootfs: &Path,
        netns: &Path,
        binds: &[(PathBuf, String)],
    ) -> Result<Spec, DriverError> {
        let bad =
            |e: oci_spec::OciSpecError| DriverError::Refused(format!("the spec of {id}: {e}"));
        let args = if c.entrypoint.is_empty() {
            image
                .config
                .entrypoint
                .iter()
                .chain(&image.config.cmd)
                .cloned()
                .collect::<Vec<_>>()
        } else {
            c.entrypoint.clone()
        };
        if args.is_empty() {
            return Err(DriverError::Refused(format!(
                "container {id}: neither the workload nor the image names a program to run"
            )));
        }
        let mut env: BTreeMap<String, String> = image
            .config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        env.extend(c.env.clone());
        let mut spec = Spec::default();
        let defaults = spec.process().clone().unwrap_or_default();
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(defaults.user().clone())
            .args(args)
            .env(
                env.into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
            .cwd(
                image
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into()),
            )
            .capabilities(defaults.capabilities().clone().unwrap_or_default())
            .rlimits(defaults.rlimits().clone().unwrap_or_default())
            .no_new_privileges(true)
            .build()
            .map_err(bad)?;
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(false)
                .build()
                .map_err(bad)?,
        ));
        spec.set_hostname(Some(id.to_owned()));
        // sysfs cannot be mounted from a user namespace that does not own
        // the network namespace (netd's, made by root); the container gets
        // an empty read-only /sys instead of the node's.
        let mut mounts: Vec<_> = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !m.destination().starts_with("/sys"))
            .collect();
        mounts.push(
            MountBuilder::default()
                .destination("/sys")
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    "ro".into(),
                ])
                .build()
                .map_err(bad)?,
        );
        for (source, destination) in binds {
            mounts.push(
                MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(source)
                    .options(vec!["rbind".into(), "rw".into()])
                    .build()
                    .map_err(bad)?,
            );
        }
        spec.set_mounts(Some(mounts));
        let linux_defaults = spec.linux().clone().unwrap_or_default();
        let mut namespaces = Vec::new();
        for typ in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::User,
        ] {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .build()
                    .map_err(bad)?,
            );
        }
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns)
                .build()
                .map_err(bad)?,
        );
        let ids = vec![
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(self.config.uid_base)
                .size(ID_RANGE)
                .build()
                .map_err(bad)?,
        ];
        let period: u64 = 100_000;
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(i64::try_from(c.compute_capacity.memory).unwrap_or(i64::MAX))
                    .build()
                    .map_err(bad)?,
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota(i64::from(c.compute_capacity.cpu) * period as i64)
                    .build()
                    .map_err(bad)?,
            )
            .build()
            .map_err(bad)?;
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .uid_mappings(ids.clone())
            .gid_mappings(ids)
            .resources(resources)
            .cgroups_path(PathBuf::from(format!("/grove/{id}")))
            .masked_paths(linux_defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(linux_defaults.readonly_paths().clone().unwrap_or_default())
            .build()
            .map_err(bad)?;
        spec.set_linux(Some(linux));
        Ok(spec)
    }

    async fn make(&self, target: Target<'_>) -> Result<serde_json::Value, DriverError> {
        let name = target.workload.name.as_str();
        let crate::deployment::workload::WorkloadData::Container(c) = &target.workload.data else {
            return Err(DriverError::Refused(format!(
                "workload '{name}' is not a container"
            )));
        };
        let id = container_id(target.contract, name);
        let image_ref = c
            .image_ref()
            .map_err(|i| DriverError::Refused(format!("{}: {}", i.field, i.problem)))?;
        let image = self.running.pull(&image_ref).await?;
        let pool = target.placed_on()?;
        let rootfs_volume = root_name(target.contract, name);
        let network = netid(target.twin, c.interface.network.as_str());
        let ip = c.interface.ip.0.to_string();
        // The root filesystem and the network namespace do not depend on
        // each other: storaged and netd make them at once.
        let request = VolumeRequest {
            pool: pool.to_owned(),
            size: c.size,
            snapshot_of: Some(image.rootfs.clone()),
        };
        let (rootfs, netns) = tokio::try_join!(
            async {
                Ok::<_, DriverError>(
                    self.running
                        .storaged
                        .ensure_volume(&rootfs_volume, &request)
                        .await?,
                )
            },
            self.attach(&network, &id, &ip),
        )?;
        let names: Vec<&str> = c.mounts.iter().map(|m| m.name.as_str()).collect();
        let volumes = self.running.disks(target.contract, &names).await?;
        let mut binds = Vec::new();
        for (mount, volume) in c.mounts.iter().zip(volumes) {
            let (path, base) = (volume.clone(), self.config.uid_base);
            super::blocking(move || hand_over(&path, base)).await?;
            binds.push((volume, mount.mountpoint.clone()));
        }
        let spec = self.spec(&id, c, &image, &rootfs.path, &netns, &binds)?;
        let text = serde_json::to_vec_pretty(&spec)
            .map_err(|e| DriverError::Refused(format!("the spec of {id}: {e}")))?;
        let meta = serde_json::to_vec(&Meta {
            netid: network,
            rootfs: rootfs_volume,
            image: Some(image_ref.digest.to_string()),
        })
        .map_err(|e| DriverError::Refused(format!("container {id}: {e}")))?;
        let bundle = self.bundle(&id);
        let config_path = bundle.join("config.json");
        let unchanged = tokio::fs::read(&config_path)
            .await
            .is_ok_and(|old| old == text);
        if !unchanged {
            // A new spec (an update): the running container stops first.
            self.stop(&id).await?;
            let (b, t) = (bundle.clone(), text.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::create_dir_all(&b)?;
                let write = |name: &str, bytes: &[u8]| {
                    grove_daemon::fsutil::write_atomic(&b.join(name), bytes, 0o600)
                        .map_err(std::io::Error::other)
                };
                write("meta.json", &meta)?;
                write("config.json", &t)
            })
            .await
            .map_err(|e| DriverError::Unavailable(e.to_string()))?
            .map_err(|e| DriverError::Refused(format!("the bundle of {id}: {e}")))?;
        }
        self.start(&id).await?;
        self.running.watch.track(&id);
        Ok(json!({"id": id, "ip": ip, "image": image.manifest}))
    }

    /// Stops container `id` (SIGTERM, then SIGKILL after a grace) and
    /// deletes it from runc; an absent one is fine.
    async fn stop(&self, id: &str) -> Result<(), DriverError> {
        if self.runc_state(id).await?.is_none() {
            return Ok(());
        }
        self.runc(&["kill", id, "TERM"]).await?;
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.runc_state(id).await?.as_deref() != Some("running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = self.runc(&["delete", "--force", id]).await?;
        if !out.status.success() && self.runc_state(id).await?.is_some() {
            return Err(DriverError::Unavailable(format!(
                "runc delete {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Driver for ContainerDriver {
    fn kind(&self) -> WorkloadType {
        WorkloadType::Container
    }

    fn object(&self, _twin: u32, contract: u64, name: &str) -> String {
        container_id(contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(self.running.holding_images(self.make(target)))
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(self.running.remove(object, self.stop(object), "bundle of"))
    }

    fn live(&self, object: &str) -> Option<serde_json::Value> {
        self.running.life(object)
    }

    fn logs(&self, object: &str, limit: u64) -> Option<String> {
        super::tail(&self.bundle(object).join("log"), limit)
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            let listed = self.runc(&["list", "--quiet"]).await?;
            let running = String::from_utf8_lossy(&listed.stdout)
                .lines()
                .filter(|l| is_container_id(l))
                .map(str::to_owned)
                .collect::<Vec<_>>();
            self.running.objects(is_container_id, running).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_provisionds_own() {
        let id = container_id(42, "app");
        assert_eq!(id, container_id(42, "app"));
        assert_ne!(id, container_id(43, "app"));
        assert!(is_container_id(&id), "{id}");
        assert_eq!(id.len(), 12);
        for other in ["k-123", "c-0123456789", "k-0123456789A", "web"] {
            assert!(!is_container_id(other), "{other}");
        }
        assert_eq!(root_name(42, "app"), "r42-app");
        assert!(!super::super::is_disk_name(&root_name(42, "app")));
    }
}
