//! A node that has no CA certificates (an image built without them, or a
//! broken /etc/ssl): the image store still opens, so provisiond starts and
//! serves what does not need a registry, and a pull fails with an error
//! that says why, instead of the process panicking.
//!
//! rustls finds the system's certificates through `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` when they are set; this test points both at empty places.
//! It sets them before any thread exists, hence its own `main`.

use std::time::Duration;

use provisiond::image::{ImageError, ImageRef, ImageStore, StoreConfig};

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("ca-certificates.crt");
    let certs = dir.path().join("certs");
    std::fs::write(&file, b"").expect("an empty bundle");
    std::fs::create_dir(&certs).expect("an empty directory");
    // SAFETY: no other thread exists yet; the runtime starts below.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &file);
        std::env::set_var("SSL_CERT_DIR", &certs);
    }

    let root = dir.path().join("images");
    let mut config = StoreConfig::new(&root);
    config.connect_timeout = Duration::from_secs(1);
    config.read_timeout = Duration::from_secs(1);
    let store = ImageStore::open(config).expect("the store opens without CA certificates");
    assert_eq!(store.list().expect("the cache lists"), Vec::new());

    let reference = ImageRef::parse(&format!(
        "registry.example:5000/app@sha256:{}",
        "ab".repeat(32)
    ))
    .expect("a pinned reference");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let err = runtime
        .block_on(store.ensure(&reference))
        .expect_err("no pull without a client");
    assert!(matches!(err, ImageError::NoClient { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("registry.example:5000/app"), "{text}");
    assert!(text.contains("CA certificates"), "{text}");
    assert_eq!(store.fetched(), 0);
    assert_eq!(store.list().expect("the cache lists"), Vec::new());
    assert!(
        std::fs::read_dir(root.join("tmp"))
            .expect("tmp")
            .next()
            .is_none(),
        "a refused pull leaves nothing behind"
    );
}
