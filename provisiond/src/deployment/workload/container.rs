//! `container`: Grove's own workload type, an OCI image run under runc on
//! a tenant network, with its volumes mounted.
//!
//! The image is named by digest (`host[:port]/repo@sha256:…`), so what
//! runs is what the twin signed. The challenge writes the fields in a fixed
//! order: image, the interface's network and IP, root filesystem size,
//! cores, memory, each mount's volume and mountpoint, each entrypoint
//! argument, then the environment sorted by key as `k`, `=`, `v` (as
//! zmachine's). See `docs/provisioning.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::zmachine::ComputeCapacity;
use super::{Invalid, null_default};
use crate::deployment::challenge::{Challenge, ChallengeExt};
use crate::deployment::name::Name;
use crate::deployment::net::Ip;
use crate::image::ImageRef;

const MIB: u64 = 1 << 20;

/// The smallest root filesystem and memory a container may ask for.
pub const MIN_SIZE: u64 = 64 * MIB;
pub const MIN_MEMORY: u64 = 64 * MIB;

/// The `container` workload's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// `host[:port]/repository@sha256:<hex>`.
    pub image: String,
    pub interface: ContainerInterface,
    pub compute_capacity: ComputeCapacity,
    /// The root filesystem's quota, in bytes.
    pub size: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub mounts: Vec<ContainerMount>,
    /// The program and its arguments; the image's entrypoint and command
    /// when empty.
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub env: BTreeMap<String, String>,
}

/// The container's one interface: a tenant network and its address there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInterface {
    pub network: Name,
    pub ip: Ip,
}

/// A volume of the same deployment, mounted at `mountpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerMount {
    pub name: Name,
    pub mountpoint: String,
}

impl Container {
    /// The pinned image.
    pub fn image_ref(&self) -> Result<ImageRef, Invalid> {
        ImageRef::parse(&self.image).map_err(|e| Invalid::new("image", e.to_string()))
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        self.image_ref()?;
        if ["pub", "mycelium"].contains(&self.interface.network.as_str()) {
            return Err(Invalid::new(
                "interface.network",
                format!("'{}' is a reserved network name", self.interface.network),
            ));
        }
        if !self.interface.ip.0.is_ipv4() {
            return Err(Invalid::new("interface.ip", "must be an IPv4 address"));
        }
        if self.compute_capacity.cpu == 0 {
            return Err(Invalid::new("compute_capacity.cpu", "must not be 0"));
        }
        if self.compute_capacity.memory < MIN_MEMORY {
            return Err(Invalid::new(
                "compute_capacity.memory",
                format!("must be at least {MIN_MEMORY} bytes (64 MiB)"),
            ));
        }
        if self.size < MIN_SIZE {
            return Err(Invalid::new(
                "size",
                format!("must be at least {MIN_SIZE} bytes (64 MiB)"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, mount) in self.mounts.iter().enumerate() {
            let at = format!("mounts[{i}].mountpoint");
            check_mountpoint(&mount.mountpoint).map_err(|problem| Invalid::new(&at, problem))?;
            if !seen.insert(mount.mountpoint.trim_end_matches('/')) {
                return Err(Invalid::new(at, "two mounts at one mountpoint"));
            }
        }
        for (i, arg) in self.entrypoint.iter().enumerate() {
            if arg.contains('\0') {
                return Err(Invalid::new(
                    format!("entrypoint[{i}]"),
                    "must not hold a NUL byte",
                ));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(Invalid::new(
                    format!("env.{key}"),
                    "a name must be non-empty without '=' or NUL, a value without NUL",
                ));
            }
        }
        Ok(())
    }
}

/// An absolute path, not `/`, without `.`, `..` or empty components.
fn check_mountpoint(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must be an absolute path");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("must not be the root");
    }
    if path.contains('\0')
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must not hold empty, '.' or '..' components");
    }
    Ok(())
}

impl Challenge for Container {
    fn challenge(&self, out: &mut String) {
        out.text(&self.image)
            .text(self.interface.network.as_str())
            .shown(&self.interface.ip)
            .num(self.size)
            .num(self.compute_capacity.cpu)
            .num(self.compute_capacity.memory);
        for mount in &self.mounts {
            out.text(mount.name.as_str()).text(&mount.mountpoint);
        }
        for arg in &self.entrypoint {
            out.text(arg);
        }
        // A BTreeMap iterates in byte order of its keys.
        for (key, value) in &self.env {
            out.text(key).text("=").text(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "10.1.0.1:5000/grove/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn container() -> serde_json::Value {
        serde_json::json!({
            "image": IMAGE,
            "interface": {"network": "net", "ip": "10.20.1.5"},
            "compute_capacity": {"cpu": 1, "memory": 128 * MIB},
            "size": 256 * MIB,
            "mounts": [{"name": "data", "mountpoint": "/data"}],
            "entrypoint": ["/bin/httpd", "-f"],
            "env": {"B": "2", "A": "1"},
        })
    }

    fn parse(value: serde_json::Value) -> Result<Container, String> {
        let c: Container = serde_json::from_value(value).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|i| format!("{}: {}", i.field, i.problem))?;
        Ok(c)
    }

    #[test]
    fn the_challenge_is_the_fields_in_order_with_env_sorted() {
        let c = parse(container()).expect("valid");
        let mut out = String::new();
        c.challenge(&mut out);
        assert_eq!(
            out,
            format!(
                "{IMAGE}net10.20.1.5{}1{}data/data/bin/httpd-fA=1B=2",
                256 * MIB,
                128 * MIB
            )
        );
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "image",
                serde_json::json!("10.1.0.1:5000/grove/app:latest"),
                "image",
            ),
            ("image", serde_json::json!("grove/app@sha256:00"), "image"),
            (
                "interface",
                serde_json::json!({"network": "pub", "ip": "10.20.1.5"}),
                "interface.network",
            ),
            (
                "interface",
                serde_json::json!({"network": "net", "ip": "fd00::5"}),
                "interface.ip",
            ),
            (
                "compute_capacity",
                serde_json::json!({"cpu": 0, "memory": 128 * MIB}),
                "compute_capacity.cpu",
            ),
            (
                "compute_capacity",
                serde_json::json!({"cpu": 1, "memory": MIB}),
                "compute_capacity.memory",
            ),
            ("size", serde_json::json!(MIB), "size"),
            (
                "mounts",
                serde_json::json!([{"name": "data", "mountpoint": "data"}]),
                "mounts[0].mountpoint",
            ),
            (
                "mounts",
                serde_json::json!([{"name": "data", "mountpoint": "/"}]),
                "mounts[0].mountpoint",
            ),
            (
                "mounts",
                serde_json::json!([{"name": "data", "mountpoint": "/a/../etc"}]),
                "mounts[0].mountpoint",
            ),
            (
                "mounts",
                serde_json::json!([{"name": "a", "mountpoint": "/d"}, {"name": "b", "mountpoint": "/d/"}]),
                "mounts[1].mountpoint",
            ),
            (
                "entrypoint",
                serde_json::json!(["a\u{0}b"]),
                "entrypoint[0]",
            ),
            ("env", serde_json::json!({"A=B": "1"}), "env.A=B"),
            ("env", serde_json::json!({"": "1"}), "env."),
        ];
        for (field, value, named) in cases {
            let mut data = container();
            data[field] = value;
            let err = parse(data).expect_err(named);
            assert!(err.starts_with(&format!("{named}:")), "{named}: {err}");
        }
        let mut data = container();
        data["privileged"] = serde_json::json!(true);
        let err = parse(data).expect_err("unknown field");
        assert!(err.contains("privileged"), "{err}");
    }
}
