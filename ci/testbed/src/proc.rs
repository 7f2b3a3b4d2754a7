//! Finding and killing host processes through `/proc`: by namespace, by
//! ancestry, by name.
//!
//! A process is named by its pid together with its start time, so a pid the
//! kernel has handed to somebody else since is never killed by mistake; the
//! killer re-scans until nothing it is after is left, because a dying tree
//! can still fork. Limits: a process that has moved into namespaces of its
//! own and was reparented away from the node is invisible here.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, Signal, kill};
use nix::unistd::Pid;

/// Processes that would not die.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Sending a signal failed for another reason than the process being gone.
    #[error("could not send {signal} to pid {pid}")]
    Signal {
        pid: u32,
        signal: Signal,
        #[source]
        source: Errno,
    },
    /// Processes still alive after the deadline.
    #[error("{what}: pids {pids:?} still alive after {waited:?}")]
    Survivors {
        what: String,
        pids: Vec<u32>,
        waited: Duration,
    },
}

/// A namespace's identity: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The namespace a nsfs file (`/proc/<pid>/ns/net`, `/run/netns/<name>`) stands for.
    pub fn of(path: &Path) -> std::io::Result<NsId> {
        let meta = std::fs::metadata(path)?;
        Ok(NsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A process: its pid and the boot-relative tick it started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

impl ProcId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|s| ProcId {
            pid,
            start: s.start,
        })
    }

    /// True while this very process (not a successor of its pid) exists
    /// and has not yet exited.
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z' && s.state != 'X')
    }
}

/// The fields of `/proc/<pid>/stat` the testbed needs.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub ppid: u32,
    pub state: char,
    pub start: u64,
}

/// Parses `/proc/<pid>/stat`; `None` when the process is gone.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name sits in parentheses and may itself hold spaces or
    // parentheses; everything after the last `)` is space separated.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5); starttime is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The resident set of `pid` in KiB (`VmRSS`), 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The short command name of `pid` (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end_matches('\n').to_owned())
}

/// Every pid on the host, ascending.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The namespace of `kind` (`net`, `mnt`) that `pid` lives in.
pub fn ns_of(pid: u32, kind: &str) -> Option<NsId> {
    NsId::of(Path::new(&format!("/proc/{pid}/ns/{kind}"))).ok()
}

/// Every live process in the namespace `id` of `kind`.
pub fn in_ns(kind: &str, id: NsId) -> Vec<ProcId> {
    pids()
        .into_iter()
        .filter(|&pid| ns_of(pid, kind) == Some(id))
        .filter_map(ProcId::of)
        .collect()
}

/// Every live descendant of `root` (children, grandchildren, ...), not
/// `root` itself.
pub fn descendants(root: u32) -> Vec<ProcId> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in pids() {
        if let Some(s) = stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut found = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if found.insert(child) {
                todo.push(child);
            }
        }
    }
    found.into_iter().filter_map(ProcId::of).collect()
}

/// Sends `signal` to `target` if it is still the same process; a process
/// already gone is not an error.
pub fn signal(target: ProcId, signal: Signal) -> Result<(), ProcError> {
    if !target.is_alive() || target.pid == std::process::id() || target.pid <= 1 {
        return Ok(());
    }
    // A pid beyond i32 cannot exist (pid_max is at most 2^22).
    let Ok(pid) = i32::try_from(target.pid) else {
        return Ok(());
    };
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(ProcError::Signal {
            pid: target.pid,
            signal,
            source,
        }),
    }
}

/// Gives a child between fork and exec the signal state a freshly booted
/// daemon has: nothing blocked, SIGPIPE at its default. (The parent may
/// block SIGINT/SIGTERM to `sigwait` for them, and Rust ignores SIGPIPE;
/// both would otherwise be inherited.) Allocation free, for `pre_exec`.
#[allow(unsafe_code)]
pub fn reset_signals_for_exec() -> std::io::Result<()> {
    SigSet::empty().thread_set_mask()?;
    // SAFETY: installs the default disposition, no handler code runs.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
    Ok(())
}

/// SIGKILLs whatever `find` returns, again and again, until it returns
/// nothing alive or `timeout` passes. Never touches this process or pid 1.
pub fn kill_until_gone(
    what: &str,
    timeout: Duration,
    mut find: impl FnMut() -> Vec<ProcId>,
) -> Result<(), ProcError> {
    let deadline = Instant::now() + timeout;
    // A process killed once may leave `find`'s view (its namespaces go
    // early in its exit) while it still tears down: it is waited for until
    // it has exited.
    let mut seen = BTreeSet::new();
    loop {
        seen.extend(find());
        let alive: Vec<ProcId> = seen
            .iter()
            .copied()
            .filter(|p| p.pid != std::process::id() && p.pid > 1 && p.is_alive())
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ProcError::Survivors {
                what: what.to_owned(),
                pids: alive.iter().map(|p| p.pid).collect(),
                waited: timeout,
            });
        }
        for p in alive {
            signal(p, Signal::SIGKILL)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_survives_odd_command_names() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!((s.state, s.ppid, s.start), ('S', 7, 12345));
    }

    #[test]
    fn stat_rejects_truncated_lines() {
        assert!(parse_stat("42 (x) S 7").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn finds_and_kills_a_child_tree() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & exec sleep 30"])
            .spawn()
            .expect("sh starts");
        let me = ProcId::of(child.id()).expect("child exists");
        assert!(me.is_alive());
        assert!(crate::wait::wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || !descendants(child.id()).is_empty()
        ));
        let tree: Vec<ProcId> = descendants(child.id())
            .into_iter()
            .chain(std::iter::once(me))
            .collect();
        kill_until_gone("test tree", Duration::from_secs(5), || tree.clone()).expect("all die");
        child.wait().expect("reaped");
        assert!(!me.is_alive());
    }
}
