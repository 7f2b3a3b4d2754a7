//! Named network namespaces (`/run/netns/<name>`): create, list, enter,
//! find the processes inside, delete.
//!
//! Creation and deletion go through `ip netns` so the result is exactly what
//! an operator's `ip netns list` shows; membership is decided natively by
//! comparing nsfs inodes, as `ip netns pids` does, without a subprocess per
//! poll; [`run_in`] runs Rust code inside one on a thread of its own.
//! Limits: a namespace kept alive only by an open file descriptor or a
//! process outside `/run/netns` cannot be named here.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::cmd::{self, CmdError};
use crate::proc::{self, NsId, ProcId};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("could not create network namespace {name}")]
    Add {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("could not delete network namespace {name}")]
    Delete {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("could not open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not list {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file that stands for namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates namespace `name` with its loopback up.
pub fn add(name: &str) -> Result<(), NetnsError> {
    cmd::run("ip", &["netns", "add", name]).map_err(|source| NetnsError::Add {
        name: name.to_owned(),
        source,
    })?;
    cmd::run("ip", &["-n", name, "link", "set", "lo", "up"]).map_err(|source| NetnsError::Add {
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}

/// Deletes namespace `name` if it exists.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    cmd::run("ip", &["netns", "delete", name])
        .map(drop)
        .map_err(|source| NetnsError::Delete {
            name: name.to_owned(),
            source,
        })
}

/// Every named network namespace on the host, sorted.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let dir = Path::new(NETNS_DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::List {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The identity of namespace `name`, if it exists.
pub fn id(name: &str) -> Option<NsId> {
    NsId::of(&path(name)).ok()
}

/// Every live process inside namespace `name` (none if it does not exist).
pub fn pids(name: &str) -> Vec<ProcId> {
    match id(name) {
        Some(ns) => proc::in_ns("net", ns),
        None => Vec::new(),
    }
}

/// Runs `f` on a new thread that has entered namespace `name`, and
/// returns its result; sockets it creates stay in that namespace. A panic
/// in `f` is passed on.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let handle = NetnsHandle::open(name)?;
    let joined =
        std::thread::scope(|scope| scope.spawn(move || handle.enter().map(|()| f())).join());
    match joined {
        Ok(result) => result.map_err(|source| NetnsError::Enter {
            name: name.to_owned(),
            source,
        }),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// An open handle on a namespace, to be entered by a child between fork and
/// exec.
#[derive(Debug)]
pub struct NetnsHandle {
    file: File,
}

impl NetnsHandle {
    pub fn open(name: &str) -> Result<NetnsHandle, NetnsError> {
        let path = path(name);
        File::open(&path)
            .map(|file| NetnsHandle { file })
            .map_err(|source| NetnsError::Open { path, source })
    }

    /// Moves the calling thread into the namespace. Allocation free, so it
    /// is safe in `pre_exec`.
    pub fn enter(&self) -> std::io::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
    }
}
