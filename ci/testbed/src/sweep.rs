//! Removing everything one run left on the host, found by its run id:
//! processes in its namespaces, mounts under its run directory, loop
//! devices backed by its files, host links, namespaces and finally the run
//! directory.
//!
//! Both a farm's own teardown and [`crate::clean_stale`] end here, so a
//! farm that crashed halfway is cleaned exactly like one that finished;
//! each step goes on after a failure and every problem is reported.
//! Limits: only what carries the run id in its name or path is found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};

use crate::cmd::{self, CmdError};
use crate::loopdev::{self, Detached, LoopError};
use crate::netns::{self, NetnsError};
use crate::proc::{self, ProcError};
use crate::run::RunId;

/// How long the processes of one namespace may take to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing the sweep could not remove.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("could not list network namespaces")]
    List(#[source] NetnsError),
    #[error("could not kill the processes in {netns}")]
    Kill {
        netns: String,
        #[source]
        source: ProcError,
    },
    #[error("could not unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("could not detach {device}")]
    Loop {
        device: PathBuf,
        #[source]
        source: LoopError,
    },
    #[error("could not delete host link {link}")]
    Link {
        link: String,
        #[source]
        source: CmdError,
    },
    #[error("could not delete a namespace")]
    Netns(#[source] NetnsError),
    #[error("could not remove {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The network namespaces of `run`.
pub fn namespaces(run: &RunId) -> Result<Vec<String>, NetnsError> {
    Ok(netns::list()?
        .into_iter()
        .filter(|n| RunId::of_netns(n).as_ref() == Some(run))
        .collect())
}

/// The host links of `run`.
pub fn links(run: &RunId) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| RunId::of_link(n).as_ref() == Some(run))
        .collect()
}

/// The loop devices backed by files of `run` (whatever their autoclear).
pub fn loops(run: &RunId) -> Vec<(PathBuf, String)> {
    let dir = run.dir();
    loopdev::list()
        .into_iter()
        .filter(|(_, backing)| loopdev::backed_by(backing, &dir))
        .collect()
}

/// Mount points of this mount namespace under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Removes everything of `run`; returns what could not be removed.
pub fn sweep(run: &RunId) -> Vec<SweepError> {
    let mut errors = Vec::new();
    let namespaces = namespaces(run).unwrap_or_else(|e| {
        errors.push(SweepError::List(e));
        Vec::new()
    });
    for ns in &namespaces {
        let what = format!("processes in {ns}");
        if let Err(source) = proc::kill_until_gone(&what, KILL_TIMEOUT, || netns::pids(ns)) {
            errors.push(SweepError::Kill {
                netns: ns.clone(),
                source,
            });
        }
    }
    let dir = run.dir();
    for path in mounts_under(&dir) {
        if let Err(source) = umount2(&path, MntFlags::MNT_DETACH) {
            errors.push(SweepError::Unmount { path, source });
        }
    }
    for (device, _) in loops(run) {
        match loopdev::detach(&device, &dir) {
            Ok(Detached::Gone) => {}
            Ok(Detached::Autoclear) => eprintln!(
                "grove-testbed: {} is still busy; the kernel will detach it when released",
                device.display()
            ),
            Err(source) => errors.push(SweepError::Loop { device, source }),
        }
    }
    for link in links(run) {
        if let Err(source) = cmd::run("ip", &["link", "delete", link.as_str()])
            && Path::new("/sys/class/net").join(&link).exists()
        {
            errors.push(SweepError::Link { link, source });
        }
    }
    for ns in &namespaces {
        if let Err(e) = netns::delete(ns) {
            errors.push(SweepError::Netns(e));
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => errors.push(SweepError::Dir { path: dir, source }),
    }
    errors
}

/// What of `run` is still on the host, in words (loop devices waiting for
/// autoclear do not count).
pub fn leftovers(run: &RunId) -> Vec<String> {
    let mut left = Vec::new();
    match namespaces(run) {
        Ok(names) => left.extend(names.into_iter().map(|n| format!("network namespace {n}"))),
        Err(e) => left.push(format!("cannot list network namespaces: {e}")),
    }
    left.extend(links(run).into_iter().map(|l| format!("host link {l}")));
    for (device, backing) in loops(run) {
        let autoclear = loopdev::sys_dir(&device).join("loop/autoclear");
        if std::fs::read_to_string(autoclear).is_ok_and(|a| a.trim() == "1") {
            continue;
        }
        left.push(format!("loop device {} on {backing}", device.display()));
    }
    if run.dir().exists() {
        left.push(format!("run directory {}", run.dir().display()));
    }
    left
}
