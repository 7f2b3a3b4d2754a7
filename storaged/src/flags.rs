//! storaged's own command-line flags, and how to build them.
//!
//! The binary parses [`Flags`]; the agent, which starts storaged, builds the
//! same struct from the boot parameters and turns it into arguments with
//! [`Flags::to_args`], so the flag spellings live in one place. A unit test
//! checks that every flag built parses back to the same value.

use crate::types::DiskSerial;

/// What `storaged --help` says storaged is.
pub const ABOUT: &str =
    "Node storage: disk discovery, one btrfs pool per disk, the system cache, volumes and vdisks.";

/// What storaged takes on its command line besides the daemon's own flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Flags {
    /// Wipe this foreign disk (by serial) and make it a pool. Repeatable.
    #[arg(long = "wipe", value_name = "SERIAL")]
    pub wipe: Vec<DiskSerial>,
}

impl Flags {
    /// The daemon with these flags: what its binary runs.
    pub async fn run(
        self,
        config: crate::Config,
        shutdown: grove_daemon::shutdown::Shutdown,
    ) -> Result<(), crate::StoragedError> {
        crate::run(config, self.wipe, shutdown).await
    }

    /// The arguments that make storaged parse back exactly these flags.
    pub fn to_args(&self) -> Vec<String> {
        self.wipe
            .iter()
            .flat_map(|s| ["--wipe".to_owned(), s.to_string()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_flags_parse_back_to_the_same_value() {
        let serials = ["S1".parse().unwrap(), "WD-WCC4N1234567".parse().unwrap()];
        for wipe in [vec![], serials.to_vec()] {
            let flags = Flags { wipe };
            let parsed = grove_daemon::cli::Cli::<Flags>::flags_of(crate::NAME, flags.to_args());
            assert_eq!(parsed.unwrap(), flags);
        }
    }
}
