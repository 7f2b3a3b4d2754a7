//! `zmount` (a virtual disk) and `volume` (a quota'd subvolume): a size in bytes.
//!
//! Both hash as their size in decimal and ask for that many bytes of SRU.
//! A size of zero is refused, as zos does.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::deployment::challenge::{Challenge, ChallengeExt};

/// A `zmount`: a virtual disk of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zmount {
    pub size: u64,
}

/// A `volume`: a subvolume limited to `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub size: u64,
}

pub(super) fn check_size(size: u64) -> Result<(), Invalid> {
    if size == 0 {
        return Err(Invalid::new("size", "must be more than 0 bytes"));
    }
    Ok(())
}

impl Zmount {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_size(self.size)
    }
}

impl Volume {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_size(self.size)
    }
}

impl Challenge for Zmount {
    fn challenge(&self, out: &mut String) {
        out.num(self.size);
    }
}

impl Challenge for Volume {
    fn challenge(&self, out: &mut String) {
        out.num(self.size);
    }
}
