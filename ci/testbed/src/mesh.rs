//! Helpers for driving netd's node mesh in tests and benchmarks: node keys
//! made by `wg`, the JSON bodies of the mesh API, and pings between mesh
//! addresses.
//!
//! Bodies are built as text and keys come from the real `wg genkey`/`wg
//! pubkey`, so what the tests send is what an operator's tools would;
//! answers are parsed with serde into typed values. Limits: the bodies
//! carry the fields the tests and benchmarks set, no more.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::cmd::{self, CmdError};
use crate::node::{Node, NodeError};

/// The region prefix every testbed mesh uses.
pub const PREFIX: &str = "fd7e:57be:d000::/48";
/// The port every testbed node's `mesh0` listens on.
pub const PORT: u16 = 51820;

/// A node's WireGuard keys, base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub private: String,
    pub public: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys {{ public: {} }}", self.public)
    }
}

/// Fresh keys from `wg genkey` and `wg pubkey`.
pub fn keys() -> Result<Keys, CmdError> {
    let private = cmd::run("wg", &["genkey"])?.trim().to_owned();
    let public = cmd::run_with_input("wg", &["pubkey"], private.as_bytes())?
        .trim()
        .to_owned();
    Ok(Keys { private, public })
}

/// The body of `PUT /v1/mesh`.
pub fn mesh_body(keys: &Keys, public_endpoint: bool) -> String {
    format!(
        r#"{{"private_key":"{}","listen_port":{PORT},"prefix":"{PREFIX}","public_endpoint":{public_endpoint}}}"#,
        keys.private
    )
}

/// One entry of `PUT /v1/mesh/peers`.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub public_key: String,
    pub endpoint: SocketAddr,
    pub public_endpoint: bool,
}

/// The body of `PUT /v1/mesh/peers`.
pub fn peers_body(peers: &[PeerEntry]) -> String {
    let entries: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                r#"{{"public_key":"{}","endpoints":["{}"],"public_endpoint":{}}}"#,
                p.public_key, p.endpoint, p.public_endpoint
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// One ping from `node` to `to` with a deadline of `wait`; the hop limit of
/// the answer, if one came.
pub fn ping(node: &Node, to: Ipv6Addr, wait: Duration) -> Result<Option<u8>, NodeError> {
    let to = to.to_string();
    let secs = wait.as_secs().max(1).to_string();
    let out = node.exec(&["ping", "-6", "-n", "-c", "1", "-W", &secs, &to])?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hops = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ttl=").or_else(|| w.strip_prefix("hlim=")))
        .and_then(|n| n.parse().ok());
    Ok(hops.or(Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_json_the_api_takes_and_keys_stay_out_of_debug() {
        let keys = Keys {
            private: "PRIV".to_owned(),
            public: "PUB".to_owned(),
        };
        assert_eq!(
            mesh_body(&keys, false),
            r#"{"private_key":"PRIV","listen_port":51820,"prefix":"fd7e:57be:d000::/48","public_endpoint":false}"#
        );
        assert!(!format!("{keys:?}").contains("PRIV"));
        let peers = [PeerEntry {
            public_key: "K".to_owned(),
            endpoint: "10.0.0.1:51820".parse().expect("endpoint"),
            public_endpoint: true,
        }];
        assert_eq!(
            peers_body(&peers),
            r#"[{"public_key":"K","endpoints":["10.0.0.1:51820"],"public_endpoint":true}]"#
        );
    }
}
