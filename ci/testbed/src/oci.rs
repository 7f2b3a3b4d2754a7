//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) with a config of our own — one address, no
//! auth, storage in a directory of its own — never the package's default
//! config, which listens everywhere.
//!
//! Tests push images to it, tamper with its stored blobs to make it lie,
//! stop it, start it again (with its storage or empty), and count the blob
//! fetches in its access log. Killed, reaped and removed on drop. Limits:
//! plain HTTP; the port is picked free just before the start, so another
//! process could take it in between (the start then fails and says so).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{http_get, wait_until};

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum OciRegistryError {
    #[error("no docker-registry binary: ci/setup installs the docker-registry package")]
    Missing,
    #[error("cannot prepare {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start docker-registry: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("docker-registry did not answer on {addr} within 20 s; its log:\n{log}")]
    NotUp { addr: SocketAddr, log: String },
}

const BINARY: &str = "/usr/bin/docker-registry";

/// The media types of an image manifest and of an index of them.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A running registry.
#[derive(Debug)]
pub struct OciRegistry {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
}

impl OciRegistry {
    /// A registry on `ip`, on a free port, with empty storage.
    pub fn start(ip: IpAddr) -> Result<OciRegistry, OciRegistryError> {
        if !Path::new(BINARY).exists() {
            return Err(OciRegistryError::Missing);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OciRegistryError::Io { path, source }
        };
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(io(Path::new("a free port")))?
            .port();
        let dir = std::env::temp_dir().join(format!("grove-oci-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("storage")).map_err(io(&dir))?;
        let mut registry = OciRegistry {
            child: None,
            dir,
            addr: SocketAddr::new(ip, port),
        };
        registry.write_config()?;
        registry.run()?;
        Ok(registry)
    }

    fn write_config(&self) -> Result<(), OciRegistryError> {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n",
            self.dir.join("storage").display(),
            self.addr
        );
        let path = self.dir.join("config.yml");
        std::fs::write(&path, config).map_err(|source| OciRegistryError::Io { path, source })
    }

    fn run(&mut self) -> Result<(), OciRegistryError> {
        let log_path = self.dir.join("registry.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| OciRegistryError::Io {
                path: log_path.clone(),
                source,
            })?;
        let err = log.try_clone().map_err(|source| OciRegistryError::Io {
            path: log_path.clone(),
            source,
        })?;
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(OciRegistryError::Spawn)?;
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.addr);
        let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            http_get(&url).is_ok_and(|(status, _)| status == 200)
        });
        if !up {
            self.stop();
            return Err(OciRegistryError::NotUp {
                addr: self.addr,
                log: self.log(),
            });
        }
        Ok(())
    }

    /// `host:port`, as an image reference names it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the registry; its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _gone = child.kill();
            let _reaped = child.wait();
        }
    }

    /// Starts it again on the same address, with its storage, or empty.
    pub fn restart(&mut self, empty: bool) -> Result<(), OciRegistryError> {
        self.stop();
        if empty {
            let storage = self.dir.join("storage");
            let io = |source| OciRegistryError::Io {
                path: storage.clone(),
                source,
            };
            std::fs::remove_dir_all(&storage).map_err(io)?;
            std::fs::create_dir_all(&storage).map_err(io)?;
        }
        self.run()
    }

    /// Where the registry keeps the blob with the sha256 `hex`: writing
    /// there makes it serve other bytes under that digest.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        let prefix = hex.get(..2).unwrap_or(hex);
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// How many times the blob with the sha256 `hex` was fetched (`GET`),
    /// from the access log.
    pub fn blob_fetches(&self, hex: &str) -> usize {
        let needle = format!("/blobs/sha256:{hex} ");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        self.stop();
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why an image could not be built or pushed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push to {host}: {source}")]
    Registry {
        host: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("cannot read {path:?} for a test image: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the libraries of {path} (ldd)")]
    Ldd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A gzipped tar layer of `(path, bytes)` entries: a path ending in `/` is
/// a directory, `name -> target` a symbolic link, anything else a file
/// (mode 0755, owned by root).
pub fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let appended = if let Some((name, target)) = path.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, target)
        } else if let Some(dir) = path.strip_suffix('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, dir, std::io::empty())
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data)
        };
        appended.unwrap_or_else(|e| panic!("a test layer entry {path}: {e}"));
    }
    let tar = b
        .into_inner()
        .unwrap_or_else(|e| panic!("a test layer: {e}"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar)
        .and_then(|()| gz.finish())
        .unwrap_or_else(|e| panic!("gzip a test layer: {e}"))
}

/// The host's busybox with its shared libraries, the directories they
/// sit in and those a root filesystem needs (`extra_dirs` beside), as
/// [`layer`] entries, and links for `applets`.
fn busybox_tree(
    extra_dirs: &[&str],
    applets: &[&str],
) -> Result<Vec<(String, Vec<u8>)>, PushError> {
    let busybox = Path::new("/bin/busybox");
    let mut files: Vec<(String, Vec<u8>)> = vec![("bin/busybox".into(), read(busybox)?)];
    let ldd = Command::new("ldd")
        .arg(busybox)
        .output()
        .map_err(|source| PushError::Ldd {
            path: busybox.to_owned(),
            source,
        })?;
    let listing = String::from_utf8_lossy(&ldd.stdout).into_owned();
    for lib in listing
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.contains('('))
    {
        files.push((
            lib.trim_start_matches('/').to_owned(),
            read(Path::new(lib))?,
        ));
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for dir in [
        "bin/", "dev/", "proc/", "sys/", "tmp/", "etc/", "lib/", "lib64/",
    ]
    .iter()
    .chain(extra_dirs)
    {
        entries.push(((*dir).into(), Vec::new()));
    }
    for (path, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let dir = format!("{}/", p.display());
            if !entries.iter().any(|(e, _)| *e == dir) {
                entries.push((dir, Vec::new()));
            }
            parent = p.parent();
        }
    }
    entries.sort_by_key(|(p, _)| p.matches('/').count());
    entries.extend(files);
    for applet in applets {
        entries.push((format!("bin/{applet} -> busybox"), Vec::new()));
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<Vec<u8>, PushError> {
    std::fs::read(path).map_err(|source| PushError::Read {
        path: path.to_owned(),
        source,
    })
}

fn layer_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    layer(&refs)
}

/// A layer holding the host's busybox with its shared libraries and the
/// applets a test container uses, plus the directories a root filesystem
/// needs.
pub fn busybox_layer() -> Result<Vec<u8>, PushError> {
    let mut entries = busybox_tree(
        &["www/"],
        &[
            "sh", "ls", "cat", "echo", "sleep", "id", "ip", "ping", "ps", "mount", "httpd", "wget",
            "head", "dd", "hostname", "touch",
        ],
    )?;
    entries.push(("www/index.html".into(), b"grove container\n".to_vec()));
    Ok(layer_of(&entries))
}

/// The modules a test machine's initrd loads, in order, to reach its
/// virtio disk (ext4) and NIC: the Debian kernel has them all as modules.
const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "crc16",
    "mbcache",
    "jbd2",
    "crc32c_generic",
    "ext4",
];

/// The initrd's `/init`: loads [`GUEST_MODULES`], mounts `/dev/vda` and
/// hands over to the `init=` of the command line.
const GUEST_INITRD_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m.ko || echo "initrd: no $m"; done
next=/sbin/init
for a in $(cat /proc/cmdline); do case $a in init=*) next=${a#init=} ;; esac; done
while [ ! -b /dev/vda ]; do sleep 0.1; done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || echo "initrd: cannot mount /dev/vda"
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot "$next"
"#;

/// The machine's own init (its `entrypoint`): the address from `ip=`, the
/// disks' serials on the console, then a line that says it is up.
const GUEST_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
for a in $(cat /proc/cmdline); do case $a in ip=*) spec=${a#ip=} ;; esac; done
addr=$(echo "$spec" | cut -d: -f1)
gw=$(echo "$spec" | cut -d: -f3)
mask=$(echo "$spec" | cut -d: -f4)
ifconfig lo up
ifconfig eth0 "$addr" netmask "$mask" up
route add default gw "$gw"
for d in /sys/block/vd*; do echo "disk ${d##*/} serial=$(cat $d/serial 2>/dev/null)"; done
echo "grove machine up at $addr"
while true; do sleep 3600; done
"#;

/// The entries of `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect())
}

/// The kernel a test machine boots and the module tree beside it: the
/// Debian kernel `image/build` unpacked into its cache.
pub fn guest_kernel() -> Result<(PathBuf, PathBuf), PushError> {
    let cache = std::env::var_os("GROVE_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::qemu::workspace().join("target/image-cache"));
    let missing = |what: &str| PushError::Read {
        path: cache.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {what} there: run image/build first (ci/test does)"),
        ),
    };
    let mut kernels: Vec<PathBuf> = named(&cache, "kernel-")
        .map_err(|_| missing("kernel cache"))?
        .into_iter()
        .filter(|p| p.join("lib/modules").is_dir())
        .collect();
    kernels.sort();
    let root = kernels.pop().ok_or_else(|| missing("unpacked kernel"))?;
    let boot = named(&root.join("boot"), "vmlinuz-").map_err(|_| missing("boot directory"))?;
    let kernel = boot.into_iter().next().ok_or_else(|| missing("vmlinuz"))?;
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    Ok((kernel, root.join("lib/modules").join(version)))
}

/// A newc cpio archive of `entries` (as [`layer`] takes them), for an
/// initrd.
fn newc(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (path, data)) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(dir) = path.strip_suffix('/') {
            put(dir, 0o040_755, &[], ino);
        } else if let Some((name, target)) = path.split_once(" -> ") {
            put(name, 0o120_777, target.as_bytes(), ino);
        } else {
            put(path, 0o100_755, data, ino);
        }
    }
    put("TRAILER!!!", 0, &[], 0);
    out
}

/// A direct-boot machine image, as zos lays one out: `/boot/vmlinuz` and
/// `/boot/initrd.img` (busybox, the virtio and ext4 modules, an `/init`
/// that mounts `/dev/vda` and runs `init=`), and a root of busybox whose
/// `/sbin/init` sets the address from `ip=`, prints each disk's serial and
/// `grove machine up at <ip>` on the console, and idles.
pub fn machine_layer() -> Result<Vec<u8>, PushError> {
    let (kernel, modules) = guest_kernel()?;
    let applets = [
        "sh",
        "mount",
        "umount",
        "cat",
        "echo",
        "insmod",
        "sleep",
        "mkdir",
        "switch_root",
        "cut",
        "ifconfig",
        "route",
        "ls",
        "ping",
    ];
    let mut initrd = busybox_tree(&["newroot/"], &applets)?;
    initrd.push(("lib/modules/".into(), Vec::new()));
    let dep =
        std::fs::read_to_string(modules.join("modules.dep")).map_err(|source| PushError::Read {
            path: modules.join("modules.dep"),
            source,
        })?;
    for name in GUEST_MODULES {
        let file = format!("/{name}.ko:");
        let rel = dep
            .lines()
            .find_map(|l| {
                let path = l.split_whitespace().next()?;
                format!("/{path}")
                    .ends_with(&file)
                    .then(|| path.trim_end_matches(':').to_owned())
            })
            .ok_or_else(|| PushError::Read {
                path: modules.join(format!("{name}.ko")),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in modules.dep"),
            })?;
        initrd.push((format!("lib/modules/{name}.ko"), read(&modules.join(rel))?));
    }
    initrd.push(("modules".into(), GUEST_MODULES.join(" ").into_bytes()));
    initrd.push(("init".into(), GUEST_INITRD_INIT.as_bytes().to_vec()));
    let mut root = busybox_tree(&["boot/", "sbin/", "data/"], &applets)?;
    root.push(("boot/vmlinuz".into(), read(&kernel)?));
    root.push(("boot/initrd.img".into(), newc(&initrd)));
    root.push(("sbin/init".into(), GUEST_INIT.as_bytes().to_vec()));
    Ok(layer_of(&root))
}

/// An OCI client for the plain HTTP test registry.
fn client() -> oci_client::Client {
    // rustls needs one process-wide crypto provider; one installed already
    // is as good.
    let _already = rustls::crypto::ring::default_provider().install_default();
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
}

/// An image pushed to a registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `host/repo@sha256:…`.
    pub reference: String,
    pub manifest: Vec<u8>,
    /// Its layers' digests, `sha256:…`.
    pub layers: Vec<String>,
}

/// Pushes an image of `layers` (gzipped tars) for linux/`arch` with the
/// run config `run` (`{"Entrypoint": [...], "Env": [...]}`) to the plain
/// HTTP registry at `host`, as `repo:t`.
pub async fn push(
    host: &str,
    repo: &str,
    layers: &[Vec<u8>],
    arch: &str,
    run: serde_json::Value,
) -> Result<Pushed, PushError> {
    let client = client();
    let failed = |source| PushError::Registry {
        host: host.to_owned(),
        source,
    };
    let at = oci_client::Reference::with_tag(host.to_owned(), repo.to_owned(), "t".to_owned());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "config": run,
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap_or_default();
    for blob in layers.iter().chain([&config]) {
        client
            .push_blob(&at, blob.clone(), &digest(blob))
            .await
            .map_err(failed)?;
    }
    let descriptor = |media: &str, bytes: &[u8]| serde_json::json!({"mediaType": media, "digest": digest(bytes), "size": bytes.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter()
            .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l))
            .collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    push_manifest(&client, host, &at, &manifest, MANIFEST).await?;
    Ok(Pushed {
        reference: format!("{host}/{repo}@{}", digest(&manifest)),
        layers: layers.iter().map(|l| digest(l)).collect(),
        manifest,
    })
}

/// Puts `manifest`, of media type `media`, at `at` on the registry at
/// `host`.
async fn push_manifest(
    client: &oci_client::Client,
    host: &str,
    at: &oci_client::Reference,
    manifest: &[u8],
    media: &'static str,
) -> Result<(), PushError> {
    client
        .push_manifest_raw(at, manifest.to_vec(), http::HeaderValue::from_static(media))
        .await
        .map_err(|source| PushError::Registry {
            host: host.to_owned(),
            source,
        })?;
    Ok(())
}

/// Pushes an index of `entries` (a pushed image and its platform's
/// architecture) as `repo:multi`; answers the index's reference.
pub async fn push_index(
    host: &str,
    repo: &str,
    entries: &[(&Pushed, &str)],
) -> Result<(String, Vec<u8>), PushError> {
    let client = client();
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(p, arch)| {
            serde_json::json!({
                "mediaType": MANIFEST,
                "digest": digest(&p.manifest), "size": p.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": manifests,
    }))
    .unwrap_or_default();
    let at = oci_client::Reference::with_tag(host.to_owned(), repo.to_owned(), "multi".into());
    push_manifest(&client, host, &at, &index, INDEX).await?;
    Ok((format!("{host}/{repo}@{}", digest(&index)), index))
}
