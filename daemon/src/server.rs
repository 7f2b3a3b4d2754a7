//! The Unix-socket HTTP server every daemon runs.
//!
//! [`standard_routes`] gives `/live`, `/ready` and `/v1/info`; a daemon merges
//! its own `/v1/...` router on top and hands the result to [`serve_unix`],
//! which owns the socket file: it refuses to steal a socket another process
//! still answers on, replaces a stale one, and removes it on shutdown.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::shutdown::Shutdown;

/// Why the socket server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another process already serves {path}")]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("server on {path} failed: {source}")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `/v1/info` answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: f64,
    /// Unix time the daemon started.
    pub started_at: u64,
}

/// Identity of the running daemon, fixed at start.
#[derive(Debug)]
pub struct Identity {
    name: String,
    version: String,
    started: Instant,
    started_at: u64,
}

impl Identity {
    pub fn new(name: &str, version: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            version: version.to_owned(),
            started: Instant::now(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        })
    }

    pub fn info(&self) -> Info {
        Info {
            name: self.name.clone(),
            version: self.version.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            started_at: self.started_at,
        }
    }
}

/// Whether the daemon is ready, and if not, why.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

/// What `/ready` answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReadyReport {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

impl Readiness {
    /// Not ready yet, waiting for `what`.
    pub fn waiting(what: &str) -> Self {
        let r = Self::default();
        r.set_waiting(what);
        r
    }

    pub fn set_ready(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn set_waiting(&self, what: &str) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(what.to_owned());
    }

    pub fn report(&self) -> ReadyReport {
        let waiting_for = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        ReadyReport {
            ready: waiting_for.is_none(),
            waiting_for,
        }
    }
}

/// `/live`, `/ready` and `/v1/info`.
pub fn standard_routes(identity: Arc<Identity>, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route(
            "/ready",
            get(move || {
                let report = readiness.report();
                async move {
                    let status = if report.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(report))
                }
            }),
        )
        .route(
            "/v1/info",
            get(move || {
                let info = identity.info();
                async move { Json(info) }
            }),
        )
}

/// The JSON error body every Grove API returns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// An API error: an HTTP status and a message naming the problem.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The answer to a request that failed with `error`, logged when the
    /// fault is the server's (`what` names the request in the log).
    pub fn answer(status: StatusCode, error: &impl std::fmt::Display, what: &str) -> Response {
        if status.is_server_error() {
            tracing::error!(error = %error, "{what} failed");
        }
        Self::new(status, error.to_string()).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Serves `app` on the Unix socket `path` until `shutdown` trips.
pub async fn serve_unix(path: &Path, app: Router, shutdown: Shutdown) -> Result<(), ServerError> {
    let listener = bind_unix(path).await?;
    tracing::info!(socket = %path.display(), "serving");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    // The socket file is ours; a failed removal only leaves a stale file
    // that the next start replaces.
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(socket = %path.display(), error = %e, "socket file already gone");
    }
    result.map_err(|source| ServerError::Serve {
        path: path.to_owned(),
        source,
    })
}

/// Binds `path`, replacing a stale socket but never a live one.
pub async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
            path: path.to_owned(),
            source,
        })?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ServerError::Bind {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves a daemon: the standard routes merged with its own `api`, on
/// `socket`, until `shutdown` trips.
pub async fn serve_daemon(
    identity: Arc<Identity>,
    readiness: Readiness,
    socket: &Path,
    api: Router,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    let app = standard_routes(identity, readiness).merge(api);
    serve_unix(socket, app, shutdown).await
}
