//! Cleaning up after farms whose process died without tearing down (a
//! killed test binary, a crashed sandbox).
//!
//! Every run id is collected from run directories, namespace names, host
//! link names and loop backing files; a run whose directory records a live
//! owner is left alone, every other one is swept. Limits: a run that left
//! nothing carrying its id cannot be found, and a farm just being born in
//! another process is only recognised once its run directory exists
//! (which is its first step).

use std::collections::BTreeSet;
use std::path::{Component, Path};

use crate::loopdev;
use crate::netns::{self, NetnsError};
use crate::run::{self, BASE_DIR, RunId};
use crate::sweep::{self, SweepError};

/// Some stale runs could not be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum StaleError {
    #[error("could not list network namespaces")]
    List(#[from] NetnsError),
    #[error("cleaned {cleaned:?}, but could not fully remove: {}", describe(.failed))]
    Incomplete {
        cleaned: Vec<RunId>,
        failed: Vec<(RunId, Vec<SweepError>)>,
    },
}

fn describe(failed: &[(RunId, Vec<SweepError>)]) -> String {
    failed
        .iter()
        .map(|(run, errors)| format!("run {run}: {}", crate::report_all(errors)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Removes the leftovers of every farm whose owning process is gone;
/// returns the run ids it cleaned.
pub fn clean_stale() -> Result<Vec<RunId>, StaleError> {
    let mut cleaned = Vec::new();
    let mut failed = Vec::new();
    for run in all_runs()? {
        if run::owner_alive(&run.dir()) {
            continue;
        }
        let errors = sweep::sweep(&run);
        if errors.is_empty() {
            cleaned.push(run);
        } else {
            failed.push((run, errors));
        }
    }
    if failed.is_empty() {
        Ok(cleaned)
    } else {
        Err(StaleError::Incomplete { cleaned, failed })
    }
}

/// Every run id that still has something on the host.
fn all_runs() -> Result<BTreeSet<RunId>, StaleError> {
    let mut runs = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(BASE_DIR) {
        runs.extend(entries.filter_map(|e| RunId::parse(e.ok()?.file_name().to_str()?)));
    }
    runs.extend(netns::list()?.iter().filter_map(|n| RunId::of_netns(n)));
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        runs.extend(entries.filter_map(|e| RunId::of_link(e.ok()?.file_name().to_str()?)));
    }
    runs.extend(
        loopdev::list()
            .iter()
            .filter_map(|(_, backing)| run_of_file(backing)),
    );
    Ok(runs)
}

/// The run owning an image file `BASE_DIR/<run>/...`.
fn run_of_file(backing: &str) -> Option<RunId> {
    let rest = Path::new(backing).strip_prefix(BASE_DIR).ok()?;
    match rest.components().next()? {
        Component::Normal(id) => RunId::parse(id.to_str()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_name_their_run() {
        let id = RunId::parse("abc123").expect("valid");
        assert_eq!(
            run_of_file("/var/tmp/grove-testbed/abc123/n0/disk0.img (deleted)"),
            Some(id)
        );
        assert_eq!(run_of_file("/var/tmp/other/abc123/x.img"), None);
        assert_eq!(run_of_file("/var/tmp/grove-testbed/notanid/x.img"), None);
    }
}
