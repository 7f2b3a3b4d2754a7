//! The `netd` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    grove_daemon::cli::main(
        netd::NAME,
        "Node networking: uplink bring-up, the regional WireGuard mesh `mesh0`, tenant networks and their firewall.",
        |flags: netd::flags::Flags, config, shutdown| {
            netd::run(config, flags.overrides(), shutdown)
        },
    )
}
