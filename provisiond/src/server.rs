//! provisiond's socket API: deployments, their history, capacity and usage.
//!
//! Every [`EngineError`] maps to a status in one exhaustive match: a
//! deployment's own mistakes are 400, a signature or contract that does not
//! authorise it 403, a collision with what the node holds 409, a deployment
//! that does not fit 507 with the numbers. Bodies are read from bytes with a
//! size limit, so a malformed or oversized one gets a clear error.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::Deserialize;

use crate::admission::AdmissionError;
use crate::api::{CapacityView, ChangeView, ContractUsage, DeploymentView, NodeFacts, Submission};
use crate::engine::{Engine, EngineError};

/// The largest request body: a deployment with its facts.
pub const BODY_LIMIT: usize = 1 << 20;

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let status = match &self {
            EngineError::Admission(a) => match a {
                AdmissionError::Deployment(_)
                | AdmissionError::NoContractId
                | AdmissionError::FirstVersion(_)
                | AdmissionError::Update(_) => StatusCode::BAD_REQUEST,
                AdmissionError::Signature(_)
                | AdmissionError::NoContract(_)
                | AdmissionError::OtherNode { .. }
                | AdmissionError::OtherTwin { .. }
                | AdmissionError::NotCreated { .. }
                | AdmissionError::OtherHash { .. } => StatusCode::FORBIDDEN,
                AdmissionError::Capacity(_) => StatusCode::INSUFFICIENT_STORAGE,
            },
            EngineError::Submission { .. } | EngineError::OtherContract { .. } => {
                StatusCode::BAD_REQUEST
            }
            EngineError::NoNodeId => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::NotFound { .. } | EngineError::NoLogs { .. } => StatusCode::NOT_FOUND,
            EngineError::Exists { .. }
            | EngineError::Removed { .. }
            | EngineError::Busy { .. }
            | EngineError::NetworkTaken { .. } => StatusCode::CONFLICT,
            EngineError::Store(_) | EngineError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::answer(status, &self, "request")
    }
}

/// provisiond's routes.
pub fn routes(engine: Engine) -> Router {
    Router::new()
        .route("/v1/deployments", get(list).post(deploy))
        .route(
            "/v1/deployments/{contract}",
            get(show).put(update).delete(remove),
        )
        .route("/v1/deployments/{contract}/changes", get(changes))
        .route(
            "/v1/deployments/{contract}/workloads/{name}/logs",
            get(logs),
        )
        .route("/v1/capacity", get(capacity))
        .route("/v1/usage", get(usage))
        .route("/v1/node", put(node))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(engine)
}

fn submission(body: &[u8]) -> Result<Submission, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a submission at {}: {}",
            e.path(),
            e.inner()
        ))
    })
}

async fn deploy(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<(StatusCode, Json<DeploymentView>), Response> {
    let s = submission(&body).map_err(IntoResponse::into_response)?;
    let view = engine
        .deploy(&s)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn update(
    State(engine): State<Engine>,
    Path(contract): Path<u64>,
    body: Bytes,
) -> Result<(StatusCode, Json<DeploymentView>), Response> {
    let s = submission(&body).map_err(IntoResponse::into_response)?;
    let view = engine
        .update(contract, &s)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    twin: Option<u32>,
}

async fn list(
    State(engine): State<Engine>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<DeploymentView>> {
    Json(engine.deployments(q.twin))
}

async fn show(
    State(engine): State<Engine>,
    Path(contract): Path<u64>,
) -> Result<Json<DeploymentView>, EngineError> {
    engine.deployment(contract).map(Json)
}

/// The most of a workload's output an answer carries.
pub const LOG_ANSWER_LIMIT: u64 = 256 * 1024;

async fn logs(
    State(engine): State<Engine>,
    Path((contract, name)): Path<(u64, String)>,
) -> Result<String, EngineError> {
    // The log is a file of up to a MiB: read off the runtime's threads.
    tokio::task::spawn_blocking(move || engine.logs(contract, &name, LOG_ANSWER_LIMIT)).await?
}

async fn changes(
    State(engine): State<Engine>,
    Path(contract): Path<u64>,
) -> Result<Json<Vec<ChangeView>>, EngineError> {
    engine.changes(contract).await.map(Json)
}

async fn remove(
    State(engine): State<Engine>,
    Path(contract): Path<u64>,
) -> Result<(StatusCode, Json<DeploymentView>), EngineError> {
    let view = engine.remove(contract).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

async fn capacity(State(engine): State<Engine>) -> Json<CapacityView> {
    Json(engine.capacity())
}

async fn usage(State(engine): State<Engine>) -> Json<Vec<ContractUsage>> {
    Json(engine.usage())
}

async fn node(State(engine): State<Engine>, body: Bytes) -> Result<Json<NodeFacts>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let facts: NodeFacts = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(format!("the body is not {{node_id}}: {e}")))?;
    if facts.node_id == 0 {
        return Err(ApiError::bad_request("node_id: must not be 0"));
    }
    if let Some(known) = engine.node_id()
        && known != facts.node_id
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("this node is node {known}, not {}", facts.node_id),
        ));
    }
    engine.set_node_id(facts.node_id);
    Ok(Json(facts))
}
