//! Classifying a disk: blank, ours, foreign or unusable.
//!
//! A pure function of what discovery and probing found, so every rule is
//! unit-tested. Anything that is not positively blank or positively a Grove
//! pool is foreign, and a foreign disk is never written unless the farmer
//! names it for wiping. When in doubt, the answer is foreign.

use serde::{Deserialize, Serialize};

use super::discover::BlockDevice;
use super::probe::Signatures;
use crate::types::PoolLabel;

/// The smallest disk worth a pool (btrfs needs about 114 MiB).
pub const MIN_POOL_BYTES: u64 = 256 << 20;

/// What a disk is, for Grove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "class")]
pub enum DiskClass {
    /// No partition table, no signature, zeros at both ends: becomes a pool.
    Blank,
    /// A Grove pool.
    Ours { label: PoolLabel, uuid: String },
    /// Holds something that is not Grove's: never written.
    Foreign { reason: String },
    /// Cannot hold a pool (too small, in use by the system).
    Unusable { reason: String },
}

/// What was learnt about one disk, as input to [`classify`].
#[derive(Debug, Clone)]
pub struct Findings<'a> {
    pub device: &'a BlockDevice,
    pub signatures: &'a Signatures,
    /// Where the disk or one of its partitions is mounted, if anywhere
    /// outside Grove's own pool directory (a pool mounted by an earlier run
    /// of storaged is not "in use by someone else").
    pub mounted_at: Option<&'a str>,
    /// Where a non-zero byte was read (the edges and the sampled blocks).
    pub data_at: Option<u64>,
}

/// The reason a foreign disk gives when it holds data but no signature.
pub const UNRECOGNISED: &str = "unrecognised data";

pub fn classify(f: &Findings<'_>) -> DiskClass {
    let d = f.device;
    let s = f.signatures;
    if let Some(at) = f.mounted_at {
        return DiskClass::Unusable {
            reason: format!("in use: mounted at {at}"),
        };
    }
    if !d.holders.is_empty() {
        return DiskClass::Unusable {
            reason: format!("in use by {}", d.holders.join(", ")),
        };
    }
    let place = s.offset.map(where_found).unwrap_or_default();
    if let Some(fs) = &s.fstype {
        if fs == "btrfs"
            && s.offset.is_none()
            && s.pttype.is_none()
            && d.partitions.is_empty()
            && let Some(label) = s.label.as_deref().and_then(|l| l.parse::<PoolLabel>().ok())
            && let Some(uuid) = &s.uuid
        {
            return DiskClass::Ours {
                label,
                uuid: uuid.clone(),
            };
        }
        let label = s
            .label
            .as_deref()
            .map(|l| format!(" labelled {l:?}"))
            .unwrap_or_default();
        return DiskClass::Foreign {
            reason: format!("{}{label}{place}", describe(fs, s.usage.as_deref())),
        };
    }
    if let Some(pt) = &s.pttype {
        let table = match pt.as_str() {
            "dos" => "an MBR (DOS)".to_owned(),
            "gpt" => "a GPT".to_owned(),
            other => format!("a {other}"),
        };
        let backup = if pt == "gpt" && s.offset.is_some() {
            " (only its backup header, at the end of the disk)"
        } else {
            ""
        };
        return DiskClass::Foreign {
            reason: format!("has {table} partition table{backup}"),
        };
    }
    if !d.partitions.is_empty() {
        return DiskClass::Foreign {
            reason: format!("has partitions {}", d.partitions.join(", ")),
        };
    }
    if let Some(at) = f.data_at {
        return DiskClass::Foreign {
            reason: format!("{UNRECOGNISED}: non-zero bytes at offset {at} and no known signature"),
        };
    }
    if d.size_bytes < MIN_POOL_BYTES {
        return DiskClass::Unusable {
            reason: format!(
                "too small for a pool: {} MiB, the minimum is {} MiB",
                d.size_bytes >> 20,
                MIN_POOL_BYTES >> 20
            ),
        };
    }
    DiskClass::Blank
}

/// Words for what a signature is, by its type and blkid's usage.
fn describe(fs: &str, usage: Option<&str>) -> String {
    match fs {
        "swap" => "is a swap area".to_owned(),
        "crypto_LUKS" => "holds a LUKS encrypted volume".to_owned(),
        "LVM2_member" => "is an LVM2 physical volume".to_owned(),
        "linux_raid_member" => "is a member of a Linux md RAID array".to_owned(),
        "bcache" => "is a bcache backing or cache device".to_owned(),
        "zfs_member" => "is a member of a ZFS pool".to_owned(),
        "iso9660" => "holds an ISO 9660 (CD/DVD image) filesystem".to_owned(),
        "btrfs" => "holds another system's btrfs filesystem".to_owned(),
        "exfat" => "holds an exFAT filesystem".to_owned(),
        "ntfs" => "holds an NTFS filesystem".to_owned(),
        "vfat" => "holds a FAT filesystem".to_owned(),
        other => match usage {
            Some("filesystem") => format!("holds {} {other} filesystem", article(other)),
            Some("raid") => format!("is a member of a {other} array"),
            Some("crypto") => format!("holds a {other} encrypted volume"),
            _ => format!("holds a {other} signature"),
        },
    }
}

/// "an" before a name read letter by letter or starting with a vowel
/// (an ext4, an xfs, an f2fs), "a" otherwise.
fn article(name: &str) -> &'static str {
    if name.starts_with([
        'a', 'e', 'i', 'o', 'u', 'x', 'f', 'h', 'l', 'm', 'n', 'r', 's',
    ]) {
        "an"
    } else {
        "a"
    }
}

/// Words for where a signature was found.
fn where_found(offset: u64) -> String {
    match offset {
        o if o == 63 * 512 => {
            " at sector 63, where a lost partition table's first partition began".to_owned()
        }
        o if o == 1 << 20 => {
            " at 1 MiB, where a lost partition table's first partition began".to_owned()
        }
        o => format!(" at offset {o}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::disk::discover::{SerialSource, Transport};

    fn disk() -> BlockDevice {
        BlockDevice {
            name: "sdb".into(),
            path: PathBuf::from("/dev/sdb"),
            size_bytes: 1 << 40,
            rotational: false,
            removable: false,
            transport: Transport::Other,
            model: String::new(),
            serial: "SER1".parse().expect("serial"),
            serial_source: SerialSource::Hardware,
            partitions: vec![],
            partition_names: vec![],
            holders: vec![],
        }
    }

    fn sig(pttype: Option<&str>, fstype: Option<&str>, label: Option<&str>) -> Signatures {
        Signatures {
            pttype: pttype.map(Into::into),
            fstype: fstype.map(Into::into),
            label: label.map(Into::into),
            uuid: Some("u-1".into()),
            ..Signatures::default()
        }
    }

    fn class(d: &BlockDevice, s: &Signatures, mounted: Option<&str>, edges: bool) -> DiskClass {
        classify(&Findings {
            device: d,
            signatures: s,
            mounted_at: mounted,
            data_at: edges.then_some(4096),
        })
    }

    fn is_foreign(c: &DiskClass) -> bool {
        matches!(c, DiskClass::Foreign { .. })
    }

    #[test]
    fn blank_only_when_nothing_at_all_is_there() {
        assert_eq!(
            class(&disk(), &Signatures::default(), None, false),
            DiskClass::Blank
        );
        assert!(is_foreign(&class(
            &disk(),
            &Signatures::default(),
            None,
            true
        )));
    }

    #[test]
    fn every_kind_of_foreign_content_is_foreign() {
        let d = disk();
        for s in [
            sig(Some("gpt"), None, None),
            sig(Some("dos"), None, None),
            sig(None, Some("ext4"), Some("data")),
            sig(None, Some("xfs"), None),
            sig(None, Some("vfat"), None),
            sig(None, Some("ntfs"), None),
            sig(None, Some("swap"), None),
            sig(None, Some("crypto_LUKS"), None),
            sig(None, Some("LVM2_member"), None),
            sig(None, Some("zfs_member"), None),
            sig(None, Some("iso9660"), None),
            sig(None, Some("btrfs"), Some("farmer-backup")),
            sig(None, Some("btrfs"), None),
            sig(None, Some("btrfs"), Some("grove-")),
        ] {
            assert!(is_foreign(&class(&d, &s, None, false)), "{s:?}");
        }
        let mut parted = disk();
        parted.partitions = vec!["sdb1".into()];
        assert!(is_foreign(&class(
            &parted,
            &Signatures::default(),
            None,
            false
        )));
    }

    fn reason(c: &DiskClass) -> String {
        match c {
            DiskClass::Foreign { reason } => reason.clone(),
            other => panic!("not foreign: {other:?}"),
        }
    }

    #[test]
    fn reasons_fit_what_is_on_the_disk() {
        let d = disk();
        let exfat = sig(Some("dos"), Some("exfat"), None);
        assert_eq!(
            reason(&class(&d, &exfat, None, false)),
            "holds an exFAT filesystem"
        );
        let mut ext4 = sig(None, Some("ext4"), None);
        ext4.usage = Some("filesystem".into());
        ext4.offset = Some(1 << 20);
        let r = reason(&class(&d, &ext4, None, false));
        assert!(r.starts_with("holds an ext4 filesystem at 1 MiB"), "{r}");
        let mut f2fs = sig(None, Some("f2fs"), None);
        f2fs.usage = Some("filesystem".into());
        assert_eq!(
            reason(&class(&d, &f2fs, None, false)),
            "holds an f2fs filesystem"
        );
        assert_eq!(
            reason(&class(&d, &sig(None, Some("swap"), None), None, false)),
            "is a swap area"
        );
        assert_eq!(
            reason(&class(&d, &sig(Some("dos"), None, None), None, false)),
            "has an MBR (DOS) partition table"
        );
        let data = reason(&class(&d, &Signatures::default(), None, true));
        assert!(data.starts_with(UNRECOGNISED), "{data}");
        let mut backup = sig(Some("gpt"), None, None);
        backup.offset = Some(d.size_bytes - 512);
        assert!(reason(&class(&d, &backup, None, false)).contains("backup"));
    }

    #[test]
    fn a_grove_label_found_off_the_start_is_foreign() {
        let mut s = sig(None, Some("btrfs"), Some("grove-abc123"));
        s.offset = Some(1 << 20);
        assert!(is_foreign(&class(&disk(), &s, None, false)));
    }

    #[test]
    fn a_grove_label_is_ours() {
        let c = class(
            &disk(),
            &sig(None, Some("btrfs"), Some("grove-abc123")),
            None,
            true,
        );
        assert_eq!(
            c,
            DiskClass::Ours {
                label: "grove-abc123".parse().expect("label"),
                uuid: "u-1".into()
            }
        );
        // A Grove label on a partitioned disk is still foreign.
        let c = class(
            &disk(),
            &sig(Some("gpt"), Some("btrfs"), Some("grove-abc123")),
            None,
            false,
        );
        assert!(is_foreign(&c));
    }

    #[test]
    fn mounted_stacked_or_tiny_disks_are_unusable() {
        let blank = Signatures::default();
        let c = class(&disk(), &blank, Some("/boot"), false);
        assert!(
            matches!(c, DiskClass::Unusable { ref reason } if reason.contains("/boot")),
            "{c:?}"
        );
        let mut held = disk();
        held.holders = vec!["dm-0".into()];
        assert!(matches!(
            class(&held, &blank, None, false),
            DiskClass::Unusable { .. }
        ));
        let mut tiny = disk();
        tiny.size_bytes = 64 << 20;
        assert!(matches!(
            class(&tiny, &blank, None, false),
            DiskClass::Unusable { .. }
        ));
    }
}
