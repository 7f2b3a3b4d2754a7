//! Each tenant network's nftables rules: NAT for egress, no traffic
//! between tenants, nothing inbound except through the network's own
//! WireGuard.
//!
//! Two tables per network, each replaced whole in one `nft -f` transaction
//! (declare, flush, fill, so the table keeps its place in the ruleset and a
//! re-apply after a restart changes nothing): `grove` inside `n-<netid>`,
//! which routes between the bridge, WireGuard and the egress veth and
//! masquerades egress, and `grove-n-<netid>` in the host namespace, which
//! masquerades the network's egress again onto the uplink and drops
//! anything new towards it. The `nft` binary is used rather than a crate:
//! it is the one well-kept interface to nftables (the JSON crates drive it
//! too, the netlink ones wrap C libraries), its text is what an operator
//! reads back with `nft list ruleset`, and `-f` makes each apply atomic.
//! Limits: IPv4 egress only; rules match interface names, so the names of
//! [`super::names`] are part of the contract.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::names::{self, NetId};

/// Why a ruleset could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {binary} for table {table}: {source}")]
    Spawn {
        binary: PathBuf,
        table: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} refused table {table} ({status}): {stderr}")]
    Refused {
        binary: PathBuf,
        table: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The host namespace's table of network `netid`, whose egress veth's
/// inside address is `inside` (the source of everything it sends out,
/// after the namespace's own masquerade).
pub fn host_rules(netid: &NetId, inside: Ipv4Addr) -> String {
    let table = netid.host_table();
    let egress = netid.egress();
    let input = input_chain(&egress);
    replace(
        &table,
        &format!(
            "\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname \"{egress}\" ct state established,related accept
\t\toifname \"{egress}\" drop
\t\tiifname \"{egress}\" oifname \"e-*\" drop
\t}}
{input}\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {inside} oifname != \"e-*\" masquerade
\t}}
"
        ),
    )
}

/// The table inside `n-<netid>`.
pub fn inside_rules(netid: &NetId) -> String {
    let bridge = netid.bridge();
    let wg = netid.wireguard();
    let egress = names::EGRESS_INSIDE;
    let input = input_chain(egress);
    replace(
        names::INSIDE_TABLE,
        &format!(
            "{input}\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"{bridge}\" accept
\t\tiifname \"{wg}\" oifname {{ \"{bridge}\", \"{wg}\" }} accept
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"{egress}\" masquerade
\t}}
"
        ),
    )
}

/// The input chain of both sides: from the egress veth, only answers to
/// what this side started.
fn input_chain(egress: &str) -> String {
    format!(
        "\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"{egress}\" ct state established,related accept
\t\tiifname \"{egress}\" drop
\t}}
"
    )
}

/// Declares, flushes and fills `table` in one transaction.
fn replace(table: &str, body: &str) -> String {
    format!("table inet {table} {{}}\nflush table inet {table}\ntable inet {table} {{\n{body}}}\n")
}

/// Removes `table` if it exists (declaring it first makes the delete
/// succeed either way).
pub fn removal(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

/// Feeds `rules` to `nft -f -` in the calling thread's network namespace.
/// Blocking.
pub fn apply(binary: &Path, table: &str, rules: &str) -> Result<(), FirewallError> {
    let failed = |source| FirewallError::Spawn {
        binary: binary.to_owned(),
        table: table.to_owned(),
        source,
    };
    let mut child = Command::new(binary)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(rules.as_bytes()));
    let output = child.wait_with_output().map_err(failed)?;
    if !output.status.success() {
        return Err(FirewallError::Refused {
            binary: binary.to_owned(),
            table: table.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    if let Some(Err(source)) = written {
        return Err(failed(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NetId {
        "net1".parse().expect("valid")
    }

    #[test]
    fn host_rules_drop_new_traffic_towards_the_network_and_masquerade_its_egress() {
        let rules = host_rules(&id(), Ipv4Addr::new(169, 254, 0, 2));
        assert!(rules.starts_with(
            "table inet grove-n-net1 {}\nflush table inet grove-n-net1\ntable inet grove-n-net1 {\n"
        ));
        assert!(rules.contains(
            "oifname \"e-net1\" ct state established,related accept\n\t\toifname \"e-net1\" drop\n"
        ));
        assert!(rules.contains("iifname \"e-net1\" oifname \"e-*\" drop"));
        assert!(rules.contains("ip saddr 169.254.0.2 oifname != \"e-*\" masquerade"));
        assert!(rules.ends_with("\t}\n}\n"));
    }

    #[test]
    fn inside_rules_forward_only_from_the_bridge_and_from_wireguard_to_the_tenant() {
        let rules = inside_rules(&id());
        assert!(rules.contains("policy drop;\n\t\tct state established,related accept\n\t\tiifname \"b-net1\" accept\n\t\tiifname \"w-net1\" oifname { \"b-net1\", \"w-net1\" } accept\n"));
        assert!(rules.contains("oifname \"egress\" masquerade"));
        assert!(rules.contains("iifname \"egress\" drop"));
    }

    #[test]
    fn removal_is_idempotent_text() {
        assert_eq!(
            removal("grove-n-net1"),
            "table inet grove-n-net1 {}\ndelete table inet grove-n-net1\n"
        );
    }

    #[test]
    fn a_missing_binary_is_named() {
        let err = apply(Path::new("/nonexistent/nft"), "t", "")
            .expect_err("no binary")
            .to_string();
        assert!(err.contains("/nonexistent/nft"), "{err}");
        assert!(err.contains("table t"), "{err}");
    }
}
