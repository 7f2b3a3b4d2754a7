//! What netd's unit tests share.
//!
//! Table-driven refusals: each text must fail to parse with an error that
//! says why. Test-only; nothing here is built into netd.

use std::fmt::Display;
use std::str::FromStr;

/// Asserts that every `(text, why)` is refused as a `T` with an error that
/// contains `why`; answers the errors, in order, for further checks.
pub fn refused<T: FromStr>(cases: &[(&str, &str)]) -> Vec<String>
where
    T::Err: Display,
{
    cases
        .iter()
        .map(|(text, why)| {
            let err = match text.parse::<T>() {
                Ok(_) => panic!("{text:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(why), "{text:?}: {err}");
            err
        })
        .collect()
}
