//! Starting a node's `agent` inside the node: its network namespace, a
//! fresh mount namespace, and the production paths.
//!
//! Between fork and exec the child joins the node's network namespace,
//! unshares its UTS namespace and takes the node's name as its hostname,
//! unshares its mount namespace, makes `/` private, mounts fresh tmpfs on
//! `/run`, `/var/cache` and `/mnt`, remounts `/sys` so `/sys/class/net`
//! shows the node's NICs (carrying the cgroup mounts over), and binds the
//! node's config directory onto `/etc/grove`; everything it needs is
//! prepared before the fork, so the child only makes system calls. Limits:
//! `/dev` and `/proc` are the host's (so every loop device is visible), and
//! a failed step is reported by errno, with its name in the agent log.

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::netns::{NetnsError, NetnsHandle};
use crate::node::config::{CMDLINE_FILE, MOUNT_POINT};

/// Directories every node gets its own empty tmpfs on.
const PRIVATE_TMPFS: [&CStr; 3] = [c"/run", c"/var/cache", c"/mnt"];
/// Where the host's cgroup mounts wait while `/sys` is replaced.
const CGROUP_STASH: &CStr = c"/run/.testbed-cgroup";
const CGROUP_STASH_PATH: &str = "/run/.testbed-cgroup";
/// [`MOUNT_POINT`] for the child.
const ETC_GROVE: &CStr = c"/etc/grove";

/// Starting the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not open {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the mount point {path} on the host")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {path} holds a NUL byte")]
    Nul {
        path: PathBuf,
        #[source]
        source: std::ffi::NulError,
    },
    #[error("could not open the node's network namespace")]
    Netns(#[from] NetnsError),
    #[error("could not start {program} in the node (a failed setup step is named in {log})")]
    Spawn {
        program: PathBuf,
        log: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the child needs, prepared before the fork.
#[derive(Debug)]
struct Entry {
    netns: NetnsHandle,
    hostname: String,
    config_dir: CString,
    stash_cgroups: bool,
}

/// Starts `<bin_dir>/agent` inside node namespace `netns`, with `hostname`
/// in a UTS namespace of its own and `config_dir` as its `/etc/grove`,
/// appending its output to `log`.
#[allow(unsafe_code)]
pub fn spawn(
    netns: &str,
    hostname: &str,
    bin_dir: &Path,
    config_dir: &Path,
    log: &Path,
) -> Result<Child, AgentError> {
    let mount_point = Path::new(MOUNT_POINT);
    std::fs::create_dir_all(mount_point).map_err(|source| AgentError::MountPoint {
        path: mount_point.to_owned(),
        source,
    })?;
    let out = open_log(log)?;
    let err = out.try_clone().map_err(|source| AgentError::Log {
        path: log.to_owned(),
        source,
    })?;
    let entry = Entry {
        netns: NetnsHandle::open(netns)?,
        hostname: hostname.to_owned(),
        config_dir: CString::new(config_dir.as_os_str().as_bytes()).map_err(|source| {
            AgentError::Nul {
                path: config_dir.to_owned(),
                source,
            }
        })?,
        stash_cgroups: is_mount_point("/sys/fs/cgroup"),
    };
    let program = bin_dir.join("agent");
    let config_file = Path::new(MOUNT_POINT).join("agent.toml");
    let cmdline_file = Path::new(MOUNT_POINT).join(CMDLINE_FILE);
    let mut command = Command::new(&program);
    command
        .arg("--config")
        .arg(&config_file)
        .arg("--cmdline")
        .arg(&cmdline_file)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: `enter` only makes system calls on data prepared before the
    // fork (an open descriptor, C strings, static strings); it takes no
    // locks and does not allocate.
    unsafe {
        command.pre_exec(move || enter(&entry));
    }
    command.spawn().map_err(|source| AgentError::Spawn {
        program,
        log: log.to_owned(),
        source,
    })
}

fn open_log(path: &Path) -> Result<File, AgentError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AgentError::Log {
            path: path.to_owned(),
            source,
        })
}

/// Whether `path` is a mount point in this process's mount namespace.
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|text| text.lines().any(|l| l.split(' ').nth(4) == Some(path)))
}

/// Runs in the child between fork and exec.
fn enter(entry: &Entry) -> std::io::Result<()> {
    let none = None::<&CStr>;
    step(
        b"reset the signal mask",
        crate::proc::reset_signals_for_exec(),
    )?;
    step(
        b"setns into the node's network namespace",
        entry.netns.enter(),
    )?;
    step(
        b"unshare the UTS namespace",
        unshare(CloneFlags::CLONE_NEWUTS),
    )?;
    step(
        b"set the node's hostname",
        nix::unistd::sethostname(&entry.hostname),
    )?;
    step(
        b"unshare the mount namespace",
        unshare(CloneFlags::CLONE_NEWNS),
    )?;
    step(
        b"make / private",
        mount(
            none,
            c"/",
            none,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        ),
    )?;
    for dir in PRIVATE_TMPFS {
        step(
            b"mount tmpfs on /run, /var/cache or /mnt",
            mount(
                Some(c"tmpfs"),
                dir,
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(c"mode=0755"),
            ),
        )?;
    }
    if entry.stash_cgroups {
        step(
            b"create the cgroup stash",
            std::fs::create_dir(CGROUP_STASH_PATH),
        )?;
        step(
            b"bind /sys/fs/cgroup aside",
            mount(
                Some(c"/sys/fs/cgroup"),
                CGROUP_STASH,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            ),
        )?;
    }
    step(
        b"unmount the host's /sys",
        umount2(c"/sys", MntFlags::MNT_DETACH),
    )?;
    step(
        b"mount the node's sysfs on /sys",
        mount(
            Some(c"sysfs"),
            c"/sys",
            Some(c"sysfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
    )?;
    if entry.stash_cgroups {
        step(
            b"move the cgroup mounts back under /sys/fs/cgroup",
            mount(
                Some(CGROUP_STASH),
                c"/sys/fs/cgroup",
                none,
                MsFlags::MS_MOVE,
                none,
            ),
        )?;
        step(
            b"remove the cgroup stash",
            std::fs::remove_dir(CGROUP_STASH_PATH),
        )?;
    }
    step(
        b"bind the config directory onto /etc/grove",
        mount(
            Some(entry.config_dir.as_c_str()),
            ETC_GROVE,
            none,
            MsFlags::MS_BIND,
            none,
        ),
    )
}

/// Passes `result` on as an `io::Error`; on failure first writes `what` to
/// the agent log (the child's stderr).
fn step<E: Into<std::io::Error>>(
    what: &'static [u8],
    result: Result<(), E>,
) -> std::io::Result<()> {
    result.map_err(|e| {
        let stderr = std::io::stderr();
        nix::unistd::write(&stderr, b"grove-testbed: could not ").ok();
        nix::unistd::write(&stderr, what).ok();
        nix::unistd::write(&stderr, b"\n").ok();
        e.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_paths_match_the_published_ones() {
        assert_eq!(ETC_GROVE.to_str(), Ok(MOUNT_POINT));
        assert_eq!(CGROUP_STASH.to_str(), Ok(CGROUP_STASH_PATH));
    }

    #[test]
    fn mount_points_are_found_in_mountinfo() {
        assert!(is_mount_point("/"));
        assert!(!is_mount_point("/nonexistent/grove"));
    }
}
