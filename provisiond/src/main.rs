//! The `provisiond` binary: flags in, exit code out; everything else is the library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    provisiond::cli::main()
}
