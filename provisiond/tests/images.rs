//! The image cache against a real OCI registry (`docker-registry`, run by
//! the testbed with a config of its own on 127.0.0.1): images built here,
//! pushed with the same OCI client, pulled by digest.
//!
//! Shows: an image is pulled once, however many ask at once, and served
//! from the cache after a restart; an index resolves to linux/amd64; a
//! blob or a manifest the registry tampered with is refused and nothing is
//! cached; a layer that escapes the root is refused; the registry down at
//! start, gone and back, restarted empty, stalled, and refusing (an image
//! it does not hold) each give their own error and leave the cache as it
//! was; an unused image is collected.
//!
//! Needs root (the layers' owners are set) and the docker-registry package
//! (ci/setup installs it).

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use grove_testbed::oci::{self, OciRegistry, layer};
use provisiond::image::{Digest, ImageError, ImageRef, ImageStore, StoreConfig};
use serde_json::json;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn registry() -> OciRegistry {
    assert!(
        nix::unistd::geteuid().is_root(),
        "unpacking sets the layers' owners: run as root (ci/test)"
    );
    OciRegistry::start(LOCALHOST).unwrap_or_else(|e| panic!("registry: {e}"))
}

fn store(root: &Path, registry: &str) -> ImageStore {
    let mut config = StoreConfig::new(root);
    config.http_registries = vec![registry.to_owned()];
    config.read_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    ImageStore::open(config).expect("the store opens")
}

/// A layer whose one entry's name is written raw (the tar builder refuses
/// `..`).
fn raw_layer(name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).expect("append");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&b.into_inner().expect("tar")).expect("gzip");
    e.finish().expect("gzip")
}

/// An image pushed to the registry, pinned.
struct Pushed {
    reference: ImageRef,
    layers: Vec<Digest>,
    manifest: Vec<u8>,
}

/// Pushes an image of `layers` (for linux/`arch`) as `repo:t`.
async fn push(host: &str, repo: &str, layers: &[Vec<u8>], arch: &str) -> Pushed {
    let run = json!({"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin"],
                     "WorkingDir": "/srv"});
    let pushed = oci::push(host, repo, layers, arch, run)
        .await
        .unwrap_or_else(|e| panic!("push: {e}"));
    Pushed {
        reference: ImageRef::parse(&pushed.reference).expect("pinned"),
        layers: pushed
            .layers
            .iter()
            .map(|d| Digest::parse(d).expect("a digest"))
            .collect(),
        manifest: pushed.manifest,
    }
}

fn app_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            ("bin/", b""),
            ("bin/app", b"#!/bin/sh\necho hi\n"),
            ("etc/", b""),
            ("etc/old", b"old"),
        ]),
        layer(&[
            ("etc/.wh.old", b""),
            ("etc/new", b"new"),
            ("sh -> bin/app", b""),
        ]),
    ]
}

/// A runtime to push and pull with, a registry of the test's own and an
/// empty cache directory.
fn bed() -> (tokio::runtime::Runtime, OciRegistry, tempfile::TempDir) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let registry = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    (rt, registry, dir)
}

/// What the cache directory holds, for "nothing changed" checks.
fn cache(root: &Path) -> (Vec<String>, usize) {
    let images: Vec<String> = std::fs::read_dir(root.join("images"))
        .expect("images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let tmp = std::fs::read_dir(root.join("tmp")).expect("tmp").count();
    (images, tmp)
}

#[test]
fn an_image_is_pulled_once_for_all_who_ask_and_served_from_the_cache_after_a_restart() {
    let (rt, registry, dir) = bed();
    let pushed = rt.block_on(push(&registry.host(), "grove/app", &app_layers(), "amd64"));
    let store = std::sync::Arc::new(store(dir.path(), &registry.host()));

    // Four workloads ask for it at once: one pull.
    let images = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (store, r) = (store.clone(), pushed.reference.clone());
            set.spawn(async move { store.ensure(&r).await });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done.expect("task").expect("pulled"));
        }
        out
    });
    assert_eq!(store.fetched(), 1);
    for digest in &pushed.layers {
        assert_eq!(
            registry.blob_fetches(digest.hex()),
            1,
            "layer {digest} fetched once\n{}",
            registry.log()
        );
    }
    let image = &images[0];
    assert!(images.iter().all(|i| i == image));
    let rootfs = &image.rootfs;
    assert_eq!(
        std::fs::read(rootfs.join("bin/app")).expect("app"),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(std::fs::read(rootfs.join("etc/new")).expect("new"), b"new");
    assert!(!rootfs.join("etc/old").exists(), "the whiteout removed it");
    assert_eq!(
        std::fs::read_link(rootfs.join("sh")).expect("link"),
        Path::new("bin/app")
    );
    assert_eq!(image.config.entrypoint, ["/bin/app"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(image.manifest, Digest::of(&pushed.manifest).to_string());

    // A restarted daemon finds it whole, without the registry.
    drop(store);
    let mut registry = registry;
    registry.stop();
    let store = self::store(dir.path(), &registry.host());
    let again = rt
        .block_on(store.ensure(&pushed.reference))
        .expect("from the cache");
    assert_eq!(&again, image);
    assert_eq!(store.fetched(), 0);

    // Nothing uses it: collected, and only it.
    let keep: HashSet<Digest> = HashSet::new();
    assert_eq!(
        store.collect(&keep).expect("collect"),
        vec![pushed.reference.digest.clone()]
    );
    assert!(!rootfs.exists());
    assert_eq!(cache(dir.path()), (vec![], 0));
}

#[test]
fn an_index_resolves_to_its_linux_amd64_image() {
    let (rt, registry, dir) = bed();
    let host = registry.host();
    let amd = rt.block_on(push(
        &host,
        "grove/multi",
        &[layer(&[("which", b"amd64")])],
        "amd64",
    ));
    let arm = rt.block_on(push(
        &host,
        "grove/multi",
        &[layer(&[("which", b"arm64")])],
        "arm64",
    ));
    let as_pushed = |p: &Pushed| oci::Pushed {
        reference: p.reference.to_string(),
        manifest: p.manifest.clone(),
        layers: Vec::new(),
    };
    let (amd_pushed, arm_pushed) = (as_pushed(&amd), as_pushed(&arm));
    let (index, _) = rt
        .block_on(oci::push_index(
            &host,
            "grove/multi",
            &[(&arm_pushed, "arm64"), (&amd_pushed, "amd64")],
        ))
        .expect("push the index");
    let reference = ImageRef::parse(&index).expect("pinned");
    let store = store(dir.path(), &host);
    let image = rt.block_on(store.ensure(&reference)).expect("pulled");
    assert_eq!(
        std::fs::read(image.rootfs.join("which")).expect("file"),
        b"amd64"
    );
    assert_eq!(image.manifest, Digest::of(&amd.manifest).to_string());

    // An image for another platform alone is refused.
    let err = rt
        .block_on(store.ensure(&arm.reference))
        .expect_err("arm64");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
}

#[test]
fn a_lying_registry_and_an_escaping_layer_are_refused_and_nothing_is_cached() {
    let (rt, registry, dir) = bed();
    let host = registry.host();
    let store = store(dir.path(), &host);

    // A layer blob with other bytes under its digest.
    let tampered = rt.block_on(push(&host, "grove/tampered", &app_layers(), "amd64"));
    let blob = registry.blob_file(tampered.layers[1].hex());
    let mut bytes = std::fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("tamper");
    let err = rt
        .block_on(store.ensure(&tampered.reference))
        .expect_err("tampered");
    assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    assert_eq!(cache(dir.path()), (vec![], 0), "nothing kept");

    // A manifest with other bytes under its digest.
    let lied = rt.block_on(push(&host, "grove/lied", &app_layers(), "amd64"));
    let manifest = registry.blob_file(lied.reference.digest.hex());
    // Still JSON the registry serves, other bytes all the same.
    let mut text = std::fs::read(&manifest).expect("manifest");
    text.insert(1, b' ');
    std::fs::write(&manifest, &text).expect("tamper");
    let err = rt
        .block_on(store.ensure(&lied.reference))
        .expect_err("lied");
    assert!(matches!(err, ImageError::Mismatch { .. }), "{err}");
    assert_eq!(cache(dir.path()), (vec![], 0), "nothing kept");

    // A layer that climbs out of the root.
    let escaping = rt.block_on(push(
        &host,
        "grove/escape",
        &[layer(&[("ok", b"1")]), raw_layer("../../escaped")],
        "amd64",
    ));
    let err = rt
        .block_on(store.ensure(&escaping.reference))
        .expect_err("escape");
    assert!(err.to_string().contains("leaves the image's root"), "{err}");
    assert!(!dir.path().join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
    assert_eq!(cache(dir.path()), (vec![], 0), "nothing kept");
}

#[test]
fn a_registry_down_gone_restarted_empty_stalled_or_refusing_gives_its_own_error() {
    let (rt, mut registry, dir) = bed();
    let host = registry.host();
    let pushed = rt.block_on(push(&host, "grove/app", &app_layers(), "amd64"));
    let store = store(dir.path(), &host);

    // Refusing: an image it does not hold.
    let unknown =
        ImageRef::parse(&format!("{host}/grove/app@{}", Digest::of(b"nothing"))).expect("pinned");
    let err = rt.block_on(store.ensure(&unknown)).expect_err("unknown");
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");

    // Down: connection refused, said at once.
    registry.stop();
    let started = Instant::now();
    let err = rt
        .block_on(store.ensure(&pushed.reference))
        .expect_err("down");
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache(dir.path()), (vec![], 0));

    // Back: the same store pulls it.
    registry.restart(false).expect("back");
    rt.block_on(store.ensure(&pushed.reference))
        .expect("pulled once back");

    // Restarted empty: what is cached is still served; what is not is
    // refused with the registry's answer.
    registry.restart(true).expect("restarted empty");
    rt.block_on(store.ensure(&pushed.reference))
        .expect("cached");
    let other = rt.block_on(push(
        &host,
        "grove/other",
        &[layer(&[("x", b"x")])],
        "amd64",
    ));
    registry.restart(true).expect("restarted empty");
    let err = rt
        .block_on(store.ensure(&other.reference))
        .expect_err("gone");
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");

    // Stalled: a registry that accepts and never answers times out.
    let stalled = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let stalled_host = stalled.local_addr().expect("addr").to_string();
    let slow_store = self::store(&dir.path().join("slow"), &stalled_host);
    let reference = ImageRef::parse(&format!(
        "{stalled_host}/grove/app@{}",
        pushed.reference.digest
    ))
    .expect("pinned");
    let started = Instant::now();
    let err = rt
        .block_on(slow_store.ensure(&reference))
        .expect_err("stalled");
    assert!(matches!(err, ImageError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
    assert_eq!(
        store.list().expect("list"),
        vec![pushed.reference.digest.clone()]
    );
}
