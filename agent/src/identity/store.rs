//! Where the seed lives, and who the node is.
//!
//! The seed is kept on the system cache with a copy on every pool of this
//! node. Identity is settled before the cache is mounted, from the pools
//! alone ([`settle`]): the pools this machine made hold the node's seed
//! (by majority), whatever else is attached; a pool another machine made
//! is another node's, reported by its account and never written; a node
//! whose own pools hold no seed while another node's pools are attached
//! makes no guess and waits for the farmer. Missing copies are written
//! (0600, atomically); a copy holding a different seed is never
//! overwritten. Limits: a node whose every disk died gets a new identity,
//! as it must; without a readable machine id every pool counts as this
//! machine's and the majority decides.

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
    #[error(transparent)]
    Dir(#[from] grove_daemon::fsutil::DirError),
    #[error(transparent)]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot draw a random seed: {0}")]
    Random(#[source] std::io::Error),
    #[error("no identity to store: waiting for the farmer's choice ({})", others.join("; "))]
    Undecided { others: Vec<String> },
}

/// A mounted pool, as storaged reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDir {
    pub label: String,
    pub mount_point: PathBuf,
    /// Made on this machine (storaged compares the machine id it recorded).
    pub this_machine: bool,
}

/// Who the node is, decided from its pools before the cache is mounted.
#[derive(Debug)]
pub enum Settled {
    /// The seed this machine's pools hold.
    Keep { seed: Seed, pool: String },
    /// No pool holds a seed and no other node's pool is attached: a new
    /// node.
    Create,
    /// This machine's pools hold no seed, but other nodes' pools are
    /// attached: no guess; the farmer chooses. When every one of them holds
    /// the same seed, that seed may be adopted (if its node is not alive).
    Wait {
        others: Vec<String>,
        adoptable: Option<(Seed, String)>,
    },
}

/// The seed copy on `pool`, if any. Blocking.
pub fn seed_on(pool: &PoolDir) -> Result<Option<Seed>, String> {
    read_seed(&pool.mount_point.join(POOL_FILE))
}

/// "another node's pool grove-x (account X)" for each pool not of this
/// machine, or of this machine but holding another seed than `own`.
fn others(pools: &[(PoolDir, Option<Seed>)], own: Option<&Seed>) -> Vec<String> {
    pools
        .iter()
        .filter(|(p, seed)| !p.this_machine || (seed.is_some() && seed.as_ref() != own))
        .map(|(p, seed)| {
            let account = seed
                .as_ref()
                .map(|s| s.keys().public().account)
                .unwrap_or_else(|| "unknown".to_owned());
            format!(
                "pool {} is another node's pool (account {account})",
                p.label
            )
        })
        .collect()
}

/// Decides who the node is from its pools (and the seed each holds).
pub fn settle(pools: &[(PoolDir, Option<Seed>)]) -> Settled {
    let own: Vec<(&PoolDir, Seed)> = pools
        .iter()
        .filter(|(p, _)| p.this_machine)
        .filter_map(|(p, s)| s.clone().map(|s| (p, s)))
        .collect();
    if let Some((pool, seed)) = majority(&own) {
        return Settled::Keep {
            seed,
            pool: pool.label.clone(),
        };
    }
    let others = others(pools, None);
    if others.is_empty() {
        return Settled::Create;
    }
    let foreign: Vec<(&PoolDir, &Option<Seed>)> = pools
        .iter()
        .filter(|(p, _)| !p.this_machine)
        .map(|(p, s)| (p, s))
        .collect();
    let first = foreign
        .first()
        .and_then(|(p, s)| s.as_ref().map(|s| (s.clone(), p.label.clone())));
    let agree = first
        .as_ref()
        .is_some_and(|(seed, _)| foreign.iter().all(|(_, s)| s.as_ref() == Some(seed)));
    Settled::Wait {
        others,
        adoptable: first.filter(|_| agree),
    }
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
        grove_daemon::fsutil::ensure_dir(dir, Some(0o700))?;
    }
    grove_daemon::fsutil::write_atomic(path, seed.to_file_text().as_bytes(), 0o600)?;
    Ok(())
}

/// Writes a new node's seed on `pools` (this machine's blank pools, before
/// storaged is told the account), so a crash right after still finds it.
/// Blocking.
pub fn keep_on(pools: &[PoolDir], seed: &Seed) -> Result<(), IdentityError> {
    for pool in pools.iter().filter(|p| p.this_machine) {
        write_seed(&pool.mount_point.join(POOL_FILE), seed)?;
    }
    Ok(())
}

/// The seed a settled identity stands for, and the pool it came from:
/// drawn fresh for a new node; an error while the farmer must choose.
pub fn seed_of(settled: Settled) -> Result<(Seed, Option<String>), IdentityError> {
    match settled {
        Settled::Keep { seed, pool } => Ok((seed, Some(pool))),
        Settled::Create => Ok((Seed::generate().map_err(IdentityError::Random)?, None)),
        Settled::Wait { others, .. } => Err(IdentityError::Undecided { others }),
    }
}

/// Stores the node's seed (recovered from `from_pool`, or new): on the
/// cache (mounted once storaged knows the account) and on every pool of
/// this machine that lacks it. Blocking.
pub fn store(
    cache_dir: &Path,
    pools: &[(PoolDir, Option<Seed>)],
    seed: Seed,
    from_pool: Option<String>,
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
    let source = match from_pool {
        _ if cached.as_ref() == Some(&seed) => Source::Cache,
        Some(pool) => Source::RecoveredFromPool { pool },
        None => Source::Created,
    };
    if cached.as_ref() != Some(&seed) {
        write_seed(&cache_file, &seed)?;
    }
    warnings.extend(others(pools, Some(&seed)));
    let mut copies = Vec::new();
    for (pool, on_pool) in pools.iter().filter(|(p, _)| p.this_machine) {
        match on_pool {
            Some(other) if other != &seed => continue,
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
                this_machine: true,
            })
            .collect()
    }

    /// A scratch root, the cache directory in it and `n` pools of this
    /// machine.
    fn machine(n: usize) -> (tempfile::TempDir, PathBuf, Vec<PoolDir>) {
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let pools = pools(root.path(), n);
        (root, cache, pools)
    }

    fn seen_of(pools: &[PoolDir]) -> Vec<(PoolDir, Option<Seed>)> {
        seen(pools)
    }

    fn seen(pools: &[PoolDir]) -> Vec<(PoolDir, Option<Seed>)> {
        pools
            .iter()
            .map(|p| (p.clone(), seed_on(p).expect("readable")))
            .collect()
    }

    fn boot(cache: &Path, pools: &[PoolDir]) -> (Seed, IdentityReport) {
        let seen = seen(pools);
        let (seed, from) = seed_of(settle(&seen)).expect("settled");
        store(cache, &seen, seed, from, true).expect("store")
    }

    #[test]
    fn created_once_then_loaded_with_a_copy_on_every_pool() {
        let (_root, cache, pools) = machine(2);
        let (seed, first) = boot(&cache, &pools);
        assert_eq!(first.source, Source::Created);
        assert_eq!(first.copies, ["grove-p0", "grove-p1"]);
        use std::os::unix::fs::PermissionsExt;
        for path in [cache.join(CACHE_FILE), pools[1].mount_point.join(POOL_FILE)] {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            assert_eq!(read_seed(&path).unwrap(), Some(seed.clone()));
        }
        let (again, second) = boot(&cache, &pools);
        assert_eq!(again, seed);
        assert_eq!(second.source, Source::Cache);
        assert_eq!(second.public, first.public);
    }

    #[test]
    fn a_lost_cache_is_recovered_from_the_pools() {
        let (_root, cache, pools) = machine(3);
        let (seed, first) = boot(&cache, &pools);
        std::fs::remove_dir_all(&cache).expect("lose the cache");
        std::fs::remove_dir_all(&pools[0].mount_point).expect("lose a pool too");
        let (recovered, report) = boot(&cache, &pools[1..]);
        assert_eq!(recovered, seed);
        assert_eq!(report.public.account, first.public.account);
        assert_eq!(
            report.source,
            Source::RecoveredFromPool {
                pool: "grove-p1".into()
            }
        );
        assert_eq!(read_seed(&cache.join(CACHE_FILE)).unwrap(), Some(seed));
    }

    #[test]
    fn another_machines_pool_never_changes_who_the_node_is() {
        let (_root, cache, mut pools) = machine(3);
        let (seed, _) = boot(&cache, &pools[..1]);
        // Two pools of another node, more than this node's one.
        let stranger = Seed::generate().expect("random");
        for p in &mut pools[1..] {
            p.this_machine = false;
            write_seed(&p.mount_point.join(POOL_FILE), &stranger).expect("moved-in disk");
        }
        std::fs::remove_dir_all(&cache).expect("lose the cache");
        let (chosen, report) = boot(&cache, &pools);
        assert_eq!(chosen, seed, "the node kept its own seed");
        assert_eq!(report.copies, ["grove-p0"]);
        let account = stranger.keys().public().account;
        for label in ["grove-p1", "grove-p2"] {
            assert!(
                report
                    .warnings
                    .iter()
                    .any(|w| w
                        == &format!("pool {label} is another node's pool (account {account})")),
                "{:?}",
                report.warnings
            );
        }
        for p in &pools[1..] {
            assert_eq!(seed_on(p).unwrap(), Some(stranger.clone()));
        }
    }

    #[test]
    fn a_node_given_only_another_nodes_pool_waits_for_the_farmer() {
        let root = tempfile::tempdir().unwrap();
        let mut pools = pools(root.path(), 2);
        let stranger = Seed::generate().expect("random");
        pools[1].this_machine = false;
        write_seed(&pools[1].mount_point.join(POOL_FILE), &stranger).expect("moved-in disk");
        // pools[0] is this machine's, blank: made on this boot.
        let seen = seen(&pools);
        match settle(&seen) {
            Settled::Wait { others, adoptable } => {
                assert_eq!(others.len(), 1);
                assert!(others[0].contains(&stranger.keys().public().account));
                assert_eq!(adoptable, Some((stranger.clone(), "grove-p1".to_owned())));
            }
            other => panic!("guessed: {other:?}"),
        }
        // Two other pools that disagree: nothing to adopt.
        let mut three = pools.clone();
        three.push(PoolDir {
            label: "grove-p2".into(),
            mount_point: root.path().join("pool2"),
            this_machine: false,
        });
        write_seed(
            &three[2].mount_point.join(POOL_FILE),
            &Seed::generate().expect("random"),
        )
        .expect("a third node's disk");
        match settle(&seen_of(&three)) {
            Settled::Wait { adoptable, .. } => assert!(adoptable.is_none()),
            other => panic!("guessed: {other:?}"),
        }
        assert_eq!(seed_on(&pools[0]).unwrap(), None, "nothing written");
    }

    #[test]
    fn a_fresh_seed_kept_before_a_crash_is_who_the_node_boots_as() {
        let (_root, cache, mut pools) = machine(2);
        let stranger = Seed::generate().expect("random");
        pools[1].this_machine = false;
        write_seed(&pools[1].mount_point.join(POOL_FILE), &stranger).expect("moved-in disk");
        assert!(matches!(settle(&seen(&pools)), Settled::Wait { .. }));
        // The farmer chose a fresh start: the new seed goes on the blank
        // pool of this machine first; the node crashes right after.
        let fresh = Seed::generate().expect("random");
        keep_on(&pools, &fresh).expect("kept");
        let (booted, report) = boot(&cache, &pools);
        assert_eq!(booted, fresh, "the chosen identity was lost in the crash");
        assert_eq!(report.copies, ["grove-p0"]);
        assert_eq!(seed_on(&pools[1]).unwrap(), Some(stranger), "written");
    }

    #[test]
    fn own_pools_that_disagree_go_by_majority_and_the_odd_one_is_kept() {
        let (_root, cache, pools) = machine(3);
        let (seed, _) = boot(&cache, &pools[..2]);
        let odd = Seed::generate().expect("random");
        write_seed(&pools[2].mount_point.join(POOL_FILE), &odd).expect("odd copy");
        std::fs::remove_dir_all(&cache).expect("lose the cache");
        let (chosen, report) = boot(&cache, &pools);
        assert_eq!(chosen, seed);
        assert_eq!(report.copies, ["grove-p0", "grove-p1"]);
        assert_eq!(seed_on(&pools[2]).unwrap(), Some(odd));
    }

    #[test]
    fn a_corrupt_cache_copy_is_reported_and_the_pools_win() {
        let (_root, cache, pools) = machine(1);
        let (seed, _) = boot(&cache, &pools);
        std::fs::write(cache.join(CACHE_FILE), "garbage").expect("corrupt");
        let (loaded, report) = boot(&cache, &pools);
        assert_eq!(loaded, seed);
        assert!(
            report.warnings.iter().any(|w| w.contains("not a seed")),
            "{:?}",
            report.warnings
        );
    }
}
