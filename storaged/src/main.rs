//! The `storaged` binary: flags in, exit code out; everything else is the library.

use std::process::ExitCode;

use clap::Parser;

/// Node storage: disk discovery, one btrfs pool per disk, the system cache, volumes and vdisks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    grove_daemon::cli::run(storaged::NAME, &cli.daemon, storaged::run)
}
