//! A picture of the host state that tests may leak — network namespaces,
//! loop devices, mounts, links and Grove-related processes — to compare
//! before and after a suite.
//!
//! Everything is read from `/run/netns`, `/sys` and `/proc` without
//! subprocesses, kept in sorted sets, and saved as a line-per-item text
//! file (`<kind> <value>`) that [`HostSnapshot::load`] reads back. Limits:
//! mount points are compared as a multiset of paths (not sources or
//! options), and only processes whose command name is in [`WATCHED`] are
//! recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::netns::{self, NetnsError};
use crate::proc;

/// Process names whose appearance or disappearance counts as a difference.
pub const WATCHED: [&str; 10] = [
    "agent",
    "netd",
    "storaged",
    "provisiond",
    "dnsmasq",
    "udhcpc",
    "boringtun-cli",
    "boringtun",
    "runc",
    "qemu-system-x86_64",
];

/// The first line of a saved snapshot.
const HEADER: &str = "grove-host-snapshot 1";

/// The longest command name the kernel keeps (TASK_COMM_LEN less the NUL).
const COMM_MAX: usize = 15;

/// Taking, saving or loading a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not list network namespaces")]
    Netns(#[from] NetnsError),
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}: `{text}`")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("{path} line {line}: bad pid")]
    Pid {
        path: PathBuf,
        line: usize,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// What the host looked like at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Names under `/run/netns`.
    pub netns: BTreeSet<String>,
    /// Attached loop devices: device path to backing file.
    pub loops: BTreeMap<String, String>,
    /// Mount points of this process's mount namespace, with multiplicity.
    pub mounts: BTreeMap<String, usize>,
    /// Interfaces in the host network namespace.
    pub links: BTreeSet<String>,
    /// Watched processes as (pid, command name).
    pub processes: BTreeSet<(u32, String)>,
}

impl HostSnapshot {
    /// Reads the host's current state.
    pub fn take() -> Result<HostSnapshot, SnapshotError> {
        let mut snap = HostSnapshot {
            netns: netns::list()?.into_iter().collect(),
            ..HostSnapshot::default()
        };
        for entry in read_dir(Path::new("/sys/block"))? {
            let backing = Path::new("/sys/block")
                .join(&entry)
                .join("loop/backing_file");
            if let Ok(file) = std::fs::read_to_string(&backing) {
                snap.loops
                    .insert(format!("/dev/{entry}"), file.trim_end().to_owned());
            }
        }
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(mountinfo).map_err(|source| SnapshotError::Read {
            path: mountinfo.to_owned(),
            source,
        })?;
        for line in text.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                *snap.mounts.entry(point.to_owned()).or_default() += 1;
            }
        }
        snap.links = read_dir(Path::new("/sys/class/net"))?.into_iter().collect();
        // A zombie is left out: it holds nothing but its pid, and the host's
        // init reaps it when it gets to it (a killed daemon whose agent died
        // first is its child), so it may still be listed by the next test
        // and gone by that test's end.
        for pid in proc::pids() {
            let live = proc::ProcId::of(pid).is_some_and(|p| p.is_alive());
            if let Some(comm) = proc::comm(pid).filter(|c| live && is_watched(c)) {
                snap.processes.insert((pid, comm));
            }
        }
        Ok(snap)
    }

    /// What changed on the host since this snapshot, a line per change;
    /// empty when nothing did.
    pub fn changed_since(&self) -> Result<String, SnapshotError> {
        Ok(self.diff(&HostSnapshot::take()?).join("\n"))
    }

    /// Every way `after` differs from `self`, in plain words.
    pub fn diff(&self, after: &HostSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        set_diff(&mut out, "network namespace", &self.netns, &after.netns);
        for (dev, file) in &after.loops {
            match self.loops.get(dev) {
                None => out.push(format!("loop device {dev} appeared (backing {file})")),
                Some(old) if old != file => out.push(format!(
                    "loop device {dev} now backs {file} instead of {old}"
                )),
                Some(_) => {}
            }
        }
        for (dev, file) in &self.loops {
            if !after.loops.contains_key(dev) {
                out.push(format!(
                    "loop device {dev} disappeared (was backing {file})"
                ));
            }
        }
        let points: BTreeSet<&String> = self.mounts.keys().chain(after.mounts.keys()).collect();
        for point in points {
            let before = self.mounts.get(point).copied().unwrap_or(0);
            let now = after.mounts.get(point).copied().unwrap_or(0);
            if before != now {
                out.push(format!(
                    "mount point {point}: {before} mount(s) before, {now} after"
                ));
            }
        }
        set_diff(&mut out, "host link", &self.links, &after.links);
        for (pid, comm) in after.processes.difference(&self.processes) {
            out.push(format!("process {comm} (pid {pid}) appeared"));
        }
        for (pid, comm) in self.processes.difference(&after.processes) {
            out.push(format!("process {comm} (pid {pid}) disappeared"));
        }
        out
    }

    /// The snapshot as text, one item per line.
    pub fn to_text(&self) -> String {
        let mut text = format!("{HEADER}\n");
        for name in &self.netns {
            text.push_str(&format!("netns {name}\n"));
        }
        for (dev, file) in &self.loops {
            text.push_str(&format!("loop {dev} {file}\n"));
        }
        for (point, count) in &self.mounts {
            for _ in 0..*count {
                text.push_str(&format!("mount {point}\n"));
            }
        }
        for name in &self.links {
            text.push_str(&format!("link {name}\n"));
        }
        for (pid, comm) in &self.processes {
            text.push_str(&format!("proc {pid} {comm}\n"));
        }
        text
    }

    /// Reads back [`HostSnapshot::to_text`]; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<HostSnapshot, SnapshotError> {
        let bad = |line: usize, reason: &'static str, text: &str| SnapshotError::Parse {
            path: path.to_owned(),
            line,
            reason,
            text: text.to_owned(),
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            Some((_, other)) => return Err(bad(1, "not a host snapshot", other)),
            None => return Err(bad(1, "empty file", "")),
        }
        let mut snap = HostSnapshot::default();
        for (i, line) in lines {
            let n = i + 1;
            let (kind, rest) = line
                .split_once(' ')
                .ok_or_else(|| bad(n, "no value", line))?;
            let two = |missing| rest.split_once(' ').ok_or_else(|| bad(n, missing, line));
            match kind {
                "netns" => {
                    snap.netns.insert(rest.to_owned());
                }
                "loop" => {
                    let (dev, file) = two("loop without backing file")?;
                    snap.loops.insert(dev.to_owned(), file.to_owned());
                }
                "mount" => *snap.mounts.entry(rest.to_owned()).or_default() += 1,
                "link" => {
                    snap.links.insert(rest.to_owned());
                }
                "proc" => {
                    let (pid, comm) = two("process without name")?;
                    let pid = pid.parse().map_err(|source| SnapshotError::Pid {
                        path: path.to_owned(),
                        line: n,
                        source,
                    })?;
                    snap.processes.insert((pid, comm.to_owned()));
                }
                _ => return Err(bad(n, "unknown kind", line)),
            }
        }
        Ok(snap)
    }

    /// Writes the snapshot to `path`.
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        std::fs::write(path, self.to_text()).map_err(|source| SnapshotError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a snapshot saved by [`HostSnapshot::save`].
    pub fn load(path: &Path) -> Result<HostSnapshot, SnapshotError> {
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
            path: path.to_owned(),
            source,
        })?;
        HostSnapshot::parse(&text, path)
    }
}

/// Whether a `/proc/<pid>/comm` value is one of [`WATCHED`], allowing for
/// the kernel's truncation to 15 bytes.
fn is_watched(comm: &str) -> bool {
    WATCHED.iter().any(|w| comm == &w[..w.len().min(COMM_MAX)])
}

fn read_dir(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SnapshotError::Read {
        path: dir.to_owned(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect())
}

fn set_diff(
    out: &mut Vec<String>,
    what: &str,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) {
    for name in after.difference(before) {
        out.push(format!("{what} {name} appeared"));
    }
    for name in before.difference(after) {
        out.push(format!("{what} {name} disappeared"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostSnapshot {
        HostSnapshot {
            netns: BTreeSet::from(["gtb-abcdef-lan".to_owned()]),
            loops: BTreeMap::from([("/dev/loop3".to_owned(), "/var/tmp/a b.img".to_owned())]),
            mounts: BTreeMap::from([("/".to_owned(), 1), ("/run/netns".to_owned(), 2)]),
            links: BTreeSet::from(["lo".to_owned(), "eth0".to_owned()]),
            processes: BTreeSet::from([
                (42, "dnsmasq".to_owned()),
                (7, "qemu-system-x86".to_owned()),
            ]),
        }
    }

    #[test]
    fn text_round_trips() {
        let snap = sample();
        let back = HostSnapshot::parse(&snap.to_text(), Path::new("x")).expect("parses");
        assert_eq!(back, snap);
    }

    #[test]
    fn bad_files_are_refused_with_line_numbers() {
        let cases = [
            ("", 1),
            ("something else\n", 1),
            ("grove-host-snapshot 1\nnetns a\nbogus x\n", 3),
            ("grove-host-snapshot 1\nproc x agent\n", 2),
            ("grove-host-snapshot 1\nloop /dev/loop0\n", 2),
        ];
        for (text, want) in cases {
            match HostSnapshot::parse(text, Path::new("f")) {
                Err(SnapshotError::Parse { line, .. } | SnapshotError::Pid { line, .. }) => {
                    assert_eq!(line, want, "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn diff_names_every_change() {
        let before = sample();
        let mut after = sample();
        after.netns.insert("gtb-abcdef-n0".to_owned());
        after
            .loops
            .insert("/dev/loop3".to_owned(), "/other".to_owned());
        after.mounts.insert("/run/netns".to_owned(), 3);
        after.links.remove("eth0");
        after.processes.insert((99, "agent".to_owned()));
        let diff = before.diff(&after);
        assert_eq!(diff.len(), 5, "{diff:#?}");
        assert!(diff.contains(&"network namespace gtb-abcdef-n0 appeared".to_owned()));
        assert!(diff.contains(&"host link eth0 disappeared".to_owned()));
        assert!(diff.contains(&"process agent (pid 99) appeared".to_owned()));
        assert!(before.diff(&before).is_empty());
    }

    #[test]
    fn truncated_comms_are_watched() {
        for (comm, watched) in [
            ("qemu-system-x86", true),
            ("boringtun-cli", true),
            ("agent", true),
            ("bash", false),
        ] {
            assert_eq!(is_watched(comm), watched, "{comm}");
        }
    }

    #[test]
    fn the_host_can_be_taken() {
        let snap = HostSnapshot::take().expect("readable");
        assert!(snap.links.contains("lo"));
        assert!(snap.mounts.contains_key("/"));
    }
}
