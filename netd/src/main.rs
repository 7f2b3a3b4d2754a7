//! The `netd` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// Node networking: uplink bring-up, the regional WireGuard mesh `mesh0`, tenant networks and their firewall.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
    /// Use this NIC for the uplink instead of probing every one.
    #[arg(long, value_name = "IFNAME")]
    uplink: Option<netd::types::InterfaceName>,
    /// Static uplink address instead of DHCP.
    #[arg(long, value_name = "ADDR/PREFIX")]
    address: Option<netd::types::Ipv4Cidr>,
    /// Static default gateway (with --address).
    #[arg(long, value_name = "ADDR")]
    gateway: Option<std::net::Ipv4Addr>,
    /// DNS server (with --address). Repeatable.
    #[arg(long, value_name = "ADDR")]
    dns: Vec<std::net::IpAddr>,
    /// VLAN tag on the uplink.
    #[arg(long, value_name = "ID")]
    vlan: Option<netd::types::VlanId>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = netd::uplink::Overrides {
        nic: cli.uplink,
        address: cli.address,
        gateway: cli.gateway,
        dns: cli.dns,
        vlan: cli.vlan,
    };
    grove_daemon::cli::run(netd::NAME, &cli.daemon, move |config, shutdown| {
        netd::run(config, overrides, shutdown)
    })
}
