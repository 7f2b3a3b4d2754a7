//! The operator API, served on the farm LAN (TCP) and on the agent's own
//! socket: facts about the node for anyone, and changes for the farmer.
//!
//! The `GET` routes only read snapshots (supervisor statuses, the parsed
//! command line, the background snapshot of the daemons' answers and the
//! host's usage), so reading cannot change the node. The `POST`
//! routes (`/v1/reboot`, `/v1/upgrade`, `/v1/upgrade/image`, `/v1/disks/{serial}/wipe`,
//! `/v1/identity/choice`) change it, and only with the farm owner's signature for this node,
//! checked by [`crate::auth`] before anything else. A node that waits for
//! its identity has no account yet: the farmer's choice is then signed for
//! its machine (`machine:ID`, as `/v1/node` shows it), and the farm owner
//! is read from the registry on the spot. The tenants' routes
//! (`/v1/deployments`, [`crate::provision::api`]) are merged in; each but
//! the capacity is signed by a twin. On TCP, [`serve_tcp`] holds at most `max_connections`
//! connections, closes one whose headers do not arrive in time, and closes
//! one idle for `idle_timeout_secs`, so held connections cannot pile up fds
//! and memory.

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
    pub provisioning: Arc<crate::provision::Provisioning>,
    pub verifier: Arc<crate::auth::RequestVerifier>,
    pub stop: crate::stop::Stop,
    pub supervisor: Arc<Supervisor>,
    pub identity: Arc<crate::identity::Identity>,
    pub storaged: storaged::client::StoragedClient,
    pub netd: netd::client::NetdClient,
    pub started: std::time::Instant,
    pub cmdline: Arc<Cmdline>,
    /// The hardware watchdog the agent holds armed, if any.
    pub watchdog: Option<crate::watchdog::WatchdogReport>,
    pub upgrades: Arc<crate::upgrade::Upgrades>,
    /// Work a request starts that outlives its connection.
    pub detached: crate::tasks::Detached,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    #[serde(flatten)]
    pub host: HostInfo,
    /// The agent's own CPU and memory (the daemons' are in `/v1/services`).
    pub agent: Option<crate::hostinfo::ProcessUsage>,
    pub boot: BootReport,
    /// The node's identity, once storage is up.
    pub identity: Option<crate::identity::store::IdentityReport>,
    /// Why the node has no identity and how the farmer answers, while it
    /// waits for the farmer's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::identity::choice::WaitingReport>,
    /// The hardware watchdog, when the agent is the machine's init and
    /// holds one armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<crate::watchdog::WatchdogReport>,
    /// The running system, the stick's slot it booted from, and the last
    /// upgrade.
    pub system: crate::upgrade::SystemReport,
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
    #[error(transparent)]
    Choice(#[from] crate::identity::choice::ChoiceError),
    #[error("{daemon}: {message}")]
    Refused {
        daemon: &'static str,
        status: StatusCode,
        message: String,
    },
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("bad upgrade request: {0}")]
    UpgradeRequest(String),
    #[error("{daemon} does not answer: {source}")]
    Daemon {
        daemon: &'static str,
        #[source]
        source: grove_daemon::client::ClientError,
    },
}

/// How a failed call to `daemon` is answered: 502, naming it.
fn daemon_error(
    daemon: &'static str,
) -> impl Fn(grove_daemon::client::ClientError) -> OperatorApiError + Copy {
    move |source| OperatorApiError::Daemon { daemon, source }
}

impl IntoResponse for OperatorApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            OperatorApiError::UnknownService(_) => StatusCode::NOT_FOUND,
            OperatorApiError::Daemon { .. } => StatusCode::BAD_GATEWAY,
            OperatorApiError::Refused { status, .. } => *status,
            OperatorApiError::Choice(e) => e.status(),
            OperatorApiError::Upgrade(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            OperatorApiError::UpgradeRequest(_) => StatusCode::BAD_REQUEST,
            OperatorApiError::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// Every route: the reads, the farm owner's changes and the tenants'
/// deployments.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service))
        .route("/v1/services/{name}/logs", get(logs))
        .route("/v1/status", get(status))
        .route("/v1/chain", get(chain))
        .route("/v1/provision", get(provision))
        .route("/v1/capacity", get(capacity))
        .route("/v1/disks", get(disks))
        .route("/v1/network", get(network))
        .route("/v1/mesh", get(mesh))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/v1/reboot", axum::routing::post(reboot))
        .route("/v1/upgrade", axum::routing::post(upgrade))
        .route("/v1/upgrade/image", axum::routing::post(upgrade_image))
        .route("/v1/disks/{serial}/wipe", axum::routing::post(wipe))
        .route(
            crate::identity::choice::PATH,
            axum::routing::post(choose_identity),
        )
        .merge(crate::provision::api::routes())
        .with_state(state)
}

async fn node(State(state): State<ApiState>) -> Json<NodeReport> {
    let facts = state.snapshot.get();
    Json(NodeReport {
        host: facts.host.clone(),
        agent: facts.agent,
        identity: state.identity.report(),
        waiting: state.identity.waiting(),
        boot: BootReport {
            cmdline: state.cmdline.raw.clone(),
            params: state.cmdline.params.clone(),
            errors: state.cmdline.errors.clone(),
        },
        watchdog: state.watchdog.clone(),
        system: state.upgrades.report(),
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

pub(crate) fn status_report(state: &ApiState) -> crate::operator::status::StatusReport {
    let facts = state.snapshot.get();
    let services = state.supervisor.statuses();
    let identity = state.identity.report();
    let mut chain = state
        .chain
        .status()
        .problems(crate::clock::unix_ms() / 1000);
    chain.extend(state.provisioning.status().problems());
    crate::operator::status::evaluate(&crate::operator::status::Inputs {
        agent_uptime: state.started.elapsed(),
        services: &services,
        boot_errors: state.cmdline.errors.len(),
        capacity: facts.capacity.as_ref().map_err(ToString::to_string),
        uplink: facts.uplink.as_ref().map_err(ToString::to_string),
        identity: identity.as_ref(),
        waiting: state.identity.waiting().as_ref(),
        chain: &chain,
    })
}

/// What the node's console screen shows; the operator API answers on
/// `api_port`.
pub fn console_view(state: &ApiState, api_port: u16) -> crate::operator::console::View {
    let facts = state.snapshot.get();
    let chain = state.chain.status();
    let status = status_report(state);
    let uplink = facts.uplink.as_ref().ok();
    let address = uplink.and_then(|u| u.address.clone());
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    let storage = facts
        .capacity
        .as_ref()
        .map(|c| {
            [("SSD", c.ssd), ("HDD", c.hdd)]
                .into_iter()
                .filter(|(_, k)| k.total_bytes > 0)
                .map(|(kind, k)| {
                    format!(
                        "{kind}  {:.1} GiB, {:.1} GiB free",
                        gib(k.total_bytes),
                        gib(k.free_bytes)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let system = state.upgrades.report();
    crate::operator::console::View {
        version: match system.slot {
            Some(slot) => format!("{}, slot {}", system.version, slot.name().to_uppercase()),
            None => system.version,
        },
        hostname: facts.host.hostname.clone(),
        state: Some(status.state),
        reasons: status.reasons,
        node_id: chain.node_id,
        farm_id: chain.farm_id,
        twin_id: chain.twin_id,
        account: status.account.or(chain.account),
        api: address
            .as_deref()
            .and_then(|a| a.split('/').next())
            .map(|ip| format!("http://{ip}:{api_port}")),
        address,
        nic: uplink.and_then(|u| u.nic.clone()),
        gateway: uplink.and_then(|u| u.gateway).map(|g| g.to_string()),
        storage,
        services: state
            .supervisor
            .statuses()
            .into_iter()
            .map(|s| (s.name, format!("{:?}", s.state).to_lowercase()))
            .collect(),
    }
}

async fn status(State(state): State<ApiState>) -> Json<crate::operator::status::StatusReport> {
    Json(status_report(&state))
}

fn node_capacity(state: &ApiState) -> crate::operator::capacity::NodeCapacity {
    let facts = state.snapshot.get();
    crate::operator::capacity::node_capacity(&facts.host, facts.capacity.as_ref().ok())
}

fn capacity_report(state: &ApiState) -> crate::operator::capacity::CapacityReport {
    let facts = state.snapshot.get();
    crate::operator::capacity::with_deployments(
        node_capacity(state),
        facts.deployments.as_ref().ok(),
    )
}

async fn capacity(
    State(state): State<ApiState>,
) -> Json<crate::operator::capacity::CapacityReport> {
    Json(capacity_report(&state))
}

async fn disks(
    State(state): State<ApiState>,
) -> Result<Json<Vec<storaged::report::Disk>>, OperatorApiError> {
    let disks = state.storaged.disks().await;
    disks.map(Json).map_err(daemon_error(storaged::NAME))
}

async fn network(State(state): State<ApiState>) -> Result<Json<NetworkReport>, OperatorApiError> {
    let err = daemon_error(netd::NAME);
    let (uplink, interfaces) = tokio::join!(state.netd.uplink(), state.netd.interfaces());
    Ok(Json(NetworkReport {
        uplink: uplink.map_err(err)?,
        interfaces: interfaces.map_err(err)?,
    }))
}

/// `GET /v1/mesh`: netd's mesh view as it gives it (never a private key:
/// the view has no field that could hold one).
async fn mesh(State(state): State<ApiState>) -> Result<impl IntoResponse, OperatorApiError> {
    let mesh = state.netd.mesh().await;
    mesh.map(Json).map_err(daemon_error(netd::NAME))
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let (status, report) = (status_report(&state), capacity_report(&state));
    let capacity = report.node;
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
        deployments: report.deployments.as_ref(),
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

/// `GET /v1/provision`: the glue between the registry and provisiond.
async fn provision(State(state): State<ApiState>) -> Json<crate::provision::ProvisionStatus> {
    Json(state.provisioning.status())
}

async fn chain(State(state): State<ApiState>) -> Json<crate::chain::ChainStatus> {
    Json(state.chain.status())
}

/// Checks that a change was signed by the farm's owner, for this node (its
/// account, or its machine while it waits for its identity).
async fn authorize(
    state: &ApiState,
    method: &'static str,
    path: String,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(), OperatorApiError> {
    let sum = crate::auth::sha256_hex(body);
    authorize_covering(state, method, path, headers, sum).await
}

/// The same for a request whose body is covered by the sum `body_sha256`.
async fn authorize_covering(
    state: &ApiState,
    method: &'static str,
    path: String,
    headers: &axum::http::HeaderMap,
    body_sha256: String,
) -> Result<(), OperatorApiError> {
    use crate::auth::{AuthError, Covered, Presented};
    let node = state.identity.signing_target().ok_or_else(|| {
        AuthError::NoFarmer(match state.identity.waiting() {
            Some(_) => {
                "the node waits for its identity but has no machine id to sign for".to_owned()
            }
            None => "the node's identity is not loaded yet".to_owned(),
        })
    })?;
    let farmer = match state.chain.status().farmer {
        Some(farmer) => farmer,
        // The chain task starts with the identity: a waiting node reads
        // its farm's owner itself, once the signature holds (a stranger's
        // unsigned request costs no registry read).
        None if state.identity.keys().is_none() => {
            crate::auth::verify(
                Covered {
                    target: &node,
                    method,
                    path: &path,
                    body_sha256: body_sha256.clone(),
                },
                Presented::from_headers(headers),
                (crate::clock::unix_ms() / 1000) as i64,
            )?;
            crate::identity::alive::farm_owner(&state.cmdline.params)
                .await
                .map_err(|e| AuthError::NoFarmer(e.to_string()))?
        }
        None => {
            return Err(AuthError::NoFarmer(
                "the node has not reached its registry yet".to_owned(),
            )
            .into());
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let presented = [
        header(crate::auth::HEADER_SIGNER),
        header(crate::auth::HEADER_TIMESTAMP),
        header(crate::auth::HEADER_NONCE),
        header(crate::auth::HEADER_SIGNATURE),
    ];
    let verifier = state.verifier.clone();
    // Spending the nonce writes its record: off the async workers.
    tokio::task::spawn_blocking(move || {
        let now = (crate::clock::unix_ms() / 1000) as i64;
        let [signer, timestamp, nonce, signature] = &presented;
        verifier.verify(
            &farmer,
            Covered {
                target: &node,
                method,
                path: &path,
                body_sha256,
            },
            Presented {
                signer: signer.as_deref(),
                timestamp: timestamp.as_deref(),
                nonce: nonce.as_deref(),
                signature: signature.as_deref(),
            },
            now,
        )
    })
    .await
    .unwrap_or_else(|e| Err(AuthError::Record(e.to_string())))?;
    Ok(())
}

/// `serial` with every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded, as
/// it goes in a path (and in the signed path).
pub fn escape_path_segment(serial: &str) -> String {
    serial
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn reboot(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), OperatorApiError> {
    authorize(&state, "POST", "/v1/reboot".to_owned(), &headers, &body).await?;
    tracing::warn!("reboot requested by the farmer");
    // The servers drain gracefully, so this answer still goes out.
    state.stop.request(crate::stop::StopReason::Reboot);
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "rebooting": true })),
    ))
}

/// `POST /v1/upgrade`: the farmer's upgrade of a node that booted from its
/// stick. Answered once the image is fetched, checked and written into the
/// other slot; the node then reboots into it.
async fn upgrade(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<crate::upgrade::Installed>), OperatorApiError> {
    authorize(&state, "POST", "/v1/upgrade".to_owned(), &headers, &body).await?;
    let request: crate::upgrade::UpgradeRequest = serde_json::from_slice(&body)
        .map_err(|e| OperatorApiError::UpgradeRequest(e.to_string()))?;
    tracing::warn!(sha256 = %request.sha256, "upgrade requested by the farmer");
    let (upgrades, now) = (state.upgrades.clone(), crate::clock::unix_ms() / 1000);
    install_then_reboot(&state, async move { upgrades.upgrade(request, now).await }).await
}

/// `POST /v1/upgrade/image`: the same, with the image as the body. The
/// farmer signs the body's sha256, which `x-grove-body-sha256` carries: the
/// signature and the node's state are checked before a byte of the body is
/// read, and the body against the sum once it is.
async fn upgrade_image(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<crate::upgrade::Installed>), OperatorApiError> {
    let sha256 = headers
        .get(crate::auth::HEADER_BODY_SHA256)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            OperatorApiError::UpgradeRequest(format!(
                "header {} missing: the image's sha256, as signed",
                crate::auth::HEADER_BODY_SHA256
            ))
        })?
        .to_owned();
    authorize_covering(
        &state,
        "POST",
        "/v1/upgrade/image".to_owned(),
        &headers,
        sha256.clone(),
    )
    .await?;
    let admitted = state.upgrades.admit(&sha256)?;
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    tracing::warn!(sha256 = %sha256, bytes = ?announced, "upgrade sent by the farmer");
    let image = crate::upgrade::receive(body, announced, state.upgrades.fetch_limits()).await?;
    let now = crate::clock::unix_ms() / 1000;
    install_then_reboot(&state, admitted.install(image, now)).await
}

/// Runs `upgrade` to its end, then reboots into what it wrote. On a task of
/// its own: a connection closed mid-request (the farmer's client gone, or
/// the API's idle limit) must not cut an upgrade short between writing the
/// slot and the reboot that tries it.
async fn install_then_reboot(
    state: &ApiState,
    upgrade: impl std::future::Future<
        Output = Result<crate::upgrade::Installed, crate::upgrade::UpgradeError>,
    > + Send
    + 'static,
) -> Result<(StatusCode, Json<crate::upgrade::Installed>), OperatorApiError> {
    let stop = state.stop.clone();
    let upgrading = async move {
        let installed = upgrade
            .await
            .inspect_err(|e| tracing::error!(error = %e, "upgrade refused"))?;
        tracing::warn!(slot = installed.slot.name(), version = %installed.version, "upgrade written; rebooting into it");
        stop.request(crate::stop::StopReason::Reboot);
        Ok::<_, crate::upgrade::UpgradeError>(installed)
    };
    let installed = state
        .detached
        .run("upgrade", upgrading)
        .await
        .ok_or(crate::upgrade::UpgradeError::Stopping)??;
    Ok((StatusCode::ACCEPTED, Json(installed)))
}

async fn wipe(
    State(state): State<ApiState>,
    Path(serial): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<storaged::report::Disk>, OperatorApiError> {
    // The serial is sent on escaped, so it names one disk and nothing else
    // of storaged's API; the farmer signs the same escaped path.
    let escaped = escape_path_segment(&serial);
    authorize(
        &state,
        "POST",
        format!("/v1/disks/{escaped}/wipe"),
        &headers,
        &body,
    )
    .await?;
    tracing::warn!(serial = %serial, "disk wipe requested by the farmer");
    match state.storaged.wipe(&escaped).await {
        Ok(disk) => Ok(Json(disk)),
        Err(grove_daemon::client::ClientError::Status {
            status, message, ..
        }) => Err(OperatorApiError::Refused {
            daemon: storaged::NAME,
            status,
            message,
        }),
        Err(source) => Err(daemon_error(storaged::NAME)(source)),
    }
}

/// `POST /v1/identity/choice`: the farmer's answer to a node that waits
/// for its identity.
async fn choose_identity(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<crate::identity::choice::Chosen>, OperatorApiError> {
    authorize(
        &state,
        "POST",
        crate::identity::choice::PATH.to_owned(),
        &headers,
        &body,
    )
    .await?;
    let choice = crate::identity::choice::parse(&body)?;
    tracing::warn!(choice = ?choice, "identity choice made by the farmer");
    // Adopting remounts pools and sets up the cache: more than the usual
    // few seconds.
    let storaged = storaged::client::StoragedClient::default()
        .with_timeout(std::time::Duration::from_secs(60));
    let chosen = state.identity.choose(&storaged, choice).await?;
    Ok(Json(chosen))
}

/// How the operator API treats TCP connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(c: &crate::config::ApiConfig) -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(c.header_read_timeout_secs.max(1)),
            idle_timeout: std::time::Duration::from_secs(c.idle_timeout_secs.max(1)),
            max_connections: c.max_connections.max(1),
        }
    }
}

/// A TCP stream that notes when it last moved a byte.
#[derive(Debug)]
struct Tracked {
    stream: tokio::net::TcpStream,
    born: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` trips; then
/// lets open requests finish for a moment and closes the rest.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: grove_daemon::shutdown::Shutdown,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut refused: u64 = 0;
    let mut peak = 0;
    loop {
        peak = peak.max(connections.len());
        tokio::select! {
            () = shutdown.wait() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if connections.is_empty() && peak > 32 {
                    // A flood is over: give its buffers back to the system.
                    peak = 0;
                    release_freed_memory();
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of fds, say: wait rather than spin.
                        tracing::warn!(error = %e, "operator API cannot accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(%peer, refused, max = limits.max_connections,
                            "operator API at its connection cap; closing new connections");
                    }
                    drop(stream);
                    continue;
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let app = app.clone();
                connections.spawn(async move {
                    serve_connection(stream, app, limits).await;
                    drop(slot);
                });
            }
        }
    }
    let grace = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    });
    if grace.await.is_err() {
        connections.abort_all();
    }
}

/// Returns freed heap memory to the system, where the allocator keeps it.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, app: Router, limits: ConnectionLimits) {
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let born = std::time::Instant::now();
    let io = hyper_util::rt::TokioIo::new(Tracked {
        stream,
        born,
        last: last.clone(),
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "operator API connection ended");
                }
                return;
            }
            () = tokio::time::sleep(tick) => {
                let quiet = born.elapsed().saturating_sub(std::time::Duration::from_millis(
                    last.load(std::sync::atomic::Ordering::Relaxed),
                ));
                if quiet >= limits.idle_timeout {
                    // Lets a request in flight finish, then closes.
                    conn.as_mut().graceful_shutdown();
                    if tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await.is_err() {
                        tracing::debug!("operator API connection closed mid-request");
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_escaped_into_one_path_segment() {
        assert_eq!(escape_path_segment("WD-123_a.b~"), "WD-123_a.b~");
        assert_eq!(escape_path_segment("../x"), "..%2Fx");
        assert_eq!(escape_path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(escape_path_segment("%2F"), "%252F");
    }
}
