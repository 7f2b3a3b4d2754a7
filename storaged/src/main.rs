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
    #[command(flatten)]
    flags: storaged::flags::Flags,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let wipe = cli.flags.wipe;
    grove_daemon::cli::run(storaged::NAME, &cli.daemon, move |config, shutdown| {
        storaged::run(config, wipe, shutdown)
    })
}
