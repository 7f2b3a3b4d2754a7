//! Boot images under QEMU on a farm LAN, as a whole machine with virtio
//! disks and a NIC on the farm's bridge: the image's own kernel and
//! initramfs booted directly, or its USB stick (`grove.img`, USB storage
//! on an xHCI controller) or its ISO (`grove.iso`, a CD-ROM) under OVMF (UEFI) or SeaBIOS
//! (legacy BIOS), or from the network (PXE through the NIC's iPXE ROM).
//!
//! [`BootImage`] finds the image (`GROVE_IMAGE_DIR`, or `image/build` run
//! into `target/image`) and makes sticks, ISOs and PXE roots with a node's
//! boot parameters (`image/usb`, `image/iso`, `image/pxe`); [`QemuNode::boot`] makes a tap on the LAN's bridge
//! inside the farm's LAN namespace, sparse disk files in the farm's run
//! directory, and starts QEMU there with the serial console written to a
//! log; a machine on a tagged port ([`MachineSpec::tagged`]) gets a
//! [`TrunkPort`] instead of a plain tap. Limits: TCG only (KVM hangs on
//! the CI machines), so a boot takes seconds of emulated time; one NIC per
//! machine; the tap and disks go with the farm,
//! QEMU itself with the [`QemuNode`] (drop it before the farm).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cmd::{self, CmdError};
use crate::ifname::{IfName, IfNameError};
use crate::lan::PlugError;
use crate::trunk::{TrunkCounts, TrunkError, TrunkPort};
use crate::{Farm, Lan};

/// Where a ready-made image is: a directory holding `vmlinuz` and
/// `initramfs` (what `image/build` writes).
pub const IMAGE_DIR_ENV: &str = "GROVE_IMAGE_DIR";
/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";
/// Memory of every machine, MiB.
pub const MEMORY_MIB: u32 = 1536;
/// OVMF, the UEFI firmware (Debian's `ovmf`): its code, read-only, and
/// the template of its variable store, copied per machine.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Finding, building or booting an image failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{dir} holds no {file}: build the image with image/build")]
    NoImage { dir: PathBuf, file: &'static str },
    #[error("image/build failed ({status}); its output is above")]
    Build { status: std::process::ExitStatus },
    #[error("could not run image/build")]
    BuildSpawn(#[source] std::io::Error),
    #[error("image/{script} failed ({status}) making {out}; its output is above")]
    Medium {
        script: &'static str,
        out: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("could not run image/{script}")]
    MediumSpawn {
        script: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no UEFI firmware at {path} (install ovmf; ci/setup does)")]
    NoFirmware {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid tap name for machine {index}")]
    TapName {
        index: usize,
        #[source]
        source: IfNameError,
    },
    #[error("could not create tap {tap}")]
    Tap {
        tap: IfName,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Plug(#[from] PlugError),
    #[error("could not create {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start QEMU (is qemu-system-x86 installed? ci/setup installs it)")]
    Spawn(#[source] std::io::Error),
    #[error("could not stop QEMU (pid {pid})")]
    Stop {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("could not make the tagged port of machine {index}")]
    Trunk {
        index: usize,
        #[source]
        source: TrunkError,
    },
    #[error("QEMU's monitor {path}: {reason}")]
    Monitor { path: PathBuf, reason: String },
}

/// A kernel and an initramfs, and the USB stick and ISO made of them.
#[derive(Debug, Clone)]
pub struct BootImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// `grove.img`, with no boot parameters of a node's own.
    pub usb: PathBuf,
    /// `grove.iso`, with no boot parameters of a node's own.
    pub iso: PathBuf,
}

impl BootImage {
    /// The image in `dir`, checked to be there.
    pub fn at(dir: &Path) -> Result<BootImage, QemuError> {
        let image = BootImage {
            dir: dir.to_owned(),
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs"),
            usb: dir.join("grove.img"),
            iso: dir.join("grove.iso"),
        };
        for (path, file) in [
            (&image.kernel, "vmlinuz"),
            (&image.initramfs, "initramfs"),
            (&image.usb, "grove.img"),
            (&image.iso, "grove.iso"),
        ] {
            if !path.is_file() {
                return Err(QemuError::NoImage {
                    dir: dir.to_owned(),
                    file,
                });
            }
        }
        Ok(image)
    }

    /// `GROVE_IMAGE_DIR` when set (CI builds the image once per run),
    /// otherwise a fresh `image/build` into `target/image`.
    pub fn for_test() -> Result<BootImage, QemuError> {
        match std::env::var_os(IMAGE_DIR_ENV).filter(|d| !d.is_empty()) {
            Some(dir) => BootImage::at(Path::new(&dir)),
            None => BootImage::build(&workspace().join("target/image")),
        }
    }

    /// Runs `image/build out` and returns what it built; the build's
    /// output goes to this process's stderr.
    pub fn build(out: &Path) -> Result<BootImage, QemuError> {
        let status = Command::new(workspace().join("image/build"))
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(QemuError::BuildSpawn)?;
        if !status.success() {
            return Err(QemuError::Build { status });
        }
        BootImage::at(out)
    }

    /// Runs `image/usb` to write `stick`: this image's USB stick booting
    /// the node with `params` (kernel parameters, space-separated) after
    /// the image's own. The output goes to this process's stderr.
    pub fn usb_stick(&self, stick: &Path, params: &str) -> Result<(), QemuError> {
        self.medium("usb", stick, params)
    }

    /// Runs `image/iso` to write `iso`, as [`BootImage::usb_stick`] does.
    pub fn iso_image(&self, iso: &Path, params: &str) -> Result<(), QemuError> {
        self.medium("iso", iso, params)
    }

    /// Runs `image/pxe` to fill the TFTP root `root` (a LAN's
    /// [`crate::Lan::tftp_dir`]), as [`BootImage::usb_stick`] does.
    pub fn pxe_root(&self, root: &Path, params: &str) -> Result<(), QemuError> {
        self.medium("pxe", root, params)
    }

    fn medium(&self, script: &'static str, out: &Path, params: &str) -> Result<(), QemuError> {
        let status = Command::new(workspace().join("image").join(script))
            .arg(&self.dir)
            .arg(out)
            .args(params.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| QemuError::MediumSpawn { script, source })?;
        if !status.success() {
            return Err(QemuError::Medium {
                script,
                out: out.to_owned(),
                status,
            });
        }
        Ok(())
    }
}

/// The workspace root, from this crate's place in it (`ci/testbed`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How the firmware gets to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPath {
    /// QEMU loads the image's kernel and initramfs itself (`-kernel`,
    /// `-initrd`, `-append`), after SeaBIOS.
    Direct,
    /// From a medium under OVMF: systemd-boot and a unified kernel image.
    Uefi(Medium),
    /// From a medium under SeaBIOS: GRUB, then a kernel and initramfs
    /// (iPXE from the network).
    Bios(Medium),
}

/// What the machine boots from, first in its boot order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// A USB stick image (`grove.img`), as USB storage on an xHCI
    /// controller with the serial `gq<index>usb`; attached writable, so a
    /// test can see that the node left it alone.
    Stick(PathBuf),
    /// An ISO (`grove.iso`) in an IDE CD-ROM drive, as a BMC's virtual
    /// media shows it.
    Cdrom(PathBuf),
    /// The network: the NIC's option ROM (iPXE, from `ipxe-qemu`) gets a
    /// lease and the script the LAN's dnsmasq names, then the kernel and
    /// initramfs from its TFTP root (fill it with [`BootImage::pxe_root`]).
    Network,
}

impl BootPath {
    /// Whether the machine boots from its NIC.
    fn boots_from_network(&self) -> bool {
        matches!(
            self,
            BootPath::Uefi(Medium::Network) | BootPath::Bios(Medium::Network)
        )
    }
}

/// How one machine is booted.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Kernel parameters after `console=ttyS0 panic=10`, on the direct
    /// path (a stick carries its own).
    pub cmdline: String,
    pub boot: BootPath,
    /// Sizes of the blank virtio-scsi SSDs, bytes (sparse files).
    pub disks: Vec<u64>,
    /// Disk files the caller made, attached after the blank ones as they
    /// are (serials `gq<index>f<k>`): a foreign disk.
    pub attached: Vec<PathBuf>,
    /// The farm LAN the NIC plugs into.
    pub lan: usize,
    /// When the machine reboots, QEMU restarts it with the same disks;
    /// otherwise QEMU exits, as it does on a power-off or a panic.
    pub reboots: bool,
    /// The NIC is on a tagged port of this VLAN ([`TrunkPort`]): only its
    /// frames reach the LAN, and untagged frames are dropped.
    pub tagged: Option<u16>,
}

impl Default for MachineSpec {
    fn default() -> MachineSpec {
        MachineSpec {
            cmdline: crate::spec::DEFAULT_CMDLINE.to_owned(),
            boot: BootPath::Direct,
            disks: vec![4 << 30, 4 << 30],
            attached: Vec::new(),
            lan: 0,
            reboots: false,
            tagged: None,
        }
    }
}

/// A running QEMU machine; killed and reaped on drop.
#[derive(Debug)]
pub struct QemuNode {
    child: Child,
    mac: String,
    dir: PathBuf,
    stopped: bool,
    /// The tagged port, dropped (its threads stopped) after QEMU.
    trunk: Option<TrunkPort>,
}

impl QemuNode {
    /// Boots `image` as machine `index` of `farm`.
    pub fn boot(
        farm: &Farm,
        index: usize,
        image: &BootImage,
        spec: &MachineSpec,
    ) -> Result<QemuNode, QemuError> {
        let lan = farm.lan(spec.lan);
        let dir = farm.dir().join(format!("q{index}"));
        std::fs::create_dir_all(&dir).map_err(|source| QemuError::File {
            path: dir.clone(),
            source,
        })?;
        let tap = IfName::new(format!("tap{index}"))
            .map_err(|source| QemuError::TapName { index, source })?;
        let trunk = match spec.tagged {
            Some(vlan) => Some(
                TrunkPort::start(lan, &tap, vlan, &dir)
                    .map_err(|source| QemuError::Trunk { index, source })?,
            ),
            None => {
                plug_tap(lan, &tap)?;
                None
            }
        };
        let mut disks = Vec::new();
        for (k, size) in spec.disks.iter().enumerate() {
            let path = dir.join(format!("disk{k}.img"));
            let file = std::fs::File::create(&path)
                .and_then(|f| f.set_len(*size).map(|()| f))
                .map_err(|source| QemuError::File {
                    path: path.clone(),
                    source,
                })?;
            drop(file);
            disks.push(path);
        }
        let mac = mac_of(farm.run_id(), index);
        let console = dir.join("console.log");
        let qemu_log = dir.join("qemu.log");
        let log = std::fs::File::create(&qemu_log).map_err(|source| QemuError::File {
            path: qemu_log.clone(),
            source,
        })?;
        let mut args: Vec<String> = [
            "netns",
            "exec",
            lan.netns(),
            QEMU,
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !spec.reboots {
            args.push("-no-reboot".into());
        }
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ]);
        // A hardware watchdog, as a server board has: the agent arms it.
        args.extend(["-device".into(), "i6300esb".into()]);
        args.extend(["-m".into(), MEMORY_MIB.to_string()]);
        args.extend(boot_args(&spec.boot, image, &spec.cmdline, &dir, index)?);
        args.extend([
            "-serial".into(),
            format!("file:{}", console.display()),
            "-netdev".into(),
            match &trunk {
                Some(port) => port.netdev("n0"),
                None => format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            },
            "-device".into(),
            // First in the boot order when the machine boots from it.
            if spec.boot.boots_from_network() {
                format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=0")
            } else {
                format!("virtio-net-pci,netdev=n0,mac={mac}")
            },
        ]);
        // virtio-scsi rather than virtio-blk: its disks can say they are
        // SSDs (`rotation_rate=1`), so the node puts its cache on one.
        args.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
        let blank = disks.iter().enumerate().map(|(k, p)| (format!("d{k}"), p));
        let attached = spec
            .attached
            .iter()
            .enumerate()
            .map(|(k, p)| (format!("f{k}"), p));
        for (id, path) in blank.chain(attached) {
            args.push("-drive".into());
            args.push(format!(
                "file={},if=none,id={id},format=raw,cache=unsafe",
                path.display()
            ));
            args.push("-device".into());
            args.push(format!(
                "scsi-hd,drive={id},bus=scsi0.0,serial=gq{index}{id},rotation_rate=1"
            ));
        }
        let child = Command::new(cmd::resolve("ip"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|source| QemuError::File {
                path: qemu_log.clone(),
                source,
            })?)
            .stderr(log)
            .spawn()
            .map_err(QemuError::Spawn)?;
        Ok(QemuNode {
            child,
            mac,
            dir,
            stopped: false,
            trunk,
        })
    }

    /// The NIC's MAC address, lowercase.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// The address the LAN's dnsmasq leased to this machine, if any yet.
    pub fn lease(&self, lan: &Lan) -> Option<Ipv4Addr> {
        lan.lease_for(&self.mac)
    }

    /// What the NIC's tagged port has carried and refused, when it is on
    /// one ([`MachineSpec::tagged`]).
    pub fn trunk_counts(&self) -> Option<TrunkCounts> {
        self.trunk.as_ref().map(TrunkPort::counts)
    }

    /// The serial console's log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// QEMU's own output.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// Whether QEMU is still running (it exits when the machine powers
    /// off or panics, and when it reboots unless [`MachineSpec::reboots`]).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the console and of QEMU's output.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for file in [self.qemu_log(), self.console_log()] {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            out.push_str(&crate::farm::log_tail(&file, &text, lines));
        }
        out
    }

    /// Presses `keys` together on the machine's keyboard (QMP `send-key`,
    /// QEMU's key names: `ctrl`, `alt`, `delete`).
    pub fn send_keys(&self, keys: &[&str]) -> Result<(), QemuError> {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({"type": "qcode", "data": k}))
            .collect();
        self.qmp(&serde_json::json!({"execute": "send-key", "arguments": {"keys": keys}}))
    }

    /// Runs one QMP command and checks that QEMU answered `return`.
    fn qmp(&self, command: &serde_json::Value) -> Result<(), QemuError> {
        use std::io::{BufRead, BufReader, Write};
        let path = self.dir.join("qmp.sock");
        let fail = |reason: String| QemuError::Monitor {
            path: path.clone(),
            reason,
        };
        let stream =
            std::os::unix::net::UnixStream::connect(&path).map_err(|e| fail(e.to_string()))?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .map_err(|e| fail(e.to_string()))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| fail(e.to_string()))?);
        let mut writer = stream;
        let mut answer =
            |sent: Option<&serde_json::Value>| -> Result<serde_json::Value, QemuError> {
                if let Some(sent) = sent {
                    writeln!(writer, "{sent}").map_err(|e| fail(e.to_string()))?;
                }
                loop {
                    let mut line = String::new();
                    if reader
                        .read_line(&mut line)
                        .map_err(|e| fail(e.to_string()))?
                        == 0
                    {
                        return Err(fail("closed".into()));
                    }
                    let value: serde_json::Value =
                        serde_json::from_str(&line).map_err(|e| fail(format!("{e}: {line}")))?;
                    // Events come in between; the greeting and answers do not
                    // name one.
                    if value.get("event").is_none() {
                        return Ok(value);
                    }
                }
            };
        answer(None)?;
        for sent in [&serde_json::json!({"execute": "qmp_capabilities"}), command] {
            let got = answer(Some(sent))?;
            if got.get("return").is_none() {
                return Err(fail(format!("{sent} answered {got}")));
            }
        }
        Ok(())
    }

    /// Waits up to `within` for QEMU to exit by itself (the machine powered
    /// off); whether it did.
    pub fn exits_within(&mut self, within: std::time::Duration) -> bool {
        crate::wait::wait_until(within, std::time::Duration::from_millis(200), || {
            !self.running()
        })
    }

    /// Kills QEMU and reaps it. Runs once; later calls return `Ok`.
    pub fn stop(&mut self) -> Result<(), QemuError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            self.child
                .kill()
                .map_err(|source| QemuError::Stop { pid, source })?;
        }
        self.child
            .wait()
            .map(drop)
            .map_err(|source| QemuError::Stop { pid, source })
    }
}

impl Drop for QemuNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("grove-testbed: {}", crate::report(&e));
        }
    }
}

/// QEMU's arguments for the firmware and the boot medium. A stick is
/// attached as it is (writes would reach the file: a test can check that
/// the node left it alone); OVMF gets a fresh variable store in `dir`.
fn boot_args(
    boot: &BootPath,
    image: &BootImage,
    cmdline: &str,
    dir: &Path,
    index: usize,
) -> Result<Vec<String>, QemuError> {
    let medium_args = |medium: &Medium| match medium {
        Medium::Stick(stick) => vec![
            "-drive".to_owned(),
            format!(
                "file={},if=none,id=stick,format=raw,cache=unsafe",
                stick.display()
            ),
            "-device".to_owned(),
            "qemu-xhci,id=xhci".to_owned(),
            "-device".to_owned(),
            format!("usb-storage,bus=xhci.0,drive=stick,serial=gq{index}usb,bootindex=0"),
        ],
        Medium::Cdrom(iso) => vec![
            "-drive".to_owned(),
            format!(
                "file={},if=none,id=cd,format=raw,media=cdrom,readonly=on",
                iso.display()
            ),
            "-device".to_owned(),
            "ide-cd,drive=cd,bootindex=0".to_owned(),
        ],
        // The NIC itself is first in the boot order.
        Medium::Network => Vec::new(),
    };
    Ok(match boot {
        BootPath::Direct => vec![
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            image.initramfs.display().to_string(),
            "-append".into(),
            format!("console=ttyS0 panic=10 {cmdline}"),
        ],
        BootPath::Uefi(medium) => {
            let vars = dir.join("ovmf-vars.fd");
            std::fs::copy(OVMF_VARS, &vars).map_err(|source| QemuError::NoFirmware {
                path: OVMF_VARS.into(),
                source,
            })?;
            std::fs::metadata(OVMF_CODE).map_err(|source| QemuError::NoFirmware {
                path: OVMF_CODE.into(),
                source,
            })?;
            let mut args = vec![
                "-drive".to_owned(),
                format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                "-drive".to_owned(),
                format!("if=pflash,format=raw,file={}", vars.display()),
            ];
            args.extend(medium_args(medium));
            args
        }
        BootPath::Bios(medium) => medium_args(medium),
    })
}

/// Creates tap `tap` in the LAN's namespace, on its bridge, up.
fn plug_tap(lan: &Lan, tap: &IfName) -> Result<(), QemuError> {
    let args = [
        "-n",
        lan.netns(),
        "tuntap",
        "add",
        "dev",
        tap.as_str(),
        "mode",
        "tap",
    ];
    cmd::run("ip", &args).map_err(|source| QemuError::Tap {
        tap: tap.clone(),
        source,
    })?;
    Ok(lan.plug(tap)?)
}

/// A locally administered MAC from the run id and the machine's index, so
/// two farms' machines never share one.
fn mac_of(run: &str, index: usize) -> String {
    let hex = |i: usize| run.get(i..i + 2).unwrap_or("00");
    format!("52:54:{}:{}:{}:{:02x}", hex(0), hex(2), hex(4), index % 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_carry_the_run_and_the_index() {
        assert_eq!(mac_of("0a1b2c", 3), "52:54:0a:1b:2c:03");
        assert_ne!(mac_of("0a1b2c", 0), mac_of("0a1b2d", 0));
    }

    #[test]
    fn a_missing_image_says_how_to_build_it() {
        let err = BootImage::at(Path::new("/nonexistent/image")).expect_err("no image");
        let text = err.to_string();
        assert!(text.contains("vmlinuz"), "{text}");
        assert!(text.contains("image/build"), "{text}");
    }
}
