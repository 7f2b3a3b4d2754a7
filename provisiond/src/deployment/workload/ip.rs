//! `ip`: a public IPv4 and/or IPv6 address for a machine. Parsed and hashed
//! (`v4` then `v6` as `true`/`false`); no driver yet.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::deployment::challenge::{Challenge, ChallengeExt};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    pub v4: bool,
    pub v6: bool,
}

impl PublicIp {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !self.v4 && !self.v6 {
            return Err(Invalid::new("v4", "an ip workload asks for v4, v6 or both"));
        }
        Ok(())
    }
}

impl Challenge for PublicIp {
    fn challenge(&self, out: &mut String) {
        out.flag(self.v4).flag(self.v6);
    }
}
