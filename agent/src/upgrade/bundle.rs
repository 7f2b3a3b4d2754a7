//! An upgrade image: the tar `image/build` makes as `grove-upgrade.tar`,
//! holding the new system's `vmlinuz`, `initramfs` and `os-release`.

use std::io::Read;

/// A parsed upgrade image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Its version, from its os-release (see [`version_of`]).
    pub version: String,
    pub os_release: String,
    pub kernel: Vec<u8>,
    pub initramfs: Vec<u8>,
}

/// Why bytes are not an upgrade image.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a tar archive: {0}")]
    Tar(#[source] std::io::Error),
    #[error(
        "unexpected member {0:?}: an upgrade image holds only vmlinuz, initramfs and os-release"
    )]
    Unexpected(String),
    #[error("{0} appears twice")]
    Twice(&'static str),
    #[error("no {0}")]
    Missing(&'static str),
    #[error("vmlinuz is not a Linux kernel (no bzImage header)")]
    NotAKernel,
    #[error("initramfs is empty")]
    EmptyInitramfs,
    #[error("os-release is not a Grove system's (it needs ID=grove and VERSION_ID)")]
    NotGrove,
}

impl Bundle {
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let mut archive = tar::Archive::new(bytes);
        let (mut kernel, mut initramfs, mut os_release) = (None, None, None);
        for entry in archive.entries().map_err(BundleError::Tar)? {
            let mut entry = entry.map_err(BundleError::Tar)?;
            let path = entry.path().map_err(BundleError::Tar)?;
            let name = path.to_string_lossy();
            let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
            if entry.header().entry_type().is_dir() && (name.is_empty() || name == ".") {
                continue;
            }
            let (slot, what): (&mut Option<Vec<u8>>, &'static str) = match name.as_str() {
                "vmlinuz" => (&mut kernel, "vmlinuz"),
                "initramfs" => (&mut initramfs, "initramfs"),
                "os-release" => (&mut os_release, "os-release"),
                _ => return Err(BundleError::Unexpected(name)),
            };
            if slot.is_some() {
                return Err(BundleError::Twice(what));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(BundleError::Tar)?;
            *slot = Some(bytes);
        }
        let kernel = kernel.ok_or(BundleError::Missing("vmlinuz"))?;
        let initramfs = initramfs.ok_or(BundleError::Missing("initramfs"))?;
        let os_release = os_release.ok_or(BundleError::Missing("os-release"))?;
        // The x86 boot protocol's header magic, at 0x202.
        if kernel.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
            return Err(BundleError::NotAKernel);
        }
        if initramfs.is_empty() {
            return Err(BundleError::EmptyInitramfs);
        }
        let os_release = String::from_utf8(os_release).map_err(|_| BundleError::NotGrove)?;
        let version = version_of(&os_release).ok_or(BundleError::NotGrove)?;
        Ok(Self {
            version,
            os_release,
            kernel,
            initramfs,
        })
    }
}

/// A Grove system's version from its os-release: `VERSION_ID`, and the
/// build in brackets when there is one (`0.1.0 (5d09daf1c2e3)`). `None`
/// for an os-release that is not Grove's.
pub fn version_of(os_release: &str) -> Option<String> {
    let field = |key: &str| {
        os_release
            .lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    };
    if field("ID").as_deref() != Some("grove") {
        return None;
    }
    let version = field("VERSION_ID")?;
    Some(match field("BUILD_ID") {
        Some(build) => format!("{version} ({build})"),
        None => version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Vec<u8> {
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k
    }

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const OS: &[u8] = b"NAME=Grove\nID=grove\nVERSION_ID=0.2.0\nBUILD_ID=abc\n";

    #[test]
    fn an_image_parses_with_its_version() {
        let k = kernel();
        let b = Bundle::parse(&tar_of(&[
            ("./os-release", OS),
            ("vmlinuz", &k),
            ("initramfs", b"cpio"),
        ]))
        .unwrap();
        assert_eq!(b.version, "0.2.0 (abc)");
        assert_eq!(b.kernel, k);
        assert_eq!(b.initramfs, b"cpio");
    }

    #[test]
    fn what_is_not_an_image_is_refused_by_name() {
        let k = kernel();
        let cases: [(Vec<u8>, &str); 6] = [
            (b"not a tar at all".repeat(40), "not a tar"),
            (
                tar_of(&[("vmlinuz", &k), ("initramfs", b"x")]),
                "no os-release",
            ),
            (
                tar_of(&[
                    ("vmlinuz", &k),
                    ("initramfs", b"x"),
                    ("os-release", OS),
                    ("extra", b"x"),
                ]),
                "unexpected member",
            ),
            (
                tar_of(&[("vmlinuz", b"MZ"), ("initramfs", b"x"), ("os-release", OS)]),
                "not a Linux kernel",
            ),
            (
                tar_of(&[("vmlinuz", &k), ("initramfs", b""), ("os-release", OS)]),
                "initramfs is empty",
            ),
            (
                tar_of(&[
                    ("vmlinuz", &k),
                    ("initramfs", b"x"),
                    ("os-release", b"ID=debian\nVERSION_ID=12\n"),
                ]),
                "not a Grove system",
            ),
        ];
        for (bytes, expected) in cases {
            let e = Bundle::parse(&bytes).expect_err(expected).to_string();
            assert!(e.contains(expected), "{e:?} should say {expected:?}");
        }
    }

    #[test]
    fn versions_come_from_grove_os_releases_only() {
        assert_eq!(version_of("ID=grove\nVERSION_ID=1\n").as_deref(), Some("1"));
        assert_eq!(
            version_of("ID=\"grove\"\nVERSION_ID=\"1\"\nBUILD_ID=x\n").as_deref(),
            Some("1 (x)")
        );
        assert_eq!(version_of("ID=debian\nVERSION_ID=12\n"), None);
        assert_eq!(version_of("ID=grove\n"), None);
    }
}
