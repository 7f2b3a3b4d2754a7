//! Values that cross JSON and the command line as text.
//!
//! A kernel identifier or key is a newtype that parses from text
//! (`FromStr`, where it is checked) and prints as text (`Display`); serde
//! carries it as a string through `#[serde(try_from = "String", into =
//! "String")]`. [`text_value!`](crate::text_value) writes the two
//! conversions serde needs, and [`checked_name!`](crate::checked_name) also
//! the accessors of a checked name held as a `String`, and [`name_flaw`]
//! checks the rules most names share (not empty, a length, a set of
//! characters), so each type states only its own rules. Limit: the
//! conversions go through `FromStr` and `Display`, so a value always
//! serialises exactly as it prints.

/// `TryFrom<String>` through the type's `FromStr` (its error is the
/// conversion's), and `From<T> for String` through its `Display`.
#[macro_export]
macro_rules! text_value {
    ($ty:ty) => {
        impl ::core::convert::TryFrom<::std::string::String> for $ty {
            type Error = <$ty as ::core::str::FromStr>::Err;
            fn try_from(text: ::std::string::String) -> ::core::result::Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl ::core::convert::From<$ty> for ::std::string::String {
            fn from(value: $ty) -> ::std::string::String {
                value.to_string()
            }
        }
    };
}

/// For a checked name `struct T(String)` whose `FromStr` does the checking:
/// `as_str`, a `Display` that prints the name as it is, and the conversions
/// of [`text_value!`](crate::text_value).
#[macro_export]
macro_rules! checked_name {
    ($ty:ident) => {
        impl $ty {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::core::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(&self.0)
            }
        }

        $crate::text_value!($ty);
    };
}

/// The first rule a name breaks of those most checked names share, in the
/// order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameFlaw {
    /// It is empty.
    Empty,
    /// It is longer than its limit, in bytes.
    TooLong,
    /// It holds a character its type does not allow.
    BadChar,
}

/// What is wrong with `name` as a name of at most `max_len` bytes whose
/// every character `allowed` accepts; `None` when nothing is. A type's own
/// rules (reserved names, a first character) come after these.
pub fn name_flaw(name: &str, max_len: usize, allowed: impl Fn(char) -> bool) -> Option<NameFlaw> {
    if name.is_empty() {
        Some(NameFlaw::Empty)
    } else if name.len() > max_len {
        Some(NameFlaw::TooLong)
    } else if !name.chars().all(allowed) {
        Some(NameFlaw::BadChar)
    } else {
        None
    }
}

/// `items` joined by ", " for a message, or "none".
pub fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    #[test]
    fn a_name_is_checked_for_emptiness_then_length_then_characters() {
        use super::{NameFlaw, name_flaw};
        let lower = |c: char| c.is_ascii_lowercase();
        for (name, want) in [
            ("", Some(NameFlaw::Empty)),
            ("abcd", None),
            ("abcde", Some(NameFlaw::TooLong)),
            ("ABCDE", Some(NameFlaw::TooLong)),
            ("aBc", Some(NameFlaw::BadChar)),
            ("üü", Some(NameFlaw::BadChar)),
            ("üüü", Some(NameFlaw::TooLong)),
        ] {
            assert_eq!(name_flaw(name, 4, lower), want, "{name:?}");
        }
    }

    #[test]
    fn a_list_reads_as_words_and_an_empty_one_as_none() {
        assert_eq!(super::list_or_none(&[]), "none");
        assert_eq!(super::list_or_none(&["a".into(), "b".into()]), "a, b");
    }

    /// Lower-case ASCII letters only.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(try_from = "String", into = "String")]
    struct Word(String);

    impl FromStr for Word {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase()) {
                Ok(Word(s.to_owned()))
            } else {
                Err(format!("{s:?} is not a word"))
            }
        }
    }

    crate::checked_name!(Word);

    #[test]
    fn a_checked_name_crosses_json_as_a_string_and_is_checked_on_the_way_in() {
        let word: Word = serde_json::from_str("\"grove\"").unwrap();
        assert_eq!(word.as_str(), "grove");
        assert_eq!(word.to_string(), "grove");
        assert_eq!(serde_json::to_string(&word).unwrap(), "\"grove\"");
        assert_eq!(String::from(word), "grove");
        let err = serde_json::from_str::<Word>("\"Grove\"").unwrap_err();
        assert!(err.to_string().contains("is not a word"), "{err}");
        assert!(Word::try_from(String::new()).is_err());
    }
}
