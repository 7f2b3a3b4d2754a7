//! The pseudo-filesystems a node needs, for the agent as its init: the
//! image's `/init` mounts only what loading modules needs (`/proc`, `/sys`,
//! `/dev`), and the agent, first thing as PID 1, mounts whichever of
//! [`NEEDED`] is still missing, so the daemons find `/dev/pts`, `/run`,
//! `/tmp` and the cgroup tree, then makes the directories of [`DIRS`]. A
//! mount done here costs no process; each one `/init` ran cost about 25 ms
//! under emulation.

use std::path::Path;

/// What the node needs mounted: type, mount point, options.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("proc", "/proc", "nosuid,nodev,noexec"),
    ("sysfs", "/sys", "nosuid,nodev,noexec"),
    ("devtmpfs", "/dev", "mode=0755,nosuid"),
    ("devpts", "/dev/pts", "mode=0620,gid=5,nosuid,noexec"),
    ("tmpfs", "/dev/shm", "mode=1777,nosuid,nodev"),
    ("tmpfs", "/run", "mode=0755,nosuid,nodev"),
    ("tmpfs", "/tmp", "mode=1777,nosuid,nodev"),
    ("cgroup2", "/sys/fs/cgroup", "nosuid,nodev,noexec"),
];

/// Directories the daemons expect on a node, made after the mounts.
pub const DIRS: &[&str] = &[grove_daemon::RUN_DIR, grove_daemon::CACHE_DIR, "/mnt/pools"];

/// The entries of [`NEEDED`] with no mount at their mount point in
/// `mounts` (the text of `/proc/self/mounts`), in order.
pub fn missing(mounts: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    NEEDED
        .iter()
        .filter(|(_, point, _)| !points.contains(point))
        .copied()
        .collect()
}

/// Mounts what is missing, then makes [`DIRS`]. The list of mounts is
/// read from `/proc`, so `/proc` is mounted first when it cannot be read.
/// Blocking. Each failure is logged; the rest are still tried.
pub fn mount_missing() {
    let mut mounts = std::fs::read_to_string("/proc/self/mounts");
    if mounts.is_err() {
        mount(NEEDED[0]);
        mounts = std::fs::read_to_string("/proc/self/mounts");
    }
    for needed in missing(&mounts.unwrap_or_default()) {
        mount(needed);
    }
    for dir in DIRS {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir, error = %e, "cannot make the directory");
        }
    }
}

/// Mounts one entry of [`NEEDED`], making its mount point first.
fn mount((kind, point, options): (&str, &str, &str)) {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',') {
        match option {
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    if let Err(e) = std::fs::create_dir_all(point) {
        tracing::error!(kind, point, error = %e, "cannot make the mount point");
        return;
    }
    let data = data.join(",");
    match nix::mount::mount(
        Some(kind),
        Path::new(point),
        Some(kind),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => tracing::debug!(kind, point, "mounted"),
        Err(e) => tracing::error!(kind, point, error = %e, "cannot mount"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_is_not_mounted_is_missing_in_order() {
        let all: String = NEEDED
            .iter()
            .map(|(kind, point, _)| format!("{kind} {point} {kind} rw 0 0\n"))
            .collect();
        assert!(missing(&all).is_empty());
        let without: String = all
            .lines()
            .filter(|l| !l.contains(" /run ") && !l.contains(" /proc "))
            .map(|l| format!("{l}\n"))
            .collect();
        let points: Vec<&str> = missing(&without).iter().map(|m| m.1).collect();
        assert_eq!(points, ["/proc", "/run"]);
        assert_eq!(missing("").len(), NEEDED.len());
    }
}
