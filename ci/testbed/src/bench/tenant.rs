//! The tenant network benchmark: creating a network, and the throughput
//! across one between two nodes.
//!
//! The first part times `POST /v1/networks` on a node (namespace, bridge,
//! egress veth, userspace WireGuard moved in, peer, routes, both nftables
//! tables) against the floor of the same `ip`, `nft`, `wg` and
//! `boringtun-cli` commands run from one shell script inside the node;
//! each run deletes what it made before the next. The second runs `iperf3`
//! between the networks' namespaces on two nodes, against the floor of a
//! plain pair of `boringtun-cli` interfaces set up by hand with `wg` in the
//! very same namespaces, alternating the two. Limits: userspace WireGuard
//! on this host; the API side includes the HTTP exchange over the socket,
//! the floor a `sh` and an `nsenter`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::mesh::{self, Keys};
use crate::spec::{Daemon, FarmSpec, NodeSpec};
use crate::tenant::{self, HandPeer, HandPeerSpec, NetworkBody, PeerBody};
use crate::{Farm, Node, cmd, http};

pub const CREATE_RATIO_TARGET: f64 = 1.0;
pub const THROUGHPUT_RATIO_TARGET: f64 = 0.95;
/// netd in bench nodes: the testbed sets the addresses.
const NETD_TOML: &str = "[uplink]\nmanage = false\n";
/// How long each iperf3 measurement lasts.
const IPERF_SECS: u32 = 4;

/// Runs both parts and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let (api, floor) = create(runs)?;
    let rates = throughput(runs.min(8))?;
    report((api, floor), rates);
    Ok(())
}

fn start(nodes: usize) -> Result<Farm, BenchError> {
    let spec = NodeSpec::default().config(Daemon::Netd, NETD_TOML);
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec; nodes]))?;
    super::all_answer(&farm, Daemon::Netd, "/v1/networks")?;
    Ok(farm)
}

fn expect(node: &Node, what: &str, answer: (u16, String), status: u16) -> Result<(), BenchError> {
    if answer.0 == status {
        return Ok(());
    }
    Err(BenchError::Api {
        what: format!("{what} on {}", node.name()),
        status: answer.0,
        body: answer.1,
    })
}

fn shell(node: &Node, what: &str, script: &str) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let out = node.exec(&["sh", "-c", script])?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(BenchError::Api {
            what: what.to_owned(),
            status: 0,
            body: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(took)
}

/// Writes `text` to `path` inside `node`, readable by root only.
fn write_file(node: &Node, path: &str, text: &str) -> Result<(), BenchError> {
    let pid = node
        .agent_pid()
        .ok_or(BenchError::NotReady(Duration::ZERO))?
        .to_string();
    let script = format!("umask 077; cat > {path}");
    cmd::run_with_input(
        "nsenter",
        &["-t", &pid, "-m", "-n", "--", "sh", "-c", &script],
        text.as_bytes(),
    )?;
    Ok(())
}

/// Network creation through the API and through a script, `runs` times.
fn create(runs: usize) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let farm = start(1)?;
    let node = farm.node(0);
    let socket = node.socket(Daemon::Netd)?;
    let keys = mesh::keys()?;
    let peer = PeerBody {
        public_key: mesh::keys()?.public,
        endpoint: Some(SocketAddr::from(([10, 9, 9, 9], 7001))),
        allowed_ips: vec!["10.200.250.0/24".to_owned()],
    };
    write_file(node, "/run/bench-floor.key", &keys.private)?;
    write_file(node, "/run/bench-floor-host.nft", &floor_host_rules())?;
    write_file(node, "/run/bench-floor-inside.nft", &floor_inside_rules())?;
    let (mut api, mut floor) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let netid = format!("api{i}");
        let subnet = format!("10.200.{}.0/24", i % 200);
        let body = NetworkBody {
            netid: &netid,
            ip_range: "10.200.0.0/16",
            subnet: &subnet,
            keys: &keys,
            listen_port: 7001,
            peers: vec![peer.clone()],
        };
        let started = Instant::now();
        let answer = http::unix_post(&socket, "/v1/networks", body.json().as_bytes())?;
        api.push(started.elapsed());
        expect(node, "POST /v1/networks", answer, 201)?;
        let answer = http::unix_delete(&socket, &format!("/v1/networks/{netid}"))?;
        expect(node, "DELETE /v1/networks", answer, 200)?;

        floor.push(shell(
            node,
            "the floor script",
            &floor_script(&peer.public_key),
        )?);
        shell(node, "the floor's cleanup", FLOOR_CLEANUP)?;
    }
    Ok((api, floor))
}

/// What netd does for one network, as one shell script: the namespace and
/// its settings, the bridge, the egress veth, boringtun and its device
/// moved in (with the placeholder), the key, port and peer, the route and
/// both tables.
fn floor_script(peer: &str) -> String {
    format!(
        r#"set -e
ns=n-flr; wg=w-flr
ip netns add $ns
ip netns exec $ns sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv4/ip_forward'
ip -n $ns link set lo up
ip -n $ns link add b-flr address 02:00:00:00:00:01 type bridge
ip -n $ns addr add 10.201.1.1/24 dev b-flr
ip -n $ns link set b-flr up
ip link add e-flr address 02:00:00:00:00:02 type veth peer name egress address 02:00:00:00:00:03 netns $ns
echo 1 > /proc/sys/net/ipv6/conf/e-flr/disable_ipv6
ip addr add 169.254.250.1/30 dev e-flr
ip link set e-flr up
ip -n $ns addr add 169.254.250.2/30 dev egress
ip -n $ns link set egress up
ip -n $ns route add default via 169.254.250.1 dev egress
boringtun-cli --disable-drop-privileges --disable-multi-queue $wg
while [ ! -S /var/run/wireguard/$wg.sock ]; do sleep 0.005; done
ip link set $wg netns $ns
ip link add $wg address 02:00:00:00:00:04 mtu 1420 type bridge
wg set $wg private-key /run/bench-floor.key listen-port 7002 peer {peer} endpoint 10.9.9.9:7002 allowed-ips 10.201.250.0/24
ip -n $ns link set $wg mtu 1420 up
ip -n $ns route add 10.201.0.0/16 dev $wg src 10.201.1.1
nft -f /run/bench-floor-host.nft
ip netns exec $ns nft -f /run/bench-floor-inside.nft
echo 1 > /proc/sys/net/ipv4/ip_forward
"#
    )
}

/// Removes what [`floor_script`] made (not timed).
const FLOOR_CLEANUP: &str = r#"pkill -f '[b]oringtun-cli.*w-flr' || true
while pgrep -f '[b]oringtun-cli.*w-flr' >/dev/null; do sleep 0.01; done
ip link del w-flr 2>/dev/null || true
ip link del e-flr 2>/dev/null || true
printf 'table inet grove-n-flr {}\ndelete table inet grove-n-flr\n' | nft -f -
ip netns del n-flr
"#;

fn floor_host_rules() -> String {
    "table inet grove-n-flr {}
flush table inet grove-n-flr
table inet grove-n-flr {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname \"e-flr\" ct state established,related accept
\t\toifname \"e-flr\" drop
\t\tiifname \"e-flr\" oifname \"e-*\" drop
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"e-flr\" ct state established,related accept
\t\tiifname \"e-flr\" drop
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 169.254.250.2 oifname != \"e-*\" masquerade
\t}
}
"
    .to_owned()
}

fn floor_inside_rules() -> String {
    "table inet grove {}
flush table inet grove
table inet grove {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"egress\" ct state established,related accept
\t\tiifname \"egress\" drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"b-flr\" accept
\t\tiifname \"w-flr\" oifname { \"b-flr\", \"w-flr\" } accept
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"egress\" masquerade
\t}
}
"
    .to_owned()
}

/// An iperf3 server in a namespace of a node, killed when dropped.
struct Server(Child);

impl Server {
    fn start(node: &Node, netns: &str) -> Result<Server, BenchError> {
        let pid = node
            .agent_pid()
            .ok_or(BenchError::NotReady(Duration::ZERO))?
            .to_string();
        let child = Command::new(cmd::resolve("nsenter"))
            .args(["-t", &pid, "-m", "-n", "--", "ip", "netns", "exec", netns])
            .args(["iperf3", "-s", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::Spawn)?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _gone = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// Mbit/s received in one iperf3 run from `netns` on `from` to `to`, whose
/// server runs in `netns` on `server`.
fn iperf(from: &Node, server: &Node, netns: &str, to: &str) -> Result<f64, BenchError> {
    let _server = Server::start(server, netns)?;
    let secs = IPERF_SECS.to_string();
    let argv = ["iperf3", "-c", to, "-t", secs.as_str(), "-f", "m"];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = tenant::exec_in(from, netns, &argv)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return received_mbps(&text).ok_or(BenchError::Api {
                what: "iperf3".to_owned(),
                status: 0,
                body: text,
            });
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Api {
                what: format!("iperf3 to {to} in {netns}"),
                status: 0,
                body: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The receiver's rate in iperf3's text report (`-f m`).
fn received_mbps(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let unit = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(unit.checked_sub(1)?)?.parse().ok()
}

/// Throughput across the tenant network and across raw WireGuard between
/// the same namespaces, `runs` times each, alternating.
fn throughput(runs: usize) -> Result<Vec<Vec<f64>>, BenchError> {
    let farm = start(2)?;
    let (a, b) = (farm.node(0), farm.node(1));
    let keys: [Keys; 2] = [mesh::keys()?, mesh::keys()?];
    let subnets = ["10.250.1.0/24", "10.250.2.0/24"];
    let nodes = [a, b];
    for (i, node) in nodes.iter().enumerate() {
        let other = 1 - i;
        let body = NetworkBody {
            netid: "tp",
            ip_range: "10.250.0.0/16",
            subnet: subnets[i],
            keys: &keys[i],
            listen_port: 7300,
            peers: vec![PeerBody {
                public_key: keys[other].public.clone(),
                endpoint: Some(SocketAddr::from((nodes[other].lan_ip()?, 7300))),
                allowed_ips: vec![subnets[other].to_owned()],
            }],
        };
        let socket = node.socket(Daemon::Netd)?;
        let answer = http::unix_post(&socket, "/v1/networks", body.json().as_bytes())?;
        expect(node, "POST /v1/networks", answer, 201)?;
    }
    let boringtun = cmd::resolve("boringtun-cli").display().to_string();
    let mut pairs = Vec::new();
    for (index, flags) in FLOORS.iter().enumerate() {
        pairs.push(raw_pair(&nodes, &boringtun, index, flags)?);
    }
    let across = Ipv4Addr::new(10, 250, 2, 1);
    let targets: Vec<(Ipv4Addr, &str)> = std::iter::once((across, "the tenant network"))
        .chain(pairs.iter().map(|(to, _)| (*to, "raw WireGuard")))
        .collect();
    for (to, what) in &targets {
        if !tenant::reaches(a, Some("n-tp"), *to, Duration::from_secs(20)) {
            return Err(BenchError::Api {
                what: format!("ping across {what}"),
                status: 0,
                body: to.to_string(),
            });
        }
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..runs {
        // Each round starts with another target, so none always goes first.
        for k in 0..targets.len() {
            let which = (round + k) % targets.len();
            let to = targets[which].0.to_string();
            rates[which].push(iperf(a, b, "n-tp", &to)?);
        }
    }
    for (_, peers) in pairs {
        for peer in peers {
            peer.stop();
        }
    }
    Ok(rates)
}

/// The floors' `boringtun-cli` flags: as netd runs it, and its defaults.
const FLOORS: [&[&str]; 2] = [&["--disable-multi-queue"], &[]];

/// Raw pair `index` between the `n-tp` namespaces of `nodes`: a
/// hand-made boringtun interface on each, with `flags`; the address of
/// the second node's end, and the two peers.
fn raw_pair(
    nodes: &[&Node; 2],
    boringtun: &str,
    index: usize,
    flags: &[&str],
) -> Result<(Ipv4Addr, Vec<HandPeer>), BenchError> {
    let third = 254 - u8::try_from(index).unwrap_or(0);
    let keys: [Keys; 2] = [mesh::keys()?, mesh::keys()?];
    let addrs = [
        Ipv4Addr::new(172, 31, third, 1),
        Ipv4Addr::new(172, 31, third, 2),
    ];
    let port = 7301 + u16::try_from(index).unwrap_or(0);
    let ifname = format!("wraw{index}");
    let mut peers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let other = 1 - i;
        let address = format!("{}/32", addrs[i]);
        let route = format!("{}/32", addrs[other]);
        let spec = HandPeerSpec {
            ifname: &ifname,
            keys: &keys[i],
            address: &address,
            listen_port: port,
            peer_key: &keys[other].public,
            peer_endpoint: Some(SocketAddr::from((nodes[other].lan_ip()?, port))),
            routes: &[route.as_str()],
            netns: Some("n-tp"),
            flags,
        };
        peers.push(HandPeer::start(node, boringtun, &spec)?);
    }
    Ok((addrs[1], peers))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn report((mut api, mut floor): (Vec<Duration>, Vec<Duration>), mut rates: Vec<Vec<f64>>) {
    let (api50, api90) = summary(&mut api);
    let (floor50, floor90) = summary(&mut floor);
    let ratio = ratio(api50, floor50);
    let runs = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "tenant benchmark: {} creations, {} throughput runs of {IPERF_SECS} s, userspace WireGuard (boringtun) in testbed nodes",
        api.len(),
        rates.first().map_or(0, Vec::len)
    );
    eprintln!(
        "  create a network, POST /v1/networks: median {:.1} ms, p90 {:.1} ms",
        ms(api50),
        ms(api90)
    );
    eprintln!(
        "  floor, the same ip/nft/wg/boringtun commands from a script: median {:.1} ms, p90 {:.1} ms",
        ms(floor50),
        ms(floor90)
    );
    eprintln!(
        "  ratio to the floor: {ratio:.2}; target <= {CREATE_RATIO_TARGET}: {}",
        verdict(ratio <= CREATE_RATIO_TARGET)
    );
    let mut shown: Vec<(f64, String)> = rates
        .iter_mut()
        .map(|r| {
            let text = runs(r);
            (median(r), text)
        })
        .collect();
    let Some((tenant50, tenant_runs)) = shown.first().cloned() else {
        return;
    };
    eprintln!(
        "  throughput across the tenant network (iperf3 between n- namespaces): median {tenant50:.0} Mbit/s (runs: {tenant_runs})"
    );
    let names = [
        "raw boringtun pair between the same namespaces, netd's flags (--disable-multi-queue)",
        "raw boringtun pair between the same namespaces, boringtun's defaults",
    ];
    for ((raw50, raw_runs), name) in shown.drain(1..).zip(names) {
        let rate = tenant50 / raw50.max(1e-9);
        eprintln!("  floor, {name}: median {raw50:.0} Mbit/s (runs: {raw_runs})");
        eprintln!(
            "  ratio to that floor: {rate:.2}; target >= {THROUGHPUT_RATIO_TARGET}: {}",
            verdict(rate >= THROUGHPUT_RATIO_TARGET)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_receiver_rate() {
        let text = "[ ID] Interval           Transfer     Bitrate         Retr\n\
            [  5]   0.00-3.00   sec   166 MBytes   464 Mbits/sec  41862             sender\n\
            [  5]   0.00-3.00   sec   164 MBytes   458.5 Mbits/sec                  receiver\n";
        assert_eq!(received_mbps(text), Some(458.5));
        assert_eq!(received_mbps("iperf3: error"), None);
    }
}
