//! A tagged switch port for a QEMU machine: only frames of one VLAN pass
//! between the machine's NIC and the farm LAN, tagged on the machine's
//! side and untagged on the LAN's, as on a farm switch's trunk port.
//!
//! The machine's NIC is a QEMU `dgram` netdev on a Unix socket; two
//! threads carry frames between that socket and a tap on the LAN bridge,
//! taking the 802.1Q tag off frames of the port's VLAN (and dropping every
//! other frame, untagged ones included, counting them) and putting it on
//! frames from the LAN. It is done in the testbed because the CI host's
//! kernel has neither 802.1Q links, bridge VLAN filtering nor tc
//! classifiers. Limits: one VLAN per port, no priority bits, and the
//! frames are copied through userspace (slow, but the test machines are
//! slower).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::ifname::IfName;
use crate::lan::{Lan, PlugError};
use crate::netns::{NetnsError, NetnsHandle};

/// The 802.1Q tag protocol identifier.
const TPID: [u8; 2] = [0x81, 0x00];
/// How often the threads look at the stop flag while no frame comes.
const TICK: Duration = Duration::from_millis(200);

/// Setting up the port failed.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error("VLAN {0} is not a VLAN id (1-4094)")]
    Vlan(u16),
    #[error("could not enter the LAN namespace")]
    Netns(#[from] NetnsError),
    #[error("could not open tap {tap} in the LAN namespace")]
    Tap {
        tap: IfName,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Plug(#[from] PlugError),
    #[error("could not bind {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the port's threads")]
    Thread(#[source] std::io::Error),
}

/// Frames the port has carried or refused so far.
#[derive(Debug, Default)]
struct Counts {
    to_lan: AtomicU64,
    to_machine: AtomicU64,
    /// From the machine, untagged or of another VLAN.
    refused: AtomicU64,
    /// Of those, untagged DHCP requests.
    refused_dhcp: AtomicU64,
}

/// What the port has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkCounts {
    /// Frames of the port's VLAN from the machine, passed to the LAN.
    pub to_lan: u64,
    /// Frames from the LAN, passed to the machine tagged.
    pub to_machine: u64,
    /// Frames from the machine that were untagged or of another VLAN.
    pub refused: u64,
    /// Of those, untagged DHCP requests (IPv4, UDP to port 67).
    pub refused_dhcp: u64,
}

/// A running port; its threads stop and its tap goes away on drop.
#[derive(Debug)]
pub struct TrunkPort {
    vlan: u16,
    machine_socket: PathBuf,
    port_socket: PathBuf,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TrunkPort {
    /// Makes tap `tap` on `lan`'s bridge and the port socket in `dir`;
    /// QEMU's NIC then binds [`TrunkPort::machine_socket`] and sends to
    /// [`TrunkPort::port_socket`] (see [`TrunkPort::netdev`]).
    pub fn start(lan: &Lan, tap: &IfName, vlan: u16, dir: &Path) -> Result<TrunkPort, TrunkError> {
        if !(1..=4094).contains(&vlan) {
            return Err(TrunkError::Vlan(vlan));
        }
        let file = open_tap_in(lan.netns(), tap)?;
        lan.plug(tap)?;
        let machine_socket = dir.join("nic.sock");
        let port_socket = dir.join("port.sock");
        let _ = std::fs::remove_file(&port_socket);
        let socket = UnixDatagram::bind(&port_socket).map_err(|source| TrunkError::Socket {
            path: port_socket.clone(),
            source,
        })?;
        let bound = |source| TrunkError::Socket {
            path: port_socket.clone(),
            source,
        };
        socket.set_read_timeout(Some(TICK)).map_err(bound)?;
        let mut port = TrunkPort {
            vlan,
            machine_socket: machine_socket.clone(),
            port_socket: port_socket.clone(),
            counts: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let tap_out = file.try_clone().map_err(|source| TrunkError::Tap {
            tap: tap.clone(),
            source,
        })?;
        let socket_out = socket.try_clone().map_err(bound)?;
        let (counts, stop) = (port.counts.clone(), port.stop.clone());
        let to_lan = std::thread::Builder::new()
            .name(format!("trunk-{tap}-in"))
            .spawn(move || machine_to_lan(&socket, tap_out, vlan, &counts, &stop))
            .map_err(TrunkError::Thread)?;
        port.threads.push(to_lan);
        let (counts, stop) = (port.counts.clone(), port.stop.clone());
        let to_machine = std::thread::Builder::new()
            .name(format!("trunk-{tap}-out"))
            .spawn(move || lan_to_machine(file, &socket_out, &machine_socket, vlan, &counts, &stop))
            .map_err(TrunkError::Thread)?;
        port.threads.push(to_machine);
        Ok(port)
    }

    pub fn vlan(&self) -> u16 {
        self.vlan
    }

    /// The socket QEMU's NIC binds.
    pub fn machine_socket(&self) -> &Path {
        &self.machine_socket
    }

    /// The socket the port reads the machine's frames from.
    pub fn port_socket(&self) -> &Path {
        &self.port_socket
    }

    /// QEMU's `-netdev` value for a NIC on this port, with id `id`.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            self.machine_socket.display(),
            self.port_socket.display()
        )
    }

    /// What the port has carried and refused so far.
    pub fn counts(&self) -> TrunkCounts {
        TrunkCounts {
            to_lan: self.counts.to_lan.load(Ordering::Relaxed),
            to_machine: self.counts.to_machine.load(Ordering::Relaxed),
            refused: self.counts.refused.load(Ordering::Relaxed),
            refused_dhcp: self.counts.refused_dhcp.load(Ordering::Relaxed),
        }
    }
}

impl Drop for TrunkPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("grove-testbed: a trunk port thread panicked");
            }
        }
        let _ = std::fs::remove_file(&self.port_socket);
    }
}

/// The frame without its tag when it carries `vlan`'s; `None` for an
/// untagged frame or another VLAN's.
fn untag(frame: &[u8], vlan: u16) -> Option<Vec<u8>> {
    if frame.len() < 18 || frame[12..14] != TPID {
        return None;
    }
    let tci = u16::from_be_bytes([frame[14], frame[15]]);
    if tci & 0x0fff != vlan {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len() - 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&frame[16..]);
    Some(out)
}

/// Whether an untagged frame is a DHCP client's request: IPv4, UDP to
/// port 67.
fn is_dhcp_request(frame: &[u8]) -> bool {
    if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
        return false;
    }
    let ip = &frame[14..];
    let header = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    ip.get(9) == Some(&17)
        && header >= 20
        && ip.get(header + 2..header + 4) == Some(&67u16.to_be_bytes()[..])
}

/// The frame with `vlan`'s tag after its MAC addresses.
fn tag(frame: &[u8], vlan: u16) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&TPID);
    out.extend_from_slice(&vlan.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    Some(out)
}

fn machine_to_lan(
    socket: &UnixDatagram,
    mut tap: File,
    vlan: u16,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("grove-testbed: trunk port: reading the machine's frames: {e}");
                return;
            }
        };
        match untag(&buf[..n], vlan) {
            // A frame the tap refuses (too large) is lost, as on a wire.
            Some(frame) => {
                if tap.write(&frame).is_ok() {
                    counts.to_lan.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                if is_dhcp_request(&buf[..n]) {
                    counts.refused_dhcp.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn lan_to_machine(
    mut tap: File,
    socket: &UnixDatagram,
    machine: &Path,
    vlan: u16,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(TICK).expect("200 ms is a poll timeout"),
        ) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("grove-testbed: trunk port: waiting on the tap: {e}");
                return;
            }
        }
        let n = match tap.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("grove-testbed: trunk port: reading the tap: {e}");
                return;
            }
        };
        // Until QEMU has bound its socket, frames for the machine are lost,
        // as on a port whose link is down.
        if let Some(frame) = tag(&buf[..n], vlan)
            && socket.send_to(&frame, machine).is_ok()
        {
            counts.to_machine.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

nix::ioctl_write_ptr_bad!(tunsetiff, 0x4004_54ca, IfReq);

/// Opens tap `tap` (made if absent, gone when the file closes) inside
/// `netns`, from a thread of its own that enters the namespace, so the
/// calling thread stays where it is.
fn open_tap_in(netns: &str, tap: &IfName) -> Result<File, TrunkError> {
    let handle = NetnsHandle::open(netns)?;
    let name = tap.clone();
    let opened = std::thread::spawn(move || -> std::io::Result<File> {
        handle.enter()?;
        open_tap(&name)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    opened.map_err(|source| TrunkError::Tap {
        tap: tap.clone(),
        source,
    })
}

#[allow(unsafe_code)]
fn open_tap(tap: &IfName) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    // IfName is at most 15 bytes, so the name keeps its NUL.
    let bytes = tap.as_str().as_bytes();
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a valid, initialised `struct ifreq` layout that
    // outlives the call, and the descriptor is open.
    unsafe { tunsetiff(file.as_raw_fd(), &req) }.map_err(std::io::Error::from)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn only_the_ports_vlan_passes_and_loses_its_tag() {
        let plain = frame([0x08, 0x00], &[1, 2, 3, 4]);
        let tagged = tag(&plain, 42).expect("a frame");
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 42]);
        assert_eq!(tagged.len(), plain.len() + 4);
        assert_eq!(untag(&tagged, 42), Some(plain.clone()));
        assert_eq!(untag(&tagged, 43), None, "another VLAN");
        assert_eq!(untag(&plain, 42), None, "untagged");
        // The priority bits are not part of the VLAN id.
        let mut prio = tagged.clone();
        prio[14] |= 0xe0;
        assert_eq!(untag(&prio, 42), Some(plain));
        assert_eq!(tag(&[0; 10], 42), None, "a runt");
    }

    #[test]
    fn dhcp_requests_are_told_apart() {
        // IPv4, header of 20 bytes, UDP from port 68 to port 67.
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend_from_slice(&[0; 8]);
        ip.extend_from_slice(&[0, 68, 0, 67]);
        let request = frame([0x08, 0x00], &ip);
        assert!(is_dhcp_request(&request));
        let mut reply = ip.clone();
        reply[22..24].copy_from_slice(&[0, 68]);
        assert!(!is_dhcp_request(&frame([0x08, 0x00], &reply)));
        let mut tcp = ip.clone();
        tcp[9] = 6;
        assert!(!is_dhcp_request(&frame([0x08, 0x00], &tcp)));
        assert!(!is_dhcp_request(&frame([0x86, 0xdd], &ip)));
        assert!(!is_dhcp_request(&frame([0x08, 0x00], &ip[..21])));
        assert!(!is_dhcp_request(&[0; 10]));
    }
}
