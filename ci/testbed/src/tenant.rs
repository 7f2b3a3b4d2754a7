//! Helpers for driving netd's tenant networks in tests and benchmarks: the
//! JSON bodies of the networks API, pings and commands inside a node's
//! tenant namespaces, a hand-made userspace WireGuard peer (a tenant's
//! laptop, or the benchmark's floor), and the node state a restart must
//! leave unchanged.
//!
//! Bodies are built as text (the library has no JSON dependency) and the
//! hand-made peer uses `boringtun-cli`, `wg` and `ip` only, as a tenant
//! would. Limits: IPv4 only; a hand-made peer runs until its node is torn
//! down or [`HandPeer::stop`] is called.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{self, CmdError};
use crate::mesh::Keys;
use crate::node::{Node, NodeError};

/// One network, as `POST /v1/networks` takes it.
#[derive(Debug, Clone)]
pub struct NetworkBody<'a> {
    pub netid: &'a str,
    pub ip_range: &'a str,
    pub subnet: &'a str,
    pub keys: &'a Keys,
    pub listen_port: u16,
    pub peers: Vec<PeerBody>,
}

/// One peer of a network.
#[derive(Debug, Clone)]
pub struct PeerBody {
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
}

impl NetworkBody<'_> {
    /// The JSON text.
    pub fn json(&self) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                let endpoint = p
                    .endpoint
                    .map(|e| format!(r#""endpoint":"{e}","#))
                    .unwrap_or_default();
                let ips: Vec<String> = p.allowed_ips.iter().map(|a| format!("\"{a}\"")).collect();
                format!(
                    r#"{{"public_key":"{}",{endpoint}"allowed_ips":[{}]}}"#,
                    p.public_key,
                    ips.join(",")
                )
            })
            .collect();
        format!(
            r#"{{"netid":"{}","ip_range":"{}","subnet":"{}","private_key":"{}","listen_port":{},"peers":[{}]}}"#,
            self.netid,
            self.ip_range,
            self.subnet,
            self.keys.private,
            self.listen_port,
            peers.join(",")
        )
    }
}

/// The body of `POST /v1/networks/{netid}/attach`.
pub fn attach_body(name: &str, kind: &str) -> String {
    format!(r#"{{"name":"{name}","kind":"{kind}"}}"#)
}

/// The body of `POST /v1/networks/{netid}/attach` asking for `address`.
pub fn attach_at_body(name: &str, kind: &str, address: &str) -> String {
    format!(r#"{{"name":"{name}","kind":"{kind}","address":"{address}"}}"#)
}

/// Runs `argv` inside namespace `netns` of `node`.
pub fn exec_in(node: &Node, netns: &str, argv: &[&str]) -> Result<std::process::Output, NodeError> {
    let mut all = vec!["ip", "netns", "exec", netns];
    all.extend_from_slice(argv);
    node.exec(&all)
}

/// One ping from namespace `netns` of `node` (the node's own namespace when
/// `None`) to `to`, waiting at most a second; whether it was answered.
pub fn ping(node: &Node, netns: Option<&str>, to: Ipv4Addr) -> Result<bool, NodeError> {
    let to = to.to_string();
    let argv = ["ping", "-4", "-n", "-c", "1", "-W", "1", to.as_str()];
    let out = match netns {
        Some(ns) => exec_in(node, ns, &argv)?,
        None => node.exec(&argv)?,
    };
    Ok(out.status.success())
}

/// Pings until an answer comes, for at most `within`; whether one did.
pub fn reaches(node: &Node, netns: Option<&str>, to: Ipv4Addr, within: Duration) -> bool {
    crate::wait_until(within, Duration::from_millis(100), || {
        ping(node, netns, to).unwrap_or(false)
    })
}

/// A userspace WireGuard interface made by hand in a node's own namespace,
/// as a tenant configures a laptop: `boringtun-cli`, then `wg set` and `ip`.
#[derive(Debug)]
pub struct HandPeer {
    child: Child,
    ifname: String,
}

/// What a [`HandPeer`] is.
#[derive(Debug, Clone)]
pub struct HandPeerSpec<'a> {
    pub ifname: &'a str,
    pub keys: &'a Keys,
    /// Its own address, with prefix length.
    pub address: &'a str,
    /// Its listen port (0: any).
    pub listen_port: u16,
    /// The one peer it talks to.
    pub peer_key: &'a str,
    pub peer_endpoint: Option<SocketAddr>,
    /// Routed to the peer, and allowed from it.
    pub routes: &'a [&'a str],
    /// The namespace to move the device into after boringtun made it.
    pub netns: Option<&'a str>,
    /// Flags for `boringtun-cli` besides the foreground ones.
    pub flags: &'a [&'a str],
}

impl HandPeer {
    /// Starts `boringtun-cli` for `spec.ifname` inside `node` and configures
    /// it; `boringtun` is the binary to run.
    pub fn start(
        node: &Node,
        boringtun: &str,
        spec: &HandPeerSpec<'_>,
    ) -> Result<HandPeer, HandPeerError> {
        let pid = node.agent_pid().ok_or(HandPeerError::NoAgent)?.to_string();
        let child = Command::new(cmd::resolve("nsenter"))
            .args(["-t", &pid, "-m", "-n", "--", boringtun])
            .args(["--foreground", "--disable-drop-privileges"])
            .args(spec.flags)
            .arg(spec.ifname)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(HandPeerError::Spawn)?;
        let peer = HandPeer {
            child,
            ifname: spec.ifname.to_owned(),
        };
        let socket = format!("/var/run/wireguard/{}.sock", spec.ifname);
        let up = crate::wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            node.exec(&["test", "-S", &socket])
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            return Err(HandPeerError::NoSocket { socket });
        }
        if spec.netns.is_some() {
            // boringtun opens its extra queues by name after its socket
            // answers: moving the device before then would split it.
            let pid = peer.child.id();
            let queues = if spec.flags.contains(&"--disable-multi-queue") {
                1
            } else {
                DEFAULT_QUEUES
            };
            crate::wait_until(Duration::from_secs(2), Duration::from_millis(5), || {
                tun_queues(pid) >= queues
            });
        }
        peer.configure(node, spec)?;
        Ok(peer)
    }

    fn configure<'a>(&self, node: &Node, spec: &HandPeerSpec<'a>) -> Result<(), HandPeerError> {
        let pid = node.agent_pid().ok_or(HandPeerError::NoAgent)?.to_string();
        let key_file = format!("/run/{}.key", spec.ifname);
        let write_key = format!("umask 077; cat > {key_file}");
        cmd::run_with_input(
            "nsenter",
            &["-t", &pid, "-m", "-n", "--", "sh", "-c", &write_key],
            spec.keys.private.as_bytes(),
        )
        .map_err(HandPeerError::Cmd)?;
        let port = spec.listen_port.to_string();
        let allowed = spec.routes.join(",");
        let mut wg = vec![
            "wg",
            "set",
            spec.ifname,
            "listen-port",
            &port,
            "private-key",
            &key_file,
            "peer",
            spec.peer_key,
            "allowed-ips",
            &allowed,
        ];
        let endpoint = spec.peer_endpoint.map(|e| e.to_string());
        if let Some(endpoint) = &endpoint {
            wg.extend_from_slice(&["endpoint", endpoint, "persistent-keepalive", "1"]);
        }
        check(&node.exec(&wg).map_err(HandPeerError::Node)?, "wg set")?;
        let mut steps: Vec<Vec<&str>> = Vec::new();
        let mut ip = vec!["ip"];
        if let Some(ns) = spec.netns {
            steps.push(vec!["ip", "link", "set", spec.ifname, "netns", ns]);
            ip.extend(["-n", ns]);
        }
        let with = |rest: &[&'a str]| -> Vec<&'a str> {
            ip.iter().copied().chain(rest.iter().copied()).collect()
        };
        steps.push(with(&["addr", "add", spec.address, "dev", spec.ifname]));
        steps.push(with(&["link", "set", spec.ifname, "mtu", "1420", "up"]));
        for route in spec.routes {
            steps.push(with(&["route", "replace", route, "dev", spec.ifname]));
        }
        for argv in steps {
            check(&node.exec(&argv).map_err(HandPeerError::Node)?, "ip")?;
        }
        Ok(())
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Stops the process (its device goes with it).
    pub fn stop(mut self) {
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

impl Drop for HandPeer {
    fn drop(&mut self) {
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// How many queues `boringtun-cli` opens by default (one per thread).
const DEFAULT_QUEUES: usize = 4;

/// How many descriptors of process `pid` are tun queues.
fn tun_queues(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.as_os_str() == "/dev/net/tun")
        .count()
}

/// Why a hand-made peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandPeerError {
    #[error("the node's agent is not running")]
    NoAgent,
    #[error("cannot start boringtun-cli")]
    Spawn(#[source] std::io::Error),
    #[error("boringtun-cli did not open {socket}")]
    NoSocket { socket: String },
    #[error("could not run a command in the node")]
    Node(#[source] NodeError),
    #[error("could not run a command")]
    Cmd(#[source] CmdError),
    #[error("{what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
}

fn check(out: &std::process::Output, what: &'static str) -> Result<(), HandPeerError> {
    if out.status.success() {
        Ok(())
    } else {
        Err(HandPeerError::Failed {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// What `ip`, `nft` and `wg` say about network `netid` on `node` and about
/// the node itself: the text a netd restart must leave unchanged.
pub fn snapshot(node: &Node, netid: &str) -> Result<String, NodeError> {
    let ns = format!("n-{netid}");
    let wg = format!("w-{netid}");
    let commands: Vec<Vec<&str>> = vec![
        vec!["ip", "netns", "list"],
        vec!["ip", "link", "show"],
        // IPv4 only in the node's own namespace: its uplink's IPv6 (SLAAC
        // addresses, router advertisements) arrives at any time and is not
        // the tenant network's; the network switches IPv6 off on its links.
        vec!["ip", "-4", "addr", "show"],
        vec!["ip", "-4", "route", "show", "table", "all"],
        vec!["ip", "-n", &ns, "link", "show"],
        vec!["ip", "-n", &ns, "addr", "show"],
        vec!["ip", "-n", &ns, "route", "show", "table", "all"],
        vec!["nft", "list", "ruleset"],
        vec!["ip", "netns", "exec", &ns, "nft", "list", "ruleset"],
        vec!["wg", "show", &wg, "public-key"],
        vec!["wg", "show", &wg, "listen-port"],
        vec!["wg", "show", &wg, "allowed-ips"],
        vec!["wg", "show", &wg, "endpoints"],
        vec!["wg", "show", &wg, "persistent-keepalive"],
    ];
    let mut out = String::new();
    for argv in commands {
        let run = node.exec(&argv)?;
        out.push_str(&format!("$ {}\n", argv.join(" ")));
        let text = String::from_utf8_lossy(&run.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        if argv[0] == "wg" {
            lines.sort_unstable();
        }
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        if !run.status.success() {
            out.push_str(&format!(
                "exit {:?}: {}\n",
                run.status.code(),
                String::from_utf8_lossy(&run.stderr)
            ));
        }
    }
    Ok(out)
}

/// `agent tenant --key KEY --registry REGISTRY --node NODE'S API ARGS...`,
/// waiting at most `wait_secs` for the node: (success, stdout + stderr).
pub fn cli(
    key: &std::path::Path,
    registry: &str,
    node: &Node,
    wait_secs: u32,
    args: &[&str],
) -> (bool, String) {
    let agent = crate::bin_dir().expect("binaries").join("agent");
    let out = Command::new(agent)
        .arg("tenant")
        .arg("--key")
        .arg(key)
        .args(["--registry", registry])
        .args(["--node", &node.api_url().expect("url")])
        .args(["--wait-secs", &wait_secs.to_string()])
        .args(args)
        .output()
        .expect("agent runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let keys = Keys {
            private: "PRIV".to_owned(),
            public: "PUB".to_owned(),
        };
        let body = NetworkBody {
            netid: "net1",
            ip_range: "10.1.0.0/16",
            subnet: "10.1.1.0/24",
            keys: &keys,
            listen_port: 7001,
            peers: vec![
                PeerBody {
                    public_key: "K1".to_owned(),
                    endpoint: Some("10.0.0.1:7001".parse().expect("endpoint")),
                    allowed_ips: vec!["10.1.2.0/24".to_owned()],
                },
                PeerBody {
                    public_key: "K2".to_owned(),
                    endpoint: None,
                    allowed_ips: vec!["10.1.200.2/32".to_owned(), "10.1.200.3/32".to_owned()],
                },
            ],
        };
        assert_eq!(
            body.json(),
            r#"{"netid":"net1","ip_range":"10.1.0.0/16","subnet":"10.1.1.0/24","private_key":"PRIV","listen_port":7001,"peers":[{"public_key":"K1","endpoint":"10.0.0.1:7001","allowed_ips":["10.1.2.0/24"]},{"public_key":"K2","allowed_ips":["10.1.200.2/32","10.1.200.3/32"]}]}"#
        );
        assert_eq!(
            attach_body("web", "veth"),
            r#"{"name":"web","kind":"veth"}"#
        );
    }
}
