use super::*;

/// One entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Device(&'a str),
}

/// An uncompressed tar layer of `entries`, with raw names (a builder would
/// refuse `..` and absolute paths, which these tests need).
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, &[])
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                (n, d)
            }
            E::Link(n, t) | E::Hard(n, t) => {
                let kind = if matches!(e, E::Link(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                let old = h.as_old_mut();
                old.linkname[..t.len()].copy_from_slice(t.as_bytes());
                (n, &[])
            }
            E::Device(n) => {
                h.set_entry_type(tar::EntryType::Char);
                (n, &[])
            }
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<Unpacked, UnpackError> {
    let mut u = Unpacker::new(root, 1 << 20);
    for l in layers {
        u.apply(l.as_slice(), Compression::None)?;
    }
    Ok(u.unpacked())
}

/// Every path below `root`, with `/` after directories and `-> target`
/// after links.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut children: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|c| c.expect("entry").path())
            .collect();
        children.sort();
        for c in children {
            let rel = c.strip_prefix(root).expect("below").display().to_string();
            let meta = fs::symlink_metadata(&c).expect("meta");
            if meta.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    fs::read_link(&c).expect("link").display()
                ));
            } else if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &c, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let lower = layer(&[
        E::Dir("etc"),
        E::File("etc/passwd", b"root:x:0:0"),
        E::File("etc/gone", b"x"),
        E::Dir("var/cache"),
        E::File("var/cache/old", b"old"),
        E::Link("bin", "usr/bin"),
        E::Dir("usr/bin"),
        E::File("usr/bin/sh", b"#!"),
        E::Hard("usr/bin/ash", "usr/bin/sh"),
    ]);
    let upper = layer(&[
        E::File("etc/.wh.gone", b""),
        E::File("var/cache/new", b"new"),
        E::File("var/cache/.wh..wh..opq", b""),
        E::File("etc/passwd", b"root:x:0:0:changed"),
    ]);
    let done = apply(root, &[lower, upper]).expect("applies");
    assert_eq!(
        tree(root),
        [
            "bin -> usr/bin",
            "etc/",
            "etc/passwd",
            "usr/",
            "usr/bin/",
            "usr/bin/ash",
            "usr/bin/sh",
            "var/",
            "var/cache/",
            "var/cache/new",
        ]
    );
    assert_eq!(
        fs::read(root.join("etc/passwd")).unwrap(),
        b"root:x:0:0:changed"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(root.join("usr/bin/ash")).expect("meta").ino(),
        fs::metadata(root.join("usr/bin/sh")).expect("meta").ino(),
        "a hard link"
    );
    assert_eq!(done.bytes, 10 + 1 + 3 + 2 + 3 + 18);
}

#[test]
fn gzip_layers_unpack_and_unknown_media_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut u = Unpacker::new(dir.path(), 1 << 20);
    let media = "application/vnd.oci.image.layer.v1.tar+gzip";
    u.apply(
        gzip(&layer(&[E::File("hello", b"hi")])).as_slice(),
        Compression::of(media).expect("gzip"),
    )
    .expect("applies");
    assert_eq!(fs::read(dir.path().join("hello")).unwrap(), b"hi");
    let err = Compression::of("application/vnd.oci.image.layer.v1.tar+zstd").expect_err("zstd");
    assert!(err.to_string().contains("tar+zstd"), "{err}");
}

#[test]
fn nothing_escapes_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let outside = outer.path().join("outside");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("secret"), b"keep").unwrap();
    let target = outside.display().to_string();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("absolute", vec![layer(&[E::File("/tmp/evil", b"x")])]),
        ("dotdot", vec![layer(&[E::File("a/../../evil", b"x")])]),
        (
            "through a link of the same layer",
            vec![layer(&[E::Link("out", &target), E::File("out/evil", b"x")])],
        ),
        (
            "through a link of a lower layer",
            vec![
                layer(&[E::Link("out", &target)]),
                layer(&[E::File("out/secret", b"overwritten")]),
            ],
        ),
        (
            "a whiteout through a link",
            vec![
                layer(&[E::Link("out", &target)]),
                layer(&[E::File("out/.wh.secret", b"")]),
            ],
        ),
        (
            "a hard link to a file outside",
            vec![layer(&[E::Hard("h", "../outside/secret")])],
        ),
        (
            "a hard link through a link",
            vec![
                layer(&[E::Link("out", &target)]),
                layer(&[E::Hard("h", "out/secret")]),
            ],
        ),
    ];
    for (what, layers) in cases {
        let err = apply(&root, &layers).expect_err(what);
        assert!(matches!(err, UnpackError::Escape { .. }), "{what}: {err}");
        assert_eq!(
            fs::read(outside.join("secret")).expect("still there"),
            b"keep",
            "{what}"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "{what}: nothing made outside"
        );
        assert!(!Path::new("/tmp/evil").exists(), "{what}");
        fs::remove_dir_all(&root).expect("clean");
        fs::create_dir(&root).expect("root");
    }
}

#[test]
fn a_link_in_place_of_a_file_is_replaced_not_written_through() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).expect("root");
    let victim = outer.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    apply(
        &root,
        &[
            layer(&[E::Link("f", &victim.display().to_string())]),
            layer(&[E::File("f", b"new")]),
        ],
    )
    .expect("applies");
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
    assert!(
        !fs::symlink_metadata(root.join("f"))
            .expect("meta")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn device_nodes_are_kept_out_and_the_size_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let done = apply(
        dir.path(),
        &[layer(&[E::Device("dev/sda"), E::File("ok", b"1")])],
    )
    .expect("applies");
    assert_eq!(done.devices_skipped, 1);
    assert!(!dir.path().join("dev/sda").exists());

    let big = vec![7u8; 600];
    let mut u = Unpacker::new(dir.path(), 1000);
    u.apply(layer(&[E::File("a", &big)]).as_slice(), Compression::None)
        .expect("within");
    let err = u
        .apply(layer(&[E::File("b", &big)]).as_slice(), Compression::None)
        .expect_err("over the limit");
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 1000 }),
        "{err}"
    );
    assert!(!dir.path().join("b").exists());
}

#[test]
fn a_broken_archive_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = layer(&[E::File("a", b"1")]);
    bytes[148] ^= 0xff;
    let err = apply(dir.path(), &[bytes]).expect_err("bad checksum");
    assert!(matches!(err, UnpackError::Archive(_)), "{err}");
}
