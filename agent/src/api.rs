//! The operator API, served on the farm LAN (TCP) and on the agent's own
//! socket: facts about the node for anyone, and two changes for the farmer.
//!
//! The `GET` routes only read snapshots (supervisor statuses, the parsed
//! command line, the background snapshot of the daemons' answers and the
//! host's usage), so reading cannot change the node. The two `POST` routes
//! (`/v1/reboot`, `/v1/disks/{serial}/wipe`) change it, and only with the
//! farm owner's signature, checked by [`crate::auth`] before anything else.

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
    pub snapshot: Arc<crate::operator::snapshot::Snapshot>,
    pub chain: Arc<crate::chain::Chain>,
    pub verifier: Arc<crate::auth::RequestVerifier>,
    pub stop: crate::stop::Stop,
    pub supervisor: Arc<Supervisor>,
    pub identity: Arc<crate::identity::Identity>,
    pub storaged: storaged::client::StoragedClient,
    pub netd: netd::client::NetdClient,
    pub started: std::time::Instant,
    pub cmdline: Arc<Cmdline>,
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
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("{daemon}: {message}")]
    Refused {
        daemon: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error("{daemon} does not answer: {source}")]
    Daemon {
        daemon: &'static str,
        #[source]
        source: grove_daemon::client::ClientError,
    },
}

impl IntoResponse for OperatorApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            OperatorApiError::UnknownService(_) => StatusCode::NOT_FOUND,
            OperatorApiError::Daemon { .. } => StatusCode::BAD_GATEWAY,
            OperatorApiError::Refused { status, .. } => *status,
            OperatorApiError::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
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
        .route("/v1/status", get(status))
        .route("/v1/chain", get(chain))
        .route("/v1/capacity", get(capacity))
        .route("/v1/disks", get(disks))
        .route("/v1/network", get(network))
        .route("/v1/mesh", get(mesh))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/v1/reboot", axum::routing::post(reboot))
        .route("/v1/disks/{serial}/wipe", axum::routing::post(wipe))
        .with_state(state)
}

async fn node(State(state): State<ApiState>) -> Json<NodeReport> {
    let host = state.snapshot.get().host.clone();
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

/// `GET /v1/network`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkReport {
    pub uplink: netd::uplink::UplinkReport,
    pub interfaces: Vec<netd::uplink::Interface>,
}

fn status_report(state: &ApiState) -> crate::operator::status::StatusReport {
    let facts = state.snapshot.get();
    let services = state.supervisor.statuses();
    let identity = state.identity.report();
    let chain = state
        .chain
        .status()
        .problems(crate::clock::unix_ms() / 1000);
    crate::operator::status::evaluate(&crate::operator::status::Inputs {
        agent_uptime: state.started.elapsed(),
        services: &services,
        boot_errors: state.cmdline.errors.len(),
        capacity: facts.capacity.as_ref().map_err(Clone::clone),
        uplink: facts.uplink.as_ref().map_err(Clone::clone),
        identity: identity.as_ref(),
        chain: &chain,
    })
}

async fn status(State(state): State<ApiState>) -> Json<crate::operator::status::StatusReport> {
    Json(status_report(&state))
}

fn node_capacity(state: &ApiState) -> crate::operator::capacity::NodeCapacity {
    let facts = state.snapshot.get();
    crate::operator::capacity::node_capacity(&facts.host, facts.capacity.as_ref().ok())
}

async fn capacity(State(state): State<ApiState>) -> Json<crate::operator::capacity::NodeCapacity> {
    Json(node_capacity(&state))
}

async fn disks(
    State(state): State<ApiState>,
) -> Result<Json<Vec<storaged::storage::Disk>>, OperatorApiError> {
    state
        .storaged
        .disks()
        .await
        .map(Json)
        .map_err(|source| OperatorApiError::Daemon {
            daemon: storaged::NAME,
            source,
        })
}

async fn network(State(state): State<ApiState>) -> Result<Json<NetworkReport>, OperatorApiError> {
    let err = |source| OperatorApiError::Daemon {
        daemon: netd::NAME,
        source,
    };
    let (uplink, interfaces) = tokio::join!(state.netd.uplink(), state.netd.interfaces());
    Ok(Json(NetworkReport {
        uplink: uplink.map_err(err)?,
        interfaces: interfaces.map_err(err)?,
    }))
}

/// `GET /v1/mesh`: netd's mesh view as it gives it (never a private key:
/// the view has no field that could hold one).
async fn mesh(State(state): State<ApiState>) -> Result<impl IntoResponse, OperatorApiError> {
    state
        .netd
        .mesh()
        .await
        .map(Json)
        .map_err(|source| OperatorApiError::Daemon {
            daemon: netd::NAME,
            source,
        })
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let (status, capacity) = (status_report(&state), node_capacity(&state));
    let services = state.supervisor.statuses();
    let facts = state.snapshot.get();
    let text = crate::operator::metrics::render(&crate::operator::metrics::Snapshot {
        status: &status,
        services: &services,
        capacity: &capacity,
        boot_errors: state.cmdline.errors.len(),
        chain: &state.chain.status(),
        now_secs: crate::clock::unix_ms() / 1000,
        host: &facts.host,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// The dashboard: one static page that reads the JSON routes above.
const DASHBOARD: &str = include_str!("operator/dashboard.html");

async fn dashboard() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD,
    )
}

async fn chain(State(state): State<ApiState>) -> Json<crate::chain::ChainStatus> {
    Json(state.chain.status())
}

/// Checks that a change was signed by the farm's owner.
fn authorize(
    state: &ApiState,
    method: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(), OperatorApiError> {
    use crate::auth::{AuthError, Presented};
    let farmer = state.chain.status().farmer.ok_or_else(|| {
        AuthError::NoFarmer("the node has not reached its registry yet".to_owned())
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = (crate::clock::unix_ms() / 1000) as i64;
    state.verifier.verify(
        &farmer,
        method,
        path,
        body,
        Presented {
            signer: header(crate::auth::HEADER_SIGNER),
            timestamp: header(crate::auth::HEADER_TIMESTAMP),
            nonce: header(crate::auth::HEADER_NONCE),
            signature: header(crate::auth::HEADER_SIGNATURE),
        },
        now,
    )?;
    Ok(())
}

async fn reboot(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), OperatorApiError> {
    authorize(&state, "POST", "/v1/reboot", &headers, &body)?;
    tracing::warn!("reboot requested by the farmer");
    // The servers drain gracefully, so this answer still goes out.
    state.stop.request(crate::stop::StopReason::Reboot);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "rebooting": true })),
    ))
}

async fn wipe(
    State(state): State<ApiState>,
    Path(serial): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<storaged::storage::Disk>, OperatorApiError> {
    authorize(
        &state,
        "POST",
        &format!("/v1/disks/{serial}/wipe"),
        &headers,
        &body,
    )?;
    tracing::warn!(serial = %serial, "disk wipe requested by the farmer");
    match state.storaged.wipe(&serial).await {
        Ok(disk) => Ok(Json(disk)),
        Err(grove_daemon::client::ClientError::Status {
            status, message, ..
        }) => Err(OperatorApiError::Refused {
            daemon: storaged::NAME,
            status,
            message,
        }),
        Err(source) => Err(OperatorApiError::Daemon {
            daemon: storaged::NAME,
            source,
        }),
    }
}
