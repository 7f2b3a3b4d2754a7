//! A deployment as the API shows it: the client's JSON with the node's
//! results filled in and every secret blanked.
//!
//! The secrets a deployment can hold are a network's WireGuard private key
//! and mycelium key, and a zdb's password; each is replaced by an empty
//! string, so no answer ever carries one.

use serde_json::Value;

use super::{Entry, Job};
use crate::api::{DeploymentView, Failure};
use crate::deployment::workload::WorkloadType;
use crate::store::WorkloadState;

/// Blanks the secrets in one workload's `data`.
pub(super) fn redact(kind: Option<WorkloadType>, data: &mut Value) {
    let blank = |v: Option<&mut Value>| {
        if let Some(v) = v {
            *v = Value::String(String::new());
        }
    };
    match kind {
        Some(WorkloadType::Network) => {
            blank(data.get_mut("wireguard_private_key"));
            blank(data.get_mut("mycelium").and_then(|m| m.get_mut("hex_key")));
        }
        Some(WorkloadType::Zdb) => blank(data.get_mut("password")),
        _ => {}
    }
}

/// How a workload's object lives now, from its driver (type and name in).
pub(super) type Live<'a> = &'a dyn Fn(WorkloadType, &str) -> Option<Value>;

pub(super) fn deployment(entry: &Entry, live: Live<'_>) -> DeploymentView {
    let (record, shown) = match (&entry.engine.job, &entry.target) {
        (Some(Job::Apply { target, .. }), Some(d)) => (target, d),
        _ => (&entry.record, &entry.deployment),
    };
    // The wire text parsed when it was admitted, so it is JSON.
    let mut json: Value = serde_json::from_str(&record.wire).unwrap_or(Value::Null);
    if let Some(workloads) = json.get_mut("workloads").and_then(Value::as_array_mut) {
        for w in workloads {
            let name = w["name"].as_str().unwrap_or_default().to_owned();
            let kind = shown.workload(&name).map(|w| w.kind);
            if let Some(data) = w.get_mut("data") {
                redact(kind, data);
            }
            let result = entry.results.get(&name).map_or_else(
                || {
                    serde_json::json!({
                        "created": 0, "state": WorkloadState::Init,
                        "message": "", "data": Value::Null
                    })
                },
                |r| serde_json::to_value(r).unwrap_or(Value::Null),
            );
            w["result"] = result;
            if let Some(now) = kind.and_then(|k| live(k, &name))
                && w["result"]["data"].is_object()
            {
                w["result"]["data"]["live"] = now;
            }
        }
    }
    let failure: Option<Failure> =
        entry
            .engine
            .failure
            .clone()
            .or_else(|| match &entry.engine.job {
                Some(Job::RollBack { failure, .. }) => Some(failure.clone()),
                _ => None,
            });
    DeploymentView {
        contract_id: record.contract_id,
        twin_id: record.twin_id,
        version: shown.version,
        state: entry.engine.state,
        failure,
        deployment: json,
    }
}
