//! Tenant networks on disk, so a restarted netd rebuilds each one exactly.
//!
//! One JSON file per network, `<netid>.json`, written atomically with mode
//! 0600 (it holds the private key) under `<cache>/netd/networks` when the
//! system cache is mounted, else `<run>/netd/networks`; files are read back
//! through the same validation as the API. Limits: the run directory does
//! not survive a reboot, and a file that fails validation is reported and
//! skipped, not repaired.

use std::path::{Path, PathBuf};

use grove_daemon::fsutil::{self, WriteError};
use serde::{Deserialize, Serialize};

use crate::state::{self, FileError, Location};

use super::input::{self, InputError, NetworkRequest};
use super::names::NetId;
use super::network::{Attachment, EgressSlot, Network};

/// The directory's name under `<cache>/netd` or `<run>/netd`.
pub const DIR: &str = "networks";

/// Why a state file could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} holds a network the API would refuse: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InputError,
    },
    #[error("{path} holds network {netid}, not the one its name says")]
    Misnamed { path: PathBuf, netid: NetId },
    #[error("cannot encode the state of network {netid}: {source}")]
    Encode {
        netid: NetId,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    network: NetworkRequest,
    egress_slot: EgressSlot,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

/// Where the files live: written to the preferred directory, read from
/// every candidate (the preferred one wins).
#[derive(Debug, Clone)]
pub struct StateDir {
    write_to: PathBuf,
    read_from: Vec<PathBuf>,
}

impl StateDir {
    /// `<state_dir>` if configured; else `<cache>/netd/networks` if `cache`
    /// exists, else `<run>/netd/networks`.
    pub fn locate(state_dir: Option<&Path>, cache: &Path, run: &Path) -> Self {
        let found = Location::find(state_dir.map(Path::to_owned), cache, run, DIR);
        Self {
            write_to: found.write_to,
            read_from: found.read_from,
        }
    }

    pub fn path(&self) -> &Path {
        &self.write_to
    }

    fn file(dir: &Path, netid: &NetId) -> PathBuf {
        dir.join(format!("{netid}.json"))
    }

    /// Every saved network, and the files that could not be used. Blocking.
    pub fn load_all(&self) -> (Vec<Network>, Vec<StateError>) {
        let mut networks: Vec<Network> = Vec::new();
        let mut errors = Vec::new();
        for dir in &self.read_from {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            for path in paths {
                match load(&path) {
                    Ok(net) if networks.iter().any(|n| n.netid() == net.netid()) => {}
                    Ok(net) => networks.push(net),
                    Err(e) => errors.push(e),
                }
            }
        }
        (networks, errors)
    }

    /// Replaces the file of `network`, mode 0600. Blocking.
    pub fn save(&self, network: &Network) -> Result<(), StateError> {
        state::ensure_dir(&self.write_to)?;
        let saved = Saved {
            network: network.spec.to_request(),
            egress_slot: network.slot,
            attachments: network.attachments.clone(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|source| StateError::Encode {
            netid: network.netid().clone(),
            source,
        })?;
        fsutil::write_atomic(&Self::file(&self.write_to, network.netid()), &bytes, 0o600)?;
        Ok(())
    }

    /// Removes every file of `netid`. Blocking.
    pub fn remove(&self, netid: &NetId) -> Result<(), StateError> {
        for dir in &self.read_from {
            let path = Self::file(dir, netid);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateError::Remove { path, source: e });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn load(path: &Path) -> Result<Network, StateError> {
    let saved: Saved = state::read_json(path, "tenant network")?;
    let spec = input::parse_network(&saved.network).map_err(|source| StateError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    if path.file_stem().and_then(|s| s.to_str()) != Some(spec.netid.as_str()) {
        return Err(StateError::Misnamed {
            path: path.to_owned(),
            netid: spec.netid,
        });
    }
    Ok(Network {
        spec,
        slot: saved.egress_slot,
        attachments: saved.attachments,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tenant::input::AttachKind;

    fn network(netid: &str) -> Network {
        let spec = input::parse_network(&NetworkRequest {
            netid: netid.to_owned(),
            ip_range: "10.1.0.0/16".to_owned(),
            subnet: "10.1.1.0/24".to_owned(),
            private_key: base64::encode([9u8; 32]),
            listen_port: 7001,
            peers: Vec::new(),
        })
        .expect("valid");
        Network {
            spec,
            slot: EgressSlot::try_from(2).expect("slot"),
            attachments: vec![Attachment {
                name: "web".parse().expect("name"),
                kind: AttachKind::Tap,
                address: "10.1.1.2".parse().expect("ip"),
            }],
        }
    }

    #[test]
    fn round_trips_with_mode_0600_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::locate(
            Some(dir.path()),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert!(state.load_all().0.is_empty());
        state.save(&network("net1")).expect("saved");
        state.save(&network("net2")).expect("saved");
        let file = dir.path().join("net1.json");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, errors) = state.load_all();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(loaded, vec![network("net1"), network("net2")]);
        state.remove(&"net1".parse().expect("id")).expect("removed");
        state
            .remove(&"net1".parse().expect("id"))
            .expect("removed twice");
        assert_eq!(state.load_all().0, vec![network("net2")]);
    }

    #[test]
    fn prefers_the_cache_and_reports_bad_files() {
        let cache = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let gone = cache.path().join("absent");
        let state = StateDir::locate(None, &gone, run.path());
        assert_eq!(state.path(), run.path().join("netd").join(DIR));
        state.save(&network("net1")).expect("saved");
        std::fs::write(state.path().join("bad.json"), "{}").unwrap();
        std::fs::copy(
            state.path().join("net1.json"),
            state.path().join("other.json"),
        )
        .expect("copy");
        let (loaded, errors) = state.load_all();
        assert_eq!(loaded.len(), 1);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text.iter().any(|e| e.contains("bad.json")), "{text:?}");
        assert!(
            text.iter().any(|e| e.contains("holds network net1")),
            "{text:?}"
        );
        assert!(!text.concat().contains(&base64::encode([9u8; 32])));
    }
}
