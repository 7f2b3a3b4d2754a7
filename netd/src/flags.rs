//! netd's command-line flags: what the boot parameters say about the
//! uplink, parsed by netd's `main` and built by whoever starts netd.
//!
//! Both directions live here, so the agent never knows the flags by heart:
//! it fills an [`Overrides`] from the boot parameters and asks [`args`] for
//! the command line; `main` flattens [`UplinkFlags`] into its parser and
//! turns it back into an [`Overrides`]. A unit test checks that one is the
//! inverse of the other. Limits: only the uplink has flags; everything
//! else comes from `netd.toml`.

use std::net::{IpAddr, Ipv4Addr};

use crate::types::{InterfaceName, Ipv4Cidr, VlanId};
use crate::uplink::Overrides;

/// The uplink flags, for netd's parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct UplinkFlags {
    /// Use this NIC for the uplink instead of probing every one.
    #[arg(long, value_name = "IFNAME")]
    pub uplink: Option<InterfaceName>,
    /// Static uplink address instead of DHCP.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub address: Option<Ipv4Cidr>,
    /// Static default gateway (with --address).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// DNS server (with --address). Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<IpAddr>,
    /// VLAN tag on the uplink.
    #[arg(long, value_name = "ID")]
    pub vlan: Option<VlanId>,
}

impl From<UplinkFlags> for Overrides {
    fn from(flags: UplinkFlags) -> Self {
        Self {
            nic: flags.uplink,
            address: flags.address,
            gateway: flags.gateway,
            dns: flags.dns,
            vlan: flags.vlan,
        }
    }
}

/// The command-line arguments that give netd `overrides`.
pub fn args(overrides: &Overrides) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |flag: &str, value: String| {
        out.push(format!("--{flag}"));
        out.push(value);
    };
    if let Some(nic) = &overrides.nic {
        add("uplink", nic.to_string());
    }
    if let Some(address) = overrides.address {
        add("address", address.to_string());
    }
    if let Some(gateway) = overrides.gateway {
        add("gateway", gateway.to_string());
    }
    for dns in &overrides.dns {
        add("dns", dns.to_string());
    }
    if let Some(vlan) = overrides.vlan {
        add("vlan", vlan.get().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        uplink: UplinkFlags,
    }

    fn parse(args: &[String]) -> Overrides {
        let argv = std::iter::once("netd".to_owned()).chain(args.iter().cloned());
        Cli::try_parse_from(argv)
            .expect("netd parses what args built")
            .uplink
            .into()
    }

    #[test]
    fn the_arguments_parse_back_to_the_same_overrides() {
        let none = Overrides::default();
        assert!(args(&none).is_empty());
        assert_eq!(parse(&args(&none)), none);
        let all = Overrides {
            nic: Some("eth1".parse().expect("ifname")),
            address: Some("10.0.0.5/24".parse().expect("cidr")),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![
                "9.9.9.9".parse().expect("ip"),
                "2620:fe::fe".parse().expect("ip"),
            ],
            vlan: Some("42".parse().expect("vlan")),
        };
        assert_eq!(parse(&args(&all)), all);
    }

    #[test]
    fn a_bad_flag_value_is_refused() {
        let argv = ["netd", "--vlan", "5000"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = ["netd", "--uplink", "a/b"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
