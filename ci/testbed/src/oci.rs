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

/// A layer holding the host's busybox with its shared libraries and the
/// applets a test container uses, plus the directories a root filesystem
/// needs.
pub fn busybox_layer() -> Result<Vec<u8>, PushError> {
    let busybox = Path::new("/bin/busybox");
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PushError::Read {
            path: path.to_owned(),
            source,
        })
    };
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
        "bin/", "dev/", "proc/", "sys/", "tmp/", "etc/", "lib/", "lib64/", "www/",
    ] {
        entries.push((dir.into(), Vec::new()));
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
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "id", "ip", "ping", "ps", "mount", "httpd", "wget",
        "head", "dd", "hostname", "touch",
    ] {
        entries.push((format!("bin/{applet} -> busybox"), Vec::new()));
    }
    entries.push(("www/index.html".into(), b"grove container\n".to_vec()));
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    Ok(layer(&refs))
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
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter()
            .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l))
            .collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    client
        .push_manifest_raw(
            &at,
            manifest.clone(),
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .map_err(failed)?;
    Ok(Pushed {
        reference: format!("{host}/{repo}@{}", digest(&manifest)),
        layers: layers.iter().map(|l| digest(l)).collect(),
        manifest,
    })
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
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(&p.manifest), "size": p.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap_or_default();
    let at = oci_client::Reference::with_tag(host.to_owned(), repo.to_owned(), "multi".into());
    client
        .push_manifest_raw(
            &at,
            index.clone(),
            http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
        .await
        .map_err(|source| PushError::Registry {
            host: host.to_owned(),
            source,
        })?;
    Ok((format!("{host}/{repo}@{}", digest(&index)), index))
}
