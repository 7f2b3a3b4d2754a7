//! Deployments as a twin sends them, for the provisioning suites and
//! `bench provision`: workloads, the signed wire form, the submission with
//! the facts the chain would give, and provisiond's answers awaited.
//!
//! Each twin signs with a key made from its id, so a suite needs no key
//! files; every network uses one throwaway WireGuard key. Limits: the
//! signature requirement is always the twin alone, weight 1.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use grove_daemon::client::ClientError;
use provisiond::api::{ContractFacts, DeploymentState, DeploymentView, Submission, TwinKeyFacts};
use provisiond::client::ProvisiondClient;
use provisiond::deployment::sign::sign_ed25519;
use provisiond::deployment::{Deployment, DeploymentError};
use serde_json::{Value, json};

use crate::node::NodeError;
use crate::oci::{OciRegistry, PushError, Pushed};
use crate::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, TestbedError, wait_until};

/// The WireGuard private key of every network these helpers make.
pub const WG_PRIVATE_KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

/// A provisioning step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the testbed creates namespaces and loop devices: run the suite as root (ci/test)")]
    NotRoot,
    #[error("the farm did not start: {0}")]
    Farm(#[from] TestbedError),
    #[error("provisiond did not answer within {within:?}\n{logs}")]
    NotReady { within: Duration, logs: String },
    #[error("the deployment does not sign or parse: {0}")]
    Deployment(#[from] DeploymentError),
    #[error("contract {contract} never reached {state:?} within {within:?}: {last:?}")]
    Never {
        contract: u64,
        state: DeploymentState,
        within: Duration,
        last: Option<Box<DeploymentView>>,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("`{command}` in the node failed: {out}")]
    Command { command: String, out: String },
    #[error("provisiond: {0}")]
    Client(#[from] ClientError),
    #[error("the image registry: {0}")]
    Registry(#[from] crate::oci::OciRegistryError),
}

/// A farm of one node with one SSD of `disk_mb`, whose provisiond is node
/// `node_id` and whose netd leaves the uplink alone; answers once
/// provisiond answers.
pub fn start(node_id: u32, disk_mb: u64) -> Result<Farm, ProvisionError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ProvisionError::NotRoot);
    }
    let spec = NodeSpec::default()
        .disks(vec![DiskSpec::ssd(disk_mb)])
        .config(Daemon::Netd, "[uplink]\nmanage = false\n")
        .config(Daemon::Provisiond, format!("node_id = {node_id}\n"));
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]))?;
    wait_provisiond(&farm)?;
    Ok(farm)
}

/// A farm of one node with one SSD of `disk_mb` and a real OCI registry on
/// the farm LAN, which the node's provisiond (node `node_id`, with the
/// `extra` lines of configuration) reaches over plain HTTP; answers once
/// provisiond answers.
pub fn start_with_registry(
    node_id: u32,
    disk_mb: u64,
    extra: &str,
) -> Result<(Farm, OciRegistry), ProvisionError> {
    start_nodes_with_registry(&[node_id], disk_mb, extra)
}

/// [`start_with_registry`] with a node for each of `node_ids`, each with
/// one SSD of `disk_mb`; answers once every provisiond answers.
pub fn start_nodes_with_registry(
    node_ids: &[u32],
    disk_mb: u64,
    extra: &str,
) -> Result<(Farm, OciRegistry), ProvisionError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ProvisionError::NotRoot);
    }
    let spec = NodeSpec::default().disks(vec![DiskSpec::ssd(disk_mb)]);
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec; node_ids.len()]).without_agents())?;
    let registry = OciRegistry::start(std::net::IpAddr::V4(farm.host_ip()))?;
    for (node, node_id) in farm.nodes().iter().zip(node_ids) {
        node.set_config(
            Daemon::Provisiond,
            &format!(
                "node_id = {node_id}\nhttp_registries = [\"{}\"]\n{extra}",
                registry.host()
            ),
        )?;
        node.start_agent()?;
    }
    for node in farm.nodes() {
        wait_node_provisiond(&farm, node)?;
    }
    Ok((farm, registry))
}

/// Waits up to 90 s for the first node's provisiond to answer.
pub fn wait_provisiond(farm: &Farm) -> Result<(), ProvisionError> {
    wait_node_provisiond(farm, farm.node(0))
}

/// Waits up to 90 s for `node`'s provisiond to answer.
pub fn wait_node_provisiond(farm: &Farm, node: &Node) -> Result<(), ProvisionError> {
    let within = Duration::from_secs(90);
    if node.wait_answers(Daemon::Provisiond, "/v1/capacity", within) {
        Ok(())
    } else {
        Err(ProvisionError::NotReady {
            within,
            logs: farm.logs(60),
        })
    }
}

/// Twin `twin`'s signing key, made from its id's low byte.
pub fn key(twin: u32) -> SigningKey {
    SigningKey::from_bytes(&[twin.to_le_bytes()[0]; 32])
}

/// A network workload `name` on `10.<range>.0.0/16`, listening on `port`.
pub fn network(name: &str, range: u8, port: u16) -> Value {
    json!({"version": 0, "name": name, "type": "network", "metadata": "", "description": "",
           "data": {"ip_range": format!("10.{range}.0.0/16"), "subnet": format!("10.{range}.1.0/24"),
                    "wireguard_private_key": WG_PRIVATE_KEY,
                    "wireguard_listen_port": port, "peers": []}})
}

/// A disk workload: `kind` is `zmount` or `volume`, `size` in bytes.
pub fn disk(name: &str, kind: &str, size: u64) -> Value {
    json!({"version": 0, "name": name, "type": kind, "metadata": "", "description": "",
           "data": {"size": size}})
}

/// A machine workload `name` booting `flist` with `memory` bytes, one CPU
/// and `mounts`, at `ip` on the network "net".
pub fn zmachine(name: &str, flist: &str, ip: &str, memory: u64, mounts: Value) -> Value {
    json!({"version": 0, "name": name, "type": "zmachine", "metadata": "", "description": "",
        "data": {"flist": flist,
            "network": {"public_ip": "", "planetary": false,
                "interfaces": [{"network": "net", "ip": ip}]},
            "size": 0, "compute_capacity": {"cpu": 1, "memory": memory},
            "mounts": mounts, "entrypoint": "/sbin/init", "env": {}, "corex": false}})
}

/// `workload` as changed at deployment version `version`.
pub fn at_version(mut workload: Value, version: u32) -> Value {
    workload["version"] = json!(version);
    workload
}

/// Twin `twin`'s first deployment of `workloads` on `contract`, signed.
pub fn signed(twin: u32, contract: u64, workloads: Vec<Value>) -> Result<String, ProvisionError> {
    signed_version(twin, contract, 0, workloads)
}

/// Version `version` of twin `twin`'s deployment on `contract`, signed.
pub fn signed_version(
    twin: u32,
    contract: u64,
    version: u32,
    workloads: Vec<Value>,
) -> Result<String, ProvisionError> {
    let wire = json!({"version": version, "twin_id": twin, "contract_id": contract,
        "metadata": "", "description": "", "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": twin, "required": false, "weight": 1}],
            "weight_required": 1, "signatures": [], "signature_style": ""},
        "workloads": workloads});
    Ok(sign_ed25519(&wire.to_string(), twin, &key(twin))?)
}

/// The signed deployment `wire` of `twin` with the facts the chain would
/// give: a created contract on `node_id` with its hash, and the twin's key.
pub fn submission(node_id: u32, twin: u32, wire: &str) -> Result<Submission, ProvisionError> {
    let d = Deployment::parse(wire.as_bytes())?;
    Ok(Submission {
        deployment: wire.to_owned(),
        contract: Some(ContractFacts {
            contract_id: d.contract_id,
            node_id,
            twin_id: twin,
            state: "Created".into(),
            deployment_hash: d.hash().hex(),
        }),
        twins: vec![TwinKeyFacts {
            twin_id: twin,
            account_key: hex::encode(key(twin).verifying_key().to_bytes()),
        }],
    })
}

/// Runs `f` to completion on a runtime of its own.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs only an epoll and an eventfd")
        .block_on(f)
}

/// The run config of a busybox image that serves its `/www` over HTTP on
/// port 80, for [`push_busybox`].
pub fn httpd() -> Value {
    json!({"Entrypoint": ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]})
}

/// Pushes the one-layer image `layer` (linux/amd64) to `registry` as
/// `repo`, with the run config `run`.
pub fn push_layer(
    registry: &OciRegistry,
    repo: &str,
    layer: Vec<u8>,
    run: Value,
) -> Result<Pushed, PushError> {
    block_on(crate::oci::push(
        &registry.host(),
        repo,
        &[layer],
        "amd64",
        run,
    ))
}

/// Pushes the testbed's busybox image to `registry` as `grove/busybox`,
/// with the run config `run`.
///
/// # Panics
/// When it cannot be made or pushed.
pub fn push_busybox(registry: &OciRegistry, run: Value) -> Pushed {
    let layer = crate::oci::busybox_layer().unwrap_or_else(|e| panic!("a busybox layer: {e}"));
    push_layer(registry, "grove/busybox", layer, run).unwrap_or_else(|e| panic!("push: {e}"))
}

/// Pushes the testbed's direct-boot machine image to `registry` as
/// `grove/machine`.
///
/// # Panics
/// When it cannot be made or pushed.
pub fn push_machine(registry: &OciRegistry) -> Pushed {
    let layer = crate::oci::machine_layer().unwrap_or_else(|e| panic!("a machine image: {e}"));
    push_layer(registry, "grove/machine", layer, json!({})).unwrap_or_else(|e| panic!("push: {e}"))
}

/// The node's provisiond.
pub fn client(node: &Node) -> Result<ProvisiondClient, ProvisionError> {
    Ok(ProvisiondClient::new(node.socket(Daemon::Provisiond)?))
}

/// Polls `contract` every 50 ms until it is in `state`, for up to
/// `within`; answers its view then.
pub fn wait_state(
    node: &Node,
    contract: u64,
    state: DeploymentState,
    within: Duration,
) -> Result<DeploymentView, ProvisionError> {
    let client = client(node)?;
    let mut last = None;
    let mut failed = None;
    let reached = wait_until(within, Duration::from_millis(50), || {
        match block_on(client.deployment(contract)) {
            Ok(view) => {
                let done = view.state == state;
                last = Some(view);
                done
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    match last {
        Some(view) if reached => Ok(view),
        last => Err(ProvisionError::Never {
            contract,
            state,
            within,
            last: last.map(Box::new),
        }),
    }
}

/// `workload`'s result in `view`, checked to name the workload's `id` and
/// its address `ip`.
///
/// # Panics
/// When there is no result, or it names another id or address.
pub fn result_of(view: &DeploymentView, workload: &str, id: &str, ip: &str) -> Value {
    let result = view.result(workload).expect("a result").clone();
    assert_eq!(result["data"]["id"], id, "{result}");
    assert_eq!(result["data"]["ip"], ip, "{result}");
    result
}

/// Polls `contract` on the farm's first node every 200 ms until it is in
/// `state`, for up to `within`, through provisiond's restarts (where
/// [`wait_state`] stops at the first error); answers its view then.
///
/// # Panics
/// When it does not get there, with its last view and the farm's logs.
pub fn settle(
    farm: &Farm,
    contract: u64,
    state: DeploymentState,
    within: Duration,
) -> DeploymentView {
    let node = farm.node(0);
    let mut last = None;
    let reached = wait_until(within, Duration::from_millis(200), || {
        // A restarting provisiond answers nothing for a moment.
        let Ok(view) = client(node).and_then(|c| Ok(block_on(c.deployment(contract))?)) else {
            return false;
        };
        let done = view.state == state;
        last = Some(view);
        done
    });
    assert!(reached, "never {state:?}: {last:?}\n{}", farm.logs(80));
    last.expect("reached")
}

/// Cancels `contract` on the farm's first node and [`settle`]s it as
/// deleted within `within`.
///
/// # Panics
/// When the removal is refused or does not finish.
pub fn cancel(farm: &Farm, contract: u64, within: Duration) -> DeploymentView {
    client(farm.node(0))
        .and_then(|c| Ok(block_on(c.remove(contract))?))
        .unwrap_or_else(|e| panic!("removal of contract {contract} admitted: {e}"));
    settle(farm, contract, DeploymentState::Deleted, within)
}

/// What storaged and netd hold for the deployments: vdisks and volumes
/// (name, size, path) and networks (netid, namespace), each sorted.
#[derive(Debug, PartialEq)]
pub struct Objects {
    pub vdisks: Vec<(String, u64, String)>,
    pub volumes: Vec<(String, u64, String)>,
    pub networks: Vec<(String, String)>,
}

impl Objects {
    /// The path of vdisk `name`.
    pub fn vdisk(&self, name: &str) -> Option<&str> {
        path_of(&self.vdisks, name)
    }

    /// The path of volume `name`.
    pub fn volume(&self, name: &str) -> Option<&str> {
        path_of(&self.volumes, name)
    }
}

fn path_of<'a>(objects: &'a [(String, u64, String)], name: &str) -> Option<&'a str> {
    objects
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, path)| path.as_str())
}

/// What the node's storaged and netd hold now.
pub fn objects(node: &Node) -> Result<Objects, ProvisionError> {
    let storaged = storaged::client::StoragedClient::new(node.socket(Daemon::Storaged)?);
    let netd = netd::client::NetdClient::new(node.socket(Daemon::Netd)?);
    let (vdisks, volumes, networks) = block_on(async {
        Ok::<_, ClientError>((
            storaged.vdisks().await?,
            storaged.volumes().await?,
            netd.networks().await?,
        ))
    })?;
    let mut objects = Objects {
        vdisks: vdisks
            .into_iter()
            .map(|v| (v.name, v.size, v.path.display().to_string()))
            .collect(),
        volumes: volumes
            .into_iter()
            .map(|v| (v.name, v.size, v.path.display().to_string()))
            .collect(),
        networks: networks
            .into_iter()
            .map(|n| (n.netid, n.namespace))
            .collect(),
    };
    objects.vdisks.sort();
    objects.volumes.sort();
    objects.networks.sort();
    Ok(objects)
}

/// Runs `argv` in the node; answers its output if it succeeded.
fn run(node: &Node, argv: &[&str]) -> Result<String, ProvisionError> {
    match node.exec_text(argv)? {
        (true, out) => Ok(out),
        (false, out) => Err(ProvisionError::Command {
            command: argv.join(" "),
            out,
        }),
    }
}

/// The length of the file at `path` in the node, as `stat` gives it.
pub fn file_size(node: &Node, path: &str) -> Result<String, ProvisionError> {
    Ok(run(node, &["stat", "-c", "%s", path])?.trim().to_owned())
}

/// Checks that `path` in the node is a btrfs subvolume whose qgroup is
/// limited to `size` bytes.
pub fn check_volume_limited(node: &Node, path: &str, size: u64) -> Result<(), ProvisionError> {
    run(node, &["btrfs", "subvolume", "show", path])?;
    let argv = ["btrfs", "qgroup", "show", "-re", "--raw", path];
    let out = run(node, &argv)?;
    if out.contains(&size.to_string()) {
        Ok(())
    } else {
        Err(ProvisionError::Command {
            command: format!("{} (no limit of {size})", argv.join(" ")),
            out,
        })
    }
}

/// `(pid, name)` of the node's QEMU processes, which run under their
/// machine's id: those in the node's own mount namespace (the farm's nodes
/// share the host's process table).
pub fn machines(node: &Node) -> Result<Vec<(String, String)>, ProvisionError> {
    let script = r#"me=$(readlink /proc/self/ns/mnt)
for d in /proc/[0-9]*; do
  c=$(cat "$d/comm" 2>/dev/null)
  case "$c" in m-*) [ "$(readlink "$d/ns/mnt")" = "$me" ] && echo "${d#/proc/} $c" ;; esac
done"#;
    Ok(run(node, &["sh", "-c", script])?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, c)| (p.to_owned(), c.to_owned()))
        .collect())
}

/// The pids of the node's QEMU processes running machine `id`.
pub fn qemus(node: &Node, id: &str) -> Result<Vec<String>, ProvisionError> {
    Ok(machines(node)?
        .into_iter()
        .filter(|(_, c)| c == id)
        .map(|(p, _)| p)
        .collect())
}

/// Twin `twin`'s first deployment of `workloads` on `contract`, signed and
/// sent to `node` (node `node_id`) with the facts the chain would give.
pub fn deploy(
    node: &Node,
    node_id: u32,
    twin: u32,
    contract: u64,
    workloads: Vec<Value>,
) -> Result<(), ProvisionError> {
    let wire = signed(twin, contract, workloads)?;
    block_on(client(node)?.deploy(&submission(node_id, twin, &wire)?))?;
    Ok(())
}

/// A change a crash test interrupts.
#[derive(Debug, Clone)]
pub enum Change {
    /// [`deploy`] of these workloads by twin `twin` to node `node_id`.
    Deploy {
        node_id: u32,
        twin: u32,
        workloads: Vec<Value>,
    },
    /// The contract's cancellation.
    Remove,
}

/// One step of a crash test on the farm's first node: `change` of
/// `contract` starts, provisiond is killed (`kill -9`) `delay` later and
/// started again by the agent, and the contract must then reach `state`
/// within `within`.
///
/// # Panics
/// When any of that fails, with the farm's logs.
pub fn kill_during(
    farm: &Farm,
    contract: u64,
    change: Change,
    delay: Duration,
    (state, within): (DeploymentState, Duration),
) -> DeploymentView {
    let node = farm.node(0);
    let step = || -> Result<DeploymentView, ProvisionError> {
        match change {
            Change::Deploy {
                node_id,
                twin,
                workloads,
            } => deploy(node, node_id, twin, contract, workloads)?,
            Change::Remove => {
                block_on(client(node)?.remove(contract))?;
            }
        }
        std::thread::sleep(delay);
        node.restart_daemon(Daemon::Provisiond, Duration::from_secs(60))?;
        wait_state(node, contract, state, within)
    };
    step().unwrap_or_else(|e| panic!("contract {contract}: {e}\n{}", farm.logs(60)))
}

/// The sorted names in `names` that `keep` keeps.
pub fn sorted(names: impl IntoIterator<Item = String>, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = names.into_iter().filter(|n| keep(n)).collect();
    out.sort();
    out
}

/// The sorted names of the node's root filesystems and disks (storaged's
/// volumes, or vdisks when `vdisks`, named `r<contract>-<workload>`).
pub fn roots(node: &Node, vdisks: bool) -> Result<Vec<String>, ProvisionError> {
    let storaged = storaged::client::StoragedClient::new(node.socket(Daemon::Storaged)?);
    let names: Vec<String> = if vdisks {
        block_on(storaged.vdisks())?
            .into_iter()
            .map(|v| v.name)
            .collect()
    } else {
        block_on(storaged.volumes())?
            .into_iter()
            .map(|v| v.name)
            .collect()
    };
    Ok(sorted(names, |n| n.starts_with('r')))
}
