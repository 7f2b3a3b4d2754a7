//! Strict TOML configuration files.
//!
//! Every daemon's config type derives `Deserialize` with
//! `#[serde(deny_unknown_fields)]`, so a misspelt key is refused and named
//! rather than silently ignored. No file means the defaults; a file that was
//! named but cannot be read is an error, never a silent fallback.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Loads `path` as `T`, or `T::default()` when no path is given.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// Parses TOML text as `T`; the error names the offending key and line.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        socket: Option<PathBuf>,
        retries: u32,
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse::<Sample>("socket = \"/x\"\nretires = 3\n").expect_err("typo must fail");
        assert!(err.contains("retires"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse::<Sample>("retries = \"three\"").expect_err("type must fail");
        assert!(err.contains("retries"), "{err}");
    }

    #[test]
    fn no_path_means_defaults_and_missing_file_is_an_error() {
        assert_eq!(load::<Sample>(None).unwrap(), Sample::default());
        let err = load::<Sample>(Some(Path::new("/nonexistent/grove.toml"))).expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn valid_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, "retries = 4\n").unwrap();
        let cfg: Sample = load(Some(&path)).unwrap();
        assert_eq!(cfg.retries, 4);
    }
}
