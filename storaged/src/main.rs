//! The `storaged` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    grove_daemon::cli::main(
        storaged::NAME,
        "Node storage: disk discovery, one btrfs pool per disk, the system cache, volumes and vdisks.",
        |flags: storaged::flags::Flags, config, shutdown| {
            storaged::run(config, flags.wipe, shutdown)
        },
    )
}
