//! A NAT router in front of a LAN: its own namespace `gtb-<run>-nat<k>`
//! with one leg on LAN 0 and one on LAN `k`, masquerading outbound traffic
//! and letting nothing in.
//!
//! The router holds `<LAN k>.1` (the gateway of the LAN's nodes) on `lan`
//! and `<LAN 0>.<240+k>` on `wan`; nftables masquerades what leaves by
//! `wan` and its forward chain drops everything that is neither outbound
//! nor a reply, so LAN `k` can reach LAN 0 and LAN 0 cannot open anything
//! towards LAN `k`. Limits: IPv4 only, one router per LAN, and the
//! namespace is removed by the farm's sweep (it carries the run id).

use crate::cmd::{self, CmdError};
use crate::ifname::{IfName, IfNameError};
use crate::netns::{self, NetnsError};
use crate::run::RunId;
use crate::subnet::Subnet;

/// The router's side of the leg onto LAN 0.
pub const WAN: &str = "wan";
/// The router's side of the leg onto its LAN.
pub const LAN: &str = "lan";
/// The router's last octet on LAN 0 is this plus the LAN index.
const WAN_HOST_BASE: u8 = 240;

/// Building a NAT router failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("invalid interface name for the NAT of LAN {lan}")]
    Name {
        lan: usize,
        #[source]
        source: IfNameError,
    },
    #[error("LAN {lan} is too high an index for a NAT router address")]
    Index { lan: usize },
    #[error("could not create the NAT namespace of LAN {lan}")]
    Netns {
        lan: usize,
        #[source]
        source: NetnsError,
    },
    #[error("could not set up the NAT router {netns}")]
    Setup {
        netns: String,
        #[source]
        source: CmdError,
    },
}

/// A running NAT router.
#[derive(Debug)]
pub struct Nat {
    netns: String,
    wan_ip: std::net::Ipv4Addr,
}

/// Where the router's legs plug in.
#[derive(Debug)]
pub struct Legs<'a> {
    /// The namespace holding every LAN bridge.
    pub lan_netns: &'a str,
    /// LAN 0's bridge and subnet.
    pub outside: (&'a IfName, Subnet),
    /// The NAT'd LAN's index, bridge and subnet.
    pub inside: (usize, &'a IfName, Subnet),
}

impl Nat {
    /// Builds the router in front of LAN `legs.inside`.
    pub fn create(run: &RunId, legs: &Legs<'_>) -> Result<Nat, NatError> {
        let (lan, inside_bridge, inside) = legs.inside;
        let (outside_bridge, outside) = legs.outside;
        let name = |source| NatError::Name { lan, source };
        let wan_port = IfName::new(format!("nat{lan}o")).map_err(name)?;
        let lan_port = IfName::new(format!("nat{lan}i")).map_err(name)?;
        let last = u8::try_from(lan)
            .ok()
            .and_then(|l| WAN_HOST_BASE.checked_add(l))
            .filter(|l| *l < 254)
            .ok_or(NatError::Index { lan })?;
        let netns = run.nat_netns(lan);
        netns::add(&netns).map_err(|source| NatError::Netns { lan, source })?;
        let nat = Nat {
            netns,
            wan_ip: outside.host(last),
        };
        let ns = nat.netns.as_str();
        let lan_ns = legs.lan_netns;
        let wan_cidr = outside.cidr(last);
        let lan_cidr = inside.cidr(1);
        // Each leg: a veth from the LAN namespace's switch into the router.
        for (port, inner, bridge) in [
            (wan_port.as_str(), WAN, outside_bridge.as_str()),
            (lan_port.as_str(), LAN, inside_bridge.as_str()),
        ] {
            let add = [
                "-n", lan_ns, "link", "add", port, "type", "veth", "peer", "name", inner, "netns",
                ns,
            ];
            let plug = ["-n", lan_ns, "link", "set", port, "master", bridge, "up"];
            for args in [&add[..], &plug[..]] {
                cmd::run("ip", args).map_err(|source| nat.setup_error(source))?;
            }
        }
        let steps: [&[&str]; 5] = [
            &["-n", ns, "addr", "add", &wan_cidr, "dev", WAN],
            &["-n", ns, "addr", "add", &lan_cidr, "dev", LAN],
            &["-n", ns, "link", "set", WAN, "up"],
            &["-n", ns, "link", "set", LAN, "up"],
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        ];
        for args in steps {
            cmd::run("ip", args).map_err(|source| nat.setup_error(source))?;
        }
        cmd::run_with_input(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            rules().as_bytes(),
        )
        .map_err(|source| nat.setup_error(source))?;
        Ok(nat)
    }

    fn setup_error(&self, source: CmdError) -> NatError {
        NatError::Setup {
            netns: self.netns.clone(),
            source,
        }
    }

    /// The router's namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The address the LAN's traffic appears from on LAN 0.
    pub fn wan_ip(&self) -> std::net::Ipv4Addr {
        self.wan_ip
    }
}

/// Masquerade out of `wan`; forward only outbound traffic and its replies.
fn rules() -> String {
    format!(
        "table ip nat {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; oifname \"{WAN}\" masquerade; }}\n\
         }}\n\
         table inet filter {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{LAN}\" oifname \"{WAN}\" accept\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname {{ \"lo\", \"{LAN}\" }} accept\n\
         \t}}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_masquerade_out_and_let_nothing_in() {
        let r = rules();
        assert!(r.contains("oifname \"wan\" masquerade"), "{r}");
        assert!(r.contains("policy drop"), "{r}");
        assert!(r.contains("iifname \"lan\" oifname \"wan\" accept"), "{r}");
        assert!(!r.contains("iifname \"wan\" oifname \"lan\" accept"), "{r}");
    }
}
