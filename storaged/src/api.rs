//! storaged's socket API.
//!
//! Bodies are parsed by hand from bytes so a bad request gets a JSON error
//! naming the bad field, not a framework's plain-text rejection. Every
//! [`StorageError`] maps to a status in one exhaustive match.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::disk::guard::GuardError;
use crate::pool::kind::DiskKind;
use crate::storage::{
    Capacity, Disk, IdentityChoice, IdentityState, PoolReport, Storage, StorageError,
};
use crate::types::{DiskSerial, ResourceName};
use crate::volume::{Resource, ResourceKind};

/// `POST /v1/volumes` and `POST /v1/vdisks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub size_bytes: u64,
    /// Only on pools of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_kind: Option<DiskKind>,
}

/// `POST /v1/identity`: the node's account as the agent settled it, or
/// `null` for a node that has none yet (waiting for the farmer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    pub account: Option<String>,
}

/// The storage once boot has finished.
pub type Shared = Arc<OnceLock<Storage>>;

/// Why a request failed before reaching the storage.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("storage is still starting")]
    Starting,
    #[error("bad request body: {0}")]
    Body(#[source] serde_path_to_error::Error<serde_json::Error>),
    #[error("bad name: {0}")]
    Name(#[source] crate::types::NameError),
    #[error("bad disk serial: {0}")]
    Serial(#[source] crate::types::SerialError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("storage task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = match &self {
            RequestError::Starting => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Body(_) | RequestError::Name(_) | RequestError::Serial(_) => {
                StatusCode::BAD_REQUEST
            }
            RequestError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RequestError::Storage(e) => match e {
                StorageError::ZeroSize { .. } => StatusCode::BAD_REQUEST,
                StorageError::Duplicate { .. }
                | StorageError::Settled { .. }
                | StorageError::NotWaiting { .. }
                | StorageError::NoBlankPool
                | StorageError::NotFresh { .. }
                | StorageError::NotWipeable { .. }
                | StorageError::PoolBroken { .. } => StatusCode::CONFLICT,
                StorageError::NotFound { .. }
                | StorageError::UnknownDisk(_)
                | StorageError::NoPoolOf { .. } => StatusCode::NOT_FOUND,
                StorageError::NoSpace { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                StorageError::Guard(g) => match g {
                    GuardError::Vanished { .. } => StatusCode::NOT_FOUND,
                    GuardError::Changed { .. } | GuardError::Busy { .. } => StatusCode::CONFLICT,
                    GuardError::Open { .. }
                    | GuardError::Discover(_)
                    | GuardError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                },
                StorageError::NotBlankAfterWipe { .. }
                | StorageError::Discover(_)
                | StorageError::Wipe { .. }
                | StorageError::Pool(_)
                | StorageError::Volume(_)
                | StorageError::Cache(_)
                | StorageError::Probe(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

pub fn routes(storage: Shared) -> Router {
    Router::new()
        .route("/v1/disks", get(disks))
        .route("/v1/disks/{serial}/wipe", post(wipe))
        .route("/v1/pools", get(pools))
        .route("/v1/identity", get(identity).post(settle))
        .route("/v1/identity/choice", post(choose))
        .route("/v1/capacity", get(capacity))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", delete(delete_volume))
        .route("/v1/vdisks", get(list_vdisks).post(create_vdisk))
        .route("/v1/vdisks/{name}", delete(delete_vdisk))
        .with_state(storage)
}

/// Runs `f` on the booted storage, on a blocking thread.
async fn with<T: Send + 'static>(
    shared: Shared,
    f: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(move || {
        let storage = shared.get().ok_or(RequestError::Starting)?;
        f(storage).map_err(RequestError::from)
    })
    .await
    .map_err(RequestError::Task)?
}

async fn disks(State(s): State<Shared>) -> Result<Json<Vec<Disk>>, RequestError> {
    with(s, |st| Ok(st.disks())).await.map(Json)
}

async fn pools(State(s): State<Shared>) -> Result<Json<Vec<PoolReport>>, RequestError> {
    with(s, |st| Ok(st.pools())).await.map(Json)
}

async fn identity(State(s): State<Shared>) -> Result<Json<IdentityState>, RequestError> {
    with(s, |st| Ok(st.identity())).await.map(Json)
}

async fn settle(State(s): State<Shared>, body: Bytes) -> Result<Json<IdentityState>, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: SettleRequest =
        serde_path_to_error::deserialize(&mut de).map_err(RequestError::Body)?;
    with(s, move |st| st.settle(req.account)).await.map(Json)
}

async fn choose(State(s): State<Shared>, body: Bytes) -> Result<Json<IdentityState>, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let choice: IdentityChoice =
        serde_path_to_error::deserialize(&mut de).map_err(RequestError::Body)?;
    with(s, move |st| st.choose(&choice)).await.map(Json)
}

async fn capacity(State(s): State<Shared>) -> Result<Json<Capacity>, RequestError> {
    with(s, |st| Ok(st.capacity())).await.map(Json)
}

async fn wipe(
    State(s): State<Shared>,
    Path(serial): Path<String>,
) -> Result<Json<Disk>, RequestError> {
    let serial: DiskSerial = serial.parse().map_err(RequestError::Serial)?;
    with(s, move |st| st.wipe(&serial)).await.map(Json)
}

fn parse_create(body: &Bytes) -> Result<(ResourceName, u64, Option<DiskKind>), RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: CreateRequest =
        serde_path_to_error::deserialize(&mut de).map_err(RequestError::Body)?;
    let name = req.name.parse().map_err(RequestError::Name)?;
    Ok((name, req.size_bytes, req.disk_kind))
}

async fn create(
    s: Shared,
    kind: ResourceKind,
    body: Bytes,
) -> Result<(StatusCode, Json<Resource>), RequestError> {
    let (name, size, disk_kind) = parse_create(&body)?;
    let r = with(s, move |st| st.create(kind, &name, size, disk_kind)).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

async fn remove(s: Shared, kind: ResourceKind, name: String) -> Result<StatusCode, RequestError> {
    let name: ResourceName = name.parse().map_err(RequestError::Name)?;
    with(s, move |st| st.delete(kind, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_volumes(State(s): State<Shared>) -> Result<Json<Vec<Resource>>, RequestError> {
    with(s, |st| Ok(st.list(ResourceKind::Volume)))
        .await
        .map(Json)
}

async fn list_vdisks(State(s): State<Shared>) -> Result<Json<Vec<Resource>>, RequestError> {
    with(s, |st| Ok(st.list(ResourceKind::Vdisk)))
        .await
        .map(Json)
}

async fn create_volume(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Resource>), RequestError> {
    create(s, ResourceKind::Volume, body).await
}

async fn create_vdisk(
    State(s): State<Shared>,
    body: Bytes,
) -> Result<(StatusCode, Json<Resource>), RequestError> {
    create(s, ResourceKind::Vdisk, body).await
}

async fn delete_volume(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, RequestError> {
    remove(s, ResourceKind::Volume, name).await
}

async fn delete_vdisk(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, RequestError> {
    remove(s, ResourceKind::Vdisk, name).await
}
