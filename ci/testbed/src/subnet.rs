//! Farm LAN subnets: `10.77.X.0/24`, unique among all farms on the host.
//!
//! A farm takes an exclusive `flock` on [`LOCK_PATH`], reads which
//! `10.77.X` prefixes already appear in the host's routes and addresses,
//! picks free ones, and keeps the lock until its host veths carry their
//! addresses, so the next farm sees them. Limits: 256 subnets in all; a
//! subnet used by something that is neither a route nor an address in the
//! host namespace is not seen.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::cmd::{self, CmdError};

/// The lock every farm takes while it claims subnets.
pub const LOCK_PATH: &str = "/run/grove-testbed.lock";

const FIRST: u8 = 10;
const SECOND: u8 = 77;

/// Claiming a subnet failed.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("could not open the subnet lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("could not read the host's routes and addresses")]
    Inspect(#[source] CmdError),
    #[error("all 256 subnets 10.77.X.0/24 are in use; {wanted} more needed")]
    Exhausted { wanted: usize },
}

/// One `10.77.X.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    third: u8,
}

impl Subnet {
    /// `10.77.third.0/24`.
    pub fn new(third: u8) -> Subnet {
        Subnet { third }
    }

    /// The address `10.77.X.last`.
    pub fn host(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(FIRST, SECOND, self.third, last)
    }

    /// The LAN's own address (`.1`): bridge, router, DHCP and DNS server.
    /// The LAN's IPv6 prefix, `fd77:X::/64`, announced by router
    /// advertisements on DHCP LANs so nodes take IPv6 by SLAAC.
    pub fn ipv6_prefix(&self) -> String {
        // Canonical form (`fd77::` for subnet 0), as `ip` prints addresses.
        std::net::Ipv6Addr::new(0xfd77, u16::from(self.third), 0, 0, 0, 0, 0, 0).to_string()
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The host's address on the LAN (`.254`).
    pub fn host_side(&self) -> Ipv4Addr {
        self.host(254)
    }

    /// First and last address dnsmasq hands out.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.host(100), self.host(199))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let [a, b, c, _] = ip.octets();
        (a, b, c) == (FIRST, SECOND, self.third)
    }

    /// `address/24` for `ip addr add`.
    pub fn cidr(&self, last: u8) -> String {
        format!("{}/24", self.host(last))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/24", self.host(0))
    }
}

/// The held subnet lock; dropping it lets the next farm claim.
#[derive(Debug)]
pub struct SubnetLock {
    _lock: Flock<File>,
}

impl SubnetLock {
    /// Waits for the host-wide subnet lock.
    pub fn acquire() -> Result<SubnetLock, SubnetError> {
        let path = PathBuf::from(LOCK_PATH);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| SubnetError::Open {
                path: path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_file, source)| SubnetError::Lock { path, source })?;
        Ok(SubnetLock { _lock: lock })
    }

    /// Picks `count` subnets that no route or address on the host uses.
    /// Only meaningful while the lock is held, hence a method.
    pub fn allocate(&self, count: usize) -> Result<Vec<Subnet>, SubnetError> {
        let routes = cmd::run("ip", &["-4", "route", "show", "table", "all"])
            .map_err(SubnetError::Inspect)?;
        let addrs = cmd::run("ip", &["-4", "-o", "addr", "show"]).map_err(SubnetError::Inspect)?;
        let used = used_thirds(&routes)
            .union(&used_thirds(&addrs))
            .copied()
            .collect();
        pick_free(&used, count)
    }
}

/// Every X for which `10.77.X.` appears in `text`.
fn used_thirds(text: &str) -> BTreeSet<u8> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| {
            let mut parts = word.split('.');
            let a: u8 = parts.next()?.parse().ok()?;
            let b: u8 = parts.next()?.parse().ok()?;
            let c: u8 = parts.next()?.parse().ok()?;
            ((a, b) == (FIRST, SECOND)).then_some(c)
        })
        .collect()
}

fn pick_free(used: &BTreeSet<u8>, count: usize) -> Result<Vec<Subnet>, SubnetError> {
    let free: Vec<Subnet> = (0..=u8::MAX)
        .filter(|x| !used.contains(x))
        .take(count)
        .map(Subnet::new)
        .collect();
    if free.len() < count {
        return Err(SubnetError::Exhausted {
            wanted: count - free.len(),
        });
    }
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_used_prefixes_from_ip_output() {
        let routes = "default via 192.0.2.1 dev eth0\n\
                      10.77.0.0/24 dev gtbabcdefh0 proto kernel scope link src 10.77.0.254\n\
                      10.77.3.0/24 dev gtbabcdefh1 proto kernel scope link src 10.77.3.254 linkdown\n\
                      10.78.4.0/24 dev x\n\
                      110.77.5.0/24 dev y\n";
        assert_eq!(used_thirds(routes), BTreeSet::from([0, 3]));
    }

    #[test]
    fn picks_the_lowest_free() {
        let used = BTreeSet::from([0, 1, 3]);
        let got = pick_free(&used, 3).expect("room");
        assert_eq!(got, vec![Subnet::new(2), Subnet::new(4), Subnet::new(5)]);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let used: BTreeSet<u8> = (0..=254).collect();
        assert!(pick_free(&used, 1).is_ok());
        assert!(matches!(
            pick_free(&used, 2),
            Err(SubnetError::Exhausted { wanted: 1 })
        ));
    }

    #[test]
    fn addresses() {
        let s = Subnet::new(9);
        assert_eq!(s.to_string(), "10.77.9.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 77, 9, 1));
        assert_eq!(s.host_side(), Ipv4Addr::new(10, 77, 9, 254));
        assert_eq!(s.cidr(10), "10.77.9.10/24");
        assert!(s.contains(Ipv4Addr::new(10, 77, 9, 150)));
        assert!(!s.contains(Ipv4Addr::new(10, 77, 8, 150)));
    }
}
