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
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::Serialize;

use crate::disk::guard::GuardError;
use crate::report::{Capacity, Disk, IdentityChoice, IdentityState, PoolReport, SettleRequest};
use crate::storage::{Storage, StorageError, vdisk_view, volume_view};
use crate::types::{DiskSerial, PoolLabel, ResourceName};
use crate::volume::{Found, Kind, ObjectRequest, VdiskView, VolumeError, VolumeView};

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
                StorageError::Settled { .. }
                | StorageError::NotWaiting { .. }
                | StorageError::NoBlankPool
                | StorageError::NotFresh { .. }
                | StorageError::NotWipeable { .. } => StatusCode::CONFLICT,
                StorageError::UnknownDisk(_) | StorageError::NoPoolOf { .. } => {
                    StatusCode::NOT_FOUND
                }
                StorageError::Volume(v) => volume_status(v),
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
                | StorageError::Cache(_)
                | StorageError::Probe(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// The status of a volume or vdisk refusal or failure.
fn volume_status(e: &VolumeError) -> StatusCode {
    match e {
        VolumeError::ZeroSize { .. } | VolumeError::SnapshotSource { .. } => {
            StatusCode::BAD_REQUEST
        }
        VolumeError::OnlyGrows { .. }
        | VolumeError::OtherPool { .. }
        | VolumeError::UnknownPool { .. }
        | VolumeError::Unusable { .. }
        | VolumeError::OnUnusablePool { .. } => StatusCode::CONFLICT,
        // The pool ran out of space although the accounting said it fits.
        VolumeError::NoRoom { .. }
        | VolumeError::Sys {
            errno: nix::errno::Errno::ENOSPC,
            ..
        } => StatusCode::INSUFFICIENT_STORAGE,
        VolumeError::Tool { .. }
        | VolumeError::Io { .. }
        | VolumeError::Sys { .. }
        | VolumeError::SubvolumeId { .. }
        | VolumeError::TooLarge { .. }
        | VolumeError::NotASubvolume { .. }
        | VolumeError::NestedStuck { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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
        .route("/v1/volumes", get(volumes))
        .route(
            "/v1/volumes/{name}",
            object_routes(Kind::Volume, volume_view),
        )
        .route("/v1/vdisks", get(vdisks))
        .route("/v1/vdisks/{name}", object_routes(Kind::Vdisk, vdisk_view))
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

/// A request body, or a 400 naming the bad field.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(RequestError::Body)
}

fn parse_name(name: &str) -> Result<ResourceName, RequestError> {
    name.parse().map_err(RequestError::Name)
}

fn parse_pool(pool: &str) -> Result<PoolLabel, RequestError> {
    pool.parse().map_err(RequestError::Name)
}

async fn volumes(State(s): State<Shared>) -> Result<Json<Vec<VolumeView>>, RequestError> {
    with(s, |st| Ok(st.volumes())).await.map(Json)
}

async fn vdisks(State(s): State<Shared>) -> Result<Json<Vec<VdiskView>>, RequestError> {
    with(s, |st| Ok(st.vdisks())).await.map(Json)
}

/// `PUT` and `DELETE` of one volume or vdisk (`kind`), answered as
/// `view` shows it.
fn object_routes<V: Serialize + Send + 'static>(
    kind: Kind,
    view: fn(PoolLabel, Found, Option<String>) -> V,
) -> MethodRouter<Shared> {
    let ensure = move |State(s): State<Shared>, Path(name): Path<String>, body: Bytes| async move {
        let name = parse_name(&name)?;
        let req: ObjectRequest = parse(&body)?;
        let pool = parse_pool(&req.pool)?;
        with(s, move |st| {
            st.ensure(kind, &name, &pool, req.size, req.snapshot_of.as_deref())
        })
        .await
        .map(|(pool, found)| Json(view(pool, found, None)))
    };
    let remove = move |State(s): State<Shared>, Path(name): Path<String>| async move {
        let name = parse_name(&name)?;
        with(s, move |st| st.remove(kind, &name)).await.map(Json)
    };
    put(ensure).delete(remove)
}
