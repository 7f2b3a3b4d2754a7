//! `zdb`: a 0-db namespace. Parsed and hashed (size, mode, password,
//! public); no driver yet. The password is a secret: `Debug` hides it.

use serde::{Deserialize, Serialize};

use super::network::Secret;
use super::{Invalid, disk::check_size, null_default};
use crate::deployment::challenge::{Challenge, ChallengeExt};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zdb {
    pub size: u64,
    pub mode: String,
    #[serde(deserialize_with = "null_default")]
    pub password: Secret,
    pub public: bool,
}

impl Zdb {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_size(self.size)?;
        if self.mode != "user" && self.mode != "seq" {
            return Err(Invalid::new(
                "mode",
                format!("must be 'user' or 'seq', not {:?}", self.mode),
            ));
        }
        Ok(())
    }
}

impl Challenge for Zdb {
    fn challenge(&self, out: &mut String) {
        out.num(self.size)
            .text(&self.mode)
            .text(self.password.expose())
            .flag(self.public);
    }
}
