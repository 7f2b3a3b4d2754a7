//! The userspace WireGuard process: `boringtun-cli`, run in the foreground
//! as netd's own child and configured through its UAPI socket.
//!
//! [`locate`] finds the binary (the configured path, else `$PATH`, else
//! [`FALLBACK`]) and names every place it looked when it cannot; `spawn`
//! starts it without daemonizing or dropping privileges, forwards its
//! output to netd's log and returns once the UAPI socket answers, and
//! `adopt` takes over one a previous netd left running in this network
//! namespace (found through `/proc`), so a netd restart keeps the device
//! and its sessions; one started or adopted to outlive netd
//! ([`Options::outlive`]) is left running when netd stops. Limits: an
//! adopted process is watched by polling `/proc` and is reaped by whoever
//! is PID 1 or the subreaper, not netd.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::procs::{self, alive};

/// The binary's name in `$PATH`.
pub const BINARY: &str = "boringtun-cli";
/// Where `cargo install` puts it for root, tried after `$PATH`.
pub const FALLBACK: &str = "/root/.cargo/bin/boringtun-cli";
/// Where userspace WireGuard implementations put their UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a fresh process may take to open its UAPI socket.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopped process may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often an adopted process is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// Why the userspace process could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BoringtunError {
    #[error("no executable boringtun-cli: looked for {}", list(.looked))]
    NotFound { looked: Vec<PathBuf> },
    #[error("cannot start {binary} for {ifname}: {source}")]
    Spawn {
        binary: PathBuf,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} for {ifname} exited ({status}) before its UAPI socket {socket} answered")]
    EarlyExit {
        binary: PathBuf,
        ifname: String,
        socket: PathBuf,
        status: String,
    },
    #[error("{binary} for {ifname} did not open its UAPI socket {socket} within {waited:?}")]
    NoSocket {
        binary: PathBuf,
        ifname: String,
        socket: PathBuf,
        waited: Duration,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The UAPI socket of interface `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The binary to run: `configured` if given, else the first
/// [`BINARY`] in `path_env` (the value of `$PATH`), else [`FALLBACK`].
pub fn locate(
    configured: Option<&Path>,
    path_env: Option<OsString>,
) -> Result<PathBuf, BoringtunError> {
    let candidates: Vec<PathBuf> = match configured {
        Some(path) => vec![path.to_owned()],
        None => std::env::split_paths(&path_env.unwrap_or_default())
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(BINARY))
            .chain(std::iter::once(PathBuf::from(FALLBACK)))
            .collect(),
    };
    candidates
        .iter()
        .find(|p| executable(p))
        .cloned()
        .ok_or(BoringtunError::NotFound { looked: candidates })
}

/// One running userspace WireGuard process for one interface.
#[derive(Debug)]
pub struct Boringtun {
    pid: i32,
    ifname: String,
    /// Set when netd started it; `None` when adopted.
    child: Option<Child>,
    /// Copies its output into netd's log.
    forwarders: JoinSet<()>,
    stopped: bool,
    /// Left running when this value is dropped (see [`Options::outlive`]).
    outlive: bool,
}

/// How [`Boringtun::spawn_with`] starts the process.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Flags before the interface name.
    pub args: Vec<String>,
    /// Leave the process running when its [`Boringtun`] is dropped (a
    /// stopping netd), for the next netd to adopt; [`Boringtun::stop`]
    /// still stops it.
    pub outlive: bool,
}

impl Boringtun {
    /// Starts `binary` for `ifname` and waits until its UAPI socket answers.
    /// The process dies with this value.
    pub async fn spawn(binary: &Path, ifname: &str) -> Result<Self, BoringtunError> {
        Self::spawn_with(binary, ifname, &Options::default()).await
    }

    /// [`Boringtun::spawn`] with `options`.
    pub async fn spawn_with(
        binary: &Path,
        ifname: &str,
        options: &Options,
    ) -> Result<Self, BoringtunError> {
        let socket = socket_path(ifname);
        let mut child = Command::new(binary)
            .args(["--foreground", "--disable-drop-privileges"])
            .args(&options.args)
            .arg(ifname)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(!options.outlive)
            .spawn()
            .map_err(|source| BoringtunError::Spawn {
                binary: binary.to_owned(),
                ifname: ifname.to_owned(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0);
        let mut forwarders = JoinSet::new();
        let span = tracing::info_span!("boringtun", pid);
        if let Some(out) = child.stdout.take() {
            forwarders.spawn(forward(out, ifname.to_owned()).instrument(span.clone()));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.spawn(forward(err, ifname.to_owned()).instrument(span));
        }
        let mut me = Self {
            pid,
            ifname: ifname.to_owned(),
            child: Some(child),
            forwarders,
            stopped: false,
            outlive: options.outlive,
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                tracing::info!(ifname, pid, binary = %binary.display(), "userspace WireGuard started");
                return Ok(me);
            }
            if let Some(child) = &mut me.child
                && let Ok(Some(status)) = child.try_wait()
            {
                me.stopped = true;
                return Err(BoringtunError::EarlyExit {
                    binary: binary.to_owned(),
                    ifname: ifname.to_owned(),
                    socket,
                    status: status.to_string(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                me.stop().await;
                return Err(BoringtunError::NoSocket {
                    binary: binary.to_owned(),
                    ifname: ifname.to_owned(),
                    socket,
                    waited: READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes over a process for `ifname` that a previous netd left running
    /// in this network namespace, if one answers on its socket; any other
    /// instance for the same interface is killed.
    pub async fn adopt(binary: &Path, ifname: &str, proc_root: &Path) -> Option<Self> {
        let (b, i, p) = (binary.to_owned(), ifname.to_owned(), proc_root.to_owned());
        let mut found = match tokio::task::spawn_blocking(move || running(&b, &i, &p)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(ifname, error = %e, "cannot scan /proc for a running userspace WireGuard");
                Vec::new()
            }
        };
        let first = found.pop()?;
        for stale in found {
            tracing::warn!(
                ifname,
                pid = stale,
                "killing a second userspace WireGuard process"
            );
            let _gone = kill(Pid::from_raw(stale), Signal::SIGKILL);
        }
        let me = Self {
            pid: first,
            ifname: ifname.to_owned(),
            child: None,
            forwarders: JoinSet::new(),
            stopped: false,
            outlive: false,
        };
        if tokio::net::UnixStream::connect(socket_path(ifname))
            .await
            .is_ok()
        {
            tracing::info!(
                ifname,
                pid = first,
                "adopted the running userspace WireGuard"
            );
            Some(me)
        } else {
            tracing::warn!(
                ifname,
                pid = first,
                "a userspace WireGuard process does not answer; replacing it"
            );
            me.stop().await;
            None
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lets an adopted process run on after this value is dropped, like one
    /// spawned with [`Options::outlive`].
    pub fn outlive(&mut self) {
        self.outlive = true;
    }

    /// Waits until the process exits and says how it ended.
    pub async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => {
                    self.stopped = true;
                    status.to_string()
                }
                Err(e) => format!("cannot wait for it: {e}"),
            },
            None => {
                let path = PathBuf::from(format!("/proc/{}", self.pid));
                while alive(&path) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                self.stopped = true;
                "exited (adopted, status unknown)".to_owned()
            }
        }
    }

    /// SIGTERM (it removes its socket on the way out), then SIGKILL after
    /// `STOP_GRACE`.
    pub async fn stop(mut self) {
        if self.stopped {
            return;
        }
        let pid = Pid::from_raw(self.pid);
        let _gone = kill(pid, Signal::SIGTERM);
        let ended = tokio::time::timeout(STOP_GRACE, self.exited()).await;
        if ended.is_err() {
            tracing::warn!(ifname = %self.ifname, pid = self.pid, "userspace WireGuard ignored SIGTERM; killing it");
            let _gone = kill(pid, Signal::SIGKILL);
            let _reaped = tokio::time::timeout(STOP_GRACE, self.exited()).await;
        }
        self.stopped = true;
        tracing::info!(ifname = %self.ifname, pid = self.pid, "userspace WireGuard stopped");
    }
}

impl Drop for Boringtun {
    fn drop(&mut self) {
        // A child is killed by `kill_on_drop`; an adopted process has no
        // such guard, and netd owns it all the same.
        if !self.stopped && !self.outlive && self.child.is_none() {
            let _gone = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        self.forwarders.abort_all();
    }
}

/// Copies `stream` into netd's log, one event per non-empty line.
async fn forward(stream: impl AsyncRead + Unpin, ifname: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if !line.is_empty() {
            tracing::warn!(ifname = %ifname, output = line, "boringtun");
        }
    }
}

/// Pids of live processes running `binary` (by file name) for `ifname` in
/// this process's network namespace.
pub fn running(binary: &Path, ifname: &str, proc_root: &Path) -> Vec<i32> {
    procs::find(proc_root, |args| {
        let runs_binary = args.first().is_some_and(|a| procs::runs(a, binary));
        let for_ifname = args.last().is_some_and(|a| *a == ifname.as_bytes());
        runs_binary && for_ifname
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn finds_the_binary_in_path_or_names_every_place_it_looked() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let found = exe(b.path(), BINARY);
        let path = std::env::join_paths([a.path(), b.path()]).expect("join");
        assert_eq!(locate(None, Some(path)).expect("found"), found);

        let empty = std::env::join_paths([a.path()]).expect("join");
        if !Path::new(FALLBACK).exists() {
            let err = locate(None, Some(empty)).expect_err("missing").to_string();
            assert!(
                err.contains(&a.path().join(BINARY).display().to_string()),
                "{err}"
            );
            assert!(err.contains(FALLBACK), "{err}");
        }
    }

    #[test]
    fn a_configured_binary_is_the_only_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let own = exe(dir.path(), "my-boringtun");
        assert_eq!(locate(Some(&own), None).expect("found"), own);
        let missing = dir.path().join("nope");
        let err = locate(Some(&missing), None)
            .expect_err("missing")
            .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        std::fs::write(dir.path().join("plain"), "").unwrap();
        assert!(
            locate(Some(&dir.path().join("plain")), None).is_err(),
            "not executable"
        );
    }

    #[test]
    fn this_test_process_is_alive_and_not_a_boringtun() {
        let me = std::process::id();
        assert!(alive(&PathBuf::from(format!("/proc/{me}"))));
        assert!(
            running(
                Path::new("/usr/bin/boringtun-cli"),
                "mesh-none0",
                Path::new("/proc")
            )
            .is_empty()
        );
    }
}
