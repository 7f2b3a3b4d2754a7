//! The kernel settings a tenant network needs: IPv4 forwarding in the host
//! and in its namespace, no IPv6 inside it or on its egress veth.
//!
//! Settings are files under a `/proc/sys` root (a parameter, so unit tests
//! use a fixture tree), written only when they differ; `net.*` files belong
//! to the network namespace of the thread that opens them, so the
//! namespace's own settings are written from a thread inside it. Limits:
//! IPv4 forwarding is switched on for the whole host namespace and left on
//! when the last network goes.

use std::path::{Path, PathBuf};

/// Why a setting could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {path} to {value}: {source}")]
pub struct SysctlError {
    pub path: PathBuf,
    pub value: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// IPv4 forwarding on.
pub const FORWARD: (&str, &str) = ("net/ipv4/ip_forward", "1");

/// The settings inside a tenant namespace, written before any link is
/// made there (new links copy `default`).
pub const INSIDE: [(&str, &str); 3] = [
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    FORWARD,
];

/// A `/proc/sys` tree.
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Writes `value` to `key` unless it already holds it; true if written.
    /// Blocking.
    pub fn ensure(&self, key: &str, value: &'static str) -> Result<bool, SysctlError> {
        let path = self.root.join(key);
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
            return Ok(false);
        }
        write(&path, value)?;
        Ok(true)
    }

    /// Every setting of `settings`; true if any was written. Blocking.
    pub fn ensure_all(&self, settings: &[(&str, &'static str)]) -> Result<bool, SysctlError> {
        let mut changed = false;
        for (key, value) in settings {
            changed |= self.ensure(key, value)?;
        }
        Ok(changed)
    }

    /// No IPv6 on interface `ifname`. Blocking.
    pub fn no_ipv6(&self, ifname: &str) -> Result<bool, SysctlError> {
        self.ensure(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1")
    }
}

fn write(path: &Path, value: &'static str) -> Result<(), SysctlError> {
    std::fs::write(path, value).map_err(|source| SysctlError {
        path: path.to_owned(),
        value,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_differs_and_names_what_it_cannot() {
        let root = tempfile::tempdir().expect("tempdir");
        let ipv4 = root.path().join("net/ipv4");
        std::fs::create_dir_all(&ipv4).expect("mkdir");
        std::fs::write(ipv4.join("ip_forward"), "0\n").expect("write");
        let sysctls = Sysctls::new(root.path());
        assert!(sysctls.ensure(FORWARD.0, FORWARD.1).expect("written"));
        assert!(!sysctls.ensure(FORWARD.0, FORWARD.1).expect("same"));
        assert_eq!(
            std::fs::read_to_string(ipv4.join("ip_forward")).expect("read"),
            "1"
        );
        let err = sysctls
            .no_ipv6("e-net1")
            .expect_err("no such interface")
            .to_string();
        assert!(err.contains("net/ipv6/conf/e-net1/disable_ipv6"), "{err}");
    }
}
