//! The mesh benchmark: applying a 1000-peer `mesh0` configuration, and a
//! 10-node region coming together.
//!
//! The first part times `PUT /v1/mesh/peers` with 1000 peers on a node
//! whose mesh has none, against the floor of `wg setconf` of the very same
//! configuration (`wg showconf` of what netd applied, plus the key), each
//! from an empty peer list. The second starts ten public nodes, sets every
//! node's peers, and times from the last `PUT` returning to every ordered
//! pair answering a ping over the mesh. Limits: userspace WireGuard on this
//! host; the floor includes spawning `wg` inside the node, the API side an
//! HTTP exchange over the socket.

use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::mesh::{self, Keys, PeerEntry};
use crate::spec::{Daemon, FarmSpec, NodeSpec};
use crate::{Farm, Node, http};

pub const APPLY_RATIO_TARGET: f64 = 1.2;
pub const CONVERGE_TARGET: Duration = Duration::from_secs(5);
/// Peers in the large configuration.
const PEERS: usize = 1000;
/// Nodes in the region.
const REGION: usize = 10;
/// netd in bench nodes: the testbed sets the addresses.
const NETD_TOML: &str = "[uplink]\nmanage = false\n";

/// Runs both parts and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let (api, floor) = apply(runs)?;
    let converge = region(runs)?;
    report(api, floor, converge);
    Ok(())
}

fn node_spec() -> NodeSpec {
    NodeSpec::default().config(Daemon::Netd, NETD_TOML)
}

fn start(nodes: usize) -> Result<Farm, BenchError> {
    let farm = Farm::start(FarmSpec::with_nodes(vec![node_spec(); nodes]))?;
    super::all_answer(&farm, Daemon::Netd, "/v1/mesh")?;
    Ok(farm)
}

fn put(node: &Node, path: &str, body: &str) -> Result<Duration, BenchError> {
    let socket = node.socket(Daemon::Netd)?;
    let started = Instant::now();
    let (status, answer) = http::unix_put(&socket, path, body.as_bytes())?;
    let took = started.elapsed();
    if status != 200 {
        return Err(BenchError::Api {
            what: format!("PUT {path} on {}", node.name()),
            status,
            body: answer,
        });
    }
    Ok(took)
}

fn mesh_address(node: &Node) -> Result<Ipv6Addr, BenchError> {
    /// The part of netd's `GET /v1/mesh` answer read here.
    #[derive(serde::Deserialize)]
    struct Mesh {
        address: Option<Ipv6Addr>,
    }
    let socket = node.socket(Daemon::Netd)?;
    let (status, body) = http::unix_get(&socket, "/v1/mesh")?;
    serde_json::from_str::<Mesh>(&body)
        .ok()
        .and_then(|m| m.address)
        .ok_or(BenchError::Api {
            what: format!("GET /v1/mesh on {}", node.name()),
            status,
            body,
        })
}

/// 1000 peers through the API, then through `wg setconf`, `runs` times.
fn apply(runs: usize) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let farm = start(1)?;
    let node = farm.node(0);
    let keys = mesh::keys()?;
    put(node, "/v1/mesh", &mesh::mesh_body(&keys, true))?;
    let mut peers = Vec::with_capacity(PEERS);
    for i in 0..PEERS {
        let [a, b] = u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes();
        peers.push(PeerEntry {
            public_key: mesh::keys()?.public,
            endpoint: SocketAddr::from(([10, 200, a, b], mesh::PORT)),
            public_endpoint: true,
        });
    }
    let body = mesh::peers_body(&peers);
    put(node, "/v1/mesh/peers", &body)?;
    let conf = farm.dir().join("mesh-floor.conf");
    let shown = node.exec(&["wg", "showconf", "mesh0"])?;
    let shown = String::from_utf8_lossy(&shown.stdout).replacen(
        "[Interface]\n",
        &format!("[Interface]\nPrivateKey = {}\n", keys.private),
        1,
    );
    write_private(&conf, &shown)?;
    let conf = conf.display().to_string();
    let (mut api, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        put(node, "/v1/mesh/peers", "[]")?;
        api.push(put(node, "/v1/mesh/peers", &body)?);
        put(node, "/v1/mesh/peers", "[]")?;
        let started = Instant::now();
        let out = node.exec(&["wg", "setconf", "mesh0", &conf])?;
        floor.push(started.elapsed());
        if !out.status.success() {
            return Err(BenchError::Api {
                what: "wg setconf".to_owned(),
                status: 0,
                body: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    put(node, "/v1/mesh/peers", "[]")?;
    Ok((api, floor))
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), BenchError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(BenchError::Spawn)
}

/// Ten public nodes: time from all peers set to all 90 pairs answering.
fn region(runs: usize) -> Result<Vec<Duration>, BenchError> {
    let farm = start(REGION)?;
    let nodes = farm.nodes();
    let mut all = Vec::with_capacity(REGION);
    for node in nodes {
        let keys: Keys = mesh::keys()?;
        put(node, "/v1/mesh", &mesh::mesh_body(&keys, true))?;
        all.push(PeerEntry {
            public_key: keys.public,
            endpoint: SocketAddr::from((node.lan_ip()?, mesh::PORT)),
            public_endpoint: true,
        });
    }
    let addrs = nodes
        .iter()
        .map(mesh_address)
        .collect::<Result<Vec<_>, _>>()?;
    let lists: Vec<String> = (0..REGION)
        .map(|me| {
            let others: Vec<PeerEntry> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, p)| p.clone())
                .collect();
            mesh::peers_body(&others)
        })
        .collect();
    let mut took = Vec::new();
    for _ in 0..runs {
        for node in nodes {
            put(node, "/v1/mesh/peers", "[]")?;
        }
        for (node, list) in nodes.iter().zip(&lists) {
            put(node, "/v1/mesh/peers", list)?;
        }
        let started = Instant::now();
        all_pairs_answer(nodes, &addrs)?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// Pings every ordered pair at once, each until it answers (30 s at most).
fn all_pairs_answer(nodes: &[Node], addrs: &[Ipv6Addr]) -> Result<(), BenchError> {
    let deadline = Duration::from_secs(30);
    let answered = std::thread::scope(|scope| {
        let mut pairs = Vec::new();
        for (i, from) in nodes.iter().enumerate() {
            for (j, to) in addrs.iter().enumerate() {
                if i == j {
                    continue;
                }
                pairs.push(scope.spawn(move || {
                    crate::wait_until(deadline, Duration::from_millis(1), || {
                        mesh::ping(from, *to, Duration::from_secs(1)).is_ok_and(|h| h.is_some())
                    })
                }));
            }
        }
        pairs.into_iter().all(|p| p.join().unwrap_or(false))
    });
    if answered {
        Ok(())
    } else {
        Err(BenchError::NotReady(deadline))
    }
}

fn report(mut api: Vec<Duration>, mut floor: Vec<Duration>, mut converge: Vec<Duration>) {
    let (api50, api90) = summary(&mut api);
    let (floor50, _) = summary(&mut floor);
    let (conv50, conv90) = summary(&mut converge);
    let ratio = ratio(api50, floor50);
    eprintln!(
        "mesh benchmark: {} runs, userspace WireGuard (boringtun) in testbed nodes",
        api.len()
    );
    eprintln!(
        "  apply {PEERS} peers, PUT /v1/mesh/peers: median {:.1} ms, p90 {:.1} ms",
        ms(api50),
        ms(api90)
    );
    eprintln!(
        "  floor, wg setconf of the same configuration: median {:.1} ms",
        ms(floor50)
    );
    eprintln!(
        "  ratio to the floor: {ratio:.2}; target <= {APPLY_RATIO_TARGET}: {}",
        verdict(ratio <= APPLY_RATIO_TARGET)
    );
    eprintln!(
        "  {REGION}-node region, all peers set -> all {} pairs answer: median {:.1} ms, p90 {:.1} ms; target <= {} ms: {}",
        REGION * (REGION - 1),
        ms(conv50),
        ms(conv90),
        CONVERGE_TARGET.as_millis(),
        verdict(conv50 <= CONVERGE_TARGET)
    );
}
