//! The compute benchmark: a container and a machine, image cached, from
//! provisiond's API call to running, against the floors issue 13 names.
//!
//! 1. Container: a deployment of one busybox container on a tenant network
//!    that exists, from the call to the deployment `ok` (runc has started
//!    the process), polled every 2 ms. The floor is `runc run --detach` of
//!    the same bundle (its config.json, under another id and cgroup),
//!    timed inside the node by a shell script.
//! 2. Machine: a direct-boot zmachine (the test image of
//!    `oci::machine_layer`, TCG), from the call to its address answering
//!    ping from the tenant network. The floor is the same QEMU command line
//!    (`launch.json`) started by hand in the same namespace, with a tap, a
//!    sparse copy of the root disk and an address of its own, to the same
//!    ping, while provisiond's machine idles beside it.
//!
//! The first run of each warms the image cache and is not counted; a
//! container that stays through the container runs keeps its image there.
//! Limits:
//! the API side includes the HTTP exchanges over the socket and the
//! polling; the machine's floor makes its tap before the clock starts,
//! where provisiond's time includes netd making it.

use std::time::{Duration, Instant};

use provisiond::api::DeploymentState;
use provisiond::client::ProvisiondClient;
use serde_json::json;

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::oci;
use crate::provision::{self, network};
use crate::{Daemon, Node};

pub const CONTAINER_RATIO_TARGET: f64 = 1.5;
pub const MACHINE_RATIO_TARGET: f64 = 1.2;

const NODE_ID: u32 = 1;
const TWIN: u32 = 51;
const MIB: u64 = 1 << 20;
/// How long a deployment may take to be made or removed (a machine
/// boots under TCG).
const WITHIN: Duration = Duration::from_secs(180);
/// provisiond's directory of `what` (`machines`, `containers`) on a node.
fn provisiond_dir(what: &str) -> String {
    format!("{}/provisiond/{what}", grove_daemon::CACHE_DIR)
}

fn api_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Api {
        what: what.to_owned(),
        status: 0,
        body: e.to_string(),
    }
}

fn exec(node: &Node, argv: &[&str]) -> Result<String, BenchError> {
    let (ok, out) = node.exec_text(argv).map_err(|e| api_error(argv[0], e))?;
    if ok {
        Ok(out)
    } else {
        Err(api_error(&argv.join(" "), out))
    }
}

fn deploy(
    rt: &tokio::runtime::Runtime,
    client: &ProvisiondClient,
    contract: u64,
    workloads: Vec<serde_json::Value>,
    state: DeploymentState,
) -> Result<Duration, BenchError> {
    let wire = provision::signed(TWIN, contract, workloads).map_err(|e| api_error("sign", e))?;
    let submission =
        provision::submission(NODE_ID, TWIN, &wire).map_err(|e| api_error("submission", e))?;
    let started = Instant::now();
    rt.block_on(client.deploy(&submission))
        .map_err(|e| api_error("POST /v1/deployments", e))?;
    super::provision::wait_state(rt, client, contract, state, WITHIN)?;
    Ok(started.elapsed())
}

fn remove(
    rt: &tokio::runtime::Runtime,
    client: &ProvisiondClient,
    contract: u64,
) -> Result<(), BenchError> {
    rt.block_on(client.remove(contract))
        .map_err(|e| api_error("DELETE /v1/deployments/{id}", e))?;
    super::provision::wait_state(rt, client, contract, DeploymentState::Deleted, WITHIN)
}

/// Nanoseconds a shell `script` run inside the node prints.
fn timed(node: &Node, script: &str) -> Result<Duration, BenchError> {
    let out = exec(node, &["sh", "-c", script])?;
    let ns: u64 = out
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| api_error("a timed script", out.clone()))?;
    Ok(Duration::from_nanos(ns))
}

/// A shell command that returns when `ip` first answers a ping from
/// `netns`: a probe of at most 100 ms every 50 ms, for up to 3 minutes.
/// (One `ping` cannot do it: an unreachable error ends it.)
fn reach(netns: &str, ip: &str) -> String {
    format!(
        "end=$(($(date +%s) + 180)); \
         until ip netns exec {netns} ping -n -c 1 -W 0.1 {ip} >/dev/null 2>&1; do \
         [ $(date +%s) -lt $end ] || exit 1; sleep 0.05; done"
    )
}

/// Runs every part and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    super::pull::run(runs)?;
    let (farm, registry) =
        provision::start_with_registry(NODE_ID, 8192, "accel = \"tcg\"\nmachine_stop_grace = 3\n")
            .map_err(|e| api_error("the farm", e))?;
    let node = farm.node(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Spawn)?;
    let client = ProvisiondClient::new(node.socket(Daemon::Provisiond)?);
    let busybox = oci::busybox_layer().map_err(|e| api_error("busybox layer", e))?;
    let container_image =
        provision::push_layer(&registry, "bench/busybox", busybox, provision::httpd())
            .map_err(|e| api_error("push", e))?;
    let machine_layer = oci::machine_layer().map_err(|e| api_error("machine layer", e))?;
    let machine_image = provision::push_layer(&registry, "bench/machine", machine_layer, json!({}))
        .map_err(|e| api_error("push", e))?;
    deploy(
        &rt,
        &client,
        1,
        vec![network("net", 214, 3514)],
        DeploymentState::Ok,
    )?;
    let tenant_ns = format!("n-{}", provisiond::driver::netid(TWIN, "net"));

    // Containers. A container that stays keeps the image in the cache
    // (an image no workload uses is collected).
    let container = |name: &str, ip: &str| {
        json!({"version": 0, "name": name, "type": "container",
            "metadata": "", "description": "", "data": {
                "image": container_image.reference,
                "interface": {"network": "net", "ip": ip},
                "compute_capacity": {"cpu": 1, "memory": 64 * MIB},
                "size": 64 * MIB, "mounts": [], "entrypoint": [], "env": {}}})
    };
    deploy(
        &rt,
        &client,
        99,
        vec![container("holder", "10.214.1.4")],
        DeploymentState::Ok,
    )?;
    let (mut api, mut floor) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let contract = 100 + run as u64;
        let took = deploy(
            &rt,
            &client,
            contract,
            vec![container("app", "10.214.1.5")],
            DeploymentState::Ok,
        )?;
        let id = provisiond::driver::container::container_id(contract, "app");
        let floor_id = format!("f-{run}");
        let containers = provisiond_dir("containers");
        let script = format!(
            "set -e; b=/tmp/bench-{floor_id}; mkdir -p $b; \
             sed -e 's#\"/grove/{id}\"#\"/grove/{floor_id}\"#' {containers}/{id}/config.json > $b/config.json; \
             s=$(date +%s%N); runc run --detach --bundle $b {floor_id} </dev/null >/dev/null 2>&1; \
             e=$(date +%s%N); runc delete --force {floor_id} >/dev/null 2>&1; rm -rf $b; echo $((e-s))"
        );
        let direct = timed(node, &script)?;
        remove(&rt, &client, contract)?;
        if run > 0 {
            api.push(took);
            floor.push(direct);
        }
    }
    idle_containers(&rt, &client, &container)?;
    report(
        "container, image cached: API call to the process running",
        "runc run --detach of the same bundle",
        &mut api,
        &mut floor,
        CONTAINER_RATIO_TARGET,
    );

    // Machines.
    let (mut api, mut floor) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let contract = 200 + run as u64;
        let ip = "10.214.1.20";
        let vm = provision::zmachine("vm", &machine_image.reference, ip, 256 * MIB, json!([]));
        let wire = provision::signed(TWIN, contract, vec![vm]).map_err(|e| api_error("sign", e))?;
        let submission =
            provision::submission(NODE_ID, TWIN, &wire).map_err(|e| api_error("submission", e))?;
        let started = Instant::now();
        rt.block_on(client.deploy(&submission))
            .map_err(|e| api_error("POST /v1/deployments", e))?;
        exec(node, &["sh", "-c", &reach(&tenant_ns, ip)])?;
        let took = started.elapsed();
        super::provision::wait_state(&rt, &client, contract, DeploymentState::Ok, WITHIN)?;

        // The same launch by hand: its own tap, disk copy, pid and address.
        let id = provisiond::driver::machine::machine_id(contract, "vm");
        let dir = format!("{}/{id}", provisiond_dir("machines"));
        let launch: serde_json::Value =
            serde_json::from_str(&exec(node, &["cat", &format!("{dir}/launch.json")])?)
                .map_err(|e| api_error("launch.json", e))?;
        let root = launch["args"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .find_map(|s| s.strip_prefix("file=")?.split(',').next())
            })
            .ok_or_else(|| api_error("launch.json", "no root disk"))?
            .to_owned();
        let floor_dir = format!("/tmp/bench-vm-{run}");
        // The copy sits on the root disk's own pool.
        let pool_root = std::path::Path::new(&root)
            .parent()
            .and_then(std::path::Path::parent)
            .ok_or_else(|| api_error("launch.json", "a root disk outside a pool"))?
            .display()
            .to_string();
        let floor_root = format!("{pool_root}/bench-floor-{run}");
        let floor_ip = "10.214.1.21";
        let args: Vec<String> = launch["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(|a| {
                a.replace(&dir, &floor_dir)
                    .replace(&root, &floor_root)
                    .replace(&format!("t-{id}"), "t-bench-floor")
                    .replace(&format!("ip={ip}:"), &format!("ip={floor_ip}:"))
                    .replace(&id, "bench-floor")
            })
            .map(|a| {
                if a.starts_with("virtio-net-pci") {
                    "virtio-net-pci,netdev=net0,mac=02:00:00:00:be:01".to_owned()
                } else {
                    a
                }
            })
            .map(|a| format!("'{a}'"))
            .collect();
        let bridge = exec(
            node,
            &[
                "sh",
                "-c",
                &format!(
                    "ip -n {tenant_ns} -o link show t-{id} | sed -n 's/.* master \\([^ ]*\\) .*/\\1/p'"
                ),
            ],
        )?;
        let script = format!(
            "set -e; mkdir -p {floor_dir}; cp --sparse=always {root} {floor_root}; \
             ip -n {tenant_ns} tuntap add t-bench-floor mode tap; \
             ip -n {tenant_ns} link set t-bench-floor master {bridge} up; \
             s=$(date +%s%N); \
             ip netns exec {tenant_ns} qemu-system-x86_64 {args}; \
             {reach_floor}; \
             e=$(date +%s%N); \
             kill -9 $(cat {floor_dir}/pid); sleep 0.2; \
             ip -n {tenant_ns} link del t-bench-floor; rm -rf {floor_dir} {floor_root}; echo $((e-s))",
            bridge = bridge.trim(),
            reach_floor = reach(&tenant_ns, floor_ip),
            args = args.join(" "),
        );
        let direct = timed(node, &script)?;
        if run == runs {
            idle_machine(node, &id, 256 * MIB)?;
        }
        remove(&rt, &client, contract)?;
        if run > 0 {
            api.push(took);
            floor.push(direct);
        }
    }
    report(
        "machine, image cached: API call to its address answering ping",
        "the same QEMU command line started by hand",
        &mut api,
        &mut floor,
        MACHINE_RATIO_TARGET,
    );
    Ok(())
}

/// Bytes of memory in use on the host (the nodes share its kernel):
/// `MemTotal - MemAvailable`, after the page cache is dropped so that
/// only what is held counts.
fn memory_in_use() -> Result<u64, BenchError> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(BenchError::Spawn)?;
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string("/proc/meminfo").map_err(BenchError::Spawn)?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix(" kB")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    Ok(field("MemTotal:").saturating_sub(field("MemAvailable:")))
}

/// The memory container `id`'s cgroup charges to it.
fn cgroup_memory(id: &str) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/grove/{id}/memory.usage_in_bytes"
    ))
    .ok()
    .and_then(|t| t.trim().parse().ok())
    .unwrap_or(0)
}

const IDLE_CONTAINERS: u64 = 10;

/// The memory the node spends per idle container beyond the container's
/// own: the host's memory in use grows by `IDLE_CONTAINERS` of them, less
/// what their cgroups charge to them.
fn idle_containers(
    rt: &tokio::runtime::Runtime,
    client: &ProvisiondClient,
    container: &dyn Fn(&str, &str) -> serde_json::Value,
) -> Result<(), BenchError> {
    let contract = 300;
    let workloads: Vec<serde_json::Value> = (0..IDLE_CONTAINERS)
        .map(|i| container(&format!("idle{i}"), &format!("10.214.1.{}", 30 + i)))
        .collect();
    let before = memory_in_use()?;
    deploy(rt, client, contract, workloads, DeploymentState::Ok)?;
    std::thread::sleep(Duration::from_secs(2));
    let after = memory_in_use()?;
    let own: u64 = (0..IDLE_CONTAINERS)
        .map(|i| {
            cgroup_memory(&provisiond::driver::container::container_id(
                contract,
                &format!("idle{i}"),
            ))
        })
        .sum();
    remove(rt, client, contract)?;
    let grown = after.saturating_sub(before);
    eprintln!(
        "compute: {IDLE_CONTAINERS} idle containers: the host's memory in use grew {:.1} MiB, \
         their cgroups hold {:.1} MiB: {:.2} MiB per container beyond its own \
         (the ledger holds {:.0} MiB)",
        grown as f64 / MIB as f64,
        own as f64 / MIB as f64,
        grown.saturating_sub(own) as f64 / MIB as f64 / IDLE_CONTAINERS as f64,
        provisiond::capacity::CONTAINER_OVERHEAD as f64 / MIB as f64,
    );
    Ok(())
}

/// The memory machine `id`'s QEMU holds beyond its guest's: the resident
/// pages of every mapping but the guest's memory (the one mapping of
/// `guest` bytes).
fn idle_machine(node: &Node, id: &str, guest: u64) -> Result<(), BenchError> {
    std::thread::sleep(Duration::from_secs(5));
    let pids = provision::qemus(node, id).map_err(|e| api_error("the machine's QEMU", e))?;
    let pid = pids
        .first()
        .ok_or_else(|| api_error("the machine's QEMU", "not running"))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(BenchError::Spawn)?;
    let (mut size, mut guest_rss, mut other_rss) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((from, to)) = range.split_once('-')
            && let (Ok(from), Ok(to)) = (u64::from_str_radix(from, 16), u64::from_str_radix(to, 16))
        {
            size = to - from;
        } else if let Some(kb) = line
            .strip_prefix("Rss:")
            .and_then(|r| r.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok())
        {
            if size == guest {
                guest_rss += kb * 1024;
            } else {
                other_rss += kb * 1024;
            }
        }
    }
    eprintln!(
        "compute: an idle machine of {:.0} MiB (TCG): its guest has {:.1} MiB resident, \
         QEMU {:.1} MiB more (the ledger holds {:.0} MiB)",
        guest as f64 / MIB as f64,
        guest_rss as f64 / MIB as f64,
        other_rss as f64 / MIB as f64,
        provisiond::capacity::MACHINE_OVERHEAD as f64 / MIB as f64,
    );
    Ok(())
}

fn report(what: &str, floor_is: &str, api: &mut [Duration], floor: &mut [Duration], target: f64) {
    let (api_median, api_p90) = summary(api);
    let (floor_median, floor_p90) = summary(floor);
    let ratio = ratio(api_median, floor_median);
    eprintln!("compute: {what} ({} runs)", api.len());
    eprintln!(
        "  API   median {:.1} ms  p90 {:.1} ms",
        ms(api_median),
        ms(api_p90)
    );
    eprintln!(
        "  floor median {:.1} ms  p90 {:.1} ms  ({floor_is})",
        ms(floor_median),
        ms(floor_p90)
    );
    eprintln!(
        "  ratio {ratio:.2} (target <= {target}: {})",
        verdict(ratio <= target)
    );
}
