//! `/etc/grove/agent.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The agent's configuration. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub supervisor: SupervisorConfig,
    pub identity: IdentityConfig,
    pub chain: crate::chain::ChainConfig,
    pub mesh: crate::chain::MeshConfig,
}

/// Where the node's seed is kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The system cache, which storaged mounts.
    pub cache_dir: PathBuf,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from(grove_daemon::CACHE_DIR),
        }
    }
}

/// The operator API and the agent's own socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP address of the operator API on the farm LAN.
    pub listen: SocketAddr,
    /// The agent's Unix socket for the other daemons.
    pub socket: PathBuf,
    /// A TCP client must send a request's headers within this time.
    pub header_read_timeout_secs: u64,
    /// A TCP connection with no traffic for this long is closed.
    pub idle_timeout_secs: u64,
    /// TCP connections held at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            socket: grove_daemon::socket_path(crate::NAME),
            header_read_timeout_secs: 10,
            idle_timeout_secs: 30,
            max_connections: 256,
        }
    }
}

/// How the daemons are run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Where the daemon binaries are; default: the agent's own directory.
    pub bin_dir: Option<PathBuf>,
    /// Where `<daemon>.toml` config files are looked up.
    pub config_dir: PathBuf,
    /// How long to wait for one daemon's `/ready` before starting the next.
    pub ready_timeout_secs: u64,
    /// Lines of each daemon's output kept for the API.
    pub log_lines: usize,
    /// Copy daemon output to the agent's stderr (the console).
    pub forward_logs: bool,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            bin_dir: None,
            config_dir: PathBuf::from("/etc/grove"),
            ready_timeout_secs: 30,
            log_lines: 500,
            forward_logs: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c: Config = grove_daemon::config::parse("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let e =
            grove_daemon::config::parse::<Config>("[api]\nlisten = \"0.0.0.0:80\"\nlsten = 1\n")
                .expect_err("unknown key");
        assert!(e.contains("lsten"), "{e}");
        let e = grove_daemon::config::parse::<Config>("[api]\nlisten = \"nowhere\"\n")
            .expect_err("bad address");
        assert!(e.contains("listen"), "{e}");
        let e = grove_daemon::config::parse::<Config>("[supervisr]\n").expect_err("unknown table");
        assert!(e.contains("supervisr"), "{e}");
    }
}
