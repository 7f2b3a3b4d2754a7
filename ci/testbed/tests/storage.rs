//! storaged in a testbed node, on loop-device disks: pools, the cache,
//! volumes and vdisks, foreign disks left untouched, wipes on request,
//! restarts and vanished disks.

use std::time::{Duration, Instant};

use grove_daemon::client::SocketClient;
use grove_testbed::{Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, wait_until};
use hyper::Method;
use serde_json::{Value, json};
use storaged::storage::{Capacity, Disk, PoolReport};
use storaged::volume::Resource;

const SSD: DiskSpec = DiskSpec {
    size_mb: 1024,
    rotational: false,
};
const HDD: DiskSpec = DiskSpec {
    size_mb: 1024,
    rotational: true,
};

fn start(spec: NodeSpec) -> Farm {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]))
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)));
    wait_storage(&farm);
    farm
}

fn start_without_agent(spec: NodeSpec) -> Farm {
    Farm::start(FarmSpec::with_nodes(vec![spec]).without_agents())
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)))
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

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
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
    node.start_agent().expect("boot");
    wait_storage(&farm);

    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 2, "{pools:?}");
    let kinds: Vec<String> = pools.iter().map(|p| format!("{:?}", p.kind)).collect();
    assert!(
        kinds.contains(&"Ssd".to_owned()) && kinds.contains(&"Hdd".to_owned()),
        "{kinds:?}"
    );
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let ext4 = disk_by_path(&disks, foreign.path());
    assert_eq!(class(ext4), "foreign");
    assert!(
        format!("{:?}", ext4.class).contains("ext4"),
        "{:?}",
        ext4.class
    );
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
    let mounted = node
        .exec(&["findmnt", "-n", "-o", "SOURCE", "/var/cache/grove"])
        .expect("findmnt");
    assert!(
        String::from_utf8_lossy(&mounted.stdout).contains("[/cache]"),
        "{mounted:?}"
    );

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
    node.start_agent().expect("boot");
    wait_storage(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let gpt = disk_by_path(&disks, node.disks()[1].path());
    assert_eq!(class(gpt), "foreign", "{gpt:?}");
    assert!(
        format!("{:?}", gpt.class).contains("gpt"),
        "{:?}",
        gpt.class
    );
    assert_eq!(sha256(node.disks()[1].path()), digest);
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 1);
}

#[test]
fn a_restart_keeps_pools_cache_and_volume_contents() {
    let farm = start(NodeSpec::default().disks(vec![SSD, HDD]));
    let node = farm.node(0);
    let (status, body) = call(
        node,
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "data", "size_bytes": 64 << 20})),
    );
    assert_eq!(status, 201, "{body}");
    let volume: Resource = serde_json::from_value(body).expect("resource");
    let file = volume.path.join("hello.txt");
    let file = file.to_str().expect("utf-8 path");
    let wrote = node
        .exec(&["sh", "-c", &format!("echo kept > {file} && sync")])
        .expect("write");
    assert!(wrote.status.success(), "{wrote:?}");
    let (status, body) = call(
        node,
        Method::POST,
        "/v1/vdisks",
        Some(json!({"name": "root", "size_bytes": 32 << 20})),
    );
    assert_eq!(status, 201, "{body}");
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
    let read = node.exec(&["cat", file]).expect("read");
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\n");
    let volumes: Vec<Resource> = get(node, "/v1/volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].size_bytes, 64 << 20);
    let vdisks: Vec<Resource> = get(node, "/v1/vdisks");
    assert_eq!(vdisks.len(), 1);
    let size = node
        .exec(&["stat", "-c", "%s", vdisks[0].path.to_str().expect("utf-8")])
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
    let (status, body) = call(
        node,
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "small", "size_bytes": 16 << 20})),
    );
    assert_eq!(status, 201, "{body}");
    let volume: Resource = serde_json::from_value(body).expect("resource");
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
    node.start_agent().expect("boot");
    wait_storage(&farm);
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
    node.start_agent().expect("boot");
    wait_storage(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let foreign = disk_by_path(&disks, node.disks()[1].path())
        .device
        .serial
        .clone();
    let ours = disk_by_path(&disks, node.disks()[0].path())
        .device
        .serial
        .clone();

    let (status, body) = call(node, Method::POST, &format!("/v1/disks/{ours}/wipe"), None);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Grove pool")),
        "{body}"
    );
    let (status, body) = call(node, Method::POST, "/v1/disks/NOSUCHSERIAL/wipe", None);
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(node, Method::POST, "/v1/disks/a..b!/wipe", None);
    assert_eq!(status, 400, "{body}");
    let pools: Vec<PoolReport> = get(node, "/v1/pools");
    assert_eq!(pools.len(), 1, "refused wipes changed nothing");

    let (status, body) = call(
        node,
        Method::POST,
        &format!("/v1/disks/{foreign}/wipe"),
        None,
    );
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
    let (status, body) = call(
        node,
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "after", "size_bytes": 8 << 20})),
    );
    assert_eq!(status, 201, "{body}");
    assert_ne!(
        body["pool"],
        json!(victim.label),
        "placed on the broken pool"
    );
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    let farm = start(NodeSpec::default().disks(vec![SSD]));
    let node = farm.node(0);
    let (status, body) = call(
        node,
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "taken", "size_bytes": 8 << 20})),
    );
    assert_eq!(status, 201, "{body}");
    let before: (Vec<Resource>, Vec<Resource>, Vec<PoolReport>) = (
        get(node, "/v1/volumes"),
        get(node, "/v1/vdisks"),
        get(node, "/v1/pools"),
    );

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/volumes",
            json!({"name": "zero", "size_bytes": 0}),
            400,
            "more than 0",
        ),
        (
            "/v1/vdisks",
            json!({"name": "zero", "size_bytes": 0}),
            400,
            "more than 0",
        ),
        (
            "/v1/volumes",
            json!({"name": "a/b", "size_bytes": 1 << 20}),
            400,
            "a/b",
        ),
        (
            "/v1/volumes",
            json!({"name": "..", "size_bytes": 1 << 20}),
            400,
            "..",
        ),
        (
            "/v1/vdisks",
            json!({"name": "../etc", "size_bytes": 1 << 20}),
            400,
            "../etc",
        ),
        (
            "/v1/volumes",
            json!({"name": "taken", "size_bytes": 1 << 20}),
            409,
            "taken",
        ),
        (
            "/v1/volumes",
            json!({"name": "huge", "size_bytes": 1u64 << 40}),
            422,
            "largest free space",
        ),
        (
            "/v1/vdisks",
            json!({"name": "huge", "size_bytes": 1u64 << 40}),
            422,
            "largest free space",
        ),
        (
            "/v1/volumes",
            json!({"name": "x", "size_bytes": -1}),
            400,
            "size_bytes",
        ),
        ("/v1/volumes", json!({"name": "x", "size": 1}), 400, "size"),
    ];
    for (uri, body, want, needle) in cases {
        let (status, answer) = call(node, Method::POST, uri, Some(body.clone()));
        assert_eq!(status, want, "{uri} {body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{uri} {body}: {message}");
    }
    let (status, _) = call(node, Method::DELETE, "/v1/volumes/missing", None);
    assert_eq!(status, 404);

    let after: (Vec<Resource>, Vec<Resource>, Vec<PoolReport>) = (
        get(node, "/v1/volumes"),
        get(node, "/v1/vdisks"),
        get(node, "/v1/pools"),
    );
    // What was asked for must be unchanged; usage is btrfs's background
    // accounting and may move on its own.
    let shape = |list: &[Resource]| -> Vec<(String, u64, String)> {
        list.iter()
            .map(|r| {
                (
                    r.name.to_string(),
                    r.size_bytes,
                    r.path.display().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&after.0), shape(&before.0));
    assert_eq!(shape(&after.1), shape(&before.1));
    assert_eq!(after.2.len(), before.2.len());
    assert_eq!(after.2[0].allocated_bytes, before.2[0].allocated_bytes);
    let listing = node
        .exec(&[
            "ls",
            "-A",
            before.2[0]
                .mount_point
                .join("volumes")
                .to_str()
                .expect("utf-8"),
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
    let mounted = node
        .exec(&["findmnt", "-n", "-o", "SOURCE", "/var/cache/grove"])
        .expect("findmnt");
    assert!(
        String::from_utf8_lossy(&mounted.stdout).contains("[/cache]"),
        "{mounted:?}"
    );
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
    node.start_agent().expect("boot");
    wait_storage(&farm);
    let disks: Vec<Disk> = get(node, "/v1/disks");
    let boot = disk_by_path(&disks, usb.path());
    assert!(boot.boot_medium, "{boot:?}");
    assert_eq!(boot.pool, None);
    assert!(!disk_by_path(&disks, node.disks()[0].path()).boot_medium);
    let serial = boot.device.serial.clone();
    let (status, body) = call(
        node,
        Method::POST,
        &format!("/v1/disks/{serial}/wipe"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("boot medium")),
        "{body}"
    );
    assert_eq!(sha256(usb.path()), digest);
}
