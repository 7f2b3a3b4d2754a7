//! The Grove testbed: real simulated Grove nodes on one Linux host, for the
//! integration tests and the `sandbox` binary.
//!
//! A [`Farm`] is a LAN namespace holding one bridge per LAN (dnsmasq on the
//! DHCP ones, a veth to the host on each) plus one network namespace per
//! [`Node`] with veth NICs and loop-device [`Disk`]s (a LAN may sit behind
//! a NAT router onto LAN 0, in a namespace of its own); each node's agent runs
//! in the node's network namespace and a mount namespace of its own
//! (private `/run`, `/var/cache`, `/mnt`, `/sys`, and `/etc/grove` bound
//! from the host), so the daemons run unmodified with production paths.
//! Every name carries the farm's run id, so teardown, [`clean_stale`] and
//! the [`HostSnapshot`] leak check recognise what belongs to whom.
//! Limits: needs root and a kernel with network namespaces, veth, bridges
//! and loop devices; `/dev` and `/proc` are shared with the host, and nodes
//! have no route beyond their LANs.

#![deny(unsafe_code)]

pub mod bench;
pub mod bins;
pub mod browser;
#[cfg(feature = "tfchain")]
pub mod chain;
pub mod cmd;
pub mod disk;
pub mod dnsmasq;
pub mod farm;
pub mod foreign;
pub mod http;
pub mod ifname;
pub mod lan;
pub mod loopdev;
pub mod mesh;
pub mod nat;
pub mod netns;
pub mod node;
pub mod oci;
pub mod proc;
#[cfg(feature = "provision")]
pub mod provision;
pub mod qemu;
pub mod registry;
pub mod run;
pub mod snapshot;
pub mod spec;
pub mod stale;
pub mod subnet;
pub mod sweep;
pub mod tenant;
pub mod trunk;
pub mod wait;

pub use bins::bin_dir;
pub use disk::Disk;
pub use farm::{Farm, TestbedError};
pub use http::{http_get, http_get_timeout, unix_delete, unix_get, unix_post, unix_put};
pub use lan::{Lan, Lease};
pub use node::Node;
pub use node::nic::Nic;
pub use snapshot::HostSnapshot;
pub use spec::{Addressing, Daemon, DiskSpec, FarmSpec, LanSpec, NicSpec, NodeSpec};
pub use stale::clean_stale;
pub use subnet::Subnet;
pub use wait::{holds_for, wait_until};

/// An error and all its causes on one line, `outer: cause: root cause`.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Several errors, each with its causes, separated by `; `.
pub fn report_all<E: std::error::Error>(errors: &[E]) -> String {
    errors
        .iter()
        .map(|e| report(e))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farms_can_be_shared_between_test_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Farm>();
        shareable::<TestbedError>();
    }

    #[test]
    fn report_walks_the_chain() {
        let inner = std::io::Error::other("disk on fire");
        let err = disk::DiskError::Write {
            path: "/x".into(),
            source: inner,
        };
        assert_eq!(report(&err), "could not write /x: disk on fire");
    }
}
