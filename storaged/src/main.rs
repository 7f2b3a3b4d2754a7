//! The `storaged` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    grove_daemon::cli::main(
        storaged::NAME,
        storaged::flags::ABOUT,
        storaged::flags::Flags::run,
    )
}
