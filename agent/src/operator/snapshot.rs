//! What the daemons last said, refreshed in the background.
//!
//! `/v1/status`, `/v1/capacity` and `/metrics` read this snapshot instead
//! of asking storaged and netd on every request, so an operator's dashboard
//! or a Prometheus scrape costs the node no socket round trips and answers
//! in microseconds; the facts are at most [`REFRESH`] old.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use netd::uplink::UplinkReport;
use storaged::storage::Capacity;

use crate::hostinfo::HostInfo;

/// How often the snapshot is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The last answers, or why there is none.
#[derive(Debug, Clone)]
pub struct Facts {
    pub capacity: Result<Capacity, String>,
    pub uplink: Result<UplinkReport, String>,
    pub host: HostInfo,
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            capacity: Err("storaged not asked yet".to_owned()),
            uplink: Err("netd not asked yet".to_owned()),
            host: HostInfo::default(),
        }
    }
}

/// The shared snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    facts: RwLock<Arc<Facts>>,
}

impl Snapshot {
    pub fn get(&self) -> Arc<Facts> {
        self.facts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refreshes the snapshot every [`REFRESH`] for as long as it runs.
    pub async fn refresh_forever(
        self: Arc<Self>,
        storaged: storaged::client::StoragedClient,
        netd: netd::client::NetdClient,
        proc_root: std::path::PathBuf,
    ) {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            let root = proc_root.clone();
            let host = tokio::task::spawn_blocking(move || HostInfo::read(&root));
            let (capacity, uplink, host) = tokio::join!(storaged.capacity(), netd.uplink(), host);
            let facts = Facts {
                capacity: capacity.map_err(|e| e.to_string()),
                uplink: uplink.map_err(|e| e.to_string()),
                host: host.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading host facts failed");
                    HostInfo::default()
                }),
            };
            *self.facts.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(facts);
        }
    }
}
