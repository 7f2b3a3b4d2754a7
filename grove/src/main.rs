//! The `grove` binary: the four node daemons in one program, for the boot
//! image. It runs as the daemon its name says, `/usr/bin/agent`,
//! `/usr/bin/netd`, `/usr/bin/storaged` and `/usr/bin/provisiond` being
//! links to it: one copy of the code they share (the async runtime, HTTP,
//! serialization, logging) rather than four, so the initramfs the kernel
//! unpacks at every boot is smaller.

#![forbid(unsafe_code)]
#![allow(clippy::print_stderr, reason = "the one error before any logging")]

use std::path::Path;
use std::process::ExitCode;

/// A program's entry point: flags in, exit code out.
type Main = fn() -> ExitCode;

/// Each program this binary can be, by the name it is run as.
const PROGRAMS: [(&str, Main); 4] = [
    ("agent", agent::cli::command::main),
    ("netd", netd::main),
    ("storaged", storaged::main),
    ("provisiond", provisiond::cli::main),
];

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match program(&name) {
        Some(run) => run(),
        None => {
            eprintln!(
                "grove: run as one of {} (a link by that name), not as {name:?}",
                PROGRAMS.map(|(n, _)| n).join(", ")
            );
            ExitCode::from(2)
        }
    }
}

/// The program `name` stands for.
fn program(name: &str) -> Option<Main> {
    PROGRAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, run)| *run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_daemon_is_found_by_its_name_and_nothing_else() {
        for (name, _) in PROGRAMS {
            assert!(program(name).is_some(), "{name}");
        }
        for name in ["grove", "", "Agent", "netd.old", "agent "] {
            assert!(program(name).is_none(), "{name:?}");
        }
    }
}
