//! The pseudo-filesystems a node needs, for the agent as its init: the
//! image's `/init` mounts them, and the agent mounts whichever is still
//! missing (an `/init` that failed at one, or a boot without it), so the
//! daemons find `/proc`, `/sys`, `/dev`, `/run` and the cgroup tree.

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

/// Mounts what is missing, `/proc` first (the list of mounts is read from
/// it). Blocking. Each failure is logged; the rest are still tried.
pub fn mount_missing() {
    use nix::mount::MsFlags;
    let mount = |(kind, point, options): (&str, &str, &str)| {
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
        let data = data.join(",");
        let made = std::fs::create_dir_all(point).map_err(nix::errno::Errno::from_raw_os_error_io);
        match made.and_then(|()| {
            nix::mount::mount(
                Some(kind),
                Path::new(point),
                Some(kind),
                flags,
                Some(data.as_str()),
            )
        }) {
            Ok(()) => tracing::warn!(kind, point, "mounted what /init did not"),
            Err(e) => tracing::error!(kind, point, error = %e, "cannot mount"),
        }
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let missing = missing(&mounts);
    for needed in missing {
        mount(needed);
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
