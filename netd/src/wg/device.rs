//! A WireGuard device's keys, port and peers, through `wireguard-control`:
//! netlink for kernel WireGuard, the UAPI socket for a userspace process.
//!
//! [`diff`] turns the wanted peers into the smallest set of changes against
//! what the device holds, and [`apply`] sends them as one transaction (two
//! for userspace: removals, then additions), never replacing the peer list,
//! so untouched peers keep their sessions. Limits: boringtun 0.7 cannot
//! modify a peer in place, so there a changed peer is removed and added
//! again (its session restarts); the calls block and belong on a blocking
//! thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use wireguard_control::{DeviceUpdate, PeerConfigBuilder};

use super::key::{PrivateKey, PublicKey};

/// Why the device could not be configured or read.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{ifname:?} is not a valid WireGuard interface name: {source}")]
    Name {
        ifname: String,
        #[source]
        source: wireguard_control::InvalidInterfaceName,
    },
    #[error("cannot configure WireGuard device {ifname} ({backend}): {source}")]
    Apply {
        ifname: String,
        backend: Backend,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read WireGuard device {ifname} ({backend}): {source}")]
    Read {
        ifname: String,
        backend: Backend,
        #[source]
        source: std::io::Error,
    },
}

/// Which WireGuard implementation carries the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel module, over netlink.
    Kernel,
    /// A userspace process (boringtun), over its UAPI socket.
    Userspace,
}

impl Backend {
    fn to_wg(self) -> wireguard_control::Backend {
        match self {
            Backend::Kernel => wireguard_control::Backend::Kernel,
            Backend::Userspace => wireguard_control::Backend::Userspace,
        }
    }

    /// Whether a peer's settings can change without removing it.
    pub fn updates_in_place(self) -> bool {
        match self {
            Backend::Kernel => true,
            Backend::Userspace => false,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        })
    }
}

/// An allowed-ips entry: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How one peer should be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub key: PublicKey,
    /// Where to send to before the peer has been heard from; `None` waits
    /// for the peer to come to us.
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub allowed_ips: BTreeSet<Cidr>,
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// The live endpoint (roamed to wherever the peer last spoke from).
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub allowed_ips: BTreeSet<Cidr>,
    /// How long ago the current session's handshake completed.
    pub handshake_ago: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The public key of the private key the device holds, if it has one.
    pub public_key: Option<PublicKey>,
    pub listen_port: Option<u16>,
    pub peers: BTreeMap<PublicKey, PeerState>,
}

/// What to change so the device holds the wanted peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub remove: Vec<PublicKey>,
    pub add: Vec<PeerConfig>,
    /// Peers whose settings changed.
    pub update: Vec<PeerConfig>,
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.update.is_empty()
    }
}

/// The changes that make a device holding `actual` hold `next`, when
/// `prev` is what was asked for last time. Endpoints are compared with
/// `prev`, not with the device, because the device's endpoint roams to
/// wherever the peer last spoke from and that is not a change to undo.
pub fn diff(
    prev: &BTreeMap<PublicKey, PeerConfig>,
    actual: &BTreeMap<PublicKey, PeerState>,
    next: &BTreeMap<PublicKey, PeerConfig>,
) -> Changes {
    let mut changes = Changes {
        remove: actual
            .keys()
            .filter(|k| !next.contains_key(*k))
            .copied()
            .collect(),
        ..Changes::default()
    };
    for (key, want) in next {
        let Some(have) = actual.get(key) else {
            changes.add.push(want.clone());
            continue;
        };
        let endpoint_changed = match prev.get(key) {
            Some(asked) => asked.endpoint != want.endpoint,
            None => want.endpoint.is_some() && have.endpoint != want.endpoint,
        };
        if endpoint_changed
            || have.allowed_ips != want.allowed_ips
            || have.keepalive != want.keepalive
        {
            changes.update.push(want.clone());
        } else {
            changes.unchanged += 1;
        }
    }
    changes
}

/// Device-wide settings to set along with the peers.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    pub private_key: Option<&'a PrivateKey>,
    pub listen_port: Option<u16>,
}

fn wg_name(ifname: &str) -> Result<wireguard_control::InterfaceName, DeviceError> {
    ifname.parse().map_err(|source| DeviceError::Name {
        ifname: ifname.to_owned(),
        source,
    })
}

/// Every field set explicitly, so nothing is inherited from the previous
/// peer of the same UAPI transaction (boringtun 0.7 keeps per-peer fields
/// across `public_key=` lines).
fn builder(peer: &PeerConfig) -> PeerConfigBuilder {
    let mut b = PeerConfigBuilder::new(&peer.key.to_wg())
        .replace_allowed_ips()
        .set_persistent_keepalive_interval(peer.keepalive.unwrap_or(0));
    if let Some(endpoint) = peer.endpoint {
        b = b.set_endpoint(endpoint);
    }
    for cidr in &peer.allowed_ips {
        b = b.add_allowed_ip(cidr.addr, cidr.len);
    }
    b
}

/// Peers without an endpoint first, so none inherits one (see [`builder`]).
fn additions<'a>(peers: impl Iterator<Item = &'a PeerConfig>) -> Vec<PeerConfigBuilder> {
    let mut peers: Vec<&PeerConfig> = peers.collect();
    peers.sort_by_key(|p| p.endpoint.is_some());
    peers.into_iter().map(builder).collect()
}

/// Sends `settings` and `changes` to device `ifname`, creating a kernel
/// device if it does not exist. Blocking.
pub fn apply(
    ifname: &str,
    backend: Backend,
    settings: &Settings<'_>,
    changes: &Changes,
) -> Result<(), DeviceError> {
    let name = wg_name(ifname)?;
    let mut head = DeviceUpdate::new();
    if let Some(key) = settings.private_key {
        head = head.set_private_key(key.to_wg());
    }
    if let Some(port) = settings.listen_port {
        head = head.set_listen_port(port);
    }
    for key in &changes.remove {
        head = head.remove_peer_by_key(&key.to_wg());
    }
    let send = |update: DeviceUpdate| {
        update
            .apply(&name, backend.to_wg())
            .map_err(|source| DeviceError::Apply {
                ifname: ifname.to_owned(),
                backend,
                source,
            })
    };
    if backend.updates_in_place() {
        let all = additions(changes.add.iter().chain(&changes.update));
        return send(head.add_peers(&all));
    }
    for key in changes.update.iter().map(|p| p.key) {
        head = head.remove_peer_by_key(&key.to_wg());
    }
    let nothing_first = settings.private_key.is_none()
        && settings.listen_port.is_none()
        && changes.remove.is_empty()
        && changes.update.is_empty();
    if !nothing_first {
        send(head)?;
    }
    let all = additions(changes.add.iter().chain(&changes.update));
    if all.is_empty() {
        return Ok(());
    }
    send(DeviceUpdate::new().add_peers(&all))
}

/// Reads device `ifname`. Blocking.
pub fn read(ifname: &str, backend: Backend) -> Result<DeviceState, DeviceError> {
    let name = wg_name(ifname)?;
    let device = wireguard_control::Device::get(&name, backend.to_wg()).map_err(|source| {
        DeviceError::Read {
            ifname: ifname.to_owned(),
            backend,
            source,
        }
    })?;
    let now = SystemTime::now();
    let peers = device
        .peers
        .into_iter()
        .map(|p| {
            let handshake_ago = p.stats.last_handshake_time.and_then(|t| match backend {
                Backend::Kernel => now.duration_since(t).ok(),
                // boringtun reports the age of the handshake in the field
                // that the protocol defines as a time since the epoch.
                Backend::Userspace => t.duration_since(SystemTime::UNIX_EPOCH).ok(),
            });
            let state = PeerState {
                endpoint: p.config.endpoint,
                keepalive: p.config.persistent_keepalive_interval.filter(|k| *k != 0),
                allowed_ips: p
                    .config
                    .allowed_ips
                    .iter()
                    .map(|a| Cidr {
                        addr: a.address,
                        len: a.cidr,
                    })
                    .collect(),
                handshake_ago,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            };
            (PublicKey::from_wg(&p.config.public_key), state)
        })
        .collect();
    Ok(DeviceState {
        public_key: device.public_key.as_ref().map(PublicKey::from_wg),
        listen_port: device.listen_port.filter(|p| *p != 0),
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_wg(&wireguard_control::Key([n; 32]))
    }

    fn cidr(text: &str) -> Cidr {
        let (addr, len) = text.split_once('/').expect("cidr");
        Cidr {
            addr: addr.parse().expect("addr"),
            len: len.parse().expect("len"),
        }
    }

    fn want(n: u8, endpoint: Option<&str>, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            key: key(n),
            endpoint: endpoint.map(|e| e.parse().expect("endpoint")),
            keepalive: None,
            allowed_ips: ips.iter().map(|c| cidr(c)).collect(),
        }
    }

    fn have(p: &PeerConfig, live: Option<&str>) -> PeerState {
        PeerState {
            endpoint: live.map(|e| e.parse().expect("endpoint")),
            keepalive: p.keepalive,
            allowed_ips: p.allowed_ips.clone(),
            handshake_ago: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    fn map(peers: &[PeerConfig]) -> BTreeMap<PublicKey, PeerConfig> {
        peers.iter().map(|p| (p.key, p.clone())).collect()
    }

    #[test]
    fn adding_a_peer_touches_no_other_peer() {
        let a = want(1, Some("10.0.0.1:51820"), &["fd00::1/128"]);
        let b = want(2, Some("10.0.0.2:51820"), &["fd00::2/128"]);
        let c = want(3, None, &["fd00::3/128"]);
        let prev = map(&[a.clone(), b.clone()]);
        // a has roamed: the device reports another endpoint than asked.
        let actual = BTreeMap::from([
            (a.key, have(&a, Some("10.9.9.9:4000"))),
            (b.key, have(&b, None)),
        ]);
        let next = map(&[a, b, c.clone()]);
        let changes = diff(&prev, &actual, &next);
        assert_eq!(changes.add, vec![c]);
        assert!(
            changes.update.is_empty() && changes.remove.is_empty(),
            "{changes:?}"
        );
        assert_eq!(changes.unchanged, 2);
    }

    #[test]
    fn changed_and_gone_peers_are_found() {
        let a = want(1, Some("10.0.0.1:51820"), &["fd00::1/128"]);
        let b = want(2, Some("10.0.0.2:51820"), &["fd00::2/128"]);
        let prev = map(&[a.clone(), b.clone()]);
        let actual = BTreeMap::from([(a.key, have(&a, None)), (b.key, have(&b, None))]);
        let mut a2 = a.clone();
        a2.allowed_ips.insert(cidr("fd00::/64"));
        let mut b2 = b.clone();
        b2.endpoint = Some("10.0.0.22:51820".parse().expect("endpoint"));
        assert_eq!(
            diff(&prev, &actual, &map(&[a2.clone(), b2.clone()])).update,
            vec![a2.clone(), b2]
        );
        let mut a3 = a.clone();
        a3.keepalive = Some(25);
        let changes = diff(&prev, &actual, &map(&[a3.clone()]));
        assert_eq!((changes.update, changes.remove), (vec![a3], vec![b.key]));
    }

    #[test]
    fn after_a_restart_the_device_is_the_reference() {
        let a = want(1, Some("10.0.0.1:51820"), &["fd00::1/128"]);
        let next = map(std::slice::from_ref(&a));
        // Nothing asked before: a device peer without endpoint gets one.
        let bare = BTreeMap::from([(a.key, have(&a, None))]);
        assert_eq!(diff(&BTreeMap::new(), &bare, &next).update, vec![a.clone()]);
        // A device that already has it is left alone.
        let same = BTreeMap::from([(a.key, have(&a, Some("10.0.0.1:51820")))]);
        assert!(diff(&BTreeMap::new(), &same, &next).is_empty());
        // An empty device gets everything.
        assert_eq!(diff(&next, &BTreeMap::new(), &next).add, vec![a]);
    }

    #[test]
    fn peers_without_endpoint_are_sent_first() {
        let with = want(1, Some("10.0.0.1:51820"), &["fd00::1/128"]);
        let without = want(2, None, &["fd00::2/128"]);
        let sent = additions([&with, &without].into_iter());
        assert_eq!(sent[0].public_key(), &without.key.to_wg());
        assert_eq!(sent[1].public_key(), &with.key.to_wg());
    }
}
