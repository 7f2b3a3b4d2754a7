//! The one place netd writes kernel settings (`/proc/sys`): the uplink's
//! SLAAC, the mesh's IPv6 link settings and forwarding, and a tenant
//! network's forwarding and IPv6 switches.
//!
//! Settings are files under a `/proc/sys` root (a parameter, so unit tests
//! use a fixture tree), written only when they differ, and every write
//! reports whether it changed anything. These are blocking calls: async
//! code runs them on a blocking task, and `net.*` files belong to the
//! network namespace of the thread that opens them, so a namespace's own
//! settings are written from a thread inside it. Limits: IPv4 forwarding
//! is switched on for the whole host namespace and left on when the last
//! network goes.

use std::path::{Path, PathBuf};

/// Why a setting could not be written.
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
pub const TENANT_INSIDE: [(&str, &str); 3] = [
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    FORWARD,
];

/// The settings inside a workload's own namespace (a container's): no
/// IPv6 (the tenant network is IPv4), and every port bindable by the
/// workload's root, which is root of its own user namespace only and not
/// of this namespace (netd's, made by the node's root).
pub const WORKLOAD_INSIDE: [(&str, &str); 3] = [
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv4/ip_unprivileged_port_start", "0"),
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

/// `net/ipv6/conf/<ifname>/<key>`.
fn ipv6_conf(ifname: &str, key: &str) -> String {
    format!("net/ipv6/conf/{ifname}/{key}")
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Writes `value` to `key` unless it already holds it; true if written.
    pub fn ensure(&self, key: &str, value: &'static str) -> Result<bool, SysctlError> {
        let path = self.root.join(key);
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
            return Ok(false);
        }
        write(&path, value)?;
        Ok(true)
    }

    /// Every setting of `settings`; true if any was written.
    pub fn ensure_all(&self, settings: &[(&str, &'static str)]) -> Result<bool, SysctlError> {
        let mut changed = false;
        for (key, value) in settings {
            changed |= self.ensure(key, value)?;
        }
        Ok(changed)
    }

    /// No IPv6 on interface `ifname`.
    pub fn no_ipv6(&self, ifname: &str) -> Result<bool, SysctlError> {
        self.ensure(&ipv6_conf(ifname, "disable_ipv6"), "1")
    }

    /// IPv6 on, and no link-local address: set before the link goes up,
    /// so its addresses are exactly the ones netd puts there.
    pub fn no_link_local(&self, ifname: &str) -> Result<bool, SysctlError> {
        let disable = ipv6_conf(ifname, "disable_ipv6");
        let mode = ipv6_conf(ifname, "addr_gen_mode");
        self.ensure_all(&[(&disable, "0"), (&mode, "1")])
    }

    /// Accept router advertisements on `ifname` even while forwarding, and
    /// make addresses from them (SLAAC).
    pub fn slaac(&self, ifname: &str) -> Result<bool, SysctlError> {
        let accept = ipv6_conf(ifname, "accept_ra");
        let autoconf = ipv6_conf(ifname, "autoconf");
        self.ensure_all(&[(&accept, "2"), (&autoconf, "1")])
    }

    /// Forward IPv6 packets that arrive on `ifname`: per interface where the
    /// kernel has `force_forwarding` (6.17 and later), else for the whole
    /// namespace. True when it had to be the whole namespace.
    pub fn forward_ipv6(&self, ifname: &str) -> Result<bool, SysctlError> {
        let own = ipv6_conf(ifname, "force_forwarding");
        if self.root.join(&own).exists() {
            self.ensure(&own, "1")?;
            return Ok(false);
        }
        self.ensure(&ipv6_conf("all", "forwarding"), "1")?;
        Ok(true)
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

    fn tree(keys: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for key in keys {
            let path = root.path().join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).unwrap();
            std::fs::write(path, "0\n").unwrap();
        }
        root
    }

    fn read(root: &Path, key: &str) -> String {
        std::fs::read_to_string(root.join(key))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn writes_only_what_differs_and_names_what_it_cannot() {
        let root = tree(&[FORWARD.0]);
        let sysctls = Sysctls::new(root.path());
        assert!(sysctls.ensure(FORWARD.0, FORWARD.1).expect("written"));
        assert!(!sysctls.ensure(FORWARD.0, FORWARD.1).expect("same"));
        assert_eq!(read(root.path(), FORWARD.0), "1");
        let err = sysctls
            .no_ipv6("e-net1")
            .expect_err("no such interface")
            .to_string();
        assert!(err.contains("net/ipv6/conf/e-net1/disable_ipv6"), "{err}");
    }

    #[test]
    fn forwarding_is_per_interface_where_the_kernel_allows() {
        let root = tree(&[
            "net/ipv6/conf/mesh0/force_forwarding",
            "net/ipv6/conf/all/forwarding",
        ]);
        let sysctls = Sysctls::new(root.path());
        assert!(!sysctls.forward_ipv6("mesh0").expect("written"));
        assert_eq!(
            read(root.path(), "net/ipv6/conf/mesh0/force_forwarding"),
            "1"
        );
        assert_eq!(read(root.path(), "net/ipv6/conf/all/forwarding"), "0");

        let old = tree(&["net/ipv6/conf/all/forwarding"]);
        assert!(
            Sysctls::new(old.path())
                .forward_ipv6("mesh0")
                .expect("written")
        );
        assert_eq!(read(old.path(), "net/ipv6/conf/all/forwarding"), "1");
    }

    #[test]
    fn link_local_and_slaac_report_a_change_once() {
        let root = tree(&[
            "net/ipv6/conf/mesh0/disable_ipv6",
            "net/ipv6/conf/mesh0/addr_gen_mode",
            "net/ipv6/conf/br-grove/accept_ra",
            "net/ipv6/conf/br-grove/autoconf",
        ]);
        let sysctls = Sysctls::new(root.path());
        assert!(sysctls.no_link_local("mesh0").expect("written"));
        assert!(!sysctls.no_link_local("mesh0").expect("same"));
        assert_eq!(read(root.path(), "net/ipv6/conf/mesh0/addr_gen_mode"), "1");
        assert!(sysctls.slaac("br-grove").expect("written"));
        assert_eq!(read(root.path(), "net/ipv6/conf/br-grove/accept_ra"), "2");
        assert!(!sysctls.slaac("br-grove").expect("same"));
        let err = sysctls
            .no_link_local("gone0")
            .expect_err("no such interface");
        assert!(err.to_string().contains("gone0"), "{err}");
    }
}
