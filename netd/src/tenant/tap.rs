//! Persistent tap devices for virtual machines on a tenant bridge.
//!
//! The kernel makes tap devices only through `/dev/net/tun` (netlink cannot),
//! so [`ensure_tap`] opens it, asks for the name with `TUNSETIFF` and marks
//! the device persistent, all in the network namespace of the calling
//! thread (run it through [`super::netns::run_in`]); the VMM later opens the
//! same name there and gets the device. Limits: single-queue taps without a
//! virtio-net header flag; a VMM asking for multi-queue cannot open them.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::libc;

/// Where the tun/tap clone device lives.
pub const CLONE_DEVICE: &str = "/dev/net/tun";

/// Why a tap device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tap name {ifname:?} does not fit IFNAMSIZ")]
    Name { ifname: String },
    #[error("cannot {op} tap {ifname}: {source}")]
    Ioctl {
        op: &'static str,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the persistent tap `ifname` in this thread's network namespace
/// (or takes the existing one). Blocking.
#[allow(unsafe_code)]
pub fn ensure_tap(ifname: &str) -> Result<(), TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CLONE_DEVICE)
        .map_err(|source| TapError::Open {
            path: PathBuf::from(CLONE_DEVICE),
            source,
        })?;
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() {
        return Err(TapError::Name {
            ifname: ifname.to_owned(),
        });
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let failed = |op: &'static str| TapError::Ioctl {
        op,
        ifname: ifname.to_owned(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: `file` is an open tun clone device, and TUNSETIFF reads and
    // writes one `ifreq`, which `request` is and outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(failed("create"));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, passed by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(failed("make persistent"));
    }
    Ok(())
}
