//! The tenant networks' socket API: `POST`/`GET /v1/networks`,
//! `GET`/`DELETE /v1/networks/{netid}`, `POST /v1/networks/{netid}/attach`
//! and `DELETE /v1/networks/{netid}/attach/{name}`.
//!
//! Bodies are parsed by hand from bytes so a bad request gets a JSON error
//! naming the bad field, and every [`TenantError`] maps to a status in one
//! exhaustive match: the request's own mistakes are 400, collisions with
//! what the node already has are 409, unknown names 404. Limits: peers
//! cannot be changed in place yet; a network is deleted and made again.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::{Deserialize, Serialize};

use super::input::{self, AttachRequest, InputError, NetworkRequest};
use super::names::{NetId, WorkloadName};
use super::view::{AttachmentView, NetworkView};
use super::{TenantError, Tenants};

impl IntoResponse for TenantError {
    fn into_response(self) -> Response {
        let status = match &self {
            TenantError::Input(_) => StatusCode::BAD_REQUEST,
            TenantError::Address { .. } => StatusCode::CONFLICT,
            TenantError::Exists { .. }
            | TenantError::Overlap { .. }
            | TenantError::PortTaken { .. }
            | TenantError::PortInUse { .. }
            | TenantError::InUse { .. }
            | TenantError::SlotsFull
            | TenantError::Attached { .. }
            | TenantError::SubnetFull { .. } => StatusCode::CONFLICT,
            TenantError::NotFound { .. } | TenantError::NotAttached { .. } => StatusCode::NOT_FOUND,
            TenantError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            TenantError::Boringtun(_)
            | TenantError::Device(_)
            | TenantError::Netns(_)
            | TenantError::Netlink(_)
            | TenantError::Firewall(_)
            | TenantError::Sysctl(_)
            | TenantError::Tap(_)
            | TenantError::State(_)
            | TenantError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::answer(status, &self, "tenant network request")
    }
}

/// What `DELETE` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: String,
}

/// The tenant networks' routes.
pub fn routes(tenants: Tenants) -> Router {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route("/v1/networks/{netid}", get(show).delete(remove))
        .route("/v1/networks/{netid}/attach", post(attach))
        .route("/v1/networks/{netid}/attach/{name}", delete(detach))
        .with_state(tenants)
}

fn netid(text: &str) -> Result<NetId, TenantError> {
    Ok(text.parse().map_err(InputError::Name)?)
}

async fn create(
    State(tenants): State<Tenants>,
    body: Bytes,
) -> Result<(StatusCode, Json<NetworkView>), TenantError> {
    let request: NetworkRequest = input::body(&body)?;
    let spec = input::parse_network(&request)?;
    let view = tenants.create(spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list(State(tenants): State<Tenants>) -> Result<Json<Vec<NetworkView>>, TenantError> {
    tenants.list().await.map(Json)
}

async fn show(
    State(tenants): State<Tenants>,
    Path(id): Path<String>,
) -> Result<Json<NetworkView>, TenantError> {
    tenants.show(netid(&id)?).await.map(Json)
}

async fn remove(
    State(tenants): State<Tenants>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, TenantError> {
    let id = netid(&id)?;
    tenants.delete(id.clone()).await?;
    Ok(Json(Deleted {
        deleted: id.to_string(),
    }))
}

async fn attach(
    State(tenants): State<Tenants>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<AttachmentView>), TenantError> {
    let id = netid(&id)?;
    let request: AttachRequest = input::body(&body)?;
    let attach = input::parse_attach(&request)?;
    let view = tenants.attach(id, attach).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn detach(
    State(tenants): State<Tenants>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Deleted>, TenantError> {
    let id = netid(&id)?;
    let name: WorkloadName = name.parse().map_err(InputError::Name)?;
    tenants.detach(id, name.clone()).await?;
    Ok(Json(Deleted {
        deleted: name.to_string(),
    }))
}
