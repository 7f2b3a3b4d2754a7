//! What the tests that boot the image under QEMU share: the image, a farm
//! LAN with its registry, and what every booted node must do.
//!
//! Each test binary holds its own [`ONE_AT_A_TIME`]: a build compresses
//! with every spare cycle, and a boot under a running build is several
//! times slower. (Cargo runs the test binaries one after another.)

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use grove_testbed::qemu::{BootImage, MachineSpec, QemuNode};
use grove_testbed::registry::Registry;
use grove_testbed::{Farm, FarmSpec, LanSpec, cmd, http_get, wait_until};
use serde_json::Value;

pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
pub static IMAGE: OnceLock<BootImage> = OnceLock::new();

/// The image every test here uses: built once per test binary, or CI's.
pub fn image() -> &'static BootImage {
    IMAGE.get_or_init(|| BootImage::for_test().expect("image builds"))
}

/// A port free on `ip` now, for the registry.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn get_json(url: &str) -> Option<Value> {
    match http_get(url) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// A node booted on `farm`, whatever the path, as the host sees it.
pub struct CameUp {
    /// Its operator API, `http://IP:8080`.
    pub api: String,
    /// What `/v1/disks` listed once it was ready.
    pub disks: Vec<Value>,
    /// From QEMU's start to the operator API answering, and to `ready`.
    pub answered: Duration,
    pub ready: Duration,
}

/// What a node must do, whatever it booted from: get a lease from the farm
/// LAN's dnsmasq, answer its operator API from the host, make a pool of
/// each blank disk, become `ready` and register with `registry`. Times are
/// from `started`, just before QEMU.
pub fn comes_up(farm: &Farm, registry: &Registry, node: &mut QemuNode, started: Instant) -> CameUp {
    comes_up_as(farm, registry, node, 0, started)
}

/// [`comes_up`] for the farm's machine `index` (its disks' serials are
/// `gq<index>d<k>`).
pub fn comes_up_as(
    farm: &Farm,
    registry: &Registry,
    node: &mut QemuNode,
    index: usize,
    started: Instant,
) -> CameUp {
    // DHCP from the farm LAN's dnsmasq.
    let mut ip = None;
    let leased = wait_until(Duration::from_secs(240), Duration::from_millis(200), || {
        ip = node.lease(farm.lan(0));
        ip.is_some() || !node.running()
    });
    let running = node.running();
    let Some(ip) = ip else {
        panic!(
            "no lease for {} (waited: {leased}, QEMU running: {running})\n{}",
            node.mac(),
            node.logs(60)
        );
    };
    let api = format!("http://{ip}:8080");

    // The operator API answers from the host, and the node becomes ready.
    let mut answered = None;
    let mut status = Value::Null;
    let ready = wait_until(Duration::from_secs(180), Duration::from_millis(200), || {
        status = get_json(&format!("{api}/v1/status")).unwrap_or(Value::Null);
        if !status.is_null() && answered.is_none() {
            answered = Some(started.elapsed());
        }
        status["state"] == "ready" || !node.running()
    });
    assert!(
        ready && status["state"] == "ready",
        "not ready: {status}\n{}",
        node.logs(60)
    );
    let ready = started.elapsed();
    let answered = answered.expect("the API answered before it said ready");
    let account = status["account"].as_str().expect("an account").to_owned();
    assert!(account.starts_with('5'), "{account}");

    // Both blank disks became pools.
    let disks = get_json(&format!("{api}/v1/disks")).expect("/v1/disks answers");
    let disks = disks.as_array().expect("a list of disks").clone();
    let mut pooled: Vec<&str> = disks
        .iter()
        .filter(|d| d["pool"].as_str().is_some_and(|p| p.starts_with("grove-")))
        .filter_map(|d| d["serial"].as_str())
        .collect();
    pooled.sort_unstable();
    let blank = [format!("gq{index}d0"), format!("gq{index}d1")];
    assert_eq!(pooled, blank, "{disks:?}");

    // /v1/node shows the same identity and the boot parameters.
    let report = get_json(&format!("{api}/v1/node")).expect("/v1/node answers");
    assert_eq!(report["identity"]["account"], account.as_str(), "{report}");
    assert_eq!(report["boot"]["params"]["farm_id"], 1, "{report}");

    // Registered with the farm's registry: it holds a node for this
    // account's twin, and the node knows its id.
    let mut chain = Value::Null;
    let registered = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        chain = get_json(&format!("{api}/v1/chain")).unwrap_or(Value::Null);
        chain["node_id"].is_u64()
    });
    assert!(registered, "not registered: {chain}\n{}", node.logs(40));
    assert_eq!(chain["account"], account.as_str(), "{chain}");
    let nodes = get_json(&format!("{}/v1/nodes?farm_id=1", registry.url())).expect("registry");
    let ours: Vec<&Value> = nodes
        .as_array()
        .expect("a list of nodes")
        .iter()
        .filter(|n| n["id"] == chain["node_id"])
        .collect();
    assert_eq!(ours.len(), 1, "{nodes}");
    assert_eq!(ours[0]["twin_id"], chain["twin_id"], "{nodes}");
    CameUp {
        api,
        disks,
        answered,
        ready,
    }
}

/// A farm LAN with no nodes of its own, and the registry a node booted on
/// it registers with (dropped first, as fields drop in order).
pub struct Lan {
    pub registry: Registry,
    pub farm: Farm,
}

impl Lan {
    pub fn start() -> Self {
        Lan::start_on(LanSpec::default())
    }

    /// The same on a farm LAN made as `spec` says.
    pub fn start_on(spec: LanSpec) -> Self {
        let farm = Farm::start_for_test(FarmSpec {
            lans: vec![spec],
            ..FarmSpec::with_nodes(Vec::new()).without_agents()
        });
        let registry = Registry::start(&farm, free_port(farm.host_ip()), None).expect("registry");
        Lan { registry, farm }
    }

    /// The boot parameters of every node here.
    pub fn node_params(&self) -> String {
        format!("grove.farm=1 grove.chain.url={}", self.registry.url())
    }

    /// Boots the image as the LAN's first node with `spec`, checks it
    /// [`comes_up`] and prints how long that took, as `name`.
    pub fn boot(&self, name: &str, spec: &MachineSpec) -> (QemuNode, CameUp) {
        let started = Instant::now();
        let mut node = QemuNode::boot(&self.farm, 0, image(), spec).expect("QEMU starts");
        let up = comes_up(&self.farm, &self.registry, &mut node, started);
        eprintln!(
            "{name}: API answered after {:.1} s, ready after {:.1} s",
            up.answered.as_secs_f64(),
            up.ready.as_secs_f64()
        );
        (node, up)
    }

    /// Stops the registry, then tears the farm down and checks it was clean.
    pub fn teardown(self) {
        let Lan { registry, mut farm } = self;
        drop(registry);
        farm.teardown().expect("clean teardown");
    }
}

/// A foreign disk: ext4 with one file, made without a mount.
pub fn ext4_disk(dir: &std::path::Path) -> std::path::PathBuf {
    let content = dir.join("foreign-content");
    std::fs::create_dir_all(&content).expect("mkdir");
    std::fs::write(content.join("family-photos.txt"), "not Grove's\n").expect("a file");
    let disk = dir.join("foreign-ext4.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("the disk file");
    let (disk_arg, content_arg) = (disk.display().to_string(), content.display().to_string());
    cmd::run("mkfs.ext4", &["-q", "-F", "-d", &content_arg, &disk_arg]).expect("mkfs.ext4");
    disk
}

/// `agent sign request`'s output for `POST path`, signed by `registry`'s
/// farmer for the node `account`: curl's `-H` arguments.
pub fn farmer_signed(registry: &Registry, account: &str, path: &str) -> String {
    farmer_signed_body(registry, account, path, "")
}

/// The same for `POST path` with `body`.
pub fn farmer_signed_body(registry: &Registry, account: &str, path: &str, body: &str) -> String {
    let key = registry
        .farmer_key()
        .expect("the registry made the farmer key");
    cmd::agent_cli(&[
        "sign",
        "request",
        "--key",
        key.to_str().expect("utf-8"),
        "--node",
        account,
        "--path",
        path,
        "--body",
        body,
    ])
    .expect("agent sign request")
}
