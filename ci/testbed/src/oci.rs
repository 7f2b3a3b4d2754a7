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
