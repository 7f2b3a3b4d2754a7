//! The `storaged` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// Node storage: disk discovery, one btrfs pool per disk, the system cache, volumes and vdisks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
    /// Wipe this foreign disk (by serial) and make it a pool. Repeatable.
    #[arg(long = "wipe", value_name = "SERIAL")]
    wipe: Vec<storaged::types::DiskSerial>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let wipe = cli.wipe;
    grove_daemon::cli::run(storaged::NAME, &cli.daemon, move |config, shutdown| {
        storaged::run(config, wipe, shutdown)
    })
}
