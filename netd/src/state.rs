//! Where netd keeps what it rebuilds after a restart (the mesh's
//! `mesh.json`, the tenant networks' directory).
//!
//! Under `<cache>/netd` when the system cache is mounted (it survives a
//! reboot), else under `<run>/netd`; reads look in both, the preferred one
//! first, so state written before the cache was mounted is still found.
//! Both are JSON read through [`read_json`], in directories made by
//! [`ensure_dir`], failing with one [`FileError`].
//! Limits: a path set in the configuration is the only place looked.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a state file could not be read, or its directory made.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a {what} state file: {source}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Dir(#[from] grove_daemon::fsutil::DirError),
}

/// The JSON state file at `path`, a `what` state file. Blocking.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Parse {
        path: path.to_owned(),
        what,
        source,
    })
}

/// Makes the directory `path` and its parents, if missing. Blocking.
pub fn ensure_dir(path: &Path) -> Result<(), FileError> {
    Ok(grove_daemon::fsutil::ensure_dir(path, None)?)
}

/// Where one piece of state is written and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub write_to: PathBuf,
    pub read_from: Vec<PathBuf>,
}

impl Location {
    /// `configured` if set; else `name` under `<cache>/netd` if `cache`
    /// exists, else under `<run>/netd`.
    pub fn find(configured: Option<PathBuf>, cache: &Path, run: &Path, name: &str) -> Self {
        if let Some(path) = configured {
            return Self {
                write_to: path.clone(),
                read_from: vec![path],
            };
        }
        let cached = cache.join("netd").join(name);
        let volatile = run.join("netd").join(name);
        let (write_to, other) = if cache.is_dir() {
            (cached, volatile)
        } else {
            (volatile, cached)
        };
        Self {
            read_from: vec![write_to.clone(), other],
            write_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_wins_when_it_is_mounted_and_a_configured_path_is_alone() {
        let cache = tempfile::tempdir().expect("tempdir");
        let run = tempfile::tempdir().expect("tempdir");
        let found = Location::find(None, cache.path(), run.path(), "x.json");
        assert_eq!(found.write_to, cache.path().join("netd/x.json"));
        assert_eq!(found.read_from[1], run.path().join("netd/x.json"));
        let gone = cache.path().join("absent");
        let found = Location::find(None, &gone, run.path(), "x.json");
        assert_eq!(found.write_to, run.path().join("netd/x.json"));
        let own = PathBuf::from("/etc/own.json");
        let found = Location::find(Some(own.clone()), cache.path(), run.path(), "x.json");
        assert_eq!(found.read_from, vec![own]);
    }
}
