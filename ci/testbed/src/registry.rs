//! The farm's embedded registry (`agent registry`), run on the host side of
//! the farm LAN for the sandbox and the benchmarks.
//!
//! A child process bound to the farm's host address; killed and reaped on
//! drop. Farm 1 is owned by a real farmer account: one given, or a farmer
//! key made with `agent sign new-key` in the farm's run directory, so
//! signed requests work on the farm's nodes. Limits: one registry per farm;
//! its state file and the key live in the run directory and go with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Farm, http_get, wait_until};

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Bins(#[from] crate::bins::BinError),
    #[error("cannot create the registry log: {0}")]
    Log(#[source] std::io::Error),
    #[error("cannot start the registry: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the registry did not answer on {0}")]
    NotUp(String),
    #[error("cannot make the farmer key {path}: {reason}")]
    FarmerKey { path: PathBuf, reason: String },
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    url: String,
    farmer: String,
    farmer_key: Option<PathBuf>,
}

/// Makes a farmer key at `path` with `agent sign new-key`; its account.
pub fn new_farmer_key(path: &Path) -> Result<String, RegistryError> {
    farmer_key(path, "new-key")
}

/// The farm's farmer key at `path`: the one already there (a registry
/// started again for the same farm keeps its farmer), else a new one.
fn farm_farmer_key(path: &Path) -> Result<String, RegistryError> {
    if path.exists() {
        farmer_key(path, "account")
    } else {
        new_farmer_key(path)
    }
}

/// Runs `agent sign ACTION --key PATH`, which prints the key's account.
fn farmer_key(path: &Path, action: &str) -> Result<String, RegistryError> {
    let agent = crate::bin_dir()?.join("agent");
    let failed = |reason: String| RegistryError::FarmerKey {
        path: path.to_owned(),
        reason,
    };
    let out = Command::new(agent)
        .args(["sign", action, "--key"])
        .arg(path)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Registry {
    /// Starts the registry for `farm` on `port`, with farm 1 owned by
    /// `farmer` (an SS58 account) when given, else by a new farmer key
    /// written to the farm's run directory (`farmer.key`).
    pub fn start(farm: &Farm, port: u16, farmer: Option<&str>) -> Result<Registry, RegistryError> {
        let (farmer, farmer_key) = match farmer {
            Some(account) => (account.to_owned(), None),
            None => {
                let path = farm.dir().join("farmer.key");
                (farm_farmer_key(&path)?, Some(path))
            }
        };
        let agent = crate::bin_dir()?.join("agent");
        let listen = format!("{}:{port}", farm.host_ip());
        let log =
            std::fs::File::create(farm.dir().join("registry.log")).map_err(RegistryError::Log)?;
        let mut cmd = Command::new(agent);
        cmd.args([
            "registry", "--listen", &listen, "--farm", "farm-one", "--state",
        ])
        .arg(farm.dir().join("registry.json"))
        .args(["--farmer", &farmer]);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(RegistryError::Spawn)?;
        let registry = Registry {
            child,
            url: format!("http://{listen}"),
            farmer,
            farmer_key,
        };
        let probe = format!("{}/v1/farms/1", registry.url);
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            matches!(http_get(&probe), Ok((200, _)))
        });
        if up {
            Ok(registry)
        } else {
            Err(RegistryError::NotUp(listen))
        }
    }

    /// `http://host:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account that owns farm 1.
    pub fn farmer(&self) -> &str {
        &self.farmer
    }

    /// The farmer's key, when the registry made it.
    pub fn farmer_key(&self) -> Option<&Path> {
        self.farmer_key.as_deref()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("testbed: stopping the registry: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("testbed: reaping the registry: {e}");
        }
    }
}
