//! Finding the workspace's daemon binaries (`agent` and the daemons it
//! starts).
//!
//! `GROVE_BIN_DIR` wins; otherwise the directory of the running executable
//! if it holds `agent` (the `sandbox` binary), else its parent (integration
//! tests run from `target/debug/deps`). Limits: the binaries must already be
//! built, and must not live under `/run`, `/var/cache` or `/mnt`, which a
//! node covers with its own tmpfs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The variable that overrides where the binaries are.
pub const BIN_DIR_ENV: &str = "GROVE_BIN_DIR";

/// Directories a node mounts over; binaries there would vanish for it.
const HIDDEN_IN_NODE: [&str; 3] = ["/run", "/var/cache", "/mnt"];

/// The binaries cannot be found or used.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("cannot tell where this executable is")]
    CurrentExe(#[source] std::io::Error),
    #[error("no `agent` binary at {path}: run `cargo build --workspace --bins` first")]
    MissingAgent { path: PathBuf },
    #[error("binary directory {dir} is under {hidden}, which every node covers with its own tmpfs")]
    Hidden { dir: PathBuf, hidden: &'static str },
}

/// The directory holding `agent`, checked to contain it.
pub fn bin_dir() -> Result<PathBuf, BinError> {
    let exe = std::env::current_exe().map_err(BinError::CurrentExe)?;
    let dir = choose(std::env::var_os(BIN_DIR_ENV), &exe);
    check(&dir)?;
    Ok(dir)
}

/// Checks that `dir` holds an `agent` a node can execute.
pub fn check(dir: &Path) -> Result<(), BinError> {
    let agent = dir.join("agent");
    if !agent.is_file() {
        return Err(BinError::MissingAgent { path: agent });
    }
    if let Some(hidden) = HIDDEN_IN_NODE.iter().find(|h| dir.starts_with(h)) {
        return Err(BinError::Hidden {
            dir: dir.to_owned(),
            hidden,
        });
    }
    Ok(())
}

fn choose(env: Option<OsString>, exe: &Path) -> PathBuf {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let here = exe.parent().unwrap_or(Path::new("/"));
    if here.join("agent").is_file() {
        return here.to_owned();
    }
    here.parent().unwrap_or(here).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins() {
        let got = choose(Some("/opt/grove/bin".into()), Path::new("/x/deps/t"));
        assert_eq!(got, PathBuf::from("/opt/grove/bin"));
    }

    #[test]
    fn tests_in_deps_look_one_up() {
        let got = choose(
            None,
            Path::new("/nonexistent/target/debug/deps/testbed-1234"),
        );
        assert_eq!(got, PathBuf::from("/nonexistent/target/debug"));
    }

    #[test]
    fn a_dir_with_agent_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent"), "").unwrap();
        let got = choose(None, &dir.path().join("sandbox"));
        assert_eq!(got, dir.path());
        assert!(check(dir.path()).is_ok());
    }

    #[test]
    fn missing_agent_tells_how_to_fix_it() {
        let err = check(Path::new("/nonexistent/grove")).expect_err("no agent");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/grove/agent"), "{text}");
        assert!(text.contains("cargo build --workspace --bins"), "{text}");
    }
}
