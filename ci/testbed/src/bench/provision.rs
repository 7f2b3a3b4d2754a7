//! The provisioning benchmark: a deployment from the API call to all `ok`,
//! restoring 100 deployments, and how fast a refusal comes back.
//!
//! 1. A deployment of a network, a zmount and a volume through provisiond's
//!    socket, timed from the call to every workload `ok` (polled every
//!    2 ms), against the floor of the same storaged and netd calls made
//!    directly, one after the other, on the same node; each run removes
//!    what it made before the next.
//! 2. 100 deployments (a zmount and a volume each) on one node: the store's
//!    size on disk, and the time from the start of provisiond's new process
//!    (after a kill -9) to its API listing all 100 as `ok`. The engine then
//!    checks each deployment's objects in the background.
//! 3. Synchronous refusals (a bad signature, a deployment larger than the
//!    node): their p99 over 200 requests each.
//!
//! Limits: the API side includes the HTTP exchanges over the socket and
//! the polling; the restart time counts from the process start (to 10 ms),
//! not the supervisor's backoff before it.

use std::time::{Duration, Instant};

use provisiond::api::{DeploymentState, Submission};
use provisiond::client::ProvisiondClient;

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::provision::{self, WG_PRIVATE_KEY, disk, network};
use crate::spec::{Daemon, DiskSpec, FarmSpec, NodeSpec};
use crate::{Farm, Node, wait_until};

pub const DEPLOY_RATIO_TARGET: f64 = 1.3;
pub const RESTORE_TARGET: Duration = Duration::from_secs(2);
pub const REFUSAL_P99_TARGET: Duration = Duration::from_millis(10);

const NODE_ID: u32 = 1;
const TWIN: u32 = 21;
const MIB: u64 = 1 << 20;
const RESTORED: usize = 100;
const REFUSALS: usize = 200;
/// How long a deployment may take to be made or removed.
const MINUTE: Duration = Duration::from_secs(60);

/// Runs the three parts and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let farm = start()?;
    let node = farm.node(0);
    let rt = runtime()?;
    let (mut api, mut floor) = deploy(&rt, node, runs)?;
    let (store_bytes, restore) = restore(&rt, node)?;
    let (mut bad_signature, mut too_big) = refusals(&rt, node)?;

    let (api_median, api_p90) = summary(&mut api);
    let (floor_median, floor_p90) = summary(&mut floor);
    let ratio = ratio(api_median, floor_median);
    eprintln!("provision: network + zmount + volume, API call to all ok ({runs} runs)");
    eprintln!(
        "  API   median {:.1} ms  p90 {:.1} ms",
        ms(api_median),
        ms(api_p90)
    );
    eprintln!(
        "  floor median {:.1} ms  p90 {:.1} ms  (the same storaged and netd calls, direct)",
        ms(floor_median),
        ms(floor_p90)
    );
    eprintln!(
        "  ratio {ratio:.2} (target <= {DEPLOY_RATIO_TARGET}: {})",
        verdict(ratio <= DEPLOY_RATIO_TARGET)
    );
    eprintln!("provision: {RESTORED} deployments");
    eprintln!("  store on disk {:.1} MiB", store_bytes as f64 / MIB as f64);
    eprintln!(
        "  restart to all {RESTORED} restored {:.0} ms (target <= {} ms: {})",
        ms(restore),
        RESTORE_TARGET.as_millis(),
        verdict(restore <= RESTORE_TARGET)
    );
    eprintln!("provision: synchronous refusals ({REFUSALS} each)");
    for (what, samples) in [
        ("bad signature", &mut bad_signature),
        ("no capacity", &mut too_big),
    ] {
        samples.sort_unstable();
        let p99 = samples[(samples.len() - 1) * 99 / 100];
        eprintln!(
            "  {what}: p99 {:.2} ms (target <= {} ms: {})",
            ms(p99),
            REFUSAL_P99_TARGET.as_millis(),
            verdict(p99 <= REFUSAL_P99_TARGET)
        );
    }
    Ok(())
}

fn start() -> Result<Farm, BenchError> {
    let spec = NodeSpec::default()
        .disks(vec![DiskSpec::ssd(4096)])
        .config(Daemon::Netd, "[uplink]\nmanage = false\n")
        .config(Daemon::Provisiond, format!("node_id = {NODE_ID}\n"));
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]))?;
    super::all_answer(&farm, Daemon::Provisiond, "/v1/capacity")?;
    Ok(farm)
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Spawn)
}

fn api_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Api {
        what: what.to_owned(),
        status: 0,
        body: e.to_string(),
    }
}

/// Twin 21's signed deployment on `contract` and its submission.
fn submission(contract: u64, workloads: Vec<serde_json::Value>) -> Result<Submission, BenchError> {
    provision::signed(TWIN, contract, workloads)
        .and_then(|wire| provision::submission(NODE_ID, TWIN, &wire))
        .map_err(|e| api_error("signing", e))
}

/// Polls `contract` every 2 ms until it is in `state`, for up to `within`.
pub(super) fn wait_state(
    rt: &tokio::runtime::Runtime,
    client: &ProvisiondClient,
    contract: u64,
    state: DeploymentState,
    within: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + within;
    loop {
        let view = rt
            .block_on(client.deployment(contract))
            .map_err(|e| api_error("GET /v1/deployments/{id}", e))?;
        if view.state == state {
            return Ok(());
        }
        if matches!(view.state, DeploymentState::Error) || Instant::now() > deadline {
            return Err(api_error(
                &format!("deployment {contract}"),
                format!("never {state:?}: {view:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The deployment through the API against the same calls made directly.
fn deploy(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let client = ProvisiondClient::new(node.socket(Daemon::Provisiond)?);
    let storaged = storaged::client::StoragedClient::new(node.socket(Daemon::Storaged)?);
    let netd = netd::client::NetdClient::new(node.socket(Daemon::Netd)?);
    let pool = rt
        .block_on(storaged.pools())
        .map_err(|e| api_error("storaged pools", e))?
        .into_iter()
        .next()
        .map(|p| p.label.to_string())
        .ok_or_else(|| api_error("storaged pools", "the node has no pool"))?;
    let (mut api, mut floor) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let contract = 1000 + run as u64;
        let submission = submission(
            contract,
            vec![
                network("net", 210, 3500),
                disk("disk", "zmount", 100 * MIB),
                disk("data", "volume", 50 * MIB),
            ],
        )?;
        let started = Instant::now();
        rt.block_on(client.deploy(&submission))
            .map_err(|e| api_error("POST /v1/deployments", e))?;
        wait_state(rt, &client, contract, DeploymentState::Ok, MINUTE)?;
        api.push(started.elapsed());
        rt.block_on(client.remove(contract))
            .map_err(|e| api_error("DELETE /v1/deployments/{id}", e))?;
        wait_state(rt, &client, contract, DeploymentState::Deleted, MINUTE)?;

        let (vdisk, volume) = (format!("bench-{run}-disk"), format!("bench-{run}-data"));
        let request = netd::tenant::input::NetworkRequest {
            netid: format!("bench{run}"),
            ip_range: "10.210.0.0/16".into(),
            subnet: "10.210.1.0/24".into(),
            private_key: WG_PRIVATE_KEY.into(),
            listen_port: 3500,
            peers: vec![],
        };
        let on_pool = |size| storaged::volume::ObjectRequest {
            pool: pool.clone(),
            size,
            snapshot_of: None,
        };
        let started = Instant::now();
        rt.block_on(async {
            storaged.ensure_vdisk(&vdisk, &on_pool(100 * MIB)).await?;
            storaged.ensure_volume(&volume, &on_pool(50 * MIB)).await?;
            netd.create_network(&request).await.map(drop)
        })
        .map_err(|e| api_error("the direct calls", e))?;
        floor.push(started.elapsed());
        rt.block_on(async {
            netd.delete_network(&request.netid).await?;
            storaged.delete_volume(&volume).await?;
            storaged.delete_vdisk(&vdisk).await.map(drop)
        })
        .map_err(|e| api_error("the direct cleanup", e))?;
    }
    Ok((api, floor))
}

/// 100 deployments, then provisiond killed: the store's size, and the time
/// from its new process to all of them listed `ok`.
fn restore(rt: &tokio::runtime::Runtime, node: &Node) -> Result<(u64, Duration), BenchError> {
    let client = ProvisiondClient::new(node.socket(Daemon::Provisiond)?);
    for i in 0..RESTORED as u64 {
        let contract = 5000 + i;
        let submission = submission(
            contract,
            vec![disk("disk", "zmount", MIB), disk("data", "volume", MIB)],
        )?;
        rt.block_on(client.deploy(&submission))
            .map_err(|e| api_error("POST /v1/deployments", e))?;
    }
    for i in 0..RESTORED as u64 {
        wait_state(rt, &client, 5000 + i, DeploymentState::Ok, MINUTE)?;
    }
    let store_path = format!("{}/provisiond/deployments.redb", grove_daemon::CACHE_DIR);
    let store = node.exec(&["stat", "-c", "%s", &store_path])?;
    let store_bytes = String::from_utf8_lossy(&store.stdout)
        .trim()
        .parse::<u64>()
        .map_err(|e| api_error("the store's size", e))?;

    let new = node.restart_daemon(Daemon::Provisiond, Duration::from_secs(60))?;
    let born = started_at(new)?;
    let mut last = 0;
    let restored = wait_until(Duration::from_secs(60), Duration::from_millis(2), || {
        let Ok(views) = rt.block_on(client.deployments(Some(TWIN))) else {
            return false;
        };
        last = views
            .iter()
            .filter(|v| v.state == DeploymentState::Ok && v.contract_id >= 5000)
            .count();
        last == RESTORED
    });
    let took = since_boot()?.saturating_sub(born);
    if !restored {
        return Err(api_error(
            &format!("provisiond (pid {new}) after its restart"),
            format!("{last} of {RESTORED} deployments ok within a minute"),
        ));
    }
    Ok((store_bytes, took))
}

/// The time since boot, as `/proc/uptime` has it (to 10 ms).
fn since_boot() -> Result<Duration, BenchError> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|e| api_error("/proc/uptime", e))?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| api_error("/proc/uptime", text.clone()))
}

/// When process `pid` started, as time since boot: field 22 of its
/// `/proc/<pid>/stat`, in clock ticks.
fn started_at(pid: u32) -> Result<Duration, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| api_error(&path, e))?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .ok_or_else(|| api_error("sysconf(CLK_TCK)", "unknown"))?;
    // The fields after the command's closing parenthesis start at field 3.
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(22 - 3))
        .and_then(|f| f.parse::<u64>().ok())
        .map(|t| Duration::from_secs_f64(t as f64 / ticks as f64))
        .ok_or_else(|| api_error(&path, "no start time"))
}

/// 200 bad signatures and 200 deployments larger than the node, each timed.
fn refusals(
    rt: &tokio::runtime::Runtime,
    node: &Node,
) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let client = ProvisiondClient::new(node.socket(Daemon::Provisiond)?);
    let mut forged = submission(9000, vec![disk("disk", "zmount", MIB)])?;
    forged.twins[0].account_key = hex::encode(provision::key(7).verifying_key().to_bytes());
    let huge = submission(9001, vec![disk("disk", "zmount", 1 << 50)])?;
    let (mut bad, mut big) = (Vec::new(), Vec::new());
    for _ in 0..REFUSALS {
        for (submission, samples) in [(&forged, &mut bad), (&huge, &mut big)] {
            let started = Instant::now();
            let answer = rt.block_on(client.deploy(submission));
            samples.push(started.elapsed());
            if answer.is_ok() {
                return Err(api_error(
                    "a deployment that must be refused",
                    "it was admitted",
                ));
            }
        }
    }
    Ok((bad, big))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_deployments_parse_and_verify() {
        let s = submission(1, vec![network("net", 210, 3500), disk("d", "zmount", MIB)])
            .expect("signs and parses");
        let d = provisiond::deployment::Deployment::parse(s.deployment.as_bytes()).expect("parses");
        assert_eq!(s.contract.expect("facts").deployment_hash, d.hash().hex());
        assert_eq!(d.workloads.len(), 2);
    }
}
