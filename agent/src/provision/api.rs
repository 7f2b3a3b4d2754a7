//! The tenants' API on the operator API: deployments, forwarded to
//! `provisiond` with the registry's facts.
//!
//! Every request but the capacity is signed by a twin with the node's
//! signed-request scheme ([`crate::auth`]: method, path, body hash, time,
//! nonce, for this node's account), the signer named by its account in
//! `x-grove-signer` and its twin in [`HEADER_TWIN`]; the registry's account
//! of that twin must be the signer. A twin sees only its own deployments:
//! another twin's is answered 404 as a missing one is, so contract ids
//! cannot be probed. A deployment is parsed here only to read its twin and
//! contract; provisiond's admission decides the rest, and its refusal
//! reaches the tenant word for word. Nothing here logs a body: a
//! deployment holds WireGuard private keys.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/deployments/capacity` (open) | provisiond's capacity: free per resource, pools, WireGuard ports in use |
//! | `POST /v1/deployments` | 202 and the view, once admitted |
//! | `PUT /v1/deployments/{contract_id}` | 202, an update |
//! | `GET /v1/deployments` | the signer's deployments |
//! | `GET /v1/deployments/{contract_id}` | one |
//! | `GET /v1/deployments/{contract_id}/changes` | its history |

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use grove_daemon::client::ClientError;
use grove_daemon::server::ApiError;
use provisiond::api::{
    CapacityView, ChangeView, ContractFacts, DeploymentView, Submission, TwinKeyFacts,
};
use provisiond::deployment::Deployment;

use crate::api::ApiState;
use crate::auth::{AuthError, Presented, Request};
use crate::chain::backend::BackendError;

/// The header naming the twin that signed.
pub const HEADER_TWIN: &str = "x-grove-twin";

/// The largest body: a deployment.
pub const BODY_LIMIT: usize = 1 << 20;

/// Why a tenant's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("header {HEADER_TWIN} is missing: name the twin that signs")]
    NoTwin,
    #[error("header {HEADER_TWIN} is not a twin id: {0:?}")]
    BadTwin(String),
    #[error("twin {0} does not exist on the registry, or has no account key")]
    UnknownTwin(u32),
    #[error("the request is signed by {signer}, which is not the account of twin {twin}")]
    NotTwin { signer: String, twin: u32 },
    #[error("the node's identity is not loaded yet")]
    NoIdentity,
    #[error("the node does not reach its registry yet")]
    NoRegistry,
    #[error("the registry does not answer: {0}")]
    Registry(#[source] BackendError),
    #[error("{0}")]
    Deployment(#[from] provisiond::deployment::DeploymentError),
    #[error("the deployment is twin {deployment}'s; the request is signed by twin {signer}")]
    OtherTwin { deployment: u32, signer: u32 },
    #[error("the path names contract {path}, the deployment contract {deployment}")]
    OtherContract { path: u64, deployment: u64 },
    #[error("no deployment of contract {0}")]
    NotFound(u64),
    /// provisiond's own refusal, passed on unchanged.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("provisiond does not answer: {0}")]
    Provisiond(#[source] ClientError),
}

impl IntoResponse for TenantApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            TenantApiError::Auth(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            TenantApiError::NoTwin | TenantApiError::BadTwin(_) => StatusCode::UNAUTHORIZED,
            TenantApiError::UnknownTwin(_)
            | TenantApiError::NotTwin { .. }
            | TenantApiError::OtherTwin { .. } => StatusCode::FORBIDDEN,
            TenantApiError::NoIdentity | TenantApiError::NoRegistry => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            TenantApiError::Registry(_) | TenantApiError::Provisiond(_) => StatusCode::BAD_GATEWAY,
            TenantApiError::Deployment(_) | TenantApiError::OtherContract { .. } => {
                StatusCode::BAD_REQUEST
            }
            TenantApiError::NotFound(_) => StatusCode::NOT_FOUND,
            TenantApiError::Refused { status, .. } => *status,
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

fn from_provisiond(e: ClientError) -> TenantApiError {
    match e {
        ClientError::Status {
            status, message, ..
        } => TenantApiError::Refused { status, message },
        other => TenantApiError::Provisiond(other),
    }
}

/// The tenants' routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/deployments/capacity", get(capacity))
        .route("/v1/deployments", get(list).post(deploy))
        .route("/v1/deployments/{contract_id}", get(one).put(update))
        .route("/v1/deployments/{contract_id}/changes", get(changes))
        .route(
            "/v1/deployments/{contract_id}/workloads/{name}/logs",
            get(logs),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Checks that the request was signed for this node by the twin it names
/// (over the path as sent); answers the twin. The nonce is spent last, once everything else holds.
async fn authorize(
    state: &ApiState,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<u32, TenantApiError> {
    let keys = state.identity.keys().ok_or(TenantApiError::NoIdentity)?;
    let node = keys.public().account;
    let now = (crate::clock::unix_ms() / 1000) as i64;
    let request = Request {
        target: &node,
        method,
        path,
        body,
    };
    let verified = crate::auth::verify(request, Presented::from_headers(headers), now)?;
    let twin = headers
        .get(HEADER_TWIN)
        .ok_or(TenantApiError::NoTwin)?
        .to_str()
        .ok()
        .and_then(|t| t.parse::<u32>().ok().map(|id| (t, id)));
    let twin = match twin {
        Some((_, id)) if id > 0 => id,
        _ => {
            let raw = headers
                .get(HEADER_TWIN)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return Err(TenantApiError::BadTwin(raw));
        }
    };
    let registry = state
        .provisioning
        .registry()
        .ok_or(TenantApiError::NoRegistry)?;
    let key = registry
        .twin_key(twin)
        .await
        .map_err(TenantApiError::Registry)?
        .ok_or(TenantApiError::UnknownTwin(twin))?;
    if key.account != verified.signer {
        return Err(TenantApiError::NotTwin {
            signer: verified.signer,
            twin,
        });
    }
    let verifier = state.verifier.clone();
    // Spending the nonce writes its record: off the async workers.
    tokio::task::spawn_blocking(move || verifier.spend(&verified, now))
        .await
        .unwrap_or_else(|e| Err(AuthError::Record(e.to_string())))?;
    Ok(twin)
}

/// A request signed for this node by the twin it names ([`authorize`]):
/// the twin, and the body it signed.
struct Signed {
    twin: u32,
    body: Bytes,
}

impl FromRequest<ApiState> for Signed {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &ApiState,
    ) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let (method, uri, headers) = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let body = Bytes::from_request(axum::extract::Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let twin = authorize(state, method.as_str(), uri.path(), &headers, &body)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { twin, body })
    }
}

/// provisiond's answer to `call`, or its refusal passed on.
async fn ask<T>(
    call: impl Future<Output = Result<T, ClientError>>,
) -> Result<Json<T>, TenantApiError> {
    call.await.map(Json).map_err(from_provisiond)
}

async fn capacity(State(state): State<ApiState>) -> Result<Json<CapacityView>, TenantApiError> {
    ask(state.provisioning.client.capacity()).await
}

async fn list(
    State(state): State<ApiState>,
    signed: Signed,
) -> Result<Json<Vec<DeploymentView>>, TenantApiError> {
    ask(state.provisioning.client.deployments(Some(signed.twin))).await
}

/// Contract `id`'s deployment, if it is `twin`'s: another twin's is not
/// found, as a missing one.
async fn owned(state: &ApiState, id: u64, twin: u32) -> Result<DeploymentView, TenantApiError> {
    match state.provisioning.client.deployment(id).await {
        Ok(view) if view.twin_id == twin => Ok(view),
        Ok(_) => Err(TenantApiError::NotFound(id)),
        Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
            Err(TenantApiError::NotFound(id))
        }
        Err(e) => Err(from_provisiond(e)),
    }
}

async fn one(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
    signed: Signed,
) -> Result<Json<DeploymentView>, TenantApiError> {
    owned(&state, id, signed.twin).await.map(Json)
}

async fn changes(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
    signed: Signed,
) -> Result<Json<Vec<ChangeView>>, TenantApiError> {
    owned(&state, id, signed.twin).await?;
    ask(state.provisioning.client.changes(id)).await
}

/// A workload's output (a container's stdout and stderr), to its twin
/// only.
async fn logs(
    State(state): State<ApiState>,
    Path((id, name)): Path<(u64, String)>,
    signed: Signed,
) -> Result<String, TenantApiError> {
    owned(&state, id, signed.twin).await?;
    state
        .provisioning
        .client
        .logs(id, &name)
        .await
        .map_err(from_provisiond)
}

async fn deploy(
    State(state): State<ApiState>,
    Signed { twin, body }: Signed,
) -> Result<(StatusCode, Json<DeploymentView>), TenantApiError> {
    let submission = submission(&state, twin, None, &body).await?;
    let Json(view) = ask(state.provisioning.client.deploy(&submission)).await?;
    tracing::info!(
        contract = view.contract_id,
        twin,
        "a tenant's deployment was admitted"
    );
    state.provisioning.changed();
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn update(
    State(state): State<ApiState>,
    Path(id): Path<u64>,
    Signed { twin, body }: Signed,
) -> Result<(StatusCode, Json<DeploymentView>), TenantApiError> {
    // Another twin's deployment is not found, as on a read.
    owned(&state, id, twin).await?;
    let submission = submission(&state, twin, Some(id), &body).await?;
    let Json(view) = ask(state.provisioning.client.update(id, &submission)).await?;
    tracing::info!(
        contract = id,
        twin,
        version = view.version,
        "a tenant's update was admitted"
    );
    state.provisioning.changed();
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The deployment with the registry's contract and the keys of every twin
/// it asks to sign.
async fn submission(
    state: &ApiState,
    twin: u32,
    path_contract: Option<u64>,
    body: &Bytes,
) -> Result<Submission, TenantApiError> {
    let deployment = Deployment::parse(body)?;
    if deployment.twin_id != twin {
        return Err(TenantApiError::OtherTwin {
            deployment: deployment.twin_id,
            signer: twin,
        });
    }
    if let Some(path) = path_contract
        && path != deployment.contract_id
    {
        return Err(TenantApiError::OtherContract {
            path,
            deployment: deployment.contract_id,
        });
    }
    let registry = state
        .provisioning
        .registry()
        .ok_or(TenantApiError::NoRegistry)?;
    let contract = match deployment.contract_id {
        // provisiond refuses a deployment without a contract by its rule.
        0 => None,
        id => registry
            .contract(id)
            .await
            .map_err(TenantApiError::Registry)?
            .map(|c| ContractFacts {
                contract_id: c.contract_id,
                node_id: c.node_id,
                twin_id: c.twin_id,
                state: c.state.as_str().to_owned(),
                deployment_hash: c.deployment_hash.to_string(),
            }),
    };
    let mut twins = Vec::new();
    for request in &deployment.signature_requirement.requests {
        if let Some(key) = registry
            .twin_key(request.twin_id)
            .await
            .map_err(TenantApiError::Registry)?
        {
            twins.push(TwinKeyFacts {
                twin_id: key.id,
                account_key: key.account_key,
            });
        }
    }
    // Parsed, so JSON, so UTF-8; sent on byte for byte.
    let text = String::from_utf8(body.to_vec()).map_err(|e| TenantApiError::Refused {
        status: StatusCode::BAD_REQUEST,
        message: format!("the body is not UTF-8: {e}"),
    })?;
    Ok(Submission {
        deployment: text,
        contract,
        twins,
    })
}
