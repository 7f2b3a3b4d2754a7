//! The embedded registry: TFChain's data model on one machine, for a
//! farm's first steps, the sandbox and the tests. It is not a chain: one
//! process, one JSON state file, no consensus, no fees, no signatures on
//! requests. `agent registry --listen ADDR --state FILE` runs it; one
//! instance serves a whole farm over HTTP.
//!
//! Every change is written to the state file atomically before it is
//! answered, so a crash loses nothing that was acknowledged. Twins are
//! keyed by account and nodes by twin, so registering twice updates rather
//! than duplicates; an uptime report whose sequence number was already
//! recorded is acknowledged and not stored again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use grove_daemon::server::ApiError;
use serde::{Deserialize, Serialize};

use super::model::{Farm, MeshInfo, Node, NodeRegistration, Twin, UptimeReport};

/// Why the registry refused a request or could not keep its state.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no farm with id {0}")]
    NoFarm(u32),
    #[error("no twin with id {0}")]
    NoTwin(u32),
    #[error("no node with id {0}")]
    NoNode(u32),
    #[error("bad request: {0}")]
    Bad(String),
    #[error("cannot read the registry state {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Save(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot encode the registry state: {0}")]
    Encode(#[source] serde_json::Error),
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = match &self {
            RegistryError::NoFarm(_) | RegistryError::NoTwin(_) | RegistryError::NoNode(_) => {
                StatusCode::NOT_FOUND
            }
            RegistryError::Bad(_) => StatusCode::BAD_REQUEST,
            RegistryError::Load { .. } | RegistryError::Save(_) | RegistryError::Encode(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// Everything the registry holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    pub twins: BTreeMap<u32, Twin>,
    pub farms: BTreeMap<u32, Farm>,
    pub nodes: BTreeMap<u32, Node>,
    pub uptime: BTreeMap<u32, Vec<UptimeReport>>,
}

/// The registry with its state file.
#[derive(Debug)]
pub struct Embedded {
    path: PathBuf,
    state: Mutex<RegistryState>,
}

fn now() -> u64 {
    crate::clock::unix_ms() / 1000
}

impl Embedded {
    /// Opens the state at `path`, empty if the file does not exist yet.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Load {
                path: path.to_owned(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryState::default(),
            Err(e) => {
                return Err(RegistryError::Load {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(state),
        })
    }

    /// Applies `change` and saves; nothing changes if saving fails.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut RegistryState) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.clone();
        let out = change(&mut next)?;
        if next != *guard {
            let bytes = serde_json::to_vec(&next).map_err(RegistryError::Encode)?;
            grove_daemon::fsutil::write_atomic(&self.path, &bytes, 0o644)?;
            *guard = next;
        }
        Ok(out)
    }

    pub fn snapshot(&self) -> RegistryState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ensure_twin(&self, account: &str, relay: Option<String>) -> Result<Twin, RegistryError> {
        if account.is_empty() {
            return Err(RegistryError::Bad("account is empty".into()));
        }
        self.change(|s| {
            if let Some(t) = s.twins.values().find(|t| t.account == account) {
                return Ok(t.clone());
            }
            let id = s.twins.keys().next_back().map_or(1, |k| k + 1);
            let twin = Twin {
                id,
                account: account.to_owned(),
                relay,
            };
            s.twins.insert(id, twin.clone());
            Ok(twin)
        })
    }

    pub fn create_farm(&self, name: &str, twin_id: u32) -> Result<Farm, RegistryError> {
        self.change(|s| {
            if !s.twins.contains_key(&twin_id) {
                return Err(RegistryError::NoTwin(twin_id));
            }
            if let Some(f) = s.farms.values().find(|f| f.name == name) {
                return Ok(f.clone());
            }
            let id = s.farms.keys().next_back().map_or(1, |k| k + 1);
            let farm = Farm {
                id,
                name: name.to_owned(),
                twin_id,
            };
            s.farms.insert(id, farm.clone());
            Ok(farm)
        })
    }

    /// Creates the node of `registration.twin_id`, or updates it.
    pub fn register_node(
        &self,
        registration: NodeRegistration,
        mesh: Option<MeshInfo>,
    ) -> Result<Node, RegistryError> {
        self.change(|s| {
            if !s.farms.contains_key(&registration.farm_id) {
                return Err(RegistryError::NoFarm(registration.farm_id));
            }
            if !s.twins.contains_key(&registration.twin_id) {
                return Err(RegistryError::NoTwin(registration.twin_id));
            }
            let existing = s
                .nodes
                .values()
                .find(|n| n.registration.twin_id == registration.twin_id)
                .map(|n| n.id);
            let id = existing.unwrap_or_else(|| s.nodes.keys().next_back().map_or(1, |k| k + 1));
            let created_at = s.nodes.get(&id).map_or_else(now, |n| n.created_at);
            let node = Node {
                id,
                registration,
                mesh,
                created_at,
                updated_at: now(),
            };
            if s.nodes.get(&id).map(|n| (&n.registration, &n.mesh))
                != Some((&node.registration, &node.mesh))
            {
                s.nodes.insert(id, node);
            }
            s.nodes.get(&id).cloned().ok_or(RegistryError::NoNode(id))
        })
    }

    /// Records an uptime report; a sequence number already seen is a no-op.
    pub fn report_uptime(&self, node: u32, report: UptimeReport) -> Result<bool, RegistryError> {
        self.change(|s| {
            if !s.nodes.contains_key(&node) {
                return Err(RegistryError::NoNode(node));
            }
            let reports = s.uptime.entry(node).or_default();
            if reports.last().is_some_and(|r| r.seq >= report.seq) {
                return Ok(false);
            }
            reports.push(report);
            Ok(true)
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwinRequest {
    account: String,
    relay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FarmRequest {
    name: String,
    twin_id: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    #[serde(flatten)]
    pub registration: NodeRegistration,
    pub mesh: Option<MeshInfo>,
}

#[derive(Debug, Deserialize)]
struct NodeQuery {
    farm_id: Option<u32>,
    twin_id: Option<u32>,
}

type Shared = Arc<Embedded>;

fn blocking<T>(r: Result<T, RegistryError>) -> Result<Json<T>, RegistryError> {
    r.map(Json)
}

pub fn routes(registry: Shared) -> Router {
    Router::new()
        .route(
            "/v1/twins",
            post(
                |State(r): State<Shared>, Json(t): Json<TwinRequest>| async move {
                    blocking(r.ensure_twin(&t.account, t.relay))
                },
            ),
        )
        .route(
            "/v1/twins/{id}",
            get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    r.snapshot()
                        .twins
                        .get(&id)
                        .cloned()
                        .map(Json)
                        .ok_or(RegistryError::NoTwin(id))
                },
            ),
        )
        .route(
            "/v1/farms",
            post(
                |State(r): State<Shared>, Json(f): Json<FarmRequest>| async move {
                    blocking(r.create_farm(&f.name, f.twin_id))
                },
            ),
        )
        .route(
            "/v1/farms/{id}",
            get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    r.snapshot()
                        .farms
                        .get(&id)
                        .cloned()
                        .map(Json)
                        .ok_or(RegistryError::NoFarm(id))
                },
            ),
        )
        .route(
            "/v1/nodes",
            post(
                |State(r): State<Shared>, Json(n): Json<NodeRequest>| async move {
                    blocking(r.register_node(n.registration, n.mesh))
                },
            )
            .get(
                |State(r): State<Shared>, Query(q): Query<NodeQuery>| async move {
                    let nodes: Vec<Node> = r
                        .snapshot()
                        .nodes
                        .into_values()
                        .filter(|n| q.farm_id.is_none_or(|f| n.registration.farm_id == f))
                        .filter(|n| q.twin_id.is_none_or(|t| n.registration.twin_id == t))
                        .collect();
                    Json(nodes)
                },
            ),
        )
        .route(
            "/v1/nodes/{id}",
            get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    r.snapshot()
                        .nodes
                        .get(&id)
                        .cloned()
                        .map(Json)
                        .ok_or(RegistryError::NoNode(id))
                },
            ),
        )
        .route(
            "/v1/nodes/{id}/uptime",
            post(
                |State(r): State<Shared>,
                 UrlPath(id): UrlPath<u32>,
                 Json(u): Json<UptimeReport>| async move {
                    blocking(r.report_uptime(id, u))
                },
            )
            .get(
                |State(r): State<Shared>, UrlPath(id): UrlPath<u32>| async move {
                    Json(r.snapshot().uptime.get(&id).cloned().unwrap_or_default())
                },
            ),
        )
        .with_state(registry)
}

/// Serves the registry on `listen` until `shutdown` trips.
pub async fn serve(
    state: &Path,
    listen: SocketAddr,
    farms: &[String],
    farmer: Option<&str>,
    shutdown: grove_daemon::shutdown::Shutdown,
) -> Result<(), ServeError> {
    let registry = Arc::new(Embedded::open(state)?);
    for (i, name) in farms.iter().enumerate() {
        let account = farmer.map_or_else(|| format!("farmer-{}", i + 1), str::to_owned);
        let owner = registry.ensure_twin(&account, None)?;
        let farm = registry.create_farm(name, owner.id)?;
        tracing::info!(farm = farm.id, name = %farm.name, "farm ready");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, state = %state.display(), "embedded registry serving");
    axum::serve(listener, routes(registry))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })
}

/// Why the registry could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot serve on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl grove_daemon::cli::Failure for ServeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::Resources;

    fn registration(farm_id: u32, twin_id: u32) -> NodeRegistration {
        NodeRegistration {
            farm_id,
            twin_id,
            resources: Resources {
                hru: 1,
                sru: 2,
                cru: 3,
                mru: 4,
            },
            interfaces: vec![],
            serial_number: "S1".into(),
            virtualized: true,
            secure_boot: false,
        }
    }

    #[test]
    fn registering_twice_updates_and_state_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.json");
        let r = Embedded::open(&path).expect("open");
        let farmer = r.ensure_twin("5Farmer", None).expect("twin");
        let farm = r.create_farm("farm-one", farmer.id).expect("farm");
        let twin = r.ensure_twin("5Node", None).expect("twin");
        assert_eq!(r.ensure_twin("5Node", None).expect("again").id, twin.id);
        let node = r
            .register_node(registration(farm.id, twin.id), None)
            .expect("node");
        let mut changed = registration(farm.id, twin.id);
        changed.resources.sru = 99;
        let again = r.register_node(changed, None).expect("update");
        assert_eq!(again.id, node.id);
        assert_eq!(again.registration.resources.sru, 99);
        assert!(
            r.report_uptime(
                node.id,
                UptimeReport {
                    seq: 1,
                    uptime: 10,
                    timestamp: 100
                }
            )
            .expect("up")
        );
        assert!(
            !r.report_uptime(
                node.id,
                UptimeReport {
                    seq: 1,
                    uptime: 10,
                    timestamp: 100
                }
            )
            .expect("dup")
        );
        drop(r);
        let reopened = Embedded::open(&path).expect("reopen");
        let s = reopened.snapshot();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.uptime[&node.id].len(), 1);
    }

    #[test]
    fn unknown_farms_and_twins_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Embedded::open(&dir.path().join("registry.json")).expect("open");
        let twin = r.ensure_twin("5Node", None).expect("twin");
        let before = r.snapshot();
        let err = r
            .register_node(registration(7, twin.id), None)
            .expect_err("no farm 7");
        assert!(err.to_string().contains("farm with id 7"), "{err}");
        assert!(matches!(
            r.create_farm("x", 42),
            Err(RegistryError::NoTwin(42))
        ));
        assert!(matches!(
            r.report_uptime(
                5,
                UptimeReport {
                    seq: 1,
                    uptime: 1,
                    timestamp: 1
                }
            ),
            Err(RegistryError::NoNode(5))
        ));
        assert_eq!(r.snapshot(), before);
    }
}
