//! Named network namespaces (`/run/netns/<name>`, as `ip netns` keeps
//! them), made and entered without forking.
//!
//! [`NetnsDir::create`] does what `ip netns add` does: it makes the
//! directory a shared mount point, creates the file, and on a thread of its
//! own unshares a new network namespace and bind-mounts
//! `/proc/thread-self/ns/net` onto the file; [`run_in`] runs a closure on a
//! fresh thread that has entered a namespace, so nothing else ever changes
//! namespace. Limits: the calling process needs CAP_SYS_ADMIN, and a
//! namespace with processes still inside outlives its deletion until they
//! exit.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where `ip netns` keeps namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Why a namespace could not be made, found, entered or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare {dir} for namespaces: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create network namespace {name}: {step}: {source}")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("cannot remove network namespace {path}: {source}")]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread working in network namespace {name} panicked")]
    Panicked { name: String },
}

/// The directory of named namespaces.
#[derive(Debug, Clone)]
pub struct NetnsDir {
    root: PathBuf,
}

impl Default for NetnsDir {
    fn default() -> Self {
        Self::new(NETNS_DIR)
    }
}

impl NetnsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file that stands for namespace `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether `name` is a live namespace (a bind-mounted nsfs file).
    pub fn exists(&self, name: &str) -> bool {
        is_nsfs(&self.path(name))
    }

    /// The names of every namespace here whose name starts with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// Opens namespace `name` for entering or for moving links into it.
    pub fn open(&self, name: &str) -> Result<File, NetnsError> {
        let path = self.path(name);
        File::open(&path).map_err(|source| NetnsError::Open { path, source })
    }

    /// Creates namespace `name` unless it exists; true if it did. Blocking.
    pub fn create(&self, name: &str) -> Result<bool, NetnsError> {
        let path = self.path(name);
        if is_nsfs(&path) {
            return Ok(false);
        }
        self.shared_mount()?;
        let failed = |step: &'static str| {
            let name = name.to_owned();
            move |source: std::io::Error| NetnsError::Create { name, step, source }
        };
        // A file left by a creation that died before its bind mount.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(failed("remove a stale file")(e));
            }
            _ => {}
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(failed("create the file"))?;
        let target = path.clone();
        let bound = std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<(), std::io::Error> {
                    unshare(CloneFlags::CLONE_NEWNET)?;
                    mount(
                        Some("/proc/thread-self/ns/net"),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                    Ok(())
                })
                .join()
        });
        let result = match bound {
            Ok(result) => result.map_err(failed("unshare and bind-mount")),
            Err(_panic) => Err(NetnsError::Panicked {
                name: name.to_owned(),
            }),
        };
        if result.is_err() {
            let _ignored = std::fs::remove_file(&path);
        }
        result.map(|()| true)
    }

    /// Removes namespace `name` if it exists; true if it did. Blocking.
    pub fn delete(&self, name: &str) -> Result<bool, NetnsError> {
        let path = self.path(name);
        let mounted = is_nsfs(&path);
        if mounted {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(NetnsError::Delete {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(mounted),
            Err(source) => Err(NetnsError::Delete { path, source }),
        }
    }

    /// `ip netns add` makes the directory a shared mount point, so that
    /// namespaces mounted later show in every mount namespace that sees it.
    fn shared_mount(&self) -> Result<(), NetnsError> {
        let dir = &self.root;
        let err = |source: std::io::Error| NetnsError::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let shared = || {
            mount(
                Some(""),
                dir,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )
        };
        match shared() {
            Ok(()) => Ok(()),
            Err(Errno::EINVAL) => {
                mount(
                    Some(dir.as_path()),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| err(e.into()))?;
                shared().map_err(|e| err(e.into()))
            }
            Err(e) => Err(err(e.into())),
        }
    }
}

/// Whether `path` is a namespace file (a bind mount of nsfs).
fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == nix::libc::NSFS_MAGIC)
}

/// Enters the namespace `ns` stands for on the calling thread, then runs
/// `f`. Only for threads made for this and ended after it.
fn enter_and_run<T>(ns: &File, name: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        name: name.to_owned(),
        source,
    })?;
    Ok(f())
}

/// Runs `f` on a new thread inside the namespace that `ns` stands for
/// (named `name` in errors), and returns what it returns. Blocking.
pub fn run_in<T, F>(ns: &File, name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let joined = std::thread::scope(|scope| scope.spawn(|| enter_and_run(ns, name, f)).join());
    joined.unwrap_or_else(|_panic| {
        Err(NetnsError::Panicked {
            name: name.to_owned(),
        })
    })
}

/// [`run_in`] from async code: the work happens on a thread of its own
/// and the caller awaits it.
pub async fn run_in_async<T, F>(
    ns: std::sync::Arc<File>,
    name: String,
    f: F,
) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (reply, answer) = tokio::sync::oneshot::channel();
    let panicked = name.clone();
    std::thread::spawn(move || {
        let _gone = reply.send(enter_and_run(&ns, &name, f));
    });
    answer
        .await
        .unwrap_or_else(|_dropped: tokio::sync::oneshot::error::RecvError| {
            Err(NetnsError::Panicked { name: panicked })
        })
}
