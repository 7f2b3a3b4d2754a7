//! Where netd keeps what it rebuilds after a restart (the mesh's
//! `mesh.json`, the tenant networks' directory).
//!
//! Under `<cache>/netd` when the system cache is mounted (it survives a
//! reboot), else under `<run>/netd`; reads look in both, the preferred one
//! first, so state written before the cache was mounted is still found.
//! Both are JSON read through [`read_json`], in directories made by
//! [`ensure_dir`], failing with one [`FileError`].
//! Limits: a path set in the configuration is the only place looked.
//!
//! netd starts beside storaged, before the cache is mounted; a [`Gate`]
//! holds the mesh and tenant workers back from their state until storaged
//! answers ready, so nothing is read from, or written to, the directory
//! the cache is about to be mounted over.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a state file could not be read, or its directory made.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a {what} state file: {source}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Dir(#[from] grove_daemon::fsutil::DirError),
}

/// The JSON state file at `path`, a `what` state file. Blocking.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Parse {
        path: path.to_owned(),
        what,
        source,
    })
}

/// Makes the directory `path` and its parents, if missing. Blocking.
pub fn ensure_dir(path: &Path) -> Result<(), FileError> {
    Ok(grove_daemon::fsutil::ensure_dir(path, None)?)
}

/// When netd's workers may touch their state: at once, or once storaged
/// answers ready at a socket, or once [`Gate::LIMIT`] has passed without
/// that answer: a storaged that never gets ready keeps the mesh and the
/// tenant networks down no longer than the agent lets it keep provisiond
/// down. Their state then goes where it can, as it did before the gate.
#[derive(Debug, Clone)]
pub struct Gate {
    after: Option<PathBuf>,
    limit: std::time::Duration,
}

impl Default for Gate {
    /// Open at once.
    fn default() -> Self {
        Self::new(None)
    }
}

impl Gate {
    /// How often storaged is asked while the gate is shut.
    const POLL: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest the gate stays shut.
    pub const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

    /// Open at once when `after` is `None`; else once the daemon at the
    /// socket `after` answers ready, or after [`Gate::LIMIT`].
    pub fn new(after: Option<PathBuf>) -> Self {
        Self::with_limit(after, Self::LIMIT)
    }

    /// [`Gate::new`] that gives up waiting after `limit`.
    pub fn with_limit(after: Option<PathBuf>, limit: std::time::Duration) -> Self {
        Self { after, limit }
    }

    /// Waits until the state may be touched: `true`, or `false` when
    /// `shutdown` tripped first.
    pub async fn open(&self, shutdown: &grove_daemon::shutdown::Shutdown) -> bool {
        let Some(socket) = &self.after else {
            return true;
        };
        let limit = self.limit;
        let deadline = tokio::time::Instant::now() + limit;
        let client = grove_daemon::client::SocketClient::new(socket.clone())
            .with_timeout(std::time::Duration::from_secs(2));
        let mut told = false;
        loop {
            match client.ready().await {
                Ok(report) if report.ready => {
                    if told {
                        tracing::info!(socket = %socket.display(), "storaged is ready: state opened");
                    }
                    return true;
                }
                Ok(report) if !told => {
                    tracing::info!(socket = %socket.display(), waiting_for = ?report.waiting_for, "state waits for storaged to be ready");
                }
                Err(e) if !told => {
                    tracing::info!(socket = %socket.display(), error = %e, "state waits for storaged to answer");
                }
                _ => {}
            }
            told = true;
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(socket = %socket.display(), waited = ?limit, "storaged is not ready: state opened without it");
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep(Self::POLL) => {}
                () = shutdown.wait() => return false,
            }
        }
    }
}

/// Where one piece of state is written and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub write_to: PathBuf,
    pub read_from: Vec<PathBuf>,
}

impl Location {
    /// `configured` if set; else `name` under `<cache>/netd` if `cache`
    /// exists, else under `<run>/netd`.
    pub fn find(configured: Option<PathBuf>, cache: &Path, run: &Path, name: &str) -> Self {
        if let Some(path) = configured {
            return Self {
                write_to: path.clone(),
                read_from: vec![path],
            };
        }
        let cached = cache.join("netd").join(name);
        let volatile = run.join("netd").join(name);
        let (write_to, other) = if cache.is_dir() {
            (cached, volatile)
        } else {
            (volatile, cached)
        };
        Self {
            read_from: vec![write_to.clone(), other],
            write_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_wins_when_it_is_mounted_and_a_configured_path_is_alone() {
        let cache = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let found = Location::find(None, cache.path(), run.path(), "x.json");
        assert_eq!(found.write_to, cache.path().join("netd/x.json"));
        assert_eq!(found.read_from[1], run.path().join("netd/x.json"));
        let gone = cache.path().join("absent");
        let found = Location::find(None, &gone, run.path(), "x.json");
        assert_eq!(found.write_to, run.path().join("netd/x.json"));
        let own = PathBuf::from("/etc/own.json");
        let found = Location::find(Some(own.clone()), cache.path(), run.path(), "x.json");
        assert_eq!(found.read_from, vec![own]);
    }

    #[test]
    fn a_gate_without_a_socket_is_open() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let shutdown = grove_daemon::shutdown::Shutdown::new();
        assert!(rt.block_on(Gate::new(None).open(&shutdown)));
    }

    #[test]
    fn a_gate_opens_when_the_daemon_behind_it_is_ready_and_not_before() {
        use grove_daemon::server::{Identity, Readiness};
        use std::time::Duration;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("storaged.sock");
        rt.block_on(async {
            let stop = grove_daemon::shutdown::Shutdown::new();
            // Nothing listens yet: the gate stays shut.
            let gate = Gate::new(Some(socket.clone()));
            let waiting = tokio::spawn({
                let gate = gate.clone();
                let stop = stop.clone();
                async move { gate.open(&stop).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiting.is_finished(), "open with nothing listening");
            // Listening, but not ready: still shut.
            let readiness = Readiness::waiting("pools");
            let server = tokio::spawn({
                let (readiness, socket, stop) = (readiness.clone(), socket.clone(), stop.clone());
                async move {
                    let identity = Identity::new("storaged", "0");
                    let api = axum::Router::new();
                    grove_daemon::server::serve_daemon(identity, readiness, &socket, api, stop)
                        .await
                }
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(!waiting.is_finished(), "open before the daemon was ready");
            readiness.set_ready();
            let opened = tokio::time::timeout(Duration::from_secs(2), waiting)
                .await
                .expect("the gate opens within 2 s of ready")
                .expect("the waiting task");
            assert!(opened);
            // A daemon that never gets ready holds the gate only so long.
            let limited = Gate::with_limit(
                Some(PathBuf::from("/nonexistent/sock")),
                Duration::from_millis(300),
            );
            let opened = tokio::time::timeout(Duration::from_secs(2), limited.open(&stop))
                .await
                .expect("the limit opens the gate");
            assert!(opened);
            // A shutdown while shut ends the wait with `false`.
            let other = grove_daemon::shutdown::Shutdown::new();
            let closed = tokio::spawn({
                let other = other.clone();
                async move {
                    Gate::new(Some(PathBuf::from("/nonexistent/sock")))
                        .open(&other)
                        .await
                }
            });
            other.trigger();
            let opened = tokio::time::timeout(Duration::from_secs(2), closed)
                .await
                .expect("a shutdown ends the wait")
                .expect("the waiting task");
            assert!(!opened);
            stop.trigger();
            let _ = server.await;
        });
    }
}
