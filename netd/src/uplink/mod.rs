//! The uplink: the NIC the node reaches its farm LAN and the Internet by.

use serde::Deserialize;

/// `[uplink]` in `netd.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {}
