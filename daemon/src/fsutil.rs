//! Crash-safe file writes, and the directories they go in.
//!
//! [`write_atomic`] writes a temp file in the same directory, fsyncs it,
//! renames it over the target and fsyncs the directory, so after a crash or
//! power cut at any moment the target holds either the old or the new
//! content, never a torn mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Why a directory could not be made (or given its mode, or moved into
/// place).
#[derive(Debug, thiserror::Error)]
#[error("cannot create {path}: {source}")]
pub struct DirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Makes the directory `path` and its parents, if missing; then gives it
/// permission `mode`, if one is asked. Blocking.
pub fn ensure_dir(path: &Path, mode: Option<u32>) -> Result<(), DirError> {
    let made = std::fs::create_dir_all(path).and_then(|()| match mode {
        Some(mode) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        None => Ok(()),
    });
    made.map_err(|source| DirError {
        path: path.to_owned(),
        source,
    })
}

/// Atomically replaces `path` with `bytes`, created with permission `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no file name",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temp file is garbage either way.
        let _ignored = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Writes `text` to `rel` under `root`, making the directories between:
/// how tests build a `/sys` or `/proc` of their own. Not atomic, not
/// synced: never for state.
pub fn write_tree(root: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_is_made_with_its_parents_and_mode_and_a_file_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        ensure_dir(&deep, Some(0o700)).expect("made");
        let mode = std::fs::metadata(&deep).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        ensure_dir(&deep, None).expect("already there");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let error = ensure_dir(&file.join("sub"), None).expect_err("a file is in the way");
        assert_eq!(error.path, file.join("sub"));
        assert!(error.to_string().starts_with("cannot create "), "{error}");
    }

    #[test]
    fn replaces_content_with_the_given_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let err = write_atomic(Path::new("/nonexistent/dir/f"), b"x", 0o644).expect_err("no dir");
        assert!(err.to_string().contains("/nonexistent/dir/f"), "{err}");
    }
}
