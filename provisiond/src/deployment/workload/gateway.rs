//! `gateway-name-proxy` and `gateway-fqdn-proxy`: a web gateway to backends.
//! Parsed and hashed (name or FQDN, TLS passthrough, backends, network); no
//! driver yet.
//!
//! A backend is `ip:port` with TLS passthrough, `http://ip[:port]` without.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{Invalid, null_default};
use crate::deployment::challenge::{Challenge, ChallengeExt};
use crate::deployment::name::Name;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayBase {
    pub tls_passthrough: bool,
    #[serde(deserialize_with = "null_default")]
    pub backends: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayNameProxy {
    pub name: String,
    #[serde(flatten)]
    pub base: GatewayBase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayFqdnProxy {
    pub fqdn: String,
    #[serde(flatten)]
    pub base: GatewayBase,
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn backend_ok(backend: &str, tls_passthrough: bool) -> bool {
    if tls_passthrough {
        return backend.parse::<SocketAddr>().is_ok();
    }
    let Some(rest) = backend.strip_prefix("http://") else {
        return false;
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    let ip = match host.parse::<SocketAddr>() {
        Ok(addr) => addr.ip(),
        Err(_not_with_port) => match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => ip,
            Err(_not_an_ip) => return false,
        },
    };
    !ip.is_loopback()
}

impl GatewayBase {
    fn validate(&self) -> Result<(), Invalid> {
        if self.backends.is_empty() {
            return Err(Invalid::new("backends", "cannot be empty"));
        }
        for (i, backend) in self.backends.iter().enumerate() {
            if !backend_ok(backend, self.tls_passthrough) {
                let form = if self.tls_passthrough {
                    "ip:port"
                } else {
                    "http://ip[:port], not loopback"
                };
                return Err(Invalid::new(
                    format!("backends[{i}]"),
                    format!("{backend:?} is not of the form {form}"),
                ));
            }
        }
        Ok(())
    }

    fn challenge(&self, out: &mut String) {
        out.flag(self.tls_passthrough);
        for backend in &self.backends {
            out.text(backend);
        }
        if let Some(network) = &self.network {
            out.text(network.as_str());
        }
    }
}

impl GatewayNameProxy {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.name.is_empty() || !self.name.chars().all(label_char) {
            return Err(Invalid::new(
                "name",
                format!("{:?} must be letters, digits, '-' or '_'", self.name),
            ));
        }
        self.base.validate()
    }
}

impl GatewayFqdnProxy {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let labels: Vec<&str> = self.fqdn.split('.').collect();
        let ok = labels.len() >= 2
            && labels
                .iter()
                .all(|l| !l.is_empty() && l.chars().all(label_char))
            && labels.last().is_some_and(|tld| tld.len() >= 2);
        if !ok {
            return Err(Invalid::new(
                "fqdn",
                format!("{:?} is not a fully qualified domain name", self.fqdn),
            ));
        }
        self.base.validate()
    }
}

impl Challenge for GatewayNameProxy {
    fn challenge(&self, out: &mut String) {
        out.text(&self.name);
        self.base.challenge(out);
    }
}

impl Challenge for GatewayFqdnProxy {
    fn challenge(&self, out: &mut String) {
        out.text(&self.fqdn);
        self.base.challenge(out);
    }
}
