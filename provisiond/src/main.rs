//! The `provisiond` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// Deployments: validation, signatures, a durable store, capacity accounting and the workload drivers.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    grove_daemon::cli::run(provisiond::NAME, &cli.daemon, provisiond::run)
}
