//! The machine driver: a `zmachine` workload is a virtual machine under
//! QEMU, booted from an OCI image pinned by digest, on its tenant network,
//! with its zmounts as disks.
//!
//! `ensure` makes, in order and each idempotently: the image in the cache
//! (pulled once by digest, unpacked with its owners as they are); the root
//! disk, a storaged vdisk `r<contract>-<workload>` of the machine's root
//! size, filled once from the image (a marker in the machine's directory
//! says it was); the tap `t-<id>` on the tenant bridge, inside the
//! network's namespace, from netd; the launch (QEMU's arguments, kept in
//! `launch.json`); then QEMU itself, started in the network's namespace
//! with `nsenter` and daemonized, so that it outlives provisiond. The
//! machine's id is `m-` and 10 hex digits of the MD5 of (contract,
//! workload); QEMU runs under that process name, which is how a restarted
//! provisiond finds and adopts it, and never starts a second one.
//!
//! The image says how the machine boots, by zos's conventions for a VM
//! flist:
//! - `/boot/vmlinuz` and `/boot/initrd.img`: a direct boot. The root disk
//!   is an ext4 file system of the image's files (`mkfs.ext4 -d`), the
//!   kernel command line carries `root=/dev/vda`, the address as `ip=` and
//!   the `entrypoint` as `init=`.
//! - `/image.raw`, or the first of `/disk/*.img` and `/disk/*.qcow2`
//!   (KubeVirt's containerDisk): the disk image is written onto the root
//!   disk, and a cloud-init NoCloud seed disk (label `cidata`) carries the
//!   network (network-config v2) and `SSH_KEY` of `env` as an authorized key.
//!
//! QEMU gets `-smp cpu`, `-m memory`, KVM when the node has a usable
//! `/dev/kvm` (else TCG), the root disk and each zmount as virtio disks
//! (the zmount's name, cut to virtio's 20 bytes, as its serial), a
//! virtio NIC on the tap with netd's MAC for the workload, the serial
//! console appended to a log kept under [`LOG_LIMIT`], and a QMP socket. A
//! stop is ACPI power-down through QMP, then `quit` after a grace, then
//! SIGKILL. A machine that stops by itself is started again by the
//! [`Watch`], with a backoff.
//!
//! Limits: zmounts are attached as disks but not mounted for the guest (a
//! guest mounts them by serial); `corex`, GPUs, public IPs, planetary and
//! mycelium are not offered; a disk image larger than the root disk is
//! refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd::client::NetdClient;
use netd::tenant::input::AttachKind;
use netd::tenant::view::AttachmentView;
use serde::{Deserialize, Serialize};
use serde_json::json;
use storaged::client::StoragedClient;
use storaged::volume::VdiskRequest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::running::{Disks, Running};
use super::watch::Watch;
use super::{Driver, DriverError, DriverFuture, Meta, Target, netid, root_name};
use crate::deployment::workload::WorkloadType;
use crate::image::ImageStore;

/// The most a machine's console log keeps.
pub const LOG_LIMIT: u64 = 1 << 20;
/// The longest a virtio disk serial is.
const SERIAL_BYTES: usize = 20;
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;
/// The cap on TCG's translation cache, in MiB (counted in
/// `capacity::MACHINE_OVERHEAD`).
const TCG_CACHE_MIB: u64 = 64;

/// `m-` and 10 hex digits of the MD5 of (contract, workload): a machine's
/// id, its directory's, its QEMU process's and its tap's name.
pub fn machine_id(contract: u64, workload: &str) -> String {
    super::short_name("m-", &format!("{contract}:{workload}"), 10)
}

/// Whether `id` is a machine id provisiond makes.
pub fn is_machine_id(id: &str) -> bool {
    super::is_short_name(id, "m-", 10)
}

/// How QEMU runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when `dev_kvm` opens for reading and writing, else TCG.
    pub fn detect(dev_kvm: &Path) -> Accel {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_kvm)
            .is_ok();
        if usable { Accel::Kvm } else { Accel::Tcg }
    }
}

/// Where the driver keeps things and what it runs.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// One directory per machine: launch, disks' markers, console, QMP.
    pub dir: PathBuf,
    /// netd's namespace directory: QEMU runs in `<netns>/n-<netid>`.
    pub netns: PathBuf,
    pub qemu: PathBuf,
    pub accel: Accel,
    /// How long a guest has to power off before QEMU quits.
    pub stop_grace: Duration,
}

/// How a machine's image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// A kernel and an initrd; the image's files are the root disk.
    Direct { kernel: PathBuf, initrd: PathBuf },
    /// A disk image written onto the root disk.
    Disk { image: PathBuf },
}

/// What the image at `rootfs` holds for a machine.
fn layout(rootfs: &Path) -> Result<Layout, String> {
    let kernel = rootfs.join("boot/vmlinuz");
    let initrd = rootfs.join("boot/initrd.img");
    if kernel.is_file() && initrd.is_file() {
        return Ok(Layout::Direct { kernel, initrd });
    }
    let raw = rootfs.join("image.raw");
    if raw.is_file() {
        return Ok(Layout::Disk { image: raw });
    }
    let mut disks: Vec<PathBuf> = std::fs::read_dir(rootfs.join("disk"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "img" || e == "qcow2"))
        .collect();
    disks.sort();
    match disks.into_iter().next() {
        Some(image) => Ok(Layout::Disk { image }),
        None => Err(
            "the image holds neither /boot/vmlinuz with /boot/initrd.img, \
                     nor /image.raw, nor a disk in /disk: it is not a machine image"
                .into(),
        ),
    }
}

/// A machine's QEMU, as `launch.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Launch {
    /// The network namespace QEMU runs in.
    netns: PathBuf,
    args: Vec<String>,
}

/// What a machine is made of, for [`qemu_args`].
#[derive(Debug, Clone)]
struct Shape<'a> {
    id: &'a str,
    dir: &'a Path,
    accel: Accel,
    cpu: u8,
    memory: u64,
    /// Direct boot: the kernel, the initrd and the command line.
    boot: Option<(PathBuf, PathBuf, String)>,
    root: &'a Path,
    /// The zmounts' vdisks, with their names.
    disks: &'a [(String, PathBuf)],
    seed: Option<PathBuf>,
    tap: &'a str,
    mac: &'a str,
}

/// QEMU's arguments for a machine of `shape`.
fn qemu_args(shape: &Shape<'_>) -> Vec<String> {
    let dir = shape.dir.display();
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("{},process={}", shape.id, shape.id),
        "-machine".into(),
        "q35".into(),
        // TCG's translation cache is capped: its memory is part of the
        // overhead the ledger holds for each machine.
        "-accel".into(),
        match shape.accel {
            Accel::Kvm => "kvm".into(),
            Accel::Tcg => format!("tcg,tb-size={TCG_CACHE_MIB}"),
        },
        "-cpu".into(),
        match shape.accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        },
        "-smp".into(),
        shape.cpu.to_string(),
        "-m".into(),
        format!("{}M", shape.memory.div_ceil(MIB)),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        format!("file,id=console,path={dir}/console.log,append=on"),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!("unix:{dir}/qmp.sock,server=on,wait=off"),
        "-pidfile".into(),
        format!("{dir}/pid"),
        "-daemonize".into(),
    ];
    if let Some((kernel, initrd, cmdline)) = &shape.boot {
        args.extend([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            cmdline.clone(),
        ]);
    }
    let mut disk = |id: &str, path: &Path, serial: Option<&str>, extra: &str| {
        args.push("-drive".into());
        args.push(format!(
            "file={},if=none,id={id},format=raw{extra}",
            path.display()
        ));
        args.push("-device".into());
        args.push(match serial {
            Some(serial) => format!("virtio-blk-pci,drive={id},serial={serial}"),
            None => format!("virtio-blk-pci,drive={id}"),
        });
    };
    disk("root", shape.root, None, ",discard=unmap");
    for (i, (name, path)) in shape.disks.iter().enumerate() {
        let serial: String = name.chars().take(SERIAL_BYTES).collect();
        disk(&format!("d{i}"), path, Some(&serial), ",discard=unmap");
    }
    if let Some(seed) = &shape.seed {
        disk("seed", seed, None, ",readonly=on");
    }
    args.extend([
        "-netdev".into(),
        format!("tap,id=net0,ifname={},script=no,downscript=no", shape.tap),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", shape.mac),
    ]);
    args
}

/// The kernel's `ip=` for an address `ip/len` via `gateway`.
fn kernel_ip(view: &AttachmentView) -> Result<String, DriverError> {
    let (ip, len) = view
        .address
        .split_once('/')
        .ok_or_else(|| DriverError::Refused(format!("netd's address {:?}", view.address)))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| DriverError::Refused(format!("netd's address {:?}", view.address)))?;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0));
    Ok(format!("ip={ip}::{}:{mask}::eth0:off", view.gateway))
}

/// The NoCloud files of a machine booted from a disk image: `meta-data`,
/// `network-config` (v2) and `user-data`.
fn cloud_init(
    id: &str,
    name: &str,
    view: &AttachmentView,
    ssh_key: Option<&str>,
) -> [(&'static str, String); 3] {
    let meta = format!("instance-id: {id}\nlocal-hostname: {name}\n");
    let network = format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    \
         set-name: eth0\n    addresses: [\"{address}\"]\n    routes:\n      \
         - to: 0.0.0.0/0\n        via: {gateway}\n",
        mac = view.mac,
        address = view.address,
        gateway = view.gateway,
    );
    let mut user = String::from("#cloud-config\n");
    if let Some(key) = ssh_key {
        user.push_str(&format!(
            "ssh_authorized_keys:\n  - {}\n",
            serde_json::Value::String(key.trim().to_owned())
        ));
    }
    [
        ("meta-data", meta),
        ("network-config", network),
        ("user-data", user),
    ]
}

/// `zmachine` → QEMU.
#[derive(Debug, Clone)]
pub struct MachineDriver {
    /// Its machines' directory is [`MachineConfig::dir`].
    running: Running,
    config: MachineConfig,
}

/// Runs `program` with `args` to its end, within [`TOOL_TIMEOUT`]; a
/// failure says what it printed last.
async fn tool(program: &Path, args: &[String]) -> Result<(), DriverError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A tool cut off by provisiond's death must not go on writing beside
    // the one the restarted daemon runs. (QEMU escapes it: it daemonizes.)
    grove_daemon::parent::die_with_parent(&mut command);
    let run = command.output();
    let out = tokio::time::timeout(TOOL_TIMEOUT, run)
        .await
        .map_err(|_elapsed| {
            DriverError::Unavailable(format!("{} took over {TOOL_TIMEOUT:?}", program.display()))
        })?
        .map_err(|e| DriverError::Refused(format!("cannot run {}: {e}", program.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(DriverError::Refused(format!(
        "{} failed ({}): {last}",
        program.display(),
        out.status
    )))
}

/// The pids and names of this node's QEMU processes: processes named as
/// machine ids (QEMU runs under its machine's id) in provisiond's own
/// mount namespace, so that a process of another node sharing the host's
/// process table (a test farm's) is never taken for one of ours.
fn machines_running() -> Vec<(i32, String)> {
    let Ok(ours) = std::fs::read_link("/proc/self/ns/mnt") else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            if !is_machine_id(comm) {
                return None;
            }
            let ns = std::fs::read_link(e.path().join("ns/mnt")).ok()?;
            (ns == ours).then(|| (pid, comm.to_owned()))
        })
        .collect()
}

/// The process running machine `id` (a scan of `/proc`, off the
/// runtime's threads).
async fn pid_of(id: &str) -> Option<i32> {
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        machines_running()
            .into_iter()
            .find_map(|(pid, name)| (name == id).then_some(pid))
    })
    .await
    .ok()
    .flatten()
}

/// The next answer on a QMP connection: its `return`, or its `error` as
/// an error; events are skipped.
async fn qmp_answer<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Result<serde_json::Value, String> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| format!("QMP: {e}"))?
            .ok_or_else(|| "QMP: closed".to_owned())?;
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("QMP: {e}"))?;
        if let Some(error) = value.get("error") {
            return Err(format!("QMP: {error}"));
        }
        if let Some(r) = value.get("return") {
            return Ok(r.clone());
        }
    }
}

/// Sends `command` through QMP at `socket`; answers its `return`.
async fn qmp(socket: &Path, command: &str) -> Result<serde_json::Value, String> {
    let talk = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("QMP {}: {e}", socket.display()))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines
            .next_line()
            .await
            .map_err(|e| format!("QMP: {e}"))?
            .unwrap_or_default();
        if !greeting.contains("QMP") {
            return Err(format!("QMP greeting {greeting:?}"));
        }
        for request in ["qmp_capabilities", command] {
            write
                .write_all(format!("{{\"execute\":\"{request}\"}}\n").as_bytes())
                .await
                .map_err(|e| format!("QMP: {e}"))?;
            let answer = qmp_answer(&mut lines).await?;
            if request == command {
                return Ok(answer);
            }
        }
        Err("QMP: no command".to_owned())
    };
    tokio::time::timeout(QMP_TIMEOUT, talk)
        .await
        .map_err(|_elapsed| format!("QMP {command}: no answer in {QMP_TIMEOUT:?}"))?
}

/// Writes `bytes` to `path` atomically, for machine `id`, off the
/// runtime's threads.
async fn write(path: PathBuf, bytes: Vec<u8>, id: &str) -> Result<(), DriverError> {
    let id = id.to_owned();
    super::blocking(move || {
        grove_daemon::fsutil::write_atomic(&path, &bytes, 0o600)
            .map_err(|e| DriverError::Refused(format!("machine {id}: {e}")))
    })
    .await
}

/// Whether the root disk of machine `id` (directory `dir`) was filled from
/// image `digest`. A disk filled from another image is the guest's: it is
/// refused, never filled again.
fn filled(dir: &Path, id: &str, digest: &str) -> Result<bool, DriverError> {
    let marker = dir.join("root.filled");
    match std::fs::read_to_string(&marker) {
        Ok(filled) if filled == digest => Ok(true),
        Ok(filled) => Err(DriverError::Refused(format!(
            "machine {id}'s root disk was filled from {filled} and holds the guest's \
                 data; it is not filled again from {digest}"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::Unavailable(format!(
            "{}: {e}",
            marker.display()
        ))),
    }
}

impl MachineDriver {
    pub fn new(
        storaged: StoragedClient,
        netd: NetdClient,
        images: Arc<ImageStore>,
        config: MachineConfig,
    ) -> Self {
        let dir = config.dir.clone();
        Self {
            running: Running::new(storaged, netd, images, Disks::Vdisks, dir),
            config,
        }
    }

    /// How this node runs guests.
    pub fn accel(&self) -> Accel {
        self.config.accel
    }

    /// The machines' lives, for results and the dashboard.
    pub fn watch(&self) -> Arc<Watch> {
        self.running.watch.clone()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.running.dir(id)
    }

    /// Looks at every machine every `every`, starts again (with a
    /// backoff) those that stopped and keeps their console logs in size.
    /// Runs until dropped.
    pub async fn keep_running(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            for id in self.running.watch.ids() {
                let log = self.dir(&id).join("console.log");
                let _ = tokio::task::spawn_blocking(move || super::trim_log(&log, LOG_LIMIT)).await;
                let running = pid_of(&id).await.is_some();
                if self.running.watch.observe(&id, running, |life| {
                    life.last_exit = Some("the machine stopped".into());
                }) {
                    let started = self.start(&id).await;
                    if let Err(e) = &started {
                        tracing::warn!(machine = id, error = %e, "cannot start the machine again");
                    }
                    self.running.watch.started(&id, started.is_ok());
                }
            }
        }
    }

    /// Starts machine `id` from its launch unless it runs.
    async fn start(&self, id: &str) -> Result<(), DriverError> {
        if pid_of(id).await.is_some() {
            return Ok(());
        }
        let dir = self.dir(id);
        let owned = id.to_owned();
        let launch: Launch = super::blocking(move || {
            let _ = std::fs::remove_file(dir.join("qmp.sock"));
            std::fs::read(dir.join("launch.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| DriverError::Refused(format!("machine {owned} has no launch")))
        })
        .await?;
        let mut args = vec![
            format!("--net={}", launch.netns.display()),
            "--".into(),
            self.config.qemu.display().to_string(),
        ];
        args.extend(launch.args);
        tool(Path::new("nsenter"), &args)
            .await
            .map_err(|e| match e {
                DriverError::Refused(why) => {
                    DriverError::Refused(format!("QEMU could not start machine {id}: {why}"))
                }
                other => other,
            })
    }

    /// Stops machine `id`: power-down, `quit` after the grace, SIGKILL.
    async fn stop(&self, id: &str) -> Result<(), DriverError> {
        let Some(pid) = pid_of(id).await else {
            return Ok(());
        };
        let socket = self.dir(id).join("qmp.sock");
        let gone = async |limit: Duration| {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if pid_of(id).await.is_none() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pid_of(id).await.is_none()
        };
        if let Err(e) = qmp(&socket, "system_powerdown").await {
            tracing::warn!(machine = id, error = %e, "no power-down");
        } else if gone(self.config.stop_grace).await {
            return Ok(());
        }
        if let Err(e) = qmp(&socket, "quit").await {
            tracing::warn!(machine = id, error = %e, "no quit");
        } else if gone(Duration::from_secs(5)).await {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if gone(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(DriverError::Unavailable(format!(
                "machine {id} (pid {pid}) does not stop"
            )))
        }
    }

    async fn filled(&self, id: &str, digest: &str) -> Result<bool, DriverError> {
        let (dir, id, digest) = (self.dir(id), id.to_owned(), digest.to_owned());
        super::blocking(move || filled(&dir, &id, &digest)).await
    }

    /// Fills the root disk at `root` from the image once: a marker names
    /// the image it was filled from.
    async fn fill_root(
        &self,
        id: &str,
        digest: &str,
        layout: &Layout,
        rootfs: &Path,
        root: &Path,
    ) -> Result<(), DriverError> {
        if self.filled(id, digest).await? {
            return Ok(());
        }
        let marker = self.dir(id).join("root.filled");
        match layout {
            Layout::Direct { .. } => {
                let args = [
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "root",
                    "-E",
                    "root_owner=0:0",
                    "-d",
                ]
                .into_iter()
                .map(str::to_owned)
                .chain([rootfs.display().to_string(), root.display().to_string()])
                .collect::<Vec<_>>();
                tool(Path::new("mkfs.ext4"), &args).await?;
            }
            Layout::Disk { image } => {
                let args = [
                    "convert".to_owned(),
                    "-n".into(),
                    "-O".into(),
                    "raw".into(),
                    image.display().to_string(),
                    root.display().to_string(),
                ];
                tool(Path::new("qemu-img"), &args).await?;
            }
        }
        write(marker, digest.as_bytes().to_vec(), id).await
    }

    /// The seed disk `seed.img` of machine `id` with `files`.
    async fn seed(&self, id: &str, files: &[(&str, String)]) -> Result<PathBuf, DriverError> {
        let dir = self.dir(id);
        let seed = dir.join("seed.img");
        let staging = dir.join("seed.tmp");
        let leftover = staging.clone();
        super::blocking(move || {
            let _ = std::fs::remove_file(leftover);
            Ok(())
        })
        .await?;
        tool(
            Path::new("mkfs.vfat"),
            &[
                "-C".into(),
                "-n".into(),
                "CIDATA".into(),
                staging.display().to_string(),
                "1024".into(),
            ],
        )
        .await?;
        for (name, text) in files {
            let file = dir.join(name);
            write(file.clone(), text.as_bytes().to_vec(), id).await?;
            tool(
                Path::new("mcopy"),
                &[
                    "-i".into(),
                    staging.display().to_string(),
                    file.display().to_string(),
                    format!("::{name}"),
                ],
            )
            .await?;
        }
        let (from, to, owned) = (staging, seed.clone(), id.to_owned());
        super::blocking(move || {
            std::fs::rename(from, to)
                .map_err(|e| DriverError::Refused(format!("machine {owned}: {e}")))
        })
        .await?;
        Ok(seed)
    }

    async fn make(&self, target: Target<'_>) -> Result<serde_json::Value, DriverError> {
        let name = target.workload.name.as_str();
        let crate::deployment::workload::WorkloadData::Zmachine(m) = &target.workload.data else {
            return Err(DriverError::Refused(format!(
                "workload '{name}' is not a zmachine"
            )));
        };
        let id = machine_id(target.contract, name);
        let dir = self.dir(&id);
        let made = dir.clone();
        super::blocking(move || {
            std::fs::create_dir_all(&made)
                .map_err(|e| DriverError::Refused(format!("{}: {e}", made.display())))
        })
        .await?;
        let image_ref = m
            .image_ref()
            .map_err(|i| DriverError::Refused(format!("{}: {}", i.field, i.problem)))?;
        self.filled(&id, &image_ref.digest.to_string()).await?;
        let image = self.running.pull(&image_ref).await?;
        let rootfs = image.rootfs.clone();
        let layout = super::blocking(move || layout(&rootfs).map_err(DriverError::Refused)).await?;
        let pool = target.placed_on()?;
        let root_disk = root_name(target.contract, name);
        let root = self
            .running
            .storaged
            .ensure_vdisk(
                &root_disk,
                &VdiskRequest {
                    pool: pool.to_owned(),
                    size: m.root_size(),
                    snapshot_of: None,
                },
            )
            .await?
            .path;
        let interface = m.network.interfaces.first().ok_or_else(|| {
            DriverError::Refused(format!("machine '{name}' has no network interface"))
        })?;
        let network = netid(target.twin, interface.network.as_str());
        let ip = interface.ip.0.to_string();
        let view = super::attach(&self.running.netd, &network, &id, &ip, AttachKind::Tap).await?;
        let netns = self
            .config
            .netns
            .join(view.namespace.as_deref().ok_or_else(|| {
                DriverError::Refused(format!("netd gave machine {id}'s tap no namespace"))
            })?);
        // The meta first: from here on a removal finds what to undo.
        let meta = serde_json::to_vec(&Meta {
            netid: network.clone(),
            rootfs: root_disk,
            image: Some(image_ref.digest.to_string()),
        })
        .map_err(|e| DriverError::Refused(format!("machine {id}: {e}")))?;
        write(dir.join("meta.json"), meta, &id).await?;
        let names: Vec<&str> = m.mounts.iter().map(|m| m.name.as_str()).collect();
        let vdisks = self.running.disks(target.contract, &names).await?;
        let disks: Vec<_> = names.iter().map(|n| n.to_string()).zip(vdisks).collect();
        self.fill_root(
            &id,
            &image_ref.digest.to_string(),
            &layout,
            &image.rootfs,
            &root,
        )
        .await?;
        let (boot, seed) = match &layout {
            Layout::Direct { kernel, initrd } => {
                let mut cmdline = format!("console=ttyS0 root=/dev/vda rw {}", kernel_ip(&view)?);
                if !m.entrypoint.is_empty() {
                    cmdline.push_str(&format!(" init={}", m.entrypoint));
                }
                (Some((kernel.clone(), initrd.clone(), cmdline)), None)
            }
            Layout::Disk { .. } => {
                let files = cloud_init(&id, name, &view, m.env.get("SSH_KEY").map(String::as_str));
                (None, Some(self.seed(&id, &files).await?))
            }
        };
        let launch = Launch {
            netns,
            args: qemu_args(&Shape {
                id: &id,
                dir: &dir,
                accel: self.config.accel,
                cpu: m.compute_capacity.cpu,
                memory: m.compute_capacity.memory,
                boot,
                root: &root,
                disks: &disks,
                seed,
                tap: &view.interface,
                mac: &view.mac,
            }),
        };
        let text = serde_json::to_vec_pretty(&launch)
            .map_err(|e| DriverError::Refused(format!("machine {id}: {e}")))?;
        let path = dir.join("launch.json");
        let (old_path, new_text) = (path.clone(), text.clone());
        let unchanged =
            super::blocking(move || Ok(std::fs::read(old_path).is_ok_and(|old| old == new_text)))
                .await?;
        if !unchanged {
            // A new launch (an update): the running machine stops first.
            self.stop(&id).await?;
            write(path, text, &id).await?;
        }
        self.start(&id).await?;
        self.running.watch.track(&id);
        Ok(json!({
            "id": id,
            "ip": ip,
            "console": format!(
                "/v1/deployments/{}/workloads/{name}/logs",
                target.contract
            ),
        }))
    }
}

impl Driver for MachineDriver {
    fn kind(&self) -> WorkloadType {
        WorkloadType::Zmachine
    }

    fn object(&self, _twin: u32, contract: u64, name: &str) -> String {
        machine_id(contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(self.running.holding_images(self.make(target)))
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(self.running.remove(object, self.stop(object), "machine"))
    }

    fn live(&self, object: &str) -> Option<serde_json::Value> {
        let mut value = self.running.life(object)?;
        value["accel"] = json!(self.config.accel);
        Some(value)
    }

    fn logs(&self, object: &str, limit: u64) -> Option<String> {
        super::tail(&self.dir(object).join("console.log"), limit)
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            let running = super::blocking(|| Ok(machines_running())).await?;
            let ids = running.into_iter().map(|(_, id)| id);
            self.running.objects(is_machine_id, ids).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> AttachmentView {
        AttachmentView {
            name: "m-0123456789".into(),
            kind: AttachKind::Tap,
            interface: "t-m-0123456789".into(),
            namespace: Some("n-p-0123456789a".into()),
            address: "10.20.2.5/24".into(),
            gateway: "10.20.2.1".parse().expect("an address"),
            mac: "de:ad:be:ef:00:01".into(),
        }
    }

    #[test]
    fn a_root_disk_is_filled_once_and_never_from_another_image() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(filled(dir.path(), "m-1", "sha256:aa").ok(), Some(false));
        std::fs::write(dir.path().join("root.filled"), "sha256:aa").unwrap();
        assert_eq!(filled(dir.path(), "m-1", "sha256:aa").ok(), Some(true));
        let Err(DriverError::Refused(why)) = filled(dir.path(), "m-1", "sha256:bb") else {
            panic!("another image must be refused");
        };
        assert!(
            why.contains("sha256:aa") && why.contains("sha256:bb"),
            "{why}"
        );
    }

    #[test]
    fn ids_are_provisionds_own() {
        let id = machine_id(42, "vm");
        assert_eq!(id, machine_id(42, "vm"));
        assert_ne!(id, machine_id(42, "vm2"));
        assert!(is_machine_id(&id), "{id}");
        for other in ["m-123", "k-0123456789", "m-0123456789A", "vm"] {
            assert!(!is_machine_id(other), "{other}");
        }
        assert_eq!(root_name(42, "vm"), "r42-vm");
    }

    #[test]
    fn the_kernel_gets_the_address_mask_and_gateway() {
        assert_eq!(
            kernel_ip(&view()).expect("an ip="),
            "ip=10.20.2.5::10.20.2.1:255.255.255.0::eth0:off"
        );
        let mut bad = view();
        bad.address = "10.20.2.5".into();
        assert!(kernel_ip(&bad).is_err());
    }

    #[test]
    fn qemu_gets_the_machines_shape() {
        let disks = vec![
            ("data".to_owned(), PathBuf::from("/p/c1-data")),
            (
                "a_very_long_zmount_name_indeed".to_owned(),
                PathBuf::from("/p/c1-b"),
            ),
        ];
        let args = qemu_args(&Shape {
            id: "m-0123456789",
            dir: Path::new("/m/m-0123456789"),
            accel: Accel::Tcg,
            cpu: 2,
            memory: 512 * MIB,
            boot: Some((
                PathBuf::from("/k"),
                PathBuf::from("/i"),
                "console=ttyS0".into(),
            )),
            root: Path::new("/p/r1-vm"),
            disks: &disks,
            seed: None,
            tap: "t-m-0123456789",
            mac: "de:ad:be:ef:00:01",
        });
        let text = args.join(" ");
        for part in [
            "-name m-0123456789,process=m-0123456789",
            "-machine q35 -accel tcg,tb-size=64 -cpu max -smp 2 -m 512M",
            "-kernel /k -initrd /i -append console=ttyS0",
            "virtio-blk-pci,drive=d0,serial=data ",
            "virtio-blk-pci,drive=d1,serial=a_very_long_zmount_n ",
            "tap,id=net0,ifname=t-m-0123456789,script=no,downscript=no",
            "virtio-net-pci,netdev=net0,mac=de:ad:be:ef:00:01",
            "-qmp unix:/m/m-0123456789/qmp.sock,server=on,wait=off",
            "-daemonize",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert!(!text.contains("seed"), "{text}");
    }

    #[test]
    fn cloud_init_carries_the_network_and_the_key() {
        let [meta, network, user] = cloud_init("m-1", "vm", &view(), Some("ssh-ed25519 AAAA me"));
        assert_eq!(meta.0, "meta-data");
        assert!(meta.1.contains("instance-id: m-1"));
        assert!(
            network.1.contains("macaddress: \"de:ad:be:ef:00:01\""),
            "{}",
            network.1
        );
        assert!(network.1.contains("addresses: [\"10.20.2.5/24\"]"));
        assert!(network.1.contains("via: 10.20.2.1"));
        assert!(user.1.contains("- \"ssh-ed25519 AAAA me\""), "{}", user.1);
        let [_, _, none] = cloud_init("m-1", "vm", &view(), None);
        assert_eq!(none.1, "#cloud-config\n");
    }

    #[test]
    fn an_image_says_how_it_boots() {
        let dir = tempfile::tempdir().expect("a directory");
        let root = dir.path();
        assert!(layout(root).is_err(), "an empty image is no machine");
        std::fs::create_dir_all(root.join("disk")).expect("disk");
        std::fs::write(root.join("disk/b.qcow2"), b"q").expect("qcow2");
        std::fs::write(root.join("disk/a.img"), b"i").expect("img");
        assert_eq!(
            layout(root),
            Ok(Layout::Disk {
                image: root.join("disk/a.img")
            })
        );
        std::fs::write(root.join("image.raw"), b"r").expect("raw");
        assert_eq!(
            layout(root),
            Ok(Layout::Disk {
                image: root.join("image.raw")
            })
        );
        std::fs::create_dir_all(root.join("boot")).expect("boot");
        std::fs::write(root.join("boot/vmlinuz"), b"k").expect("kernel");
        assert!(
            matches!(layout(root), Ok(Layout::Disk { .. })),
            "a kernel alone"
        );
        std::fs::write(root.join("boot/initrd.img"), b"i").expect("initrd");
        assert!(matches!(layout(root), Ok(Layout::Direct { .. })));
    }
}
