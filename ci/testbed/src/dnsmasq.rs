//! The DHCP and DNS server of one farm LAN: a `dnsmasq` child process
//! living in the LAN's network namespace.
//!
//! dnsmasq is started in the foreground with no config file, bound to the
//! LAN bridge only (so several LANs can each have one), logging to a file in
//! the LAN's run directory; it counts as started once it listens on UDP 67
//! and 53. It also serves TFTP from the LAN's `tftp/` directory and
//! chainloads network boots as a farmer's server would (docs/image.md): a
//! firmware's own PXE client gets iPXE (`undionly.kpxe` or `ipxe.efi`),
//! iPXE (DHCP option 175) gets the script `grove.ipxe`; a test puts the
//! files there. Limits: IPv4 only, a fixed `.100`–`.199` pool with 12 h
//! leases, and DNS answers only for names learnt from DHCP leases.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cmd;
use crate::ifname::IfName;
use crate::netns::{NetnsError, NetnsHandle};
use crate::proc::{self, ProcError, ProcId};
use crate::subnet::Subnet;
use crate::wait::wait_until;

/// How long dnsmasq may take to open its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dnsmasq may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The domain dnsmasq gives DHCP clients and answers for.
pub const DOMAIN: &str = "farm.test";

/// Starting or stopping dnsmasq failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("could not create {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not enter the LAN namespace")]
    Netns(#[from] NetnsError),
    #[error("could not start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dnsmasq on {bridge} exited ({status}) before serving; see {log}")]
    Exited {
        bridge: IfName,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error(
        "dnsmasq on {bridge} did not listen on UDP 67 and 53 within {READY_TIMEOUT:?}; see {log}"
    )]
    NotReady { bridge: IfName, log: PathBuf },
    #[error("could not stop dnsmasq (pid {pid})")]
    Stop {
        pid: u32,
        #[source]
        source: ProcError,
    },
    #[error("could not reap dnsmasq (pid {pid})")]
    Reap {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// One running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    id: Option<ProcId>,
    bridge: IfName,
    log: PathBuf,
    leases: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `netns` on `bridge`, keeping its files in `dir`,
    /// and waits until it serves.
    #[allow(unsafe_code)]
    pub fn start(
        netns: &str,
        bridge: &IfName,
        subnet: Subnet,
        dir: &Path,
        lease_secs: u32,
        router: Ipv4Addr,
    ) -> Result<Dnsmasq, DnsmasqError> {
        let log = dir.join("dnsmasq.log");
        let leases = dir.join("leases");
        let tftp = tftp_dir(dir);
        std::fs::create_dir_all(&tftp).map_err(|source| DnsmasqError::File {
            path: tftp.clone(),
            source,
        })?;
        let log_file = create(&log)?;
        let log_err = log_file.try_clone().map_err(|source| DnsmasqError::File {
            path: log.clone(),
            source,
        })?;
        let args = arguments(bridge, subnet, dir, lease_secs, router);
        let handle = NetnsHandle::open(netns)?;
        let mut command = Command::new(cmd::resolve("dnsmasq"));
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        // SAFETY: the closure only resets the signal state and calls
        // setns(2) on a descriptor opened before the fork; it allocates
        // nothing and takes no locks.
        unsafe {
            command.pre_exec(move || {
                proc::reset_signals_for_exec()?;
                handle.enter()
            });
        }
        let child = command.spawn().map_err(|source| DnsmasqError::Spawn {
            command: cmd::command_line("dnsmasq", &args),
            source,
        })?;
        let mut dnsmasq = Dnsmasq {
            id: ProcId::of(child.id()),
            child,
            bridge: bridge.clone(),
            log,
            leases,
        };
        dnsmasq.wait_ready()?;
        Ok(dnsmasq)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn leases(&self) -> &Path {
        &self.leases
    }

    fn wait_ready(&mut self) -> Result<(), DnsmasqError> {
        let pid = self.pid();
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, Duration::from_millis(20), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            let ports = udp_ports(pid);
            ports.contains(&67) && ports.contains(&53)
        });
        if let Some(status) = exited {
            return Err(DnsmasqError::Exited {
                bridge: self.bridge.clone(),
                status,
                log: self.log.clone(),
            });
        }
        if !ready {
            return Err(DnsmasqError::NotReady {
                bridge: self.bridge.clone(),
                log: self.log.clone(),
            });
        }
        Ok(())
    }

    /// SIGTERM, a short grace, SIGKILL; then reaps the child.
    pub fn stop(&mut self) -> Result<(), DnsmasqError> {
        let pid = self.pid();
        if let Some(id) = self.id {
            proc::signal(id, Signal::SIGTERM)
                .map_err(|source| DnsmasqError::Stop { pid, source })?;
            let gone = wait_until(STOP_GRACE, Duration::from_millis(20), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            if !gone {
                proc::kill_until_gone("dnsmasq", STOP_GRACE, || vec![id])
                    .map_err(|source| DnsmasqError::Stop { pid, source })?;
            }
        }
        self.child
            .wait()
            .map(drop)
            .map_err(|source| DnsmasqError::Reap { pid, source })
    }
}

fn create(path: &Path) -> Result<File, DnsmasqError> {
    File::create(path).map_err(|source| DnsmasqError::File {
        path: path.to_owned(),
        source,
    })
}

fn arguments(
    bridge: &IfName,
    subnet: Subnet,
    dir: &Path,
    lease_secs: u32,
    router: Ipv4Addr,
) -> Vec<String> {
    let (first, last) = subnet.dhcp_range();
    let gateway: Ipv4Addr = subnet.gateway();
    vec![
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--user=root".into(),
        "--bind-interfaces".into(),
        format!("--interface={bridge}"),
        "--except-interface=lo".into(),
        format!("--dhcp-range={first},{last},255.255.255.0,{lease_secs}"),
        // Router advertisements only: nodes take IPv6 by SLAAC.
        "--enable-ra".into(),
        format!("--dhcp-range={},ra-only,64", subnet.ipv6_prefix()),
        format!("--dhcp-option=option:router,{router}"),
        format!("--dhcp-option=option:dns-server,{gateway}"),
        "--dhcp-authoritative".into(),
        // Offer at once: by default dnsmasq first pings a new address and
        // waits 3 s for an answer, which no farm LAN here needs (every
        // address it gives is its own) and which would add 3 s to each
        // node's first lease, in tests and in `ci/bench image`.
        "--no-ping".into(),
        format!("--dhcp-leasefile={}", dir.join("leases").display()),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        "--port=53".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        format!("--domain={DOMAIN}"),
        format!("--local=/{DOMAIN}/"),
        "--log-facility=-".into(),
        "--log-dhcp".into(),
        "--log-queries".into(),
        // Network boot: TFTP, and the chainload into iPXE and its script.
        "--enable-tftp".into(),
        format!("--tftp-root={}", tftp_dir(dir).display()),
        "--dhcp-match=set:ipxe,175".into(),
        "--dhcp-match=set:efi64,option:client-arch,7".into(),
        "--dhcp-boot=tag:ipxe,grove.ipxe".into(),
        "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi".into(),
        "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe".into(),
    ]
}

/// The directory dnsmasq serves by TFTP, in the LAN's directory `dir`.
pub fn tftp_dir(dir: &Path) -> PathBuf {
    dir.join("tftp")
}

/// The local UDP ports open in the network namespace of `pid`.
fn udp_ports(pid: u32) -> Vec<u16> {
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .map(|text| parse_udp_ports(&text))
        .unwrap_or_default()
}

fn parse_udp_ports(text: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            let (_, port) = local.split_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_from_proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    \x20 1: 0100000A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n\
                    \x20 2: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n";
        assert_eq!(parse_udp_ports(text), vec![53, 67]);
    }

    #[test]
    fn arguments_bind_to_the_bridge_and_the_pool() {
        let bridge = IfName::new("br1").expect("valid");
        let router = Ipv4Addr::new(10, 77, 5, 253);
        let args = arguments(&bridge, Subnet::new(5), Path::new("/r/lan1"), 43200, router);
        assert!(args.contains(&"--interface=br1".to_owned()));
        assert!(
            args.contains(&"--dhcp-range=10.77.5.100,10.77.5.199,255.255.255.0,43200".to_owned())
        );
        assert!(args.contains(&"--dhcp-leasefile=/r/lan1/leases".to_owned()));
        assert!(args.contains(&"--no-ping".to_owned()));
        assert!(args.contains(&"--conf-file=/dev/null".to_owned()));
        assert!(args.contains(&"--tftp-root=/r/lan1/tftp".to_owned()));
        assert!(args.contains(&"--dhcp-boot=tag:ipxe,grove.ipxe".to_owned()));
        assert!(args.contains(&"--dhcp-option=option:router,10.77.5.253".to_owned()));
        assert!(args.contains(&"--dhcp-option=option:dns-server,10.77.5.1".to_owned()));
    }
}
