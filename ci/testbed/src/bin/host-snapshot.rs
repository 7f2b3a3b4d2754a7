//! `host-snapshot`: records the host state tests could leak and checks
//! the host against such a record.
//!
//! `host-snapshot save FILE` writes the current network namespaces, loop
//! devices, mounts, host links and Grove-related processes; `host-snapshot
//! check FILE` prints every difference and exits 1 if there is any.
//! Limits: anything else running on the host at the same time (another
//! test suite) shows up as a difference too.
#![allow(clippy::print_stdout, reason = "this binary's output is its interface")]
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use grove_testbed::{HostSnapshot, report};

const USAGE: &str = "usage: host-snapshot save FILE | host-snapshot check FILE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, file) = match args.as_slice() {
        [command, file] => (command.as_str(), Path::new(file)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let now = match HostSnapshot::take() {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!("host-snapshot: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    match command {
        "save" => match now.save(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("host-snapshot: {}", report(&e));
                ExitCode::FAILURE
            }
        },
        "check" => {
            let before = match HostSnapshot::load(file) {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    eprintln!("host-snapshot: {}", report(&e));
                    return ExitCode::FAILURE;
                }
            };
            let diff = before.diff(&now);
            if diff.is_empty() {
                println!("host matches {}", file.display());
                return ExitCode::SUCCESS;
            }
            println!("host differs from {}:", file.display());
            for line in diff {
                println!("  {line}");
            }
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}
