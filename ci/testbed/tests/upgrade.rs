//! A/B upgrades of a node booted from its stick, under QEMU (TCG): the
//! farmer's signed `POST /v1/upgrade` names an upgrade image on the farm
//! LAN and its sha256, or `POST /v1/upgrade/image` carries the image as
//! its body; a wrong sum or a changed body is refused before the stick is
//! written; a good image boots from the other slot and stays; an image
//! whose agent never gets ready hands back to the old slot by itself, and
//! the old system says why in `/v1/node`.
//!
//! The upgrade images are `image/build`'s `grove-upgrade.tar` with one
//! more cpio archive appended to its initramfs (the kernel unpacks them in
//! order, later files replacing earlier ones): a new os-release, so the
//! new system has a version of its own, and for the broken image a
//! storaged that never answers.

mod common;
mod signing;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Lan, ONE_AT_A_TIME, comes_up, get_json, image};
use grove_testbed::qemu::{BootImage, BootPath, MachineSpec, Medium, QemuNode};
use grove_testbed::registry::Registry;
use grove_testbed::{cmd, wait_until};
use serde_json::{Value, json};

/// Serves one file over HTTP on the farm LAN, as a farmer's laptop would,
/// and counts the requests, until dropped.
struct FileServer {
    url: String,
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _woken = std::net::TcpStream::connect(self.addr);
    }
}

impl FileServer {
    fn start(ip: Ipv4Addr, name: &str, bytes: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind((ip, 0)).expect("a port on the farm LAN");
        let addr = listener.local_addr().expect("its address");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counted, stopped) = (requests.clone(), stop.clone());
        let bytes = Arc::new(bytes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && stream.read(&mut byte).is_ok_and(|n| n == 1)
                    {
                        head.push(byte[0]);
                    }
                    let header = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _gone = stream
                        .write_all(header.as_bytes())
                        .and_then(|()| stream.write_all(&bytes));
                });
            }
        });
        FileServer {
            url: format!("http://{addr}/{name}"),
            addr,
            requests,
            stop,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An upgrade image: the built one, with `files` (path in the image,
/// content, mode) appended to its initramfs and its os-release's build
/// named `build`. Returns the tar and the version the node reports.
fn upgrade_image(
    image: &BootImage,
    work: &Path,
    build: &str,
    files: &[(&str, &str, u32)],
) -> (Vec<u8>, String) {
    let os_release = std::fs::read_to_string(image.dir.join("os-release")).expect("os-release");
    let version_id = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .expect("VERSION_ID")
        .to_owned();
    let os_release: String = os_release
        .lines()
        .map(|l| match l.starts_with("BUILD_ID=") {
            true => format!("BUILD_ID={build}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    let overlay = work.join(format!("overlay-{build}"));
    let mut all = vec![("etc/os-release", os_release.as_str(), 0o644)];
    all.extend_from_slice(files);
    for (path, content, mode) in &all {
        let file = overlay.join(path);
        std::fs::create_dir_all(file.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&file, content).expect("overlay file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode)).expect("chmod");
    }
    let cpio_file = work.join(format!("overlay-{build}.cpio"));
    cmd::run(
        "sh",
        &[
            "-c",
            "cd \"$1\" && find . -mindepth 1 | sort | cpio --quiet -o -H newc --owner=0:0 >\"$2\"",
            "sh",
            overlay.to_str().expect("utf-8"),
            cpio_file.to_str().expect("utf-8"),
        ],
    )
    .expect("cpio (ci/setup installs it) packs the overlay");
    let mut initramfs = std::fs::read(&image.initramfs).expect("initramfs");
    initramfs.resize(initramfs.len().next_multiple_of(4), 0);
    initramfs.extend_from_slice(&std::fs::read(&cpio_file).expect("the overlay's cpio"));

    let mut tar = tar::Builder::new(Vec::new());
    let kernel = std::fs::read(&image.kernel).expect("vmlinuz");
    for (name, bytes) in [
        ("os-release", os_release.as_bytes()),
        ("vmlinuz", kernel.as_slice()),
        ("initramfs", initramfs.as_slice()),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
            .expect("tar member");
    }
    let tar = tar.into_inner().expect("the tar");
    (tar, format!("{version_id} ({build})"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The headers of the farmer's signed `POST /v1/upgrade` of `body` to
/// the node `account`.
fn signed_upgrade(registry: &Registry, account: &str, body: &str) -> Vec<(String, String)> {
    let signed = common::farmer_signed_body(registry, account, "/v1/upgrade", body);
    grove_testbed::http::signed_headers(&signed)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// `POST /v1/upgrade` of `body` with `headers`: the status and the answer.
fn post_upgrade(api: &str, body: &str, headers: &[(String, String)]) -> (u16, String) {
    let headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    grove_testbed::http::curl_post(
        &format!("{api}/v1/upgrade"),
        Some(body.as_bytes()),
        &headers,
    )
    .expect("curl answers")
}

/// The farmer's signed `POST /v1/upgrade` of `body` to the node `account`
/// at `api`: the status and the answer.
fn ask_upgrade(registry: &Registry, api: &str, account: &str, body: &Value) -> (u16, String) {
    let body = body.to_string();
    post_upgrade(api, &body, &signed_upgrade(registry, account, &body))
}

/// Serves `tar` on the farm LAN and has the farmer upgrade the node at
/// `api` to it: the node accepts, names the slot and version it wrote,
/// and restarts.
fn upgrade_to(lan: &Lan, node: &QemuNode, api: &str, tar: &[u8], version: &str) {
    let server = FileServer::start(lan.farm.host_ip(), "grove-upgrade.tar", tar.to_vec());
    let (code, answer) = ask_upgrade(
        &lan.registry,
        api,
        &account_of(api),
        &json!({ "url": server.url, "sha256": sha256_hex(tar) }),
    );
    assert_eq!(code, 202, "{answer}");
    let installed: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(installed["slot"], "b", "{answer}");
    assert_eq!(installed["version"], version, "{answer}");
    assert_eq!(server.requests(), 1, "fetched once");
    restarts(node, 1, Duration::from_secs(120));
}

/// The farmer's signed `POST /v1/upgrade/image` to the node `account` at
/// `api`, signed for the image file `signed` and carrying `body`: the
/// status and the answer.
fn upload(
    registry: &Registry,
    api: &str,
    account: &str,
    signed: &Path,
    body: &[u8],
) -> (u16, String) {
    let key = registry
        .farmer_key()
        .expect("the registry made the farmer key");
    let headers = signing::request(
        key,
        account,
        "/v1/upgrade/image",
        &["--body-file", signed.to_str().expect("utf-8")],
    );
    grove_testbed::http::curl_post(
        &format!("{api}/v1/upgrade/image"),
        Some(body),
        &grove_testbed::http::signed_headers(&headers),
    )
    .expect("curl answers")
}

/// `/v1/node`'s `system` once `done` holds for it.
fn system_when(api: &str, node: &QemuNode, done: impl Fn(&Value) -> bool) -> Value {
    let mut report = Value::Null;
    let settled = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        report = get_json(&format!("{api}/v1/node")).unwrap_or(Value::Null);
        done(&report["system"])
    });
    assert!(settled, "/v1/node: {report}\n{}", node.logs(60));
    report["system"].clone()
}

/// Waits for the `n`th "Restarting system" on the node's console.
fn restarts(node: &QemuNode, n: usize, within: Duration) {
    let restarted = wait_until(within, Duration::from_millis(500), || {
        std::fs::read_to_string(node.console_log())
            .is_ok_and(|c| c.matches("reboot: Restarting system").count() >= n)
    });
    assert!(restarted, "restart {n} did not come\n{}", node.logs(400));
}

/// The account a node that came up at `api` registered as.
fn account_of(api: &str) -> String {
    let chain = get_json(&format!("{api}/v1/chain")).expect("/v1/chain answers");
    chain["account"].as_str().expect("an account").to_owned()
}

/// Boots a stick made for `lan` under the firmware `path` gives, checks it
/// runs slot A of the image's version, and returns the stick, the node and
/// its API.
fn boot_stick(
    lan: &Lan,
    name: &str,
    path: fn(Medium) -> BootPath,
    params: &str,
) -> (std::path::PathBuf, QemuNode, String) {
    let stick = lan.farm.dir().join("grove.img");
    image()
        .usb_stick(&stick, &format!("{} {params}", lan.node_params()))
        .expect("image/usb makes the stick");
    let spec = MachineSpec {
        boot: path(Medium::Stick(stick.clone())),
        reboots: true,
        ..MachineSpec::default()
    };
    let (node, up) = lan.boot(name, &spec);
    let system = system_when(&up.api, &node, |s| s["slot"] == "a");
    assert_eq!(system["on_trial"], false, "{system}");
    assert!(system["last_upgrade"].is_null(), "{system}");
    assert!(
        system["medium"].is_string(),
        "the stick was found: {system}"
    );
    (stick, node, up.api)
}

#[test]
fn under_uefi_a_good_upgrade_boots_the_other_slot_and_stays_and_a_wrong_sum_writes_nothing() {
    // A URL with a wrong sum first; then the image as the request's body.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    let (stick, mut node, api) = boot_stick(&lan, "UEFI stick, slot A", BootPath::Uefi, "");
    let account = account_of(&api);
    let old_version =
        get_json(&format!("{api}/v1/node")).expect("/v1/node")["system"]["version"].clone();

    let (tar, version) = upgrade_image(image(), lan.farm.dir(), "upgrade-good", &[]);
    assert_ne!(old_version, version.as_str());
    let server = FileServer::start(lan.farm.host_ip(), "grove-upgrade.tar", tar.clone());

    // A sum that is not the image's: fetched, refused, nothing written.
    let before = cmd::sha256(&stick).expect("sha256");
    let wrong = sha256_hex(b"another image");
    let body = json!({ "url": server.url, "sha256": wrong }).to_string();
    let headers = signed_upgrade(&lan.registry, &account, &body);
    let (code, answer) = post_upgrade(&api, &body, &headers);
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer.contains(&wrong) && answer.contains("nothing was written"),
        "{answer}"
    );
    assert_eq!(server.requests(), 1, "the image was fetched once");
    // A replay of that request, a stranger's unsigned one, and one signed
    // for another node: refused before any fetch.
    let good = json!({ "url": server.url, "sha256": sha256_hex(&tar) }).to_string();
    let other_node = signed_upgrade(
        &lan.registry,
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
        &good,
    );
    for (what, body, headers, status) in [
        ("a replay", body.as_str(), headers.clone(), 401),
        ("a stranger", good.as_str(), Vec::new(), 401),
        ("another node's", good.as_str(), other_node, 401),
    ] {
        let (code, answer) = post_upgrade(&api, body, &headers);
        assert_eq!(code, status, "{what}: {answer}");
    }
    assert_eq!(server.requests(), 1, "a refused request fetched nothing");
    assert_eq!(
        cmd::sha256(&stick).expect("sha256"),
        before,
        "the stick was written"
    );

    // The image as the body of the request. Changed on the way, it is
    // refused and nothing is written.
    drop(server);
    let signed = lan.farm.dir().join("upgrade-good.tar");
    std::fs::write(&signed, &tar).expect("the image beside the farmer's key");
    let mut changed = tar.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    let (code, answer) = upload(&lan.registry, &api, &account, &signed, &changed);
    assert_eq!(code, 422, "{answer}");
    assert!(answer.contains("nothing was written"), "{answer}");
    assert_eq!(
        cmd::sha256(&stick).expect("sha256"),
        before,
        "the stick was written"
    );
    // As signed: written into slot B, and the node reboots into it.
    let (code, answer) = upload(&lan.registry, &api, &account, &signed, &tar);
    assert_eq!(code, 202, "{answer}");
    let installed: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(installed["slot"], "b", "{answer}");
    assert_eq!(installed["version"], version.as_str(), "{answer}");
    restarts(&node, 1, Duration::from_secs(120));
    let up = comes_up(&lan.farm, &lan.registry, &mut node, Instant::now());
    assert_eq!(up.api, api, "the same lease");
    let system = system_when(&api, &node, |s| s["last_upgrade"]["outcome"] == "good");
    assert_eq!(system["slot"], "b", "{system}");
    assert_eq!(system["version"], version.as_str(), "{system}");
    assert_eq!(system["on_trial"], false, "{system}");
    assert_eq!(system["last_upgrade"]["from"]["slot"], "a", "{system}");
    assert_eq!(
        system["last_upgrade"]["to"]["version"],
        version.as_str(),
        "{system}"
    );
    assert_eq!(account_of(&api), account, "the same node");

    // It stays: after a reboot, slot B again.
    let signed = common::farmer_signed(&lan.registry, &account, "/v1/reboot");
    let headers = grove_testbed::http::signed_headers(&signed);
    let (code, body) = grove_testbed::http::curl_post(&format!("{api}/v1/reboot"), None, &headers)
        .expect("curl answers");
    assert_eq!(code, 202, "{body}");
    restarts(&node, 2, Duration::from_secs(120));
    comes_up(&lan.farm, &lan.registry, &mut node, Instant::now());
    let system = system_when(&api, &node, |s| s["slot"] == "b");
    assert_eq!(system["version"], version.as_str(), "{system}");
    assert_eq!(system["last_upgrade"]["outcome"], "good", "{system}");
    node.stop().expect("QEMU stops");
    lan.teardown();
}

#[test]
fn under_bios_an_upgrade_that_never_gets_ready_rolls_back_by_itself() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    let (_stick, mut node, api) = boot_stick(
        &lan,
        "BIOS stick, slot A",
        BootPath::Bios,
        "grove.upgrade.deadline=60",
    );
    let account = account_of(&api);
    let old_version =
        get_json(&format!("{api}/v1/node")).expect("/v1/node")["system"]["version"].clone();

    // A storaged that never answers: the new system never gets ready.
    let (tar, version) = upgrade_image(
        image(),
        lan.farm.dir(),
        "upgrade-never-ready",
        &[("usr/bin/storaged", "#!/bin/sh\nexec sleep 1000000\n", 0o755)],
    );
    upgrade_to(&lan, &node, &api, &tar, &version);

    // GRUB tries slot B once; its agent gives up after the deadline and
    // reboots, and GRUB boots slot A again.
    restarts(&node, 2, Duration::from_secs(300));
    let console = std::fs::read_to_string(node.console_log()).expect("console log");
    assert!(
        console.contains("Booting `Grove, slot b'") && console.contains("grove.slot=b"),
        "GRUB did not try slot B\n{}",
        node.logs(80)
    );
    let up = comes_up(&lan.farm, &lan.registry, &mut node, Instant::now());
    assert_eq!(up.api, api, "the same lease");
    let system = system_when(&api, &node, |s| {
        s["last_upgrade"]["outcome"] == "rolled_back"
    });
    assert_eq!(system["slot"], "a", "{system}");
    assert_eq!(system["version"], old_version, "{system}");
    let upgrade = &system["last_upgrade"];
    assert_eq!(upgrade["to"]["version"], version.as_str(), "{system}");
    let reason = upgrade["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not ready within 60 s") && reason.contains("storaged"),
        "{system}"
    );
    assert_eq!(account_of(&api), account, "the same node");
    node.stop().expect("QEMU stops");
    lan.teardown();
}
