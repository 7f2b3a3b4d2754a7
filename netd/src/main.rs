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
    #[command(flatten)]
    flags: netd::flags::Flags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = cli.flags.overrides();
    grove_daemon::cli::run(netd::NAME, &cli.daemon, move |config, shutdown| {
        netd::run(config, overrides, shutdown)
    })
}
