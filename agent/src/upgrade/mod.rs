//! A/B upgrades of a node booted from its stick, with rollback.
//!
//! The stick has two slots (see [`Esp`]); the kernel command line names
//! the one running (`grove.slot=`). A farmer's signed `POST /v1/upgrade`
//! gives a URL and the sha256 of an upgrade image; the agent fetches it,
//! checks the sum and the image before anything is written, writes it into
//! the other slot, marks that slot "try once" for both boot loaders and
//! reboots.
//!
//! The system a try boots into is on trial: it marks its slot good once
//! `/v1/status` says `ready`, within the deadline (`grove.upgrade.deadline`
//! seconds, 600 unless the command line says otherwise). Otherwise it
//! records why, marks its slot bad and reboots, and the old slot boots
//! again; so does a try that never reaches the agent (a kernel panic
//! reboots, `panic=10`). The old system finds the record and reports the
//! rollback in `/v1/node`.

mod bundle;
mod esp;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use bundle::{Bundle, BundleError, version_of};
pub use esp::{Esp, EspError, with_slot};

use crate::operator::status::{NodeState, StatusReport};
use crate::stop::{Stop, StopReason};

/// One of the stick's two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Self {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl std::str::FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err("a slot is a or b".to_owned()),
        }
    }
}

/// A system in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    pub slot: Slot,
    pub version: String,
}

/// Where the last upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written; the new system is being tried.
    Trying,
    /// The new system became ready and its slot is the good one.
    Good,
    /// The new system did not become ready and handed back.
    Failed,
    /// The old system runs again after a failed try.
    RolledBack,
}

/// The last upgrade, as `/grove/upgrade.json` on the stick keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub from: SlotVersion,
    pub to: SlotVersion,
    /// The image's sha256, as the farmer signed it.
    pub sha256: String,
    /// Unix seconds.
    pub asked_at: u64,
    pub outcome: Outcome,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it became good or rolled back, in unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
}

/// `/v1/node`'s `system`: what runs, from where, and the last upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemReport {
    /// The running system's version (its os-release's, or the agent's).
    pub version: String,
    /// The stick's slot it booted from; none when it did not boot from a
    /// stick (directly, over PXE, from an ISO), where upgrades are refused.
    pub slot: Option<Slot>,
    /// The stick's ESP, once found.
    pub medium: Option<String>,
    /// Whether this system is on trial after an upgrade.
    pub on_trial: bool,
    pub last_upgrade: Option<Record>,
    /// What went wrong reading or writing the stick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `POST /v1/upgrade`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// Where the image is: `http://` or `https://`.
    pub url: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// What an accepted upgrade wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
}

/// Why an upgrade was refused; nothing was written unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("bad upgrade request: {0}")]
    BadRequest(String),
    #[error(
        "this system did not boot from a Grove stick (no grove.slot= on its command line): upgrade the medium it booted from"
    )]
    NotFromStick,
    #[error("another upgrade is being written")]
    Busy,
    #[error(
        "this system is on trial after an upgrade; it takes another once it is marked good (or has rolled back)"
    )]
    OnTrial,
    #[error("no Grove stick found: {0}")]
    NoMedium(String),
    #[error("cannot fetch the image: {0}; nothing was written")]
    Fetch(String),
    #[error("the image did not arrive: {0}; nothing was written")]
    Upload(String),
    #[error("the image is larger than {limit} bytes; nothing was written")]
    TooLarge { limit: u64 },
    #[error("the image's sha256 is {got}, not {expected}; nothing was written")]
    Checksum { expected: String, got: String },
    #[error("not a Grove upgrade image: {0}; nothing was written")]
    NotAnImage(#[from] BundleError),
    #[error(
        "the stick has {free} bytes free for the slot; the image needs {needed}; nothing was written"
    )]
    NoRoom { free: u64, needed: u64 },
    #[error("cannot mount the stick's ESP {device}: {reason}")]
    Mount { device: String, reason: String },
    #[error("writing the stick: {0}")]
    Esp(#[from] EspError),
    #[error("the writing task failed: {0}")]
    Task(String),
    #[error("the agent stopped before the upgrade finished")]
    Stopping,
}

impl UpgradeError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::BadRequest(_) | UpgradeError::Upload(_) => 400,
            UpgradeError::NotFromStick | UpgradeError::Busy | UpgradeError::OnTrial => 409,
            UpgradeError::TooLarge { .. } => 413,
            UpgradeError::Checksum { .. } | UpgradeError::NotAnImage(_) => 422,
            UpgradeError::Fetch(_) => 502,
            UpgradeError::Stopping => 503,
            UpgradeError::NoRoom { .. } => 507,
            UpgradeError::NoMedium(_)
            | UpgradeError::Mount { .. }
            | UpgradeError::Esp(_)
            | UpgradeError::Task(_) => 500,
        }
    }
}

/// The largest image fetched: a slot's share of the stick's ESP.
pub const IMAGE_LIMIT: u64 = 120 << 20;

/// How much and how long an image fetch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// The image's size at most.
    pub bytes: u64,
    /// To connect to the image's server.
    pub connect: Duration,
    /// Between two reads: a server that stalls longer has failed.
    pub read: Duration,
    /// The whole fetch.
    pub total: Duration,
}

impl FetchLimits {
    /// An image over a farm's or a region's link.
    pub const IMAGE: Self = Self {
        bytes: IMAGE_LIMIT,
        connect: Duration::from_secs(10),
        read: Duration::from_secs(30),
        total: Duration::from_secs(600),
    };
}
/// How long a tried system has to become ready, unless the command line
/// says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// How long a system booted from a stick waits at boot for the stick to
/// show: a USB controller finds its devices a while after its driver loads.
const MEDIUM_WAIT: Duration = Duration::from_secs(30);
/// The stick's ESP's GPT partition name (image/usb names it).
const ESP_PARTNAME: &str = "grove-esp";

/// Where the agent looks for and mounts the stick.
#[derive(Debug, Clone)]
pub struct Paths {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub mount: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            mount: PathBuf::from("/run/grove/esp"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    medium: Option<PathBuf>,
    on_trial: bool,
    last: Option<Record>,
    problem: Option<String>,
}

/// The node's upgrades: the report, the farmer's requests, and the trial
/// of a new system.
#[derive(Debug)]
pub struct Upgrades {
    version: String,
    slot: Option<Slot>,
    deadline: Duration,
    paths: Paths,
    state: Mutex<State>,
    /// Held while the stick is mounted: one write or read at once.
    busy: tokio::sync::Mutex<()>,
    /// Held through a farmer's upgrade, from the fetch to the last write.
    upgrading: Arc<tokio::sync::Mutex<()>>,
    fetch_limits: FetchLimits,
}

impl Upgrades {
    /// For the system running `version` from `slot` (none when it did not
    /// boot from a stick).
    pub fn new(version: String, slot: Option<Slot>, deadline: Duration, paths: Paths) -> Self {
        Self {
            version,
            slot,
            deadline,
            paths,
            state: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
            upgrading: Arc::default(),
            fetch_limits: FetchLimits::IMAGE,
        }
    }

    /// The same, fetching images within `limits`.
    pub fn with_fetch_limits(self, limits: FetchLimits) -> Self {
        Self {
            fetch_limits: limits,
            ..self
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn report(&self) -> SystemReport {
        let state = self.state();
        SystemReport {
            version: self.version.clone(),
            slot: self.slot,
            medium: state.medium.as_ref().map(|m| m.display().to_string()),
            on_trial: state.on_trial,
            last_upgrade: state.last.clone(),
            problem: state.problem.clone(),
        }
    }

    /// Runs `work` on the mounted stick, off the async workers.
    async fn on_stick<T: Send + 'static>(
        self: &Arc<Self>,
        writable: bool,
        work: impl FnOnce(&Esp) -> Result<T, UpgradeError> + Send + 'static,
    ) -> Result<T, UpgradeError> {
        let _busy = self.busy.lock().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let device = find_medium(&this.paths.sys, &this.paths.dev)?;
            this.state().medium = Some(device.clone());
            let mount = Mount::new(&device, &this.paths.mount, writable)?;
            work(&Esp::at(&mount.at))
        })
        .await
        .map_err(|e| UpgradeError::Task(e.to_string()))?
    }

    /// How much and how long an image may take to arrive.
    pub fn fetch_limits(&self) -> FetchLimits {
        self.fetch_limits
    }

    /// Lets in the farmer's upgrade to the image whose sha256 is `sha256`,
    /// before the image is fetched or read: refused on a system that did
    /// not boot from a stick, on one on trial, and while another upgrade
    /// runs (until the [`Admitted`] is dropped).
    pub fn admit(self: &Arc<Self>, sha256: &str) -> Result<Admitted, UpgradeError> {
        let running = self.slot.ok_or(UpgradeError::NotFromStick)?;
        let expected = sha256.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(UpgradeError::BadRequest(
                "sha256 must be 64 hex digits".to_owned(),
            ));
        }
        if self.state().on_trial {
            return Err(UpgradeError::OnTrial);
        }
        let upgrading = self
            .upgrading
            .clone()
            .try_lock_owned()
            .map_err(|_| UpgradeError::Busy)?;
        Ok(Admitted {
            upgrades: self.clone(),
            running,
            expected,
            _upgrading: upgrading,
        })
    }

    /// The farmer's upgrade from a URL: fetch, check, write the other
    /// slot. The caller reboots on success.
    pub async fn upgrade(
        self: &Arc<Self>,
        request: UpgradeRequest,
        now: u64,
    ) -> Result<Installed, UpgradeError> {
        self.slot.ok_or(UpgradeError::NotFromStick)?;
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| UpgradeError::BadRequest(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(UpgradeError::BadRequest(
                "url must be http:// or https:// with a host".to_owned(),
            ));
        }
        let admitted = self.admit(&request.sha256)?;
        let bytes = fetch(url, self.fetch_limits).await?;
        admitted.install(bytes, now).await
    }

    /// At boot, before the daemons start (storaged would see the stick
    /// mounted, and call it in use): reads where the last upgrade stands,
    /// and records a rollback when this is the old system running again.
    /// Returns the standing of a system on trial, for [`Upgrades::settle`].
    pub async fn look(self: &Arc<Self>) -> Option<Standing> {
        let running = self.slot?;
        let (sys, dev) = (self.paths.sys.clone(), self.paths.dev.clone());
        let waited = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            // Only none is worth waiting for: two sticks stay two.
            while esp_partitions(&sys, &dev).is_ok_and(|found| found.is_empty())
                && began.elapsed() < MEDIUM_WAIT
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            began.elapsed()
        })
        .await
        .unwrap_or_default();
        if waited >= Duration::from_millis(100) {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "waited for the stick to show"
            );
        }
        let standing = self
            .on_stick(false, move |esp| Ok(Standing::read(esp, running)?))
            .await;
        let standing = match standing {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stick's slots");
                self.state().problem = Some(e.to_string());
                return None;
            }
        };
        self.state().last = standing.record.clone();
        if !standing.on_trial {
            if let Some(record) = standing.rolled_back(running) {
                tracing::error!(to = %record.to.version, reason = ?record.reason, "the last upgrade rolled back");
                self.write(Mark::Bad(running.other()), Some(record)).await;
            } else if let Some(record) = standing.finished(running) {
                self.write(Mark::Keep, Some(record)).await;
            }
            return None;
        }
        self.state().on_trial = true;
        tracing::warn!(
            slot = running.name(),
            deadline_secs = self.deadline.as_secs(),
            "on trial after an upgrade"
        );
        Some(standing)
    }

    /// The trial of a system [`Upgrades::look`] found on trial: it waits
    /// for `status` to say ready, then marks its slot good; past the
    /// deadline it marks its slot bad and asks `stop` for a reboot.
    pub async fn settle(
        self: Arc<Self>,
        standing: Option<Standing>,
        status: impl Fn() -> StatusReport + Send,
        stop: Stop,
    ) {
        let (Some(running), Some(standing)) = (self.slot, standing) else {
            return;
        };
        let started = Instant::now();
        let shutdown = stop.shutdown().clone();
        loop {
            let report = status();
            if report.state == NodeState::Ready {
                let record = standing.settled(running, Outcome::Good, None);
                self.write(Mark::Good(running), record).await;
                self.state().on_trial = false;
                tracing::info!(
                    slot = running.name(),
                    "the upgraded system is ready; its slot is marked good"
                );
                return;
            }
            if started.elapsed() >= self.deadline {
                let reason = format!(
                    "not ready within {} s ({}: {})",
                    self.deadline.as_secs(),
                    serde_json::to_value(report.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    report.reasons.join("; ")
                );
                tracing::error!(%reason, "the upgraded system failed its trial; rebooting into the other slot");
                let record = standing.settled(running, Outcome::Failed, Some(reason));
                self.write(Mark::Bad(running), record).await;
                stop.request(StopReason::Reboot);
                return;
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Marks a slot on the stick as `mark` says, then writes `record` (if
    /// any), which becomes the last upgrade's; a failure becomes the
    /// report's problem.
    async fn write(self: &Arc<Self>, mark: Mark, record: Option<Record>) {
        let written = self
            .on_stick(true, move |esp| {
                match mark {
                    Mark::Good(slot) => esp.bless(slot)?,
                    Mark::Bad(slot) => esp.condemn(slot)?,
                    Mark::Keep => {}
                }
                if let Some(r) = &record {
                    esp.set_record(r)?;
                }
                Ok(record)
            })
            .await;
        match written {
            Ok(Some(record)) => self.state().last = Some(record),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot write the stick's slots");
                self.state().problem = Some(e.to_string());
            }
        }
    }
}

/// What a write to the stick does to a slot.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// Marks it good for both boot loaders ([`Esp::bless`]).
    Good(Slot),
    /// Marks it bad for both ([`Esp::condemn`]).
    Bad(Slot),
    Keep,
}

/// What the stick says about the running slot at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    on_trial: bool,
    record: Option<Record>,
}

impl Standing {
    /// The running slot is on trial while its entry still has a boot
    /// counter (UEFI) or GRUB's good slot is the other one (BIOS).
    fn read(esp: &Esp, running: Slot) -> Result<Self, EspError> {
        let counted = esp
            .entries(running)?
            .first()
            .is_some_and(|e| e.tries_left.is_some());
        let grub_good = esp.grubenv_var("grove_slot")?;
        let on_trial = counted || grub_good.is_some_and(|g| g != running.name());
        Ok(Self {
            on_trial,
            record: esp.record()?,
        })
    }

    /// The record once the try of `running` ends with `outcome`.
    fn settled(&self, running: Slot, outcome: Outcome, reason: Option<String>) -> Option<Record> {
        let mut record = self.record.clone().filter(|r| r.to.slot == running)?;
        record.outcome = outcome;
        record.reason = reason;
        record.settled_at = Some(crate::clock::unix_ms() / 1000);
        Some(record)
    }

    /// The record of a try of the other slot that failed, to be marked
    /// rolled back, when `running` (the old system) runs again.
    fn rolled_back(&self, running: Slot) -> Option<Record> {
        let mut record = self.record.clone()?;
        if record.to.slot != running.other()
            || !matches!(record.outcome, Outcome::Trying | Outcome::Failed)
        {
            return None;
        }
        if record.reason.is_none() {
            record.reason = Some(format!(
                "slot {} did not come up to its agent",
                running.other().name()
            ));
        }
        record.outcome = Outcome::RolledBack;
        record.settled_at = Some(crate::clock::unix_ms() / 1000);
        Some(record)
    }

    /// The record of a try of `running` that was marked good, though the
    /// power went before the record said so.
    fn finished(&self, running: Slot) -> Option<Record> {
        self.settled(running, Outcome::Good, None).filter(|_| {
            self.record
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::Trying)
        })
    }
}

/// The partitions named [`ESP_PARTNAME`], sorted.
fn esp_partitions(sys: &Path, dev: &Path) -> Result<Vec<PathBuf>, UpgradeError> {
    let dir = sys.join("class/block");
    let listing = std::fs::read_dir(&dir)
        .map_err(|e| UpgradeError::NoMedium(format!("{}: {e}", dir.display())))?;
    let mut found = Vec::new();
    for item in listing.flatten() {
        let uevent = std::fs::read_to_string(item.path().join("uevent")).unwrap_or_default();
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if field("PARTNAME").as_deref() == Some(ESP_PARTNAME)
            && let Some(name) = field("DEVNAME")
        {
            found.push(dev.join(name));
        }
    }
    found.sort();
    Ok(found)
}

/// The stick's ESP: the one partition named [`ESP_PARTNAME`].
fn find_medium(sys: &Path, dev: &Path) -> Result<PathBuf, UpgradeError> {
    let mut found = esp_partitions(sys, dev)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(UpgradeError::NoMedium(format!(
            "no partition named {ESP_PARTNAME}"
        ))),
        _ => Err(UpgradeError::NoMedium(format!(
            "{} partitions named {ESP_PARTNAME} ({}): unplug all but the one the node boots from",
            found.len(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The stick's ESP, mounted while this lives.
struct Mount {
    at: PathBuf,
}

impl Mount {
    fn new(device: &Path, at: &Path, writable: bool) -> Result<Self, UpgradeError> {
        use nix::mount::MsFlags;
        let fail = |reason: String| UpgradeError::Mount {
            device: device.display().to_string(),
            reason,
        };
        grove_daemon::fsutil::ensure_dir(at, Some(0o700)).map_err(|e| fail(e.to_string()))?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if !writable {
            flags |= MsFlags::MS_RDONLY;
        }
        nix::mount::mount(Some(device), at, Some("vfat"), flags, None::<&str>)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self { at: at.to_owned() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount(&self.at) {
            tracing::error!(at = %self.at.display(), error = %e, "cannot unmount the stick's ESP");
        }
    }
}

fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

/// A farmer's upgrade let in by [`Upgrades::admit`]; no other starts
/// while it lives.
#[derive(Debug)]
pub struct Admitted {
    upgrades: Arc<Upgrades>,
    running: Slot,
    expected: String,
    _upgrading: tokio::sync::OwnedMutexGuard<()>,
}

impl Admitted {
    /// Checks `image` against the signed sum and reads it, then writes it
    /// into the other slot. The caller reboots on success.
    pub async fn install(self, image: Vec<u8>, now: u64) -> Result<Installed, UpgradeError> {
        let Admitted {
            upgrades,
            running,
            expected,
            _upgrading,
        } = self;
        let sum = expected.clone();
        let bundle = tokio::task::spawn_blocking(move || {
            let got = crate::auth::hex(&sha2::Sha256::digest(&image));
            if got != sum {
                return Err(UpgradeError::Checksum { expected: sum, got });
            }
            Ok(Bundle::parse(&image)?)
        })
        .await
        .map_err(|e| UpgradeError::Task(e.to_string()))??;
        let record = Record {
            from: SlotVersion {
                slot: running,
                version: upgrades.version.clone(),
            },
            to: SlotVersion {
                slot: running.other(),
                version: bundle.version.clone(),
            },
            sha256: expected,
            asked_at: now,
            outcome: Outcome::Trying,
            reason: None,
            settled_at: None,
        };
        let (written, mount) = (record.clone(), upgrades.paths.mount.clone());
        let version = bundle.version.clone();
        upgrades
            .on_stick(true, move |esp| {
                let target = running.other();
                let needed =
                    (bundle.kernel.len() + bundle.initramfs.len() + bundle.os_release.len()) as u64
                        + (1 << 20);
                let free = free_bytes(&mount) + esp.slot_bytes(target);
                if free < needed {
                    return Err(UpgradeError::NoRoom { free, needed });
                }
                let options = match esp.entries(running)?.first() {
                    Some(entry) => entry.options.clone(),
                    None => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
                };
                esp.install(target, &bundle, &options, &written)?;
                Ok(())
            })
            .await?;
        upgrades.state().last = Some(record);
        Ok(Installed {
            slot: running.other(),
            version,
        })
    }
}

/// Receives an image sent as a request's body (`announced` bytes long,
/// when the request says) within `limits`: one announced larger than the
/// limit is refused before a byte of it is read.
pub async fn receive(
    mut body: axum::body::Body,
    announced: Option<u64>,
    limits: FetchLimits,
) -> Result<Vec<u8>, UpgradeError> {
    use http_body_util::BodyExt as _;
    let limit = limits.bytes;
    if announced.is_some_and(|n| n > limit) {
        return Err(UpgradeError::TooLarge { limit });
    }
    let deadline = tokio::time::Instant::now() + limits.total;
    let mut bytes = Vec::with_capacity(announced.unwrap_or(0) as usize);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = match tokio::time::timeout(limits.read.min(left), body.frame()).await {
            Ok(None) => return Ok(bytes),
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(UpgradeError::Upload(e.to_string())),
            Err(_) if left <= limits.read => {
                return Err(UpgradeError::Upload(format!(
                    "{} bytes in {} s, the most an upload may take",
                    bytes.len(),
                    limits.total.as_secs()
                )));
            }
            Err(_) => {
                return Err(UpgradeError::Upload(format!(
                    "nothing came for {} s after {} bytes",
                    limits.read.as_secs(),
                    bytes.len()
                )));
            }
        };
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > limit {
                return Err(UpgradeError::TooLarge { limit });
            }
            bytes.extend_from_slice(&data);
        }
    }
}

/// Fetches `url` into memory within `limits`.
async fn fetch(url: reqwest::Url, limits: FetchLimits) -> Result<Vec<u8>, UpgradeError> {
    let limit = limits.bytes;
    // rustls needs one process-wide crypto provider; another part of the
    // process may have installed it already, which is as good.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let fail = |e: reqwest::Error| UpgradeError::Fetch(e.without_url().to_string());
    let client = reqwest::Client::builder()
        .connect_timeout(limits.connect)
        .read_timeout(limits.read)
        .timeout(limits.total)
        .build()
        .map_err(fail)?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?;
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(UpgradeError::TooLarge { limit });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(UpgradeError::TooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The running system's version: its os-release's when it is Grove's,
/// else the agent's own.
pub fn running_version(os_release: &Path) -> String {
    std::fs::read_to_string(os_release)
        .ok()
        .and_then(|text| version_of(&text))
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(to: Slot, outcome: Outcome) -> Record {
        Record {
            from: SlotVersion {
                slot: to.other(),
                version: "1".to_owned(),
            },
            to: SlotVersion {
                slot: to,
                version: "2".to_owned(),
            },
            sha256: "00".repeat(32),
            asked_at: 1,
            outcome,
            reason: None,
            settled_at: None,
        }
    }

    #[test]
    fn the_old_system_reports_a_failed_try_as_rolled_back_with_its_reason() {
        let mut failed = record(Slot::B, Outcome::Failed);
        failed.reason = Some("not ready within 60 s".to_owned());
        let standing = Standing {
            on_trial: false,
            record: Some(failed),
        };
        let back = standing.rolled_back(Slot::A).expect("rolled back");
        assert_eq!(back.outcome, Outcome::RolledBack);
        assert_eq!(back.reason.as_deref(), Some("not ready within 60 s"));
        assert!(back.settled_at.is_some());

        // A try that never reached its agent says so.
        let standing = Standing {
            on_trial: false,
            record: Some(record(Slot::B, Outcome::Trying)),
        };
        let back = standing.rolled_back(Slot::A).expect("rolled back");
        assert!(back.reason.is_some_and(|r| r.contains("did not come up")));

        // Not for a good upgrade, nor from the new system itself.
        let good = Standing {
            on_trial: false,
            record: Some(record(Slot::B, Outcome::Good)),
        };
        assert_eq!(good.rolled_back(Slot::A), None);
        assert_eq!(standing.rolled_back(Slot::B), None);
    }

    #[test]
    fn a_slot_marked_good_before_its_record_was_written_finishes_its_record() {
        let standing = Standing {
            on_trial: false,
            record: Some(record(Slot::B, Outcome::Trying)),
        };
        let done = standing.finished(Slot::B).expect("finished");
        assert_eq!(done.outcome, Outcome::Good);
        let settled = Standing {
            on_trial: false,
            record: Some(record(Slot::B, Outcome::Good)),
        };
        assert_eq!(settled.finished(Slot::B), None);
    }

    #[test]
    fn the_stick_is_the_one_partition_named_grove_esp() {
        let sys = tempfile::tempdir().unwrap();
        let dev = Path::new("/dev");
        let part = |name: &str, partname: &str| {
            grove_daemon::fsutil::write_tree(
                sys.path(),
                &format!("class/block/{name}/uevent"),
                &format!("MAJOR=8\nDEVNAME={name}\nDEVTYPE=partition\nPARTNAME={partname}\n"),
            )
            .unwrap();
        };
        part("sda1", "grove-bios");
        assert!(matches!(
            find_medium(sys.path(), dev),
            Err(UpgradeError::NoMedium(m)) if m.contains("no partition")
        ));
        part("sda2", "grove-esp");
        assert_eq!(
            find_medium(sys.path(), dev).unwrap(),
            Path::new("/dev/sda2")
        );
        part("sdb2", "grove-esp");
        let e = find_medium(sys.path(), dev).unwrap_err().to_string();
        assert!(e.contains("/dev/sda2, /dev/sdb2"), "{e}");
    }

    #[tokio::test]
    async fn requests_that_cannot_be_met_are_refused_before_any_fetch() {
        let paths = Paths {
            sys: PathBuf::from("/nonexistent"),
            ..Paths::default()
        };
        let request = |url: &str, sha256: &str| UpgradeRequest {
            url: url.to_owned(),
            sha256: sha256.to_owned(),
        };
        let sum = "ab".repeat(32);
        let direct = Arc::new(Upgrades::new(
            "1".to_owned(),
            None,
            DEFAULT_DEADLINE,
            paths.clone(),
        ));
        let e = direct
            .upgrade(request("http://h/x", &sum), 0)
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::NotFromStick), "{e}");
        assert_eq!(e.status(), 409);

        let stick = Arc::new(Upgrades::new(
            "1".to_owned(),
            Some(Slot::A),
            DEFAULT_DEADLINE,
            paths,
        ));
        for (url, sha, says) in [
            ("http://h/x", "abc", "64 hex digits"),
            ("ftp://h/x", sum.as_str(), "http:// or https://"),
            ("not a url", sum.as_str(), "url"),
        ] {
            let e = stick.upgrade(request(url, sha), 0).await.unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        // Nothing listens on port 9 of localhost: the fetch fails, nothing
        // is written (there is no stick to write to either).
        let e = stick
            .upgrade(request("http://127.0.0.1:9/grove-upgrade.tar", &sum), 0)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 502, "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }

    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// What an image server does after the response's first bytes.
    #[derive(Debug, Clone, Copy)]
    enum Then {
        /// Closes the connection.
        Close,
        /// Keeps it open and says nothing more.
        Stall,
    }

    /// An image server on localhost: to each connection it writes
    /// `pieces` (a raw HTTP response), `pause` apart, then does `then`.
    /// Answers its URL and how many connections it took.
    async fn image_server(
        pieces: Vec<Vec<u8>>,
        pause: Duration,
        then: Then,
    ) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/grove-upgrade.tar",
            listener.local_addr().unwrap()
        );
        let taken = Arc::new(AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                let pieces = pieces.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    for piece in pieces {
                        if conn.write_all(&piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    match then {
                        Then::Close => drop(conn),
                        Then::Stall => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            drop(conn);
                        }
                    }
                });
            }
        });
        (url, taken)
    }

    fn head(status: &str, length: Option<u64>) -> Vec<u8> {
        let length = length.map(|n| format!("Content-Length: {n}\r\n"));
        format!(
            "HTTP/1.1 {status}\r\n{}Connection: close\r\n\r\n",
            length.unwrap_or_default()
        )
        .into_bytes()
    }

    /// A node on slot A whose stick is nowhere: whatever gets past the
    /// fetch and the checks fails to find it, so a test sees how far an
    /// upgrade went and that nothing could be written.
    fn on_a_stick(limits: FetchLimits) -> Arc<Upgrades> {
        let paths = Paths {
            sys: PathBuf::from("/nonexistent"),
            ..Paths::default()
        };
        Arc::new(
            Upgrades::new("1".to_owned(), Some(Slot::A), DEFAULT_DEADLINE, paths)
                .with_fetch_limits(limits),
        )
    }

    const QUICK: FetchLimits = FetchLimits {
        bytes: 4096,
        connect: Duration::from_secs(2),
        read: Duration::from_millis(300),
        total: Duration::from_secs(20),
    };

    /// Why a node on a stick refuses the upgrade to the image at `url`,
    /// `body` being what the farmer's sum was taken of.
    async fn refused(url: &str, body: &[u8]) -> UpgradeError {
        on_a_stick(QUICK)
            .upgrade(asking(url, body), 0)
            .await
            .unwrap_err()
    }

    fn asking(url: &str, body: &[u8]) -> UpgradeRequest {
        UpgradeRequest {
            url: url.to_owned(),
            sha256: crate::auth::hex(&sha2::Sha256::digest(body)),
        }
    }

    #[tokio::test]
    async fn an_image_server_that_stalls_or_drops_fails_the_fetch_once_and_nothing_is_written() {
        let body = vec![7u8; 1000];
        for then in [Then::Stall, Then::Close] {
            let mut start = head("200 OK", Some(1000));
            start.extend_from_slice(&body[..10]);
            let (url, taken) = image_server(vec![start], Duration::ZERO, then).await;
            let began = Instant::now();
            let e = refused(&url, &body).await;
            assert!(matches!(e, UpgradeError::Fetch(_)), "{then:?}: {e}");
            assert_eq!(e.status(), 502);
            assert!(e.to_string().contains("nothing was written"), "{e}");
            assert!(began.elapsed() < Duration::from_secs(10), "{then:?}");
            assert_eq!(taken.load(SeqCst), 1, "{then:?}");
        }
    }

    #[tokio::test]
    async fn a_slow_image_server_that_keeps_sending_is_waited_for() {
        // Twenty pieces 100 ms apart, each within the 300 ms read time:
        // the whole image arrives and is checked (it is not a Grove image).
        let body = vec![9u8; 2000];
        let mut pieces = vec![head("200 OK", Some(2000))];
        pieces.extend(body.chunks(100).map(<[u8]>::to_vec));
        let (url, taken) = image_server(pieces, Duration::from_millis(100), Then::Close).await;
        let e = refused(&url, &body).await;
        assert!(matches!(e, UpgradeError::NotAnImage(_)), "{e}");
        assert_eq!(e.status(), 422);
        assert_eq!(taken.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusing_image_server_is_asked_once() {
        for status in ["404 Not Found", "403 Forbidden", "503 Service Unavailable"] {
            let (url, taken) =
                image_server(vec![head(status, Some(0))], Duration::ZERO, Then::Close).await;
            let e = refused(&url, b"").await;
            assert!(matches!(e, UpgradeError::Fetch(_)), "{status}: {e}");
            let code = &status[..3];
            assert!(e.to_string().contains(code), "{status}: {e}");
            assert_eq!(taken.load(SeqCst), 1, "{status}");
        }
    }

    #[tokio::test]
    async fn an_image_server_that_lies_is_refused_before_anything_is_written() {
        let limit = QUICK.bytes;
        // Says more than the limit: refused before the body is read.
        let (url, _) = image_server(
            vec![head("200 OK", Some(limit + 1))],
            Duration::ZERO,
            Then::Stall,
        )
        .await;
        let e = refused(&url, b"").await;
        assert!(matches!(e, UpgradeError::TooLarge { .. }), "{e}");
        assert_eq!(e.status(), 413);
        // Says no length and sends more than the limit.
        let mut unbounded = head("200 OK", None);
        unbounded.extend(std::iter::repeat_n(1u8, limit as usize + 100));
        let (url, _) = image_server(vec![unbounded], Duration::ZERO, Then::Close).await;
        let e = refused(&url, b"").await;
        assert!(matches!(e, UpgradeError::TooLarge { .. }), "{e}");
        // Sends other bytes than the sum names.
        let mut other = head("200 OK", Some(5));
        other.extend_from_slice(b"hello");
        let (url, _) = image_server(vec![other], Duration::ZERO, Then::Close).await;
        let e = refused(&url, b"HELLO").await;
        assert!(matches!(e, UpgradeError::Checksum { .. }), "{e}");
        assert_eq!(e.status(), 422);
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }

    #[tokio::test]
    async fn one_upgrade_at_a_time_and_none_on_trial() {
        // The first upgrade's server never answers: it holds the node's
        // one upgrade while a second is asked for.
        let (url, taken) = image_server(Vec::new(), Duration::ZERO, Then::Stall).await;
        let stick = on_a_stick(QUICK);
        let first = tokio::spawn({
            let (stick, url) = (stick.clone(), url.clone());
            async move { stick.upgrade(asking(&url, b"x"), 0).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while taken.load(SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(taken.load(SeqCst), 1);
        let e = stick.upgrade(asking(&url, b"x"), 0).await.unwrap_err();
        assert!(matches!(e, UpgradeError::Busy), "{e}");
        assert_eq!(e.status(), 409);
        assert_eq!(taken.load(SeqCst), 1);
        // The first one gives up once its server has said nothing for the
        // read time.
        let e = first.await.unwrap().unwrap_err();
        assert!(matches!(e, UpgradeError::Fetch(_)), "{e}");

        stick.state().on_trial = true;
        let e = stick.upgrade(asking(&url, b"x"), 0).await.unwrap_err();
        assert!(matches!(e, UpgradeError::OnTrial), "{e}");
        assert_eq!(e.status(), 409);
        assert_eq!(taken.load(SeqCst), 1);
    }

    /// A request body the test feeds piece by piece, and its feeder.
    fn upload() -> (
        futures::channel::mpsc::UnboundedSender<std::io::Result<Vec<u8>>>,
        axum::body::Body,
    ) {
        let (feed, pieces) = futures::channel::mpsc::unbounded();
        (feed, axum::body::Body::from_stream(pieces))
    }

    #[tokio::test]
    async fn an_uploaded_image_arrives_whole_within_its_limits_or_is_refused() {
        // In pieces, each within the read time: the whole image.
        let (feed, body) = upload();
        let feeding = tokio::spawn(async move {
            for piece in [&[1u8; 1000][..], &[2u8; 1000][..], &[3u8; 96][..]] {
                tokio::time::sleep(Duration::from_millis(100)).await;
                feed.unbounded_send(Ok(piece.to_vec())).unwrap();
            }
        });
        let image = receive(body, Some(2096), QUICK).await.unwrap();
        feeding.await.unwrap();
        assert_eq!(image.len(), 2096);
        assert_eq!(&image[1000..1003], &[2, 2, 2]);

        // Announced larger than the limit: refused before anything comes.
        let (_feed, body) = upload();
        let asked = Instant::now();
        let e = receive(body, Some(QUICK.bytes + 1), QUICK)
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::TooLarge { limit: 4096 }), "{e}");
        assert_eq!(e.status(), 413);
        assert!(asked.elapsed() < QUICK.read, "waited for the body");

        // Larger than announced, or not announced: refused at the limit.
        for announced in [None, Some(100)] {
            let (feed, body) = upload();
            for _ in 0..5 {
                feed.unbounded_send(Ok(vec![0u8; 1000])).unwrap();
            }
            let e = receive(body, announced, QUICK).await.unwrap_err();
            assert!(matches!(e, UpgradeError::TooLarge { .. }), "{e}");
        }

        // A sender that stops sending, or whose connection breaks.
        let (feed, body) = upload();
        feed.unbounded_send(Ok(vec![0u8; 10])).unwrap();
        let e = receive(body, Some(1000), QUICK).await.unwrap_err();
        assert!(e.to_string().contains("nothing came for"), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(e.status(), 400);
        drop(feed);
        let (feed, body) = upload();
        feed.unbounded_send(Ok(vec![0u8; 10])).unwrap();
        feed.unbounded_send(Err(std::io::Error::other("connection reset")))
            .unwrap();
        let e = receive(body, Some(1000), QUICK).await.unwrap_err();
        assert!(matches!(e, UpgradeError::Upload(_)), "{e}");

        // Steady but too slow: cut at the total time.
        let slow = FetchLimits {
            total: Duration::from_millis(700),
            ..QUICK
        };
        let (feed, body) = upload();
        let feeding = tokio::spawn(async move {
            while feed.unbounded_send(Ok(vec![0u8; 1])).is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let e = receive(body, Some(1000), slow).await.unwrap_err();
        assert!(e.to_string().contains("the most an upload may take"), "{e}");
        feeding.await.unwrap();
    }

    #[tokio::test]
    async fn an_admitted_upgrade_holds_off_every_other_until_it_ends() {
        let stick = on_a_stick(QUICK);
        let sum = "ab".repeat(32);
        let e = stick.admit("not hex").unwrap_err();
        assert!(matches!(e, UpgradeError::BadRequest(_)), "{e}");
        let admitted = stick.admit(&sum).unwrap();
        assert!(matches!(stick.admit(&sum), Err(UpgradeError::Busy)));
        let e = stick
            .upgrade(asking("http://127.0.0.1:9/image", b"x"), 0)
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::Busy), "{e}");
        // A wrong image ends it, and writes nothing.
        let e = admitted.install(b"other".to_vec(), 0).await.unwrap_err();
        assert!(matches!(e, UpgradeError::Checksum { .. }), "{e}");
        assert!(stick.admit(&sum).is_ok());
        let off = Arc::new(Upgrades::new(
            "1".to_owned(),
            None,
            DEFAULT_DEADLINE,
            Paths::default(),
        ));
        assert!(matches!(off.admit(&sum), Err(UpgradeError::NotFromStick)));
    }
}
