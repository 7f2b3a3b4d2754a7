//! The stick's two slots as they lie on its FAT ESP, mounted at a
//! directory: what each boot loader reads, and the upgrade record.
//!
//! - `/grove/<slot>/{vmlinuz,initramfs,os-release}`: the slot's system.
//! - `/loader/entries/grove-<slot>[+LEFT[-DONE]].conf`: systemd-boot's
//!   entry for the slot (UEFI). Entries sort by `version`, highest first,
//!   and systemd-boot puts an entry with no tries left (`+0`) last: a new
//!   slot is written as `+1`, so it is tried once, and marking it good
//!   drops the counter.
//! - `/grub/grubenv`: GRUB's environment block (BIOS). `grove_slot` names
//!   the good slot, `grove_try` a slot to boot once; GRUB clears
//!   `grove_try` before it boots it.
//! - `/grove/upgrade.json`: the last upgrade, for the system either slot
//!   boots into to report and finish.
//!
//! Every file is replaced whole with [`write_atomic`] (temporary name,
//! fsync, rename, fsync of the directory), in an order that leaves the
//! stick bootable into its good slot if the power goes at any point.

use std::path::{Path, PathBuf};

use grove_daemon::fsutil::write_atomic;

use super::{Bundle, Record, Slot};

/// An ESP, mounted (or any directory laid out like one).
#[derive(Debug, Clone)]
pub struct Esp {
    root: PathBuf,
}

/// A slot's systemd-boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its file name under `loader/entries`.
    pub file: String,
    /// Its `version` line: higher boots first.
    pub version: u64,
    /// The boot counter in its name, if it has one: tries left.
    pub tries_left: Option<u32>,
    /// Its `options` line: the kernel command line.
    pub options: String,
}

/// Why the ESP could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GRUB environment block")]
    Grubenv { path: PathBuf },
    #[error("{path} holds no upgrade record: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// GRUB's environment block is this long, always.
const GRUBENV_LEN: usize = 1024;
const GRUBENV_HEAD: &str = "# GRUB Environment Block\n";

impl Esp {
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn entries_dir(&self) -> PathBuf {
        self.root.join("loader/entries")
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("grove").join(slot.name())
    }

    fn record_path(&self) -> PathBuf {
        self.root.join("grove/upgrade.json")
    }

    fn grubenv_path(&self) -> PathBuf {
        self.root.join("grub/grubenv")
    }

    fn read(&self, path: &Path) -> Result<Option<String>, EspError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EspError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn remove(&self, path: &Path) -> Result<(), EspError> {
        std::fs::remove_file(path).map_err(|source| EspError::Remove {
            path: path.to_owned(),
            source,
        })
    }

    /// `slot`'s systemd-boot entries (one, unless an earlier write was cut
    /// short), highest version first.
    pub fn entries(&self, slot: Slot) -> Result<Vec<Entry>, EspError> {
        let dir = self.entries_dir();
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(EspError::Read { path: dir, source }),
        };
        let mut entries = Vec::new();
        for item in listing {
            let item = item.map_err(|source| EspError::Read {
                path: dir.clone(),
                source,
            })?;
            let file = item.file_name().to_string_lossy().into_owned();
            let Some(tries_left) = entry_counter(&file, slot) else {
                continue;
            };
            let text = self.read(&item.path())?.unwrap_or_default();
            let line = |key: &str| {
                text.lines()
                    .filter_map(|l| l.trim().split_once(char::is_whitespace))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.trim().to_owned())
            };
            entries.push(Entry {
                version: line("version").and_then(|v| v.parse().ok()).unwrap_or(0),
                options: line("options").unwrap_or_default(),
                tries_left,
                file,
            });
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.version));
        Ok(entries)
    }

    /// The variables of GRUB's environment block.
    pub fn grubenv(&self) -> Result<Vec<(String, String)>, EspError> {
        let path = self.grubenv_path();
        let Some(text) = self.read(&path)? else {
            return Ok(Vec::new());
        };
        if !text.starts_with(GRUBENV_HEAD) {
            return Err(EspError::Grubenv { path });
        }
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Sets (or, with `None`, clears) variables of GRUB's environment
    /// block, keeping the others.
    pub fn set_grubenv(&self, changes: &[(&str, Option<&str>)]) -> Result<(), EspError> {
        let mut vars = self.grubenv()?;
        for (key, value) in changes {
            vars.retain(|(k, _)| k != key);
            if let Some(v) = value {
                vars.push(((*key).to_owned(), (*v).to_owned()));
            }
        }
        let mut block = GRUBENV_HEAD.to_owned();
        for (k, v) in &vars {
            block.push_str(&format!("{k}={v}\n"));
        }
        let path = self.grubenv_path();
        if block.len() > GRUBENV_LEN {
            return Err(EspError::Grubenv { path });
        }
        block.extend(std::iter::repeat_n('#', GRUBENV_LEN - block.len()));
        write_atomic(&path, block.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The value of `key` in GRUB's environment block.
    pub fn grubenv_var(&self, key: &str) -> Result<Option<String>, EspError> {
        Ok(self
            .grubenv()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v))
    }

    /// The os-release of the system in `slot`.
    pub fn os_release(&self, slot: Slot) -> Result<Option<String>, EspError> {
        self.read(&self.slot_dir(slot).join("os-release"))
    }

    pub fn record(&self) -> Result<Option<Record>, EspError> {
        let path = self.record_path();
        let Some(text) = self.read(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| EspError::Record { path, source })
    }

    pub fn set_record(&self, record: &Record) -> Result<(), EspError> {
        let json = serde_json::to_vec_pretty(record).expect("a record serializes");
        write_atomic(&self.record_path(), &json, 0o644)?;
        Ok(())
    }

    /// Bytes the files of `slot` take now (freed when it is rewritten).
    pub fn slot_bytes(&self, slot: Slot) -> u64 {
        ["vmlinuz", "initramfs", "os-release"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.slot_dir(slot).join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Writes `bundle` into `slot` and makes it the slot both boot loaders
    /// try once on the next boot, with the kernel command line `options`
    /// (the running slot's, so the node keeps its parameters). `record`
    /// is written before the slot is made bootable. Returns the new
    /// entry's version.
    ///
    /// The order keeps the stick bootable into the running slot at every
    /// step: the slot's old entry goes first (a half-written slot is never
    /// an entry), then its files, the record, its entry, and last GRUB's
    /// variable.
    pub fn install(
        &self,
        slot: Slot,
        bundle: &Bundle,
        options: &str,
        record: &Record,
    ) -> Result<u64, EspError> {
        for old in self.entries(slot)? {
            self.remove(&self.entries_dir().join(&old.file))?;
        }
        let dir = self.slot_dir(slot);
        for (name, bytes) in [
            ("vmlinuz", bundle.kernel.as_slice()),
            ("initramfs", bundle.initramfs.as_slice()),
            ("os-release", bundle.os_release.as_bytes()),
        ] {
            write_atomic(&dir.join(name), bytes, 0o644)?;
        }
        self.set_record(record)?;
        let version = self.entries(slot.other())?.first().map_or(0, |e| e.version) + 1;
        let options = with_slot(options, slot);
        let entry = format!(
            "title Grove {}, slot {}\nsort-key grove\nversion {version}\nlinux /grove/{s}/vmlinuz\ninitrd /grove/{s}/initramfs\noptions {options}\n",
            bundle.version,
            slot.name().to_uppercase(),
            s = slot.name(),
        );
        let file = format!("grove-{}+1.conf", slot.name());
        write_atomic(&self.entries_dir().join(file), entry.as_bytes(), 0o644)?;
        self.set_grubenv(&[("grove_try", Some(slot.name()))])?;
        Ok(version)
    }

    /// Marks `slot` good for both boot loaders: its entry loses its boot
    /// counter, and GRUB's good slot becomes it.
    pub fn bless(&self, slot: Slot) -> Result<(), EspError> {
        self.rename_entry(slot, &format!("grove-{}.conf", slot.name()))?;
        self.set_grubenv(&[("grove_slot", Some(slot.name())), ("grove_try", None)])
    }

    /// Marks `slot` bad for both boot loaders: systemd-boot sorts an entry
    /// with no tries left last, and GRUB is no longer asked to try it.
    pub fn condemn(&self, slot: Slot) -> Result<(), EspError> {
        if self
            .entries(slot)?
            .first()
            .is_some_and(|e| e.tries_left.is_some_and(|left| left > 0))
        {
            self.rename_entry(slot, &format!("grove-{}+0.conf", slot.name()))?;
        }
        if self.grubenv_var("grove_try")?.as_deref() == Some(slot.name()) {
            self.set_grubenv(&[("grove_try", None)])?;
        }
        Ok(())
    }

    fn rename_entry(&self, slot: Slot, to: &str) -> Result<(), EspError> {
        let Some(entry) = self.entries(slot)?.into_iter().next() else {
            return Ok(());
        };
        if entry.file == to {
            return Ok(());
        }
        let dir = self.entries_dir();
        let (from, to) = (dir.join(&entry.file), dir.join(to));
        std::fs::rename(&from, &to)
            .and_then(|()| std::fs::File::open(&dir)?.sync_all())
            .map_err(|source| {
                EspError::Write(grove_daemon::fsutil::WriteError { path: to, source })
            })
    }
}

/// The boot counter's tries left in an entry file name of `slot`
/// (`Some(None)` for an entry without one), or `None` if the file is not
/// one of `slot`'s entries.
fn entry_counter(file: &str, slot: Slot) -> Option<Option<u32>> {
    let stem = file
        .strip_suffix(".conf")?
        .strip_prefix("grove-")?
        .strip_prefix(slot.name())?;
    if stem.is_empty() {
        return Some(None);
    }
    let counter = stem.strip_prefix('+')?;
    let left = counter.split('-').next()?;
    left.parse().ok().map(Some)
}

/// `options` with `grove.slot=` naming `slot` (first, so a node's own
/// parameters stay at the end).
pub fn with_slot(options: &str, slot: Slot) -> String {
    let rest: Vec<&str> = options
        .split_whitespace()
        .filter(|w| {
            !w.starts_with("grove.slot=")
                && !w.starts_with("initrd=")
                && !w.starts_with("BOOT_IMAGE=")
        })
        .collect();
    let mut line = format!("grove.slot={}", slot.name());
    for w in rest {
        line.push(' ');
        line.push_str(w);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::Outcome;

    fn bundle(version: &str) -> Bundle {
        Bundle {
            version: version.to_owned(),
            os_release: format!("ID=grove\nVERSION_ID={version}\n"),
            kernel: b"kernel".to_vec(),
            initramfs: b"initramfs".to_vec(),
        }
    }

    /// A stick as image/usb lays it out: slot A good, B older.
    fn stick() -> (tempfile::TempDir, Esp) {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::at(dir.path());
        for (slot, version) in [(Slot::A, 1), (Slot::B, 0)] {
            let s = slot.name();
            grove_daemon::fsutil::write_tree(
                dir.path(),
                &format!("loader/entries/grove-{s}.conf"),
                &format!("title Grove\nsort-key grove\nversion {version}\nlinux /grove/{s}/vmlinuz\noptions grove.slot={s} console=ttyS0 grove.farm=1\n"),
            )
            .unwrap();
            grove_daemon::fsutil::write_tree(dir.path(), &format!("grove/{s}/vmlinuz"), "old")
                .unwrap();
        }
        std::fs::create_dir_all(dir.path().join("grub")).unwrap();
        esp.set_grubenv(&[("grove_slot", Some("a"))]).unwrap();
        (dir, esp)
    }

    fn record() -> Record {
        Record {
            from: super::super::SlotVersion {
                slot: Slot::A,
                version: "1".to_owned(),
            },
            to: super::super::SlotVersion {
                slot: Slot::B,
                version: "2".to_owned(),
            },
            sha256: "00".repeat(32),
            asked_at: 1,
            outcome: Outcome::Trying,
            reason: None,
            settled_at: None,
        }
    }

    #[test]
    fn entry_names_carry_the_boot_counter() {
        assert_eq!(entry_counter("grove-a.conf", Slot::A), Some(None));
        assert_eq!(entry_counter("grove-b+1.conf", Slot::B), Some(Some(1)));
        assert_eq!(entry_counter("grove-b+0-1.conf", Slot::B), Some(Some(0)));
        assert_eq!(entry_counter("grove-b+1.conf", Slot::A), None);
        assert_eq!(entry_counter("grove-ab.conf", Slot::A), None);
        assert_eq!(entry_counter("grove-a+x.conf", Slot::A), None);
        assert_eq!(entry_counter("other.conf", Slot::A), None);
    }

    #[test]
    fn grubenv_stays_one_kilobyte_and_keeps_other_variables() {
        let (dir, esp) = stick();
        esp.set_grubenv(&[("saved_entry", Some("x"))]).unwrap();
        esp.set_grubenv(&[("grove_try", Some("b"))]).unwrap();
        esp.set_grubenv(&[("grove_try", None)]).unwrap();
        let raw = std::fs::read(dir.path().join("grub/grubenv")).unwrap();
        assert_eq!(raw.len(), 1024);
        assert_eq!(
            esp.grubenv().unwrap(),
            [
                ("grove_slot".to_owned(), "a".to_owned()),
                ("saved_entry".to_owned(), "x".to_owned())
            ]
        );
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.starts_with("# GRUB Environment Block\ngrove_slot=a\n"),
            "{text}"
        );
        assert!(text.ends_with('#'));
    }

    #[test]
    fn an_install_is_tried_once_above_the_running_slot_and_keeps_its_options() {
        let (dir, esp) = stick();
        let running = esp.entries(Slot::A).unwrap().remove(0);
        let version = esp
            .install(Slot::B, &bundle("2"), &running.options, &record())
            .unwrap();
        assert_eq!(version, 2, "above slot A's version 1");
        let entries = esp.entries(Slot::B).unwrap();
        assert_eq!(entries.len(), 1, "the old entry is gone: {entries:?}");
        assert_eq!(entries[0].file, "grove-b+1.conf");
        assert_eq!(entries[0].tries_left, Some(1));
        assert_eq!(
            entries[0].options,
            "grove.slot=b console=ttyS0 grove.farm=1"
        );
        assert_eq!(
            std::fs::read(dir.path().join("grove/b/vmlinuz")).unwrap(),
            b"kernel"
        );
        assert_eq!(esp.grubenv_var("grove_try").unwrap().as_deref(), Some("b"));
        assert_eq!(esp.grubenv_var("grove_slot").unwrap().as_deref(), Some("a"));
        assert_eq!(esp.record().unwrap(), Some(record()));
        assert_eq!(
            esp.os_release(Slot::B).unwrap().as_deref(),
            Some("ID=grove\nVERSION_ID=2\n")
        );

        // systemd-boot counts the try down; the slot then proves good.
        std::fs::rename(
            dir.path().join("loader/entries/grove-b+1.conf"),
            dir.path().join("loader/entries/grove-b+0-1.conf"),
        )
        .unwrap();
        esp.bless(Slot::B).unwrap();
        assert_eq!(esp.entries(Slot::B).unwrap()[0].file, "grove-b.conf");
        assert_eq!(esp.grubenv_var("grove_slot").unwrap().as_deref(), Some("b"));
        assert_eq!(esp.grubenv_var("grove_try").unwrap(), None);
    }

    #[test]
    fn a_condemned_slot_has_no_tries_left_and_is_not_tried_by_grub() {
        let (_dir, esp) = stick();
        esp.install(Slot::B, &bundle("2"), "grove.farm=1", &record())
            .unwrap();
        esp.condemn(Slot::B).unwrap();
        let entry = esp.entries(Slot::B).unwrap().remove(0);
        assert_eq!(
            (entry.file.as_str(), entry.tries_left),
            ("grove-b+0.conf", Some(0))
        );
        assert_eq!(esp.grubenv_var("grove_try").unwrap(), None);
        assert_eq!(esp.grubenv_var("grove_slot").unwrap().as_deref(), Some("a"));
        // Already bad after systemd-boot's count: left as it is.
        esp.condemn(Slot::B).unwrap();
        assert_eq!(esp.entries(Slot::B).unwrap()[0].file, "grove-b+0.conf");
    }

    #[test]
    fn the_slot_parameter_leads_the_options_once() {
        assert_eq!(
            with_slot(
                "BOOT_IMAGE=/x initrd=\\y grove.slot=a console=tty0 grove.farm=1",
                Slot::B
            ),
            "grove.slot=b console=tty0 grove.farm=1"
        );
    }

    #[test]
    fn a_grubenv_that_is_not_one_is_refused_not_overwritten() {
        let (dir, esp) = stick();
        std::fs::write(dir.path().join("grub/grubenv"), "garbage").unwrap();
        assert!(matches!(
            esp.set_grubenv(&[("grove_try", Some("b"))]),
            Err(EspError::Grubenv { .. })
        ));
        assert_eq!(
            std::fs::read(dir.path().join("grub/grubenv")).unwrap(),
            b"garbage"
        );
    }
}
