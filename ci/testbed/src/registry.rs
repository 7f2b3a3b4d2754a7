//! The farm's embedded registry (`agent registry`), run on the host side of
//! the farm LAN for the sandbox and the benchmarks.
//!
//! A child process bound to the farm's host address; killed and reaped on
//! drop. Limits: one registry per farm; its state file lives in the farm's
//! run directory and goes with it.

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
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    /// Starts the registry for `farm` on `port`, with farm 1 owned by
    /// `farmer` (an SS58 account) when given.
    pub fn start(farm: &Farm, port: u16, farmer: Option<&str>) -> Result<Registry, RegistryError> {
        let agent = crate::bin_dir()?.join("agent");
        let listen = format!("{}:{port}", farm.host_ip());
        let log =
            std::fs::File::create(farm.dir().join("registry.log")).map_err(RegistryError::Log)?;
        let mut cmd = Command::new(agent);
        cmd.args([
            "registry", "--listen", &listen, "--farm", "farm-one", "--state",
        ])
        .arg(farm.dir().join("registry.json"));
        if let Some(account) = farmer {
            cmd.args(["--farmer", account]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(RegistryError::Spawn)?;
        let registry = Registry {
            child,
            url: format!("http://{listen}"),
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
