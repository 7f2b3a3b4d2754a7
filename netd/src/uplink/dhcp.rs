//! DHCP through busybox `udhcpc`: netd drives it, never speaks the protocol.
//!
//! udhcpc runs a hook script at every event (`bound`, `renew`,
//! `deconfig`, ...). Grove's hook configures nothing: it prints the event
//! and the lease as one NUL-separated record on udhcpc's stdout, which netd
//! reads and applies over netlink. A probe runs udhcpc once (`-q -n`) to
//! learn whether a NIC gets a lease at all; the long-lived client keeps the
//! uplink's lease (renew, rebind, rediscover) for as long as netd runs.
//! Both die with netd, however it dies, and [`leftovers`] finds any that a
//! previous netd left (one from before that rule, or one started in the
//! instant netd died), for the next netd to stop: their events went to the
//! dead netd's pipe, so they cannot be adopted.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::types::InterfaceName;

const MARK: &[u8] = b"GROVE-DHCP\0";
const END: &[u8] = b"\0END\n";

/// The hook udhcpc runs; `$1` is the event, the rest comes from udhcpc's
/// environment.
const HOOK: &str = "#!/bin/sh\n\
printf 'GROVE-DHCP\\0%s\\0%s\\0%s\\0%s\\0%s\\0%s\\0%s\\0%s\\0END\\n' \
\"$1\" \"$interface\" \"$ip\" \"$subnet\" \"$router\" \"$dns\" \"$lease\" \"$serverid\"\n";

/// Why DHCP could not run.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot write the DHCP hook {path}: {source}")]
    Hook {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program} on {ifname}: {source}")]
    Spawn {
        program: PathBuf,
        ifname: InterfaceName,
        #[source]
        source: std::io::Error,
    },
}

/// A DHCP event as the hook reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `bound`, `renew`, `deconfig`, `leasefail` or `nak`.
    pub kind: String,
    pub interface: String,
    pub lease: Option<Lease>,
}

/// An IPv4 lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
    pub lease_secs: Option<u64>,
    pub server: Option<Ipv4Addr>,
}

/// Writes the hook script into `dir`, executable.
pub fn write_hook(dir: &Path) -> Result<PathBuf, DhcpError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("udhcpc-hook");
    let err = |source| DhcpError::Hook {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    grove_daemon::fsutil::write_atomic(&path, HOOK.as_bytes(), 0o755).map_err(|e| {
        DhcpError::Hook {
            path: path.clone(),
            source: e.source,
        }
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    Ok(path)
}

/// Splits a byte stream into hook records.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Feeds bytes; answers every complete record.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let Some(start) = find(&self.buf, MARK) else {
                // Keep a tail that might be the start of a mark.
                let keep = self.buf.len().saturating_sub(MARK.len());
                self.buf.drain(..keep);
                break;
            };
            let body_start = start + MARK.len();
            let Some(len) = find(&self.buf[body_start..], END) else {
                self.buf.drain(..start);
                break;
            };
            let body = self.buf[body_start..body_start + len].to_vec();
            self.buf.drain(..body_start + len + END.len());
            if let Some(event) = parse_record(&body) {
                out.push(event);
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `event\0interface\0ip\0subnet\0router\0dns\0lease\0serverid`.
fn parse_record(body: &[u8]) -> Option<Event> {
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).trim().to_owned())
        .collect();
    let [kind, interface, ip, subnet, router, dns, lease, server] = fields.as_slice() else {
        return None;
    };
    let lease = match ip.parse::<Ipv4Addr>() {
        Ok(address) => Some(Lease {
            address,
            prefix: subnet
                .parse::<Ipv4Addr>()
                .map(|m| u32::from(m).count_ones() as u8)
                .unwrap_or(24),
            router: router
                .split_whitespace()
                .next()
                .and_then(|r| r.parse().ok()),
            dns: dns
                .split_whitespace()
                .filter_map(|d| d.parse().ok())
                .collect(),
            lease_secs: lease.parse().ok(),
            server: server.parse().ok(),
        }),
        Err(_) => None,
    };
    Some(Event {
        kind: kind.clone(),
        interface: interface.clone(),
        lease,
    })
}

/// Asks for a lease on `ifname` once, configuring nothing. `None` when no
/// server answered within about `timeout`.
pub async fn probe(
    udhcpc: &Path,
    hook: &Path,
    ifname: &InterfaceName,
    timeout: Duration,
) -> Result<Option<Lease>, DhcpError> {
    let tries = timeout.as_secs().clamp(1, 30).to_string();
    let mut child = start_udhcpc(
        udhcpc,
        hook,
        ifname,
        &["-f", "-q", "-n", "-t", &tries, "-T", "1", "-A", "1"],
    )?;
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let read = stdout.read_to_end(&mut out);
        if tokio::time::timeout(timeout + Duration::from_secs(3), read)
            .await
            .is_err()
        {
            tracing::warn!(ifname = %ifname, "DHCP probe overran its time");
        }
    }
    if let Err(e) = child.kill().await {
        tracing::debug!(ifname = %ifname, error = %e, "probe already ended");
    }
    let events = Decoder::default().feed(&out);
    Ok(events
        .into_iter()
        .find(|e| e.kind == "bound")
        .and_then(|e| e.lease))
}

/// Starts `udhcpc` with `args` on `ifname`, `hook` as its script: events
/// on its stdout, killed when dropped and when netd dies.
fn start_udhcpc(
    udhcpc: &Path,
    hook: &Path,
    ifname: &InterfaceName,
    args: &[&str],
) -> Result<tokio::process::Child, DhcpError> {
    let mut cmd = tokio::process::Command::new(udhcpc);
    cmd.args(args)
        .args(["-i", ifname.as_str(), "-s"])
        .arg(hook)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    crate::procs::die_with_parent(&mut cmd);
    cmd.spawn().map_err(|source| DhcpError::Spawn {
        program: udhcpc.to_owned(),
        ifname: ifname.clone(),
        source,
    })
}

/// Pids of udhcpc processes (`udhcpc`, by file name) in this network
/// namespace that run `hook`: ones a previous netd started. Blocking.
pub fn leftovers(udhcpc: &Path, hook: &Path, proc_root: &Path) -> Vec<i32> {
    let hook = hook.as_os_str().as_encoded_bytes();
    crate::procs::find(proc_root, |args| {
        args.first().is_some_and(|a| crate::procs::runs(a, udhcpc)) && args.contains(&hook)
    })
}

/// The long-lived client on the uplink: a child process and its events.
#[derive(Debug)]
pub struct Client {
    pub child: tokio::process::Child,
    pub events: mpsc::Receiver<Event>,
}

impl Client {
    /// Starts udhcpc on `ifname` for good, asking for `previous` if known.
    pub fn spawn(
        udhcpc: &Path,
        hook: &Path,
        ifname: &InterfaceName,
        previous: Option<Ipv4Addr>,
    ) -> Result<Self, DhcpError> {
        let previous = previous.map(|ip| ip.to_string());
        let mut args = vec!["-f", "-t", "4", "-T", "2", "-A", "3"];
        if let Some(ip) = &previous {
            args.extend(["-r", ip.as_str()]);
        }
        let mut child = start_udhcpc(udhcpc, hook, ifname, &args)?;
        let (tx, events) = mpsc::channel(16);
        if let Some(mut stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut decoder = Decoder::default();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stdout.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    for event in decoder.feed(&buf[..n]) {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        Ok(Self { child, events })
    }

    /// Asks udhcpc to renew now (SIGUSR1), as after a cable comes back.
    pub fn renew(&self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1) {
                tracing::warn!(error = %e, "cannot ask udhcpc to renew");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> Vec<u8> {
        let mut v = MARK.to_vec();
        v.extend_from_slice(fields.join("\0").as_bytes());
        v.extend_from_slice(END);
        v
    }

    #[test]
    fn decodes_records_split_anywhere() {
        let mut bytes = b"udhcpc noise\n".to_vec();
        bytes.extend(record(&[
            "bound",
            "eth1",
            "10.77.3.150",
            "255.255.255.0",
            "10.77.3.1 10.77.3.2",
            "10.77.3.1 9.9.9.9",
            "43200",
            "10.77.3.1",
        ]));
        bytes.extend(record(&["deconfig", "eth1", "", "", "", "", "", ""]));
        for split in [1, 7, 20, bytes.len() - 3] {
            let mut d = Decoder::default();
            let mut events = d.feed(&bytes[..split]);
            events.extend(d.feed(&bytes[split..]));
            assert_eq!(events.len(), 2, "split at {split}");
            let lease = events[0].lease.clone().expect("bound has a lease");
            assert_eq!(events[0].kind, "bound");
            assert_eq!(lease.address, Ipv4Addr::new(10, 77, 3, 150));
            assert_eq!(lease.prefix, 24);
            assert_eq!(lease.router, Some(Ipv4Addr::new(10, 77, 3, 1)));
            assert_eq!(lease.dns.len(), 2);
            assert_eq!(lease.lease_secs, Some(43200));
            assert_eq!(events[1].kind, "deconfig");
            assert!(events[1].lease.is_none());
        }
    }

    #[test]
    fn a_short_record_is_dropped() {
        let mut v = MARK.to_vec();
        v.extend_from_slice(b"bound\0eth0");
        v.extend_from_slice(END);
        assert!(Decoder::default().feed(&v).is_empty());
    }

    #[test]
    fn the_hook_prints_a_record_from_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let hook = write_hook(dir.path()).expect("hook");
        let out = std::process::Command::new(&hook)
            .arg("bound")
            .env("interface", "eth0")
            .env("ip", "192.168.1.20")
            .env("subnet", "255.255.0.0")
            .env("router", "192.168.1.1")
            .env("dns", "1.1.1.1")
            .env("lease", "600")
            .env("serverid", "192.168.1.1")
            .output()
            .expect("hook runs");
        let events = Decoder::default().feed(&out.stdout);
        assert_eq!(events.len(), 1);
        let lease = events[0].lease.clone().expect("lease");
        assert_eq!(lease.prefix, 16);
        assert_eq!(lease.lease_secs, Some(600));
    }
}
