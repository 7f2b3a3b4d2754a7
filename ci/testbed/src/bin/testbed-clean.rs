//! `testbed-clean`: removes what farms of dead processes left on the host
//! (namespaces, links, loop devices, run directories).
//!
//! A thin wrapper over [`grove_testbed::clean_stale`], run by the test
//! script before the suite; farms whose owner still runs are left alone.
//! Limits: needs root; exits 1 if anything stale could not be removed.
#![allow(clippy::print_stdout, reason = "this binary's output is its interface")]
#![forbid(unsafe_code)]

use std::process::ExitCode;

use grove_testbed::{clean_stale, report};

fn main() -> ExitCode {
    match clean_stale() {
        Ok(cleaned) if cleaned.is_empty() => {
            println!("no stale testbed farms");
            ExitCode::SUCCESS
        }
        Ok(cleaned) => {
            for run in cleaned {
                println!("removed stale farm {run}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("testbed-clean: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
