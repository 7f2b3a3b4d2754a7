//! The applied mesh configuration on disk, so a restarted netd rebuilds
//! `mesh0` exactly.
//!
//! One JSON file, `mesh.json`, written atomically with mode 0600 (it holds
//! the private key) under `<cache>/netd` when the system cache is mounted,
//! else `<run>/netd`; it is read back through the same validation as the
//! API. Limits: the run directory does not survive a reboot, and a file
//! that fails validation is reported and ignored, not repaired.

use std::path::{Path, PathBuf};

use grove_daemon::fsutil::{self, WriteError};
use serde::{Deserialize, Serialize};

use crate::state::{self, FileError, Location};

use super::input::{self, InputError, MeshRequest, MeshSettings, Peer, PeerRequest};

/// The file's name inside its directory.
pub const FILE: &str = "mesh.json";

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} holds a configuration the API would refuse: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InputError,
    },
    #[error("cannot encode the mesh state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What is saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    mesh: MeshRequest,
    peers: Vec<PeerRequest>,
}

/// Where the state lives: the first existing of the candidates is read,
/// writes go to the preferred one.
#[derive(Debug, Clone)]
pub struct StateFile {
    write_to: PathBuf,
    read_from: Vec<PathBuf>,
}

impl StateFile {
    /// `<state_dir>/mesh.json` if configured; else under `<cache>/netd` if
    /// `cache` exists, else under `<run>/netd`.
    pub fn locate(state_dir: Option<&Path>, cache: &Path, run: &Path) -> Self {
        let found = Location::find(state_dir.map(|d| d.join(FILE)), cache, run, FILE);
        Self {
            write_to: found.write_to,
            read_from: found.read_from,
        }
    }

    pub fn path(&self) -> &Path {
        &self.write_to
    }

    /// The saved settings and peers, if any file exists.
    pub fn load(&self) -> Result<Option<(MeshSettings, Vec<Peer>)>, StateError> {
        let Some(path) = self.read_from.iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        let saved: Saved = state::read_json(path, "mesh")?;
        let invalid = |source| StateError::Invalid {
            path: path.clone(),
            source,
        };
        let settings = input::parse_mesh(&saved.mesh).map_err(invalid)?;
        let peers = input::parse_peers(&saved.peers, &settings.public_key).map_err(invalid)?;
        Ok(Some((settings, peers)))
    }

    /// Replaces the file with `settings` and `peers`, mode 0600.
    pub fn save(&self, settings: &MeshSettings, peers: &[Peer]) -> Result<(), StateError> {
        if let Some(dir) = self.write_to.parent() {
            state::ensure_dir(dir)?;
        }
        let saved = Saved {
            mesh: MeshRequest {
                private_key: settings.private_key.expose(),
                listen_port: settings.listen_port,
                prefix: settings.prefix.to_string(),
                public_endpoint: settings.public_endpoint,
            },
            peers: peers.iter().map(Peer::to_request).collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(StateError::Encode)?;
        fsutil::write_atomic(&self.write_to, &bytes, 0o600)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn settings() -> MeshSettings {
        input::parse_mesh(&MeshRequest {
            private_key: base64::encode([7u8; 32]),
            listen_port: 51820,
            prefix: "fd00:1:2::/48".to_owned(),
            public_endpoint: false,
        })
        .expect("valid")
    }

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::locate(
            Some(dir.path()),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert!(file.load().expect("nothing yet").is_none());
        let peers = vec![Peer {
            key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
                .parse()
                .expect("key"),
            endpoints: vec!["10.0.0.1:51820".parse().expect("endpoint")],
            public_endpoint: true,
        }];
        file.save(&settings(), &peers).expect("saved");
        let mode = std::fs::metadata(file.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (s, p) = file.load().unwrap().expect("present");
        assert_eq!((s, p), (settings(), peers));
    }

    #[test]
    fn prefers_the_cache_when_it_is_mounted() {
        let cache = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let file = StateFile::locate(None, cache.path(), run.path());
        assert_eq!(file.path(), cache.path().join("netd").join(FILE));
        file.save(&settings(), &[]).expect("saved");
        assert!(file.load().unwrap().is_some());
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{}").unwrap();
        let file = StateFile::locate(Some(dir.path()), dir.path(), dir.path());
        let err = file.load().expect_err("bad").to_string();
        assert!(err.contains(FILE), "{err}");
    }
}
