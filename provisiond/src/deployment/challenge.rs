//! The challenge: the text zos hashes to name a deployment.
//!
//! zos prints each typed field in a fixed order with Go's `%d`, `%s` and `%t`
//! and no separator, then takes the MD5 of the whole. Every type here writes
//! its own part from its typed fields; nothing is re-serialised. Strings are
//! written as decoded from JSON, numbers in decimal, booleans as `true`/`false`.

/// A part of a deployment that contributes to its challenge.
pub trait Challenge {
    /// Appends this part's text to `out`.
    fn challenge(&self, out: &mut String);
}

/// Helpers so each type's `challenge` reads like zos's list of fields.
pub(crate) trait ChallengeExt {
    fn text(&mut self, value: &str) -> &mut Self;
    fn num(&mut self, value: impl Into<i128>) -> &mut Self;
    fn flag(&mut self, value: bool) -> &mut Self;
    fn shown(&mut self, value: &impl std::fmt::Display) -> &mut Self;
}

impl ChallengeExt for String {
    fn text(&mut self, value: &str) -> &mut Self {
        self.push_str(value);
        self
    }

    fn num(&mut self, value: impl Into<i128>) -> &mut Self {
        self.push_str(&value.into().to_string());
        self
    }

    fn flag(&mut self, value: bool) -> &mut Self {
        self.push_str(if value { "true" } else { "false" });
        self
    }

    fn shown(&mut self, value: &impl std::fmt::Display) -> &mut Self {
        self.push_str(&value.to_string());
        self
    }
}
