//! Block device discovery from sysfs.
//!
//! Reads `/sys/block/<dev>` (the root is a parameter, so tests use a fixture
//! tree): size, rotational, removable, transport, model, serial and
//! partitions. A device without a hardware serial (loop devices, some
//! virtual disks) gets a stable substitute derived from what does identify
//! it, and says so in [`SerialSource`]. Limits: device-mapper, md and zram
//! devices are skipped; Grove pools sit on whole physical disks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::DiskSerial;

/// Why a device could not be read from sysfs.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {value:?}, not a number")]
    NotANumber { path: PathBuf, value: String },
    #[error("cannot derive a serial for {name}: {source}")]
    Substitute {
        name: String,
        #[source]
        source: crate::types::SerialError,
    },
}

/// How the disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Usb,
    Nvme,
    Virtio,
    Loop,
    Other,
}

/// Where a disk's serial came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialSource {
    /// The device reported it.
    Hardware,
    /// The device's WWN, for devices without a serial.
    Wwid,
    /// Derived from a loop device's backing file path: stable while the same
    /// file backs it.
    BackingFile,
    /// Derived from the kernel name: stable only while the kernel names the
    /// disk the same way. Used when nothing better exists.
    KernelName,
}

/// A whole block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, like `sda` or `loop3`.
    pub name: String,
    /// `/dev/<name>`.
    pub path: PathBuf,
    pub size_bytes: u64,
    pub rotational: bool,
    pub removable: bool,
    pub transport: Transport,
    pub model: String,
    pub serial: DiskSerial,
    pub serial_source: SerialSource,
    /// Kernel names of its partitions.
    pub partitions: Vec<String>,
    /// The names its partition table gives its partitions (GPT names, the
    /// kernel's `PARTNAME`), where they have one, in the order of
    /// `partitions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_names: Vec<String>,
    /// Kernel names of devices stacked on it (device-mapper, md).
    pub holders: Vec<String>,
}

/// Device kinds that are never pool candidates.
fn skipped(name: &str) -> bool {
    ["ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Every whole block device under `sys/block`, sorted by name. Loop devices
/// that have no backing file are not devices at all and are left out.
pub fn scan(sys: &Path, dev: &Path) -> Result<Vec<BlockDevice>, DiscoverError> {
    let block = sys.join("block");
    let entries = std::fs::read_dir(&block).map_err(|source| DiscoverError::List {
        path: block.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !skipped(n))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if let Some(device) = read(sys, dev, &name)? {
            out.push(device);
        }
    }
    Ok(out)
}

/// Reads one device; `None` for an unattached loop device, a read-only one
/// (an image file mounted through it, like the boot image's compute
/// runtime: never a disk to pool or to protect), or a vanished one.
pub fn read(sys: &Path, dev: &Path, name: &str) -> Result<Option<BlockDevice>, DiscoverError> {
    let base = sys.join("block").join(name);
    if !base.exists() {
        return Ok(None);
    }
    let is_loop = name.starts_with("loop");
    let backing = read_opt(&base.join("loop/backing_file"))?;
    if is_loop && (backing.is_none() || read_opt(&base.join("ro"))?.as_deref() == Some("1")) {
        return Ok(None);
    }
    let sectors = read_u64(&base.join("size"))?;
    let rotational = read_u64(&base.join("queue/rotational"))? == 1;
    let removable = read_opt(&base.join("removable"))?.as_deref() == Some("1");
    let target = std::fs::canonicalize(&base).unwrap_or_else(|_not_a_link| base.clone());
    let transport = if is_loop {
        Transport::Loop
    } else if target.to_string_lossy().contains("/usb") {
        Transport::Usb
    } else if name.starts_with("nvme") {
        Transport::Nvme
    } else if name.starts_with("vd") {
        Transport::Virtio
    } else {
        Transport::Other
    };
    let model = read_opt(&base.join("device/model"))?.unwrap_or_default();
    let usb = transport == Transport::Usb;
    let (serial, serial_source) = identify(&base, name, backing.as_deref(), usb)?;
    let partitions = children(&base, name, |p| p.join("partition").exists())?;
    Ok(Some(BlockDevice {
        name: name.to_owned(),
        path: dev.join(name),
        size_bytes: sectors * 512,
        rotational,
        removable,
        transport,
        model,
        serial,
        serial_source,
        partition_names: partitions
            .iter()
            .filter_map(|p| partition_name(&base.join(p)))
            .collect(),
        partitions,
        holders: children(&base.join("holders"), "", |_| true)?,
    }))
}

/// The `PARTNAME` in a partition's `uevent`, if it has one.
fn partition_name(dir: &Path) -> Option<String> {
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("PARTNAME="))
        .map(str::to_owned)
        .filter(|n| !n.is_empty())
}

/// The disk's serial, or the best stable substitute.
fn identify(
    base: &Path,
    name: &str,
    backing: Option<&str>,
    usb: bool,
) -> Result<(DiskSerial, SerialSource), DiscoverError> {
    for rel in ["device/serial", "serial"] {
        if let Some(raw) = read_opt(&base.join(rel))?
            && let Some(serial) = sanitize(&raw)
        {
            return Ok((serial, SerialSource::Hardware));
        }
    }
    if let Some(raw) = read_vpd_serial(&base.join("device/vpd_pg80"))?
        && let Some(serial) = sanitize(&raw)
    {
        return Ok((serial, SerialSource::Hardware));
    }
    if usb
        && let Some(raw) = usb_serial(base)?
        && let Some(serial) = sanitize(&raw)
    {
        return Ok((serial, SerialSource::Hardware));
    }
    if let Some(raw) = read_opt(&base.join("device/wwid"))?
        && let Some(serial) = sanitize(&raw)
    {
        return Ok((serial, SerialSource::Wwid));
    }
    let (seed, source) = match backing {
        Some(file) => (file, SerialSource::BackingFile),
        None => (name, SerialSource::KernelName),
    };
    let serial = format!(
        "{}-{:016x}",
        name.trim_end_matches(char::is_numeric),
        fnv1a(seed)
    );
    let serial = serial.parse().map_err(|source| DiscoverError::Substitute {
        name: name.to_owned(),
        source,
    })?;
    Ok((serial, source))
}

/// The serial of the USB device a USB disk sits on: the
/// kernel skips the SCSI pages that carry a serial for USB storage, and the
/// USB device (the nearest directory above the disk in sysfs with an
/// `idVendor`) has its own.
fn usb_serial(base: &Path) -> Result<Option<String>, DiscoverError> {
    let Ok(mut dir) = std::fs::canonicalize(base) else {
        return Ok(None);
    };
    while dir.pop() {
        if dir.join("idVendor").exists() {
            return read_opt(&dir.join("serial"));
        }
    }
    Ok(None)
}

/// Keeps the characters a serial may hold; `None` if nothing is left.
fn sanitize(raw: &str) -> Option<DiskSerial> {
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .filter(|&c| DiskSerial::allows(c))
        .take(DiskSerial::MAX_LEN)
        .collect();
    let cleaned = cleaned.trim_matches('_');
    cleaned.parse().ok()
}

/// 64-bit FNV-1a: a stable, dependency-free hash for substitute serials.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn children(
    dir: &Path,
    prefix: &str,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<String>, DiscoverError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            n.to_string_lossy().starts_with(prefix) && keep(&e.path())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

fn read_opt(path: &Path) -> Result<Option<String>, DiscoverError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiscoverError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The serial in a SCSI "Unit Serial Number" VPD page (0x80), as the
/// kernel exposes it: binary, a 4-byte header (page code at byte 1, length
/// at bytes 2..4), then the serial's ASCII bytes.
fn read_vpd_serial(path: &Path) -> Result<Option<String>, DiscoverError> {
    let page = match std::fs::read(path) {
        Ok(page) => page,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DiscoverError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok(vpd_serial(&page))
}

fn vpd_serial(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, rest @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
    let text = String::from_utf8_lossy(&rest[..len]).trim().to_owned();
    Some(text).filter(|t| !t.is_empty())
}

fn read_u64(path: &Path) -> Result<u64, DiscoverError> {
    let value = read_opt(path)?.ok_or_else(|| DiscoverError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
    })?;
    value
        .parse()
        .map_err(|_bad: std::num::ParseIntError| DiscoverError::NotANumber {
            path: path.to_owned(),
            value,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        grove_daemon::fsutil::write_tree(root, rel, text).expect("write a fixture");
    }

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        // An SSD with a serial and one partition.
        write(r, "block/sda/size", "1953525168\n");
        write(r, "block/sda/queue/rotational", "0\n");
        write(r, "block/sda/removable", "0\n");
        write(r, "block/sda/device/model", "Samsung SSD 870\n");
        write(r, "block/sda/device/serial", "  S5Y1NX0T123456  \n");
        write(r, "block/sda/sda1/partition", "1\n");
        write(
            r,
            "block/sda/sda1/uevent",
            "MAJOR=8\nMINOR=1\nDEVNAME=sda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=grove-esp\n",
        );
        // An HDD with only a WWN.
        write(r, "block/sdb/size", "7814037168\n");
        write(r, "block/sdb/queue/rotational", "1\n");
        write(r, "block/sdb/device/wwid", "naa.5000c500a1b2c3d4\n");
        // A loop device with a backing file, and an unattached one.
        write(r, "block/loop3/size", "2097152\n");
        write(r, "block/loop3/queue/rotational", "1\n");
        write(r, "block/loop3/loop/backing_file", "/var/tmp/disk0.img\n");
        write(r, "block/loop4/size", "0\n");
        write(r, "block/loop4/queue/rotational", "0\n");
        // A read-only loop device: an image file mounted through it.
        write(r, "block/loop5/size", "40960\n");
        write(r, "block/loop5/queue/rotational", "0\n");
        write(r, "block/loop5/ro", "1\n");
        write(
            r,
            "block/loop5/loop/backing_file",
            "/usr/lib/grove/compute.squashfs\n",
        );
        write(r, "block/loop3/ro", "0\n");
        // Never candidates.
        write(r, "block/zram0/size", "100\n");
        write(r, "block/dm-0/size", "100\n");
        dir
    }

    #[test]
    fn scans_a_fixture_tree() {
        let sys = fixture();
        let disks = scan(sys.path(), Path::new("/dev")).expect("scan");
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop3", "sda", "sdb"]);

        let sda = &disks[1];
        assert_eq!(sda.path, PathBuf::from("/dev/sda"));
        assert_eq!(sda.size_bytes, 1953525168 * 512);
        assert!(!sda.rotational);
        assert_eq!(sda.model, "Samsung SSD 870");
        assert_eq!(sda.serial.as_str(), "S5Y1NX0T123456");
        assert_eq!(sda.serial_source, SerialSource::Hardware);
        assert_eq!(sda.partitions, ["sda1"]);
        assert_eq!(sda.partition_names, ["grove-esp"]);

        let sdb = &disks[2];
        assert!(sdb.rotational);
        assert_eq!(sdb.serial.as_str(), "naa.5000c500a1b2c3d4");
        assert_eq!(sdb.serial_source, SerialSource::Wwid);

        let lo = &disks[0];
        assert_eq!(lo.transport, Transport::Loop);
        assert_eq!(lo.serial_source, SerialSource::BackingFile);
        assert!(lo.serial.as_str().starts_with("loop-"), "{}", lo.serial);
    }

    #[test]
    fn substitute_serial_is_stable_and_follows_the_backing_file() {
        let sys = fixture();
        let a = read(sys.path(), Path::new("/dev"), "loop3")
            .unwrap()
            .expect("present");
        let b = read(sys.path(), Path::new("/dev"), "loop3")
            .unwrap()
            .expect("present");
        assert_eq!(a.serial, b.serial);
        write(
            sys.path(),
            "block/loop3/loop/backing_file",
            "/var/tmp/other.img\n",
        );
        let c = read(sys.path(), Path::new("/dev"), "loop3")
            .unwrap()
            .expect("present");
        assert_ne!(a.serial, c.serial);
    }

    #[test]
    fn vanished_device_is_none_and_bad_sysfs_is_an_error() {
        let sys = fixture();
        assert!(
            read(sys.path(), Path::new("/dev"), "sdz")
                .unwrap()
                .is_none()
        );
        write(sys.path(), "block/sdb/size", "lots\n");
        let err = read(sys.path(), Path::new("/dev"), "sdb").expect_err("bad size");
        assert!(err.to_string().contains("lots"), "{err}");
        assert!(scan(Path::new("/nonexistent"), Path::new("/dev")).is_err());
    }

    #[test]
    fn scsi_serials_come_from_the_binary_vpd_page() {
        assert_eq!(
            vpd_serial(b"\x00\x80\x00\x05gq0d0").as_deref(),
            Some("gq0d0")
        );
        // A length past the end takes what is there; a wrong page or a
        // short header is no serial.
        assert_eq!(vpd_serial(b"\x00\x80\x00\x40 ab ").as_deref(), Some("ab"));
        assert_eq!(vpd_serial(b"\x00\x83\x00\x02ab"), None);
        assert_eq!(vpd_serial(b"\x00\x80\x00"), None);
        assert_eq!(vpd_serial(b"\x00\x80\x00\x00"), None);
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "block/sdc/size", "2097152\n");
        write(r, "block/sdc/queue/rotational", "0\n");
        std::fs::create_dir_all(r.join("block/sdc/device")).unwrap();
        std::fs::write(
            r.join("block/sdc/device/vpd_pg80"),
            b"\x00\x80\x00\x06QM0001",
        )
        .unwrap();
        let sdc = read(r, Path::new("/dev"), "sdc").unwrap().expect("a disk");
        assert_eq!(sdc.serial.as_str(), "QM0001");
        assert_eq!(sdc.serial_source, SerialSource::Hardware);
    }

    #[test]
    fn usb_disks_take_the_serial_of_their_usb_device() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let usb = "devices/pci0000:00/0000:00:04.0/usb2/2-1";
        let disk = format!("{usb}/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sdd");
        write(r, &format!("{usb}/idVendor"), "46f4\n");
        write(r, &format!("{usb}/serial"), "gq0usb\n");
        write(r, &format!("{disk}/size"), "2097152\n");
        write(r, &format!("{disk}/queue/rotational"), "0\n");
        std::fs::create_dir_all(r.join("block")).unwrap();
        std::os::unix::fs::symlink(format!("../{disk}"), r.join("block/sdd")).unwrap();
        let sdd = read(r, Path::new("/dev"), "sdd").unwrap().unwrap();
        assert_eq!(sdd.serial.as_str(), "gq0usb");
        assert_eq!(sdd.serial_source, SerialSource::Hardware);
        assert_eq!(sdd.transport, Transport::Usb);
        // A USB device without a serial: the substitute, as before.
        std::fs::remove_file(r.join(usb).join("serial")).unwrap();
        let sdd = read(r, Path::new("/dev"), "sdd").unwrap().unwrap();
        assert_eq!(sdd.serial_source, SerialSource::KernelName);
    }

    #[test]
    fn serials_are_sanitized() {
        assert_eq!(
            sanitize("WD-WCC4 N123\n").map(|s| s.to_string()).as_deref(),
            Some("WD-WCC4_N123")
        );
        assert!(sanitize("   ").is_none());
        assert!(sanitize("\u{1}\u{2}").is_none());
    }
}
