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
    /// Whether the first or last MiB holds non-zero bytes.
    pub data_at_edges: bool,
}

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
    if let Some(pt) = &s.pttype {
        return DiskClass::Foreign {
            reason: format!("has a {pt} partition table"),
        };
    }
    if !d.partitions.is_empty() {
        return DiskClass::Foreign {
            reason: format!("has partitions {}", d.partitions.join(", ")),
        };
    }
    if let Some(fs) = &s.fstype {
        if fs == "btrfs"
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
            reason: format!("holds a {fs} signature{label}"),
        };
    }
    if f.data_at_edges {
        return DiskClass::Foreign {
            reason: "holds data that no prober recognizes".to_owned(),
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
            holders: vec![],
        }
    }

    fn sig(pttype: Option<&str>, fstype: Option<&str>, label: Option<&str>) -> Signatures {
        Signatures {
            pttype: pttype.map(Into::into),
            fstype: fstype.map(Into::into),
            label: label.map(Into::into),
            uuid: Some("u-1".into()),
        }
    }

    fn class(d: &BlockDevice, s: &Signatures, mounted: Option<&str>, edges: bool) -> DiskClass {
        classify(&Findings {
            device: d,
            signatures: s,
            mounted_at: mounted,
            data_at_edges: edges,
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
