//! The mesh's socket API: `GET /v1/mesh`, `PUT /v1/mesh`,
//! `PUT /v1/mesh/peers`.
//!
//! Bodies are parsed by hand from bytes so a bad request gets a JSON error
//! naming the bad field, and every [`MeshError`] maps to a status in one
//! exhaustive match. Limits: the `PUT`s answer what changed, not the whole
//! view (that would cost a device read per change); `GET` gives the view.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use grove_daemon::server::ApiError;

use super::input::{self, MeshRequest, PeerRequest};
use super::view::{Applied, MeshView};
use super::{Mesh, MeshError};

impl IntoResponse for MeshError {
    fn into_response(self) -> Response {
        let status = match &self {
            MeshError::Input(_) => StatusCode::BAD_REQUEST,
            MeshError::NotConfigured => StatusCode::CONFLICT,
            MeshError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::Boringtun(_)
            | MeshError::Device(_)
            | MeshError::Netlink(_)
            | MeshError::Sysctl(_)
            | MeshError::State(_)
            | MeshError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::answer(status, &self, "mesh request")
    }
}

/// The mesh's routes.
pub fn routes(mesh: Mesh) -> Router {
    Router::new()
        .route("/v1/mesh", get(show).put(configure))
        .route("/v1/mesh/peers", put(set_peers))
        .with_state(mesh)
}

async fn show(State(mesh): State<Mesh>) -> Result<Json<MeshView>, MeshError> {
    mesh.show().await.map(Json)
}

async fn configure(State(mesh): State<Mesh>, body: Bytes) -> Result<Json<Applied>, MeshError> {
    let request: MeshRequest = input::body(&body)?;
    let settings = input::parse_mesh(&request)?;
    mesh.configure(settings).await.map(Json)
}

async fn set_peers(State(mesh): State<Mesh>, body: Bytes) -> Result<Json<Applied>, MeshError> {
    let peers: Vec<PeerRequest> = input::body(&body)?;
    mesh.set_peers(peers).await.map(Json)
}
