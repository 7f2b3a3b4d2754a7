//! `bench`: Grove's benchmarks on real testbed nodes. Run it through
//! `ci/bench`, which builds release binaries first.
//!
//!     bench foundation|storage|agent|mesh|tenant|tfchain|provision|compute|image [--runs N]
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match args.iter().position(|a| a == "--runs") {
        Some(i) => match args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("bench: --runs takes a positive number");
                return ExitCode::from(64);
            }
        },
        None => 10,
    };
    if args.first().map(String::as_str) == Some("image") {
        return match grove_testbed::bench::image::run(runs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {}", grove_testbed::report(&e));
                ExitCode::FAILURE
            }
        };
    }
    let result = match args.first().map(String::as_str) {
        Some("foundation") => grove_testbed::bench::foundation::run(runs),
        Some("agent") => grove_testbed::bench::agent::run(runs),
        Some("storage") => grove_testbed::bench::storage::run(runs),
        Some("mesh") => grove_testbed::bench::mesh::run(runs),
        Some("tenant") => grove_testbed::bench::tenant::run(runs),
        #[cfg(feature = "tfchain")]
        Some("tfchain") => grove_testbed::bench::tfchain::run(runs),
        #[cfg(not(feature = "tfchain"))]
        Some("tfchain") => {
            eprintln!("bench: built without the tfchain feature; run it through ci/bench");
            return ExitCode::from(64);
        }
        #[cfg(feature = "provision")]
        Some("provision") => grove_testbed::bench::provision::run(runs),
        #[cfg(feature = "provision")]
        Some("compute") => grove_testbed::bench::compute::run(runs),
        #[cfg(not(feature = "provision"))]
        Some("provision" | "compute") => {
            eprintln!("bench: built without the provision feature; run it through ci/bench");
            return ExitCode::from(64);
        }
        _ => {
            eprintln!(
                "usage: bench foundation|storage|agent|mesh|tenant|tfchain|provision|compute|image [--runs N]"
            );
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {}", grove_testbed::report(&e));
            ExitCode::FAILURE
        }
    }
}
