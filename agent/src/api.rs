//! The operator API: read-only facts about the node, served on the farm LAN
//! (TCP) and on the agent's own socket.
//!
//! Handlers only read snapshots (supervisor statuses, the parsed command
//! line, `/proc`), so no request can change the node. Changes arrive in a
//! later API behind the farmer's signature.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::boot::{BootParams, Cmdline, ParamError};
use crate::hostinfo::HostInfo;
use crate::supervisor::logs::LogLine;
use crate::supervisor::{ServiceStatus, Supervisor};

/// Shared, read-only state behind the handlers.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub supervisor: Arc<Supervisor>,
    pub identity: Arc<crate::identity::Identity>,
    pub cmdline: Arc<Cmdline>,
    pub proc_root: PathBuf,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    #[serde(flatten)]
    pub host: HostInfo,
    pub boot: BootReport,
    /// The node's identity, once storage is up.
    pub identity: Option<crate::identity::store::IdentityReport>,
}

/// The boot parameters and the ones that were refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootReport {
    pub cmdline: String,
    pub params: BootParams,
    pub errors: Vec<ParamError>,
}

/// `GET /v1/services/{name}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceLogs {
    pub service: String,
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    lines: Option<usize>,
}

/// Why an operator API request failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorApiError {
    #[error("no service named {0:?}; the services are storaged, netd and provisiond")]
    UnknownService(String),
}

impl IntoResponse for OperatorApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            OperatorApiError::UnknownService(_) => StatusCode::NOT_FOUND,
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// The read-only routes.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service))
        .route("/v1/services/{name}/logs", get(logs))
        .with_state(state)
}

async fn node(State(state): State<ApiState>) -> Json<NodeReport> {
    let proc_root = state.proc_root.clone();
    // Reading /proc is quick but blocking; keep it off the async workers.
    let host = tokio::task::spawn_blocking(move || HostInfo::read(&proc_root))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading host facts failed");
            HostInfo::default()
        });
    Json(NodeReport {
        identity: state.identity.report(),
        host,
        boot: BootReport {
            cmdline: state.cmdline.raw.clone(),
            params: state.cmdline.params.clone(),
            errors: state.cmdline.errors.clone(),
        },
    })
}

async fn services(State(state): State<ApiState>) -> Json<Vec<ServiceStatus>> {
    Json(state.supervisor.statuses())
}

async fn service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceStatus>, OperatorApiError> {
    let service = state
        .supervisor
        .service(&name)
        .ok_or(OperatorApiError::UnknownService(name))?;
    Ok(Json(service.status()))
}

async fn logs(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<ServiceLogs>, OperatorApiError> {
    let service = state
        .supervisor
        .service(&name)
        .ok_or_else(|| OperatorApiError::UnknownService(name.clone()))?;
    Ok(Json(ServiceLogs {
        service: name,
        lines: service.logs(q.lines.unwrap_or(100)),
    }))
}
