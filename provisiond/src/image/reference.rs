//! An image reference pinned by digest: `host[:port]/repo@sha256:<hex>`.
//!
//! A deployment is signed, so the image it names must be the bytes that
//! were signed for: a tag can move, a digest cannot. References without a
//! digest, with a digest of another algorithm or with no registry host are
//! refused here, before anything is fetched.

use std::fmt;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(
        "image {0:?} is not pinned: name it by digest, host[:port]/repository@sha256:<64 hex digits>"
    )]
    Unpinned(String),
    #[error("image {reference:?}: {problem}")]
    Malformed { reference: String, problem: String },
}

/// A sha256 digest: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// `sha256:<64 hex>`.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        Digest::from_hex(hex)
    }

    /// 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest(hex.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// The 64 hex digits, for file names.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// `host[:port]/repository@sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    /// `path/of/repository`, lowercase.
    pub repository: String,
    pub digest: Digest,
}

impl ImageRef {
    /// Parses a pinned reference; a tag beside the digest is allowed and
    /// ignored (the digest decides).
    pub fn parse(text: &str) -> Result<ImageRef, ReferenceError> {
        let bad = |problem: &str| ReferenceError::Malformed {
            reference: text.to_owned(),
            problem: problem.to_owned(),
        };
        let Some((name, digest)) = text.split_once('@') else {
            return Err(ReferenceError::Unpinned(text.to_owned()));
        };
        let digest = Digest::parse(digest)
            .ok_or_else(|| bad("the digest must be sha256: followed by 64 lowercase hex digits"))?;
        let (registry, path) = name
            .split_once('/')
            .ok_or_else(|| bad("no registry host: write host[:port]/repository@sha256:…"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "the first part must be a registry host (with a dot or a port, or localhost)",
            ));
        }
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad("the registry host has characters a host cannot have"));
        }
        // A tag next to the digest says nothing the digest does not.
        let repository = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => path,
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if repository.len() > 255 || !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase path components of [a-z0-9._-]",
            ));
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            digest,
        })
    }

    /// The same repository at another digest (a platform's manifest in an
    /// index).
    pub fn at(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest,
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_pinned_references() {
        let r =
            ImageRef::parse(&format!("10.1.0.1:5000/grove/busybox@sha256:{HEX}")).expect("pinned");
        assert_eq!(r.registry, "10.1.0.1:5000");
        assert_eq!(r.repository, "grove/busybox");
        assert_eq!(r.digest.hex(), HEX);
        assert_eq!(
            r.to_string(),
            format!("10.1.0.1:5000/grove/busybox@sha256:{HEX}")
        );
        let tagged = ImageRef::parse(&format!("registry.example.org/app:1.2@sha256:{HEX}"))
            .expect("tag and digest");
        assert_eq!(tagged.repository, "app");
    }

    #[test]
    fn refuses_what_is_not_pinned_or_not_a_reference() {
        assert_eq!(
            ImageRef::parse("docker.io/library/busybox:latest"),
            Err(ReferenceError::Unpinned(
                "docker.io/library/busybox:latest".into()
            ))
        );
        for bad in [
            format!("busybox@sha256:{HEX}"),
            format!("busybox/x@sha256:{HEX}"),
            "r.example.org/x@sha256:abc".to_owned(),
            format!("r.example.org/x@sha512:{HEX}"),
            format!("r.example.org/x@sha256:{}", HEX.to_uppercase()),
            format!("r.example.org/X@sha256:{HEX}"),
            format!("r.example.org/../x@sha256:{HEX}"),
            format!("r.example.org//x@sha256:{HEX}"),
            format!("r ex.org/x@sha256:{HEX}"),
        ] {
            let err = ImageRef::parse(&bad).expect_err(&bad);
            assert!(
                matches!(err, ReferenceError::Malformed { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_digest_is_the_sha256_of_the_bytes() {
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
