//! storaged in a testbed node, on loop-device disks: pools, the cache,
//! volumes and vdisks, foreign disks left untouched, wipes on request,
//! restarts and vanished disks.

mod signing;

use std::time::{Duration, Instant};

use grove_daemon::client::SocketClient;
use grove_testbed::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, wait_until};
use hyper::Method;
use serde_json::{Value, json};
use storaged::report::{Capacity, Disk, PoolReport};
use storaged::volume::{VdiskView, VolumeView};

const SSD: DiskSpec = DiskSpec {
    size_mb: 1024,
    rotational: false,
};
const HDD: DiskSpec = DiskSpec {
    size_mb: 1024,
    rotational: true,
};

fn start(spec: NodeSpec) -> Farm {
    let farm = Farm::start_for_test(FarmSpec::with_nodes(vec![spec]));
    wait_storage(&farm);
    farm
}

fn start_without_agent(spec: NodeSpec) -> Farm {
    Farm::start_for_test(FarmSpec::with_nodes(vec![spec]).without_agents())
}

/// Sends one request to the node's storaged; answers status and body.
fn call(node: &Node, method: Method, uri: &str, body: Option<Value>) -> (u16, Value) {
    let path = node.socket(Daemon::Storaged).expect("node runs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
    let (status, bytes) = rt
        .block_on(SocketClient::new(path).raw(method, uri, body))
        .unwrap_or_else(|e| panic!("{uri}: {e}"));
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: {e}"))
    };
    (status.as_u16(), value)
}

fn get<T: serde::de::DeserializeOwned>(node: &Node, uri: &str) -> T {
    let (status, body) = call(node, Method::GET, uri, None);
    assert_eq!(status, 200, "{uri}: {body}");
    serde_json::from_value(body).unwrap_or_else(|e| panic!("{uri}: {e}"))
}

/// `PUT` of a volume or vdisk of `size` bytes on `pool`; answers status
/// and body.
fn put(node: &Node, uri: &str, pool: &impl serde::Serialize, size: u64) -> (u16, Value) {
    call(
        node,
        Method::PUT,
        uri,
        Some(json!({"pool": pool, "size": size})),
    )
}

/// [`put`] that must succeed; answers the volume or vdisk.
fn ensure<T: serde::de::DeserializeOwned>(
    node: &Node,
    uri: &str,
    pool: &impl serde::Serialize,
    size: u64,
) -> T {
    let (status, body) = put(node, uri, pool, size);
    assert_eq!(status, 200, "{uri}: {body}");
    serde_json::from_value(body).unwrap_or_else(|e| panic!("{uri}: {e}"))
}

/// `POST /v1/disks/{serial}/wipe`; answers status and body.
fn wipe(node: &Node, serial: impl std::fmt::Display) -> (u16, Value) {
    call(
        node,
        Method::POST,
        &format!("/v1/disks/{serial}/wipe"),
        None,
    )
}

fn wait_storage(farm: &Farm) {
    let node = farm.node(0);
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        node.socket(Daemon::Storaged).is_ok_and(|p| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            rt.is_ok_and(|rt| {
                rt.block_on(SocketClient::new(p).ready())
                    .is_ok_and(|r| r.ready)
            })
        })
    });
    assert!(ready, "storaged not ready\n{}", farm.logs(60));
}

/// Starts the node's agent and waits for its storaged.
fn boot(farm: &Farm) {
    farm.node(0).start_agent().expect("boot");
    wait_storage(farm);
}

/// Asserts that a call answered `status` with an error naming `text`.
fn refused((status, body): (u16, Value), expected: u16, text: &str) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(text)),
        "{body}"
    );
}

/// Asserts that the system cache is the `cache` subvolume of a pool.
fn assert_cache_mounted(node: &Node) {
    let mounted = node
        .exec(&["findmnt", "-n", "-o", "SOURCE", grove_daemon::CACHE_DIR])
        .expect("findmnt");
    assert!(
        String::from_utf8_lossy(&mounted.stdout).contains("[/cache]"),
        "{mounted:?}"
    );
}

fn sha256(path: &std::path::Path) -> String {
    grove_testbed::cmd::sha256(path).expect("sha256sum")
}

fn disk_by_path<'a>(disks: &'a [Disk], path: &std::path::Path) -> &'a Disk {
    disks
        .iter()
        .find(|d| d.device.path == path)
        .unwrap_or_else(|| panic!("{} not reported: {disks:?}", path.display()))
}

fn class(d: &Disk) -> Value {
    serde_json::to_value(&d.class).expect("json")["class"].clone()
}

/// Asserts that `d` is foreign for a reason that names each of `because`.
fn assert_foreign(d: &Disk, because: &[&str]) {
    assert_eq!(class(d), "foreign", "{d:?}");
    let reason = format!("{:?}", d.class);
    for word in because {
        assert!(reason.contains(word), "{word:?} not in {reason}");
    }
}

/// A pool of this node to put volumes and vdisks on.
fn own_pool(node: &Node) -> String {
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        get::<Vec<PoolReport>>(node, "/v1/pools")
            .iter()
            .any(|p| p.this_node)
    });
    assert!(ready, "no pool of this node");
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    pools
        .into_iter()
        .find(|p| p.this_node)
        .expect("a pool of this node")
        .label
        .to_string()
}

fn restart(farm: &Farm) {
    let node = farm.node(0);
    node.kill_agent().expect("kill the node");
    node.start_agent().expect("boot the node again");
    wait_storage(farm);
}

#[test]
fn blank_disks_become_pools_and_a_foreign_disk_is_never_touched() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD, HDD]));
    let node = farm.node(0);
    let foreign = &node.disks()[2];
    foreign
        .format_ext4_with_file("farmer.txt", b"the farmer's own data")
        .expect("ext4 with a file");
    let digest = sha256(foreign.path());
    boot(&farm);

    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 2, "{pools:?}");
    let kinds: Vec<String> = pools.iter().map(|p| format!("{:?}", p.kind)).collect();
    assert!(
        kinds.contains(&"Ssd".to_owned()) && kinds.contains(&"Hdd".to_owned()),
        "{kinds:?}"
    );
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let ext4 = disk_by_path(&disks, foreign.path());
    assert_foreign(ext4, &["ext4"]);
    assert_eq!(ext4.pool, None);
    assert_eq!(
        sha256(foreign.path()),
        digest,
        "first boot changed the foreign disk"
    );

    // The cache is on the SSD pool.
    let capacity: Capacity = get(node, "/v1/capacity");
    let ssd_pool = pools.iter().find(|p| p.cache).expect("a cache pool");
    assert_eq!(format!("{:?}", ssd_pool.kind), "Ssd");
    assert_eq!(capacity.cache.pool.as_ref(), Some(&ssd_pool.label));
    assert!(capacity.cache.degraded.is_none());
    assert_eq!(capacity.ssd.total_bytes, 1024 << 20);
    assert_eq!(capacity.hdd.total_bytes, 1024 << 20);
    assert_cache_mounted(node);

    restart(&farm);
    let again: Vec<PoolReport> = get(node, "/v1/pools");
    let labels = |p: &[PoolReport]| {
        let mut l: Vec<String> = p
            .iter()
            .map(|p| format!("{} {}", p.label, p.uuid))
            .collect();
        l.sort();
        l
    };
    assert_eq!(labels(&again), labels(&pools));
    assert_eq!(
        sha256(foreign.path()),
        digest,
        "a restart changed the foreign disk"
    );
}

#[test]
fn a_disk_with_only_an_empty_gpt_is_foreign() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    node.disks()[1].write_empty_gpt().expect("empty GPT");
    let digest = sha256(node.disks()[1].path());
    boot(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let gpt = disk_by_path(&disks, node.disks()[1].path());
    assert_foreign(gpt, &["GPT partition table"]);
    assert_eq!(sha256(node.disks()[1].path()), digest);
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 1);
}

#[test]
fn a_restart_keeps_pools_cache_and_volume_contents() {
    let farm = start(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    let pool = own_pool(node);
    let volume: VolumeView = ensure(node, "/v1/volumes/data", &pool, 64 << 20);
    let file = volume.path.join("hello.txt");
    let file = file.to_str().expect("utf-8 path");
    let wrote = node
        .exec(&["sh", "-c", &format!("echo kept > {file} && sync")])
        .unwrap();
    assert!(wrote.status.success(), "{wrote:?}");
    let vdisk_before: VdiskView = ensure(node, "/v1/vdisks/root", &pool, 32 << 20);
    let cache_before: Capacity = get(node, "/v1/capacity");
    let pools_before: Vec<PoolReport> = get(node, "/v1/pools");

    restart(&farm);

    let pools_after: Vec<PoolReport> = get(node, "/v1/pools");
    let ids = |p: &[PoolReport]| {
        let mut v: Vec<(String, String, bool)> = p
            .iter()
            .map(|p| (p.label.to_string(), p.uuid.clone(), p.cache))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&pools_after), ids(&pools_before));
    let cache_after: Capacity = get(node, "/v1/capacity");
    assert_eq!(cache_after.cache, cache_before.cache);
    let read = node.exec(&["cat", file]).unwrap();
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\n");
    let volumes: Vec<VolumeView> = get(node, "/v1/volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        (volumes[0].name.as_str(), volumes[0].pool.as_str()),
        ("data", pool.as_str())
    );
    assert_eq!(volumes[0].size, 64 << 20);
    assert!(volumes[0].used >= 5, "the written file is not counted");
    let vdisks: Vec<VdiskView> = get(node, "/v1/vdisks");
    assert_eq!(vdisks, vec![vdisk_before]);
    let size = node
        .exec(&["stat", "-c", "%s", vdisks[0].path.to_str().unwrap()])
        .expect("stat");
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (32u64 << 20).to_string()
    );
}

#[test]
fn writing_past_a_volume_quota_fails_with_edquot() {
    let farm = start(NodeSpec::default().disks(vec![SSD]));
    let node = farm.node(0);
    let pool = own_pool(node);
    let volume: VolumeView = ensure(node, "/v1/volumes/small", &pool, 16 << 20);
    let target = format!("of={}", volume.path.join("big").display());
    let out = node
        .exec(&[
            "dd",
            "if=/dev/zero",
            &target,
            "bs=1M",
            "count=64",
            "conv=fsync",
        ])
        .expect("dd runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "writing 64 MiB into a 16 MiB volume succeeded"
    );
    assert!(stderr.contains("Disk quota exceeded"), "{stderr}");
}

#[test]
fn grove_wipe_pools_the_named_disk_and_only_that_one() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD, HDD]));
    let node = farm.node(0);
    let (wiped, kept) = (&node.disks()[1], &node.disks()[2]);
    wiped
        .format_ext4_with_file("old.txt", b"old data")
        .expect("ext4");
    kept.format_ext4_with_file("keep.txt", b"keep me")
        .expect("ext4");
    let kept_digest = sha256(kept.path());
    boot(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    assert_eq!(class(disk_by_path(&disks, wiped.path())), "foreign");
    let serial = disk_by_path(&disks, wiped.path()).device.serial.clone();

    node.set_cmdline(&format!("grove.farm=1 grove.wipe={serial}"))
        .expect("cmdline");
    restart(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let now = disk_by_path(&disks, wiped.path());
    assert_eq!(class(now), "ours", "{now:?}");
    assert!(now.pool.is_some());
    assert_eq!(class(disk_by_path(&disks, kept.path())), "foreign");
    assert_eq!(
        sha256(kept.path()),
        kept_digest,
        "the other foreign disk was touched"
    );
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 2);
}

#[test]
fn the_wipe_api_pools_a_foreign_disk_and_refuses_anything_else() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    node.disks()[1]
        .format_ext4_with_file("x", b"x")
        .expect("ext4");
    boot(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let foreign = disk_by_path(&disks, node.disks()[1].path())
        .device
        .serial
        .clone();
    let ours = disk_by_path(&disks, node.disks()[0].path())
        .device
        .serial
        .clone();

    refused(wipe(node, &ours), 409, "Grove pool");
    let (status, body) = wipe(node, "NOSUCHSERIAL");
    assert_eq!(status, 404, "{body}");
    let (status, body) = wipe(node, "a..b!");
    assert_eq!(status, 400, "{body}");
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 1, "refused wipes changed nothing");

    let (status, body) = wipe(node, &foreign);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["class"], "ours", "{body}");
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 2);
}

#[test]
fn a_vanished_disk_marks_its_pool_broken_and_the_others_keep_serving() {
    let farm = start(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    let victim = pools
        .iter()
        .find(|p| !p.cache)
        .expect("a pool without the cache");
    let disk = node
        .disks()
        .iter()
        .find(|d| d.path() == victim.device)
        .expect("the victim's disk");
    // A disk dies under a running node: wait until the node has settled
    // (its identity copied to both pools) before pulling it.
    let settled = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let url = format!("{}/v1/node", node.api_url().expect("url"));
        grove_testbed::http_get(&url).is_ok_and(|(_, body)| {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| {
                v["identity"]["copies"]
                    .as_array()
                    .is_some_and(|c| c.len() == 2)
            })
        })
    });
    assert!(settled, "the node never settled\n{}", farm.logs(30));
    let _gone = disk.detach().expect("detach");
    let pulled = Instant::now();
    let broken = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let pools: Vec<PoolReport> = get(node, "/v1/pools");
        pools.iter().any(|p| {
            p.label == victim.label && serde_json::to_value(p).expect("json")["state"] == "broken"
        })
    });
    assert!(
        broken,
        "pool not marked broken within 5 s\n{}",
        farm.logs(30)
    );
    eprintln!(
        "pool marked broken {} ms after its disk vanished",
        pulled.elapsed().as_millis()
    );

    let capacity: Capacity = get(node, "/v1/capacity");
    assert_eq!(capacity.broken_pools, vec![victim.label.clone()]);
    let survivor = pools
        .iter()
        .find(|p| p.label != victim.label)
        .expect("the other pool");
    let _: VolumeView = ensure(node, "/v1/volumes/after", &survivor.label, 8 << 20);
    refused(
        put(node, "/v1/volumes/refused", &victim.label, 8 << 20),
        409,
        "broken",
    );
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    let farm = start(NodeSpec::default().disks(vec![SSD]));
    let node = farm.node(0);
    let pool = own_pool(node);
    let _: VolumeView = ensure(node, "/v1/volumes/taken", &pool, 8 << 20);
    let before: (Vec<VolumeView>, Vec<VdiskView>, Vec<PoolReport>) = (
        get(node, "/v1/volumes"),
        get(node, "/v1/vdisks"),
        get(node, "/v1/pools"),
    );

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/volumes/zero",
            json!({"pool": pool, "size": 0}),
            400,
            "more than 0",
        ),
        (
            "/v1/vdisks/zero",
            json!({"pool": pool, "size": 0}),
            400,
            "more than 0",
        ),
        (
            "/v1/volumes/a%2Fb",
            json!({"pool": pool, "size": 1 << 20}),
            400,
            "a/b",
        ),
        (
            "/v1/volumes/..",
            json!({"pool": pool, "size": 1 << 20}),
            400,
            "..",
        ),
        (
            "/v1/vdisks/..%2Fetc",
            json!({"pool": pool, "size": 1 << 20}),
            400,
            "../etc",
        ),
        (
            "/v1/volumes/taken",
            json!({"pool": pool, "size": 1 << 20}),
            409,
            "only grows",
        ),
        (
            "/v1/volumes/taken",
            json!({"pool": "grove-elsewhere", "size": 8 << 20}),
            409,
            "not on pool grove-elsewhere",
        ),
        (
            "/v1/vdisks/new",
            json!({"pool": "grove-elsewhere", "size": 8 << 20}),
            409,
            "no pool grove-elsewhere",
        ),
        (
            "/v1/volumes/huge",
            json!({"pool": pool, "size": 1u64 << 40}),
            507,
            "bytes free",
        ),
        (
            "/v1/vdisks/huge",
            json!({"pool": pool, "size": 1u64 << 40}),
            507,
            "bytes free",
        ),
        (
            "/v1/volumes/x",
            json!({"pool": pool, "size": -1}),
            400,
            "size",
        ),
        (
            "/v1/volumes/x",
            json!({"pool": pool, "size_bytes": 1}),
            400,
            "size_bytes",
        ),
    ];
    for (uri, body, want, needle) in cases {
        let (status, answer) = call(node, Method::PUT, uri, Some(body.clone()));
        assert_eq!(status, want, "{uri} {body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{uri} {body}: {message}");
    }
    let (status, body) = call(node, Method::DELETE, "/v1/volumes/missing", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"name": "missing", "existed": false}));

    let after: (Vec<VolumeView>, Vec<VdiskView>, Vec<PoolReport>) = (
        get(node, "/v1/volumes"),
        get(node, "/v1/vdisks"),
        get(node, "/v1/pools"),
    );
    // What was asked for must be unchanged; usage is btrfs's background
    // accounting and may move on its own.
    let shape = |list: &[VolumeView]| -> Vec<(String, u64, String)> {
        list.iter()
            .map(|r| (r.name.clone(), r.size, r.path.display().to_string()))
            .collect()
    };
    assert_eq!(shape(&after.0), shape(&before.0));
    assert_eq!(after.1, before.1);
    assert_eq!(after.2.len(), before.2.len());
    assert_eq!(after.2[0].allocated_bytes, before.2[0].allocated_bytes);
    let listing = node
        .exec(&[
            "ls",
            "-A",
            before.2[0].mount_point.join("volumes").to_str().unwrap(),
        ])
        .expect("ls");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "taken\n",
        "a refused request left something behind"
    );
}

#[test]
fn with_no_ssd_the_cache_goes_on_an_hdd_and_says_degraded() {
    let farm = start(NodeSpec::default().disks(vec![HDD]));
    let node = farm.node(0);
    let capacity: Capacity = get(node, "/v1/capacity");
    assert_eq!(capacity.ssd.total_bytes, 0);
    assert_eq!(capacity.hdd.total_bytes, 1024 << 20);
    assert_eq!(format!("{:?}", capacity.cache.kind), "Some(Hdd)");
    let reason = capacity.cache.degraded.expect("degraded");
    assert!(reason.contains("no SSD"), "{reason}");
    assert_cache_mounted(node);
}

#[test]
fn a_grove_boot_image_disk_is_the_boot_medium_and_left_alone() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    let usb = &node.disks()[1];
    let made = std::process::Command::new("mkfs.vfat")
        .args(["-n", "GROVE-BOOT"])
        .arg(usb.path())
        .status()
        .expect("mkfs.vfat runs");
    assert!(made.success(), "could not label the boot disk");
    let digest = sha256(usb.path());
    boot(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let boot = disk_by_path(&disks, usb.path());
    assert!(boot.boot_medium, "{boot:?}");
    assert_eq!(boot.pool, None);
    assert!(!disk_by_path(&disks, node.disks()[0].path()).boot_medium);
    let serial = boot.device.serial.clone();
    refused(wipe(node, &serial), 409, "boot medium");
    assert_eq!(sha256(usb.path()), digest);
}

/// POSTs without any signature to the node's operator API.
fn unsigned_post(node: &Node, path: &str) -> (u16, String) {
    let url = format!("{}{path}", node.api_url().expect("url"));
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (code.parse().expect("a status"), body.to_owned())
}

/// Puts a file system on the node's second disk S and makes the image of
/// another farmer's disk that is to take S's place; answers S and the image.
fn prepare_swap(node: &Node) -> (&grove_testbed::Disk, std::path::PathBuf) {
    let s = &node.disks()[1];
    s.format_ext4_with_file("old.txt", b"disk S, about to be pulled")
        .expect("ext4 on S");
    (
        s,
        prepared_ext4(node, "newcomer.img", b"another farmer's photos"),
    )
}

/// Makes an image holding a farmer's ext4 on a scratch loop device, then
/// frees the device: the image is ready to arrive at any name.
fn prepared_ext4(node: &Node, name: &str, contents: &[u8]) -> std::path::PathBuf {
    let file = node.dir().join(name);
    let scratch = grove_testbed::Disk::create(file.clone(), HDD).expect("scratch disk");
    scratch
        .format_ext4_with_file("farmer.txt", contents)
        .expect("ext4");
    scratch.detach().expect("free the scratch device");
    file
}

/// Boots with a foreign disk S, swaps another farmer disk in under S's
/// device name, and asks for S to be wiped.
struct Swapped {
    farm: Farm,
    /// S's serial, as `/v1/disks` showed it.
    serial: String,
    /// The newcomer's serial.
    newcomer: String,
    status: u16,
    body: Value,
    before: String,
    after: String,
}

fn hot_swap(storaged_config: &str) -> Swapped {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    node.set_config(Daemon::Storaged, storaged_config)
        .expect("storaged config");
    let (s, newcomer_image) = prepare_swap(node);
    boot(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let shown = disk_by_path(&disks, s.path()).clone();
    assert_eq!(class(&shown), "foreign", "{shown:?}");

    s.detach().expect("pull S");
    let newcomer = grove_testbed::Disk::attach_image_at(newcomer_image, true, Some(s.path()))
        .expect("a new disk under S's name");
    let before = sha256(newcomer.file());
    let (status, body) = wipe(node, &shown.device.serial);
    let after = sha256(newcomer.file());
    let newcomer = storaged::disk::discover::read(
        std::path::Path::new("/sys"),
        std::path::Path::new("/dev"),
        &grove_testbed::loopdev::kernel_name(newcomer.path()),
    )
    .expect("sysfs")
    .expect("the newcomer is attached")
    .serial
    .to_string();
    Swapped {
        farm,
        serial: shown.device.serial.to_string(),
        newcomer,
        status,
        body,
        before,
        after,
    }
}

#[test]
fn a_wipe_of_a_swapped_out_disk_before_any_rescan_is_409_naming_both() {
    // No rescan during the test: storaged still lists S when the wipe comes.
    let swapped = hot_swap("health_interval_ms = 3600000\n");
    let body = &swapped.body;
    assert_eq!(swapped.status, 409, "{body}\n{}", swapped.farm.logs(30));
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("changed"), "{body}");
    assert!(
        error.contains(&swapped.serial),
        "the old serial is named: {body}"
    );
    assert!(
        error.contains(&swapped.newcomer),
        "the newcomer is named: {body}"
    );
    assert_eq!(swapped.before, swapped.after, "the newcomer was written");
}

#[test]
fn a_wipe_of_a_swapped_out_disk_after_a_rescan_is_404_and_the_newcomer_is_listed() {
    let swapped = hot_swap("health_interval_ms = 200\n");
    let (farm, body) = (&swapped.farm, &swapped.body);
    // The rescan may or may not have run when the wipe came: either answer
    // refuses, and the newcomer is untouched.
    assert!(
        swapped.status == 404 || swapped.status == 409,
        "{} {body}",
        swapped.status
    );
    assert_eq!(swapped.before, swapped.after, "the newcomer was written");
    let node = farm.node(0);
    let s_path = node.disks()[1].path().to_owned();
    let listed = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let disks: Vec<Disk> = get(node, "/v1/disks");
        !disks
            .iter()
            .any(|d| d.device.serial.as_str() == swapped.serial)
            && disks
                .iter()
                .any(|d| d.device.serial.as_str() == swapped.newcomer && class(d) == "foreign")
    });
    assert!(
        listed,
        "S still listed, or the newcomer not\n{}",
        farm.logs(30)
    );
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let newcomer = disk_by_path(&disks, &s_path);
    assert_eq!(newcomer.pool, None);
    assert_foreign(newcomer, &["ext4"]);
    let (status, again) = wipe(node, &swapped.serial);
    assert_eq!(status, 404, "{again}");
    assert_eq!(sha256(&node.dir().join("newcomer.img")), swapped.before);
}

#[test]
fn a_blank_disk_attached_live_becomes_a_pool_within_5s_and_a_pulled_one_leaves() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD]));
    let node = farm.node(0);
    let hotplug = node.dir().join("hotplug");
    std::fs::create_dir_all(&hotplug).expect("hotplug dir");
    node.set_config(
        Daemon::Storaged,
        &format!(
            "disks = [{:?}, {:?}]\nhealth_interval_ms = 250\n",
            node.disks()[0].path(),
            hotplug
        ),
    )
    .expect("storaged config");
    boot(&farm);
    let before: Capacity = get(node, "/v1/capacity");

    let disk = grove_testbed::Disk::attach_image(
        {
            let file = node.dir().join("live.img");
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(1024 << 20))
                .expect("image");
            file
        },
        true,
    )
    .expect("attach");
    std::os::unix::fs::symlink(disk.path(), hotplug.join("live")).expect("plug in");
    let plugged = Instant::now();
    let pooled = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let pools: Vec<PoolReport> = get(node, "/v1/pools");
        pools.iter().any(|p| {
            p.device == disk.path() && serde_json::to_value(p).expect("json")["state"] == "mounted"
        })
    });
    assert!(pooled, "no pool within 5 s\n{}", farm.logs(40));
    eprintln!("attach to pooled: {} ms", plugged.elapsed().as_millis());
    let grown: Capacity = get(node, "/v1/capacity");
    assert_eq!(
        grown.hdd.total_bytes,
        before.hdd.total_bytes + disk.size_bytes(),
        "capacity did not grow by the new disk: {before:?} -> {grown:?}"
    );

    let serial = {
        let disks: Vec<Disk> = get(node, "/v1/disks");
        disk_by_path(&disks, disk.path()).device.serial.clone()
    };
    disk.detach().expect("pull it");
    let left = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let disks: Vec<Disk> = get(node, "/v1/disks");
        !disks.iter().any(|d| d.device.serial == serial)
    });
    assert!(left, "the pulled disk is still listed\n{}", farm.logs(30));
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    let pool = pools
        .iter()
        .find(|p| p.serial == serial)
        .expect("its pool is still reported");
    assert_eq!(serde_json::to_value(pool).expect("json")["state"], "broken");
    let after: Capacity = get(node, "/v1/capacity");
    assert_eq!(after.hdd.total_bytes, before.hdd.total_bytes);
    assert_eq!(after.broken_pools, vec![pool.label.clone()]);
}

#[test]
fn ext4_behind_a_lost_partition_table_and_data_only_in_the_middle_are_foreign() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD, HDD]));
    let node = farm.node(0);
    let (lost_table, middle) = (&node.disks()[1], &node.disks()[2]);
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576"])
        .arg(lost_table.path())
        .arg("512M")
        .output()
        .expect("mkfs.ext4 runs");
    assert!(out.status.success(), "{out:?}");
    lost_table.write_at(0, &[0u8; 512]).expect("lose sector 0");
    let data: Vec<u8> = b"the farmer's database page "
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    middle
        .write_at(middle.size_bytes() / 2, &data)
        .expect("data in the middle");
    let digests = [sha256(lost_table.file()), sha256(middle.file())];
    boot(&farm);

    let disks: Vec<Disk> = get(node, "/v1/disks");
    assert_foreign(disk_by_path(&disks, lost_table.path()), &["ext4", "1 MiB"]);
    assert_foreign(disk_by_path(&disks, middle.path()), &["unrecognised data"]);
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 1, "only the blank SSD is a pool: {pools:?}");
    assert_eq!(
        [sha256(lost_table.file()), sha256(middle.file())],
        digests,
        "a foreign disk changed"
    );
}

#[test]
fn every_kind_of_foreign_disk_is_foreign_and_untouched_through_boot_restart_and_unsigned_wipes() {
    use grove_testbed::foreign::Foreign;
    const SMALL: DiskSpec = DiskSpec {
        size_mb: 320,
        rotational: true,
    };
    let mut disks = vec![SSD];
    disks.extend(Foreign::ALL.iter().map(|_| SMALL));
    let farm = start_without_agent(NodeSpec::default().disks(disks));
    let node = farm.node(0);
    let foreign: Vec<(Foreign, &grove_testbed::Disk)> = Foreign::ALL
        .iter()
        .copied()
        .zip(&node.disks()[1..])
        .collect();
    for (kind, disk) in &foreign {
        kind.write(disk)
            .unwrap_or_else(|e| panic!("{kind:?}: {}", grove_testbed::report(&e)));
    }
    let digests: Vec<String> = foreign.iter().map(|(_, d)| sha256(d.file())).collect();
    let check = |when: &str| {
        let listed: Vec<Disk> = get(node, "/v1/disks");
        for (kind, disk) in &foreign {
            let d = disk_by_path(&listed, disk.path());
            assert_eq!(class(d), "foreign", "{kind:?} {when}: {d:?}");
            assert_eq!(d.pool, None, "{kind:?} {when}");
        }
        let now: Vec<String> = foreign.iter().map(|(_, d)| sha256(d.file())).collect();
        for ((kind, _), (a, b)) in foreign.iter().zip(digests.iter().zip(&now)) {
            assert_eq!(a, b, "{kind:?} changed {when}");
        }
        listed
    };
    boot(&farm);
    let listed = check("after boot");
    for (kind, disk) in &foreign {
        let d = disk_by_path(&listed, disk.path());
        eprintln!("{kind:?}: {:?}", d.class);
    }
    let exfat = disk_by_path(&listed, foreign[3].1.path());
    assert_eq!(
        serde_json::to_value(&exfat.class).expect("json")["reason"],
        "holds an exFAT filesystem"
    );
    restart(&farm);
    let listed = check("after a restart");
    node.wait_api(Duration::from_secs(30)).expect("API up");
    for (kind, disk) in &foreign {
        let serial = &disk_by_path(&listed, disk.path()).device.serial;
        let (code, body) = unsigned_post(node, &format!("/v1/disks/{serial}/wipe"));
        // 401 with a known farmer; 503 while the node cannot check a
        // signature at all (no registry in this farm). Never a wipe.
        assert!(
            code == 401 || (code == 503 && body.contains("farm owner's key")),
            "{kind:?}: an unsigned wipe got {code} {body}"
        );
    }
    check("after unsigned wipe requests");
}

/// POSTs to the operator API with the headers `agent sign request` printed.
fn signed_post(url: &str, cli_output: &str) -> (u16, String) {
    let headers = grove_testbed::http::signed_headers(cli_output);
    grove_testbed::http::curl_post(url, None, &headers).expect("curl answers")
}

#[test]
fn a_farmer_signed_wipe_after_a_hot_swap_is_refused_and_the_newcomer_is_untouched() {
    let farm = start_without_agent(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    let keys = tempfile::tempdir().unwrap();
    let farmer_key = keys.path().join("farmer.key");
    let farmer = signing::new_key(&farmer_key);
    let port = 18_700 + (std::process::id() % 1000) as u16;
    let registry = grove_testbed::registry::Registry::start(&farm, port, Some(&farmer))
        .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e)));
    node.set_cmdline(&format!("grove.farm=1 grove.chain.url={}", registry.url()))
        .expect("cmdline");
    // No rescan during the test: storaged still lists S when the wipe comes.
    node.set_config(Daemon::Storaged, "health_interval_ms = 3600000\n")
        .expect("storaged config");
    let (s, newcomer_image) = prepare_swap(node);
    boot(&farm);
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let api = node.api_url().expect("url");
    let knows = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        grove_testbed::http_get(&format!("{api}/v1/chain")).is_ok_and(|(_, body)| {
            serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["farmer"].as_str() == Some(farmer.as_str()))
        })
    });
    assert!(knows, "the node never learnt its farmer\n{}", farm.logs(30));
    let (_, chain) = grove_testbed::http_get(&format!("{api}/v1/chain")).expect("GET /v1/chain");
    let account = serde_json::from_str::<Value>(&chain).expect("json")["account"]
        .as_str()
        .expect("the node's account")
        .to_owned();
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let serial = disk_by_path(&disks, s.path()).device.serial.to_string();

    s.detach().expect("pull S");
    let newcomer = grove_testbed::Disk::attach_image_at(newcomer_image, true, Some(s.path()))
        .expect("a new disk under S's name");
    let before = sha256(newcomer.file());
    let path = format!("/v1/disks/{serial}/wipe");
    let signed = signing::request(&farmer_key, &account, &path, &[]);
    let (code, body) = signed_post(&format!("{api}{path}"), &signed);
    assert_eq!(code, 409, "{body}\n{}", farm.logs(30));
    assert!(body.contains(&serial) && body.contains("changed"), "{body}");
    assert_eq!(sha256(newcomer.file()), before, "the newcomer was written");
}
