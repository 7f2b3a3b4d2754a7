//! The `provisiond` program's command line.

use std::process::ExitCode;

use clap::Parser;

/// Deployments: validation, signatures, a durable store, capacity accounting and the workload drivers.
#[derive(Debug, Parser)]
#[command(name = "provisiond", version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
}

/// The `provisiond` program: flags in, exit code out.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    grove_daemon::cli::run(crate::NAME, &cli.daemon, crate::run)
}
