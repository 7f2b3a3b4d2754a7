//! The `agent` binary: flags in, exit code out; everything else is the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Grove's node agent: boot parameters, supervision, operator API.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    daemon: grove_daemon::cli::DaemonArgs,
    /// The kernel command line to read boot parameters from.
    #[arg(long, value_name = "PATH", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = agent::Options {
        cmdline: cli.cmdline,
        ..agent::Options::default()
    };
    grove_daemon::cli::run(agent::NAME, &cli.daemon, move |config, shutdown| {
        agent::run(config, options, shutdown)
    })
}
