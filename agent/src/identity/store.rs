//! Where the seed lives: the system cache, and a copy on every pool.
//!
//! On boot the cache copy wins; without one (a new or dead cache disk) the
//! seed is recovered from the pools, by majority; with none anywhere a new
//! seed is made. Missing copies are written (0600, atomically); a pool that
//! holds a *different* seed (a disk moved in from another node) is reported
//! and never overwritten. Limits: a node whose every disk died gets a new
//! identity, as it must.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::{PublicIdentity, Seed};

/// The seed under the cache directory.
pub const CACHE_FILE: &str = "identity/seed";
/// The seed under each pool's mount point.
pub const POOL_FILE: &str = ".grove/identity/seed";

/// Why the identity could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot draw a random seed: {0}")]
    Random(#[source] std::io::Error),
}

/// A pool the seed can be copied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDir {
    pub label: String,
    pub mount_point: PathBuf,
}

/// Where this boot's seed came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    Cache,
    RecoveredFromPool { pool: String },
    Created,
}

/// The identity as `/v1/node` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityReport {
    #[serde(flatten)]
    pub public: PublicIdentity,
    pub source: Source,
    /// Pools that hold a copy of the seed.
    pub copies: Vec<String>,
    /// Things an operator should know (a pool holding another identity, a
    /// cache that will not survive a reboot).
    pub warnings: Vec<String>,
}

fn read_seed(path: &Path) -> Result<Option<Seed>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Seed::from_file_text(&text)
            .map(Some)
            .ok_or_else(|| format!("{} is not a seed", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_seed(path: &Path, seed: &Seed) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| IdentityError::Dir {
                path: dir.to_owned(),
                source,
            },
        )?;
    }
    grove_daemon::fsutil::write_atomic(path, seed.to_file_text().as_bytes(), 0o600)?;
    Ok(())
}

/// Loads the node's seed, recovering or creating it, and makes sure every
/// pool holds a copy. Blocking.
pub fn load_or_create(
    cache_dir: &Path,
    pools: &[PoolDir],
    cache_persistent: bool,
) -> Result<(Seed, IdentityReport), IdentityError> {
    let mut warnings = Vec::new();
    if !cache_persistent {
        warnings.push(
            "the system cache is not on a pool: the identity lives on the pools only".to_owned(),
        );
    }
    let cache_file = cache_dir.join(CACHE_FILE);
    let cached = read_seed(&cache_file).unwrap_or_else(|e| {
        warnings.push(e);
        None
    });
    let mut on_pools: Vec<(&PoolDir, Seed)> = Vec::new();
    for pool in pools {
        match read_seed(&pool.mount_point.join(POOL_FILE)) {
            Ok(Some(seed)) => on_pools.push((pool, seed)),
            Ok(None) => {}
            Err(e) => warnings.push(e),
        }
    }
    let (seed, source) = match cached {
        Some(seed) => (seed, Source::Cache),
        None => match majority(&on_pools) {
            Some((pool, seed)) => (
                seed,
                Source::RecoveredFromPool {
                    pool: pool.label.clone(),
                },
            ),
            None => (
                Seed::generate().map_err(IdentityError::Random)?,
                Source::Created,
            ),
        },
    };
    if read_seed(&cache_file).ok().flatten().as_ref() != Some(&seed) {
        write_seed(&cache_file, &seed)?;
    }
    let mut copies = Vec::new();
    for pool in pools {
        match on_pools.iter().find(|(p, _)| p.label == pool.label) {
            Some((_, other)) if other != &seed => {
                warnings.push(format!(
                    "pool {} holds another node's identity; it was left untouched",
                    pool.label
                ));
                continue;
            }
            Some(_) => {}
            None => write_seed(&pool.mount_point.join(POOL_FILE), &seed)?,
        }
        copies.push(pool.label.clone());
    }
    let report = IdentityReport {
        public: seed.keys().public(),
        source,
        copies,
        warnings,
    };
    Ok((seed, report))
}

/// The seed most pools agree on; ties go to the first pool listed.
fn majority<'a>(copies: &[(&'a PoolDir, Seed)]) -> Option<(&'a PoolDir, Seed)> {
    copies
        .iter()
        .max_by_key(|(pool, seed)| {
            let votes = copies.iter().filter(|(_, s)| s == seed).count();
            let first = copies
                .iter()
                .position(|(p, _)| p.label == pool.label)
                .unwrap_or(0);
            (votes, std::cmp::Reverse(first))
        })
        .map(|(pool, seed)| (*pool, seed.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(root: &Path, n: usize) -> Vec<PoolDir> {
        (0..n)
            .map(|i| PoolDir {
                label: format!("grove-p{i}"),
                mount_point: root.join(format!("pool{i}")),
            })
            .collect()
    }

    #[test]
    fn created_once_then_loaded_with_a_copy_on_every_pool() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = root.path().join("cache");
        let pools = pools(root.path(), 2);
        let (seed, first) = load_or_create(&cache, &pools, true).expect("create");
        assert_eq!(first.source, Source::Created);
        assert_eq!(first.copies, ["grove-p0", "grove-p1"]);
        use std::os::unix::fs::PermissionsExt;
        for path in [cache.join(CACHE_FILE), pools[1].mount_point.join(POOL_FILE)] {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            assert_eq!(read_seed(&path).expect("read"), Some(seed.clone()));
        }
        let (again, second) = load_or_create(&cache, &pools, true).expect("load");
        assert_eq!(again, seed);
        assert_eq!(second.source, Source::Cache);
        assert_eq!(second.public, first.public);
    }

    #[test]
    fn a_lost_cache_is_recovered_from_the_pools() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = root.path().join("cache");
        let pools = pools(root.path(), 3);
        let (seed, first) = load_or_create(&cache, &pools, true).expect("create");
        std::fs::remove_dir_all(&cache).expect("lose the cache");
        std::fs::remove_dir_all(&pools[0].mount_point).expect("lose a pool too");
        let (recovered, report) = load_or_create(&cache, &pools[1..], true).expect("recover");
        assert_eq!(recovered, seed);
        assert_eq!(report.public.account, first.public.account);
        assert_eq!(
            report.source,
            Source::RecoveredFromPool {
                pool: "grove-p1".into()
            }
        );
        assert_eq!(
            read_seed(&cache.join(CACHE_FILE)).expect("read"),
            Some(seed)
        );
    }

    #[test]
    fn a_pool_with_another_identity_is_outvoted_and_never_overwritten() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = root.path().join("cache");
        let pools = pools(root.path(), 3);
        let (seed, _) = load_or_create(&cache, &pools[..2], true).expect("create");
        let stranger = Seed::generate().expect("random");
        write_seed(&pools[2].mount_point.join(POOL_FILE), &stranger).expect("moved-in disk");
        std::fs::remove_dir_all(&cache).expect("lose the cache");
        let (chosen, report) = load_or_create(&cache, &pools, true).expect("load");
        assert_eq!(chosen, seed, "two pools outvote one");
        assert_eq!(report.copies, ["grove-p0", "grove-p1"]);
        assert!(
            report.warnings.iter().any(|w| w.contains("grove-p2")),
            "{:?}",
            report.warnings
        );
        let kept = read_seed(&pools[2].mount_point.join(POOL_FILE)).expect("read");
        assert_eq!(kept, Some(stranger));
    }

    #[test]
    fn a_corrupt_cache_copy_is_reported_and_the_pools_win() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = root.path().join("cache");
        let pools = pools(root.path(), 1);
        let (seed, _) = load_or_create(&cache, &pools, true).expect("create");
        std::fs::write(cache.join(CACHE_FILE), "garbage").expect("corrupt");
        let (loaded, report) = load_or_create(&cache, &pools, true).expect("load");
        assert_eq!(loaded, seed);
        assert!(
            report.warnings.iter().any(|w| w.contains("not a seed")),
            "{:?}",
            report.warnings
        );
    }
}
