//! The uplink's API: `GET /v1/uplink` and `GET /v1/interfaces`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use grove_daemon::server::ApiError;

use super::{Interface, Uplink, UplinkReport};

pub fn routes(uplink: Arc<Uplink>) -> Router {
    Router::new()
        .route("/v1/uplink", get(report))
        .route("/v1/interfaces", get(interfaces))
        .with_state(uplink)
}

async fn report(State(uplink): State<Arc<Uplink>>) -> Json<UplinkReport> {
    Json(uplink.report())
}

async fn interfaces(State(uplink): State<Arc<Uplink>>) -> Result<Json<Vec<Interface>>, ApiError> {
    uplink
        .interfaces()
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
