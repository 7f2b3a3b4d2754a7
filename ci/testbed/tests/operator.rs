//! The operator API's node-wide views in a real node: status, capacity,
//! disks, network and Prometheus metrics.

use std::time::Duration;

use agent::api::NetworkReport;
use agent::operator::capacity::NodeCapacity;
use agent::operator::status::{NodeState, StatusReport};
use grove_testbed::{DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, wait_until};

fn start(spec: NodeSpec) -> Farm {
    Farm::start_for_test(FarmSpec::with_nodes(vec![spec]))
}

fn get(node: &Node, path: &str) -> (u16, String) {
    let url = format!("{}{path}", node.api_url().expect("url"));
    http_get(&url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn json<T: serde::de::DeserializeOwned>(node: &Node, path: &str) -> T {
    let (status, body) = get(node, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn a_healthy_node_reports_ready_with_its_capacity_disks_network_and_metrics() {
    let farm = start(NodeSpec::default().disks(vec![DiskSpec::ssd(1024), DiskSpec::hdd(2048)]));
    let node = farm.node(0);
    let mut last = None;
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let s: StatusReport = json(node, "/v1/status");
        let ok = s.state == NodeState::Ready;
        last = Some(s);
        ok
    });
    assert!(ready, "never ready: {last:?}\n{}", farm.logs(30));
    let status = last.expect("status");
    assert!(status.reasons.is_empty());
    assert!(status.account.is_some_and(|a| a.starts_with('5')));

    let capacity: NodeCapacity = json(node, "/v1/capacity");
    assert_eq!(
        capacity.cru.total,
        std::thread::available_parallelism().expect("cpus").get() as u64
    );
    assert_eq!(capacity.sru.total, 1024 << 20);
    assert_eq!(capacity.hru.total, 2048 << 20);
    assert!(capacity.mru.reserved >= 2 << 30);
    assert_eq!(
        capacity.sru.free,
        capacity.sru.total - capacity.sru.reserved - capacity.sru.used
    );

    let disks: Vec<storaged::report::Disk> = json(node, "/v1/disks");
    assert_eq!(disks.len(), 2);
    let network: NetworkReport = json(node, "/v1/network");
    assert!(
        network.interfaces.iter().any(|i| i.name == "eth0"),
        "{network:?}"
    );

    let (code, text) = get(node, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains("grove_node_state{state=\"ready\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("grove_service_up{service=\"netd\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "grove_capacity{{resource=\"sru\",kind=\"total\"}} {}",
        1024u64 << 20
    )));
}

#[test]
fn a_node_without_disks_is_degraded_and_says_why() {
    let farm = start(NodeSpec::default());
    let node = farm.node(0);
    let mut last = None;
    let degraded = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let s: StatusReport = json(node, "/v1/status");
        let ok = s.state == NodeState::Degraded && s.reasons.iter().any(|r| r.contains("no pool"));
        last = Some(s);
        ok
    });
    let status = last.expect("status");
    // Everything is up, so nothing is "still booting": it is degraded.
    assert!(degraded, "{status:?}\n{}", farm.logs(30));
    let reasons = status.reasons.join("\n");
    assert!(reasons.contains("no pool"), "{reasons}");
}

/// Open fds and resident memory (KiB) of process `pid`.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fds")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (fds, rss)
}

#[test]
fn held_connections_are_closed_by_the_server_and_cost_nothing_after() {
    const HELD: usize = 3000;
    const CAP: usize = 256;
    let farm = start(NodeSpec::default().disks(vec![DiskSpec::ssd(512)]).config(
        grove_testbed::Daemon::Agent,
        format!(
            "[api]\nidle_timeout_secs = 5\nheader_read_timeout_secs = 3\nmax_connections = {CAP}\n"
        ),
    ));
    let node = farm.node(0);
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        json::<StatusReport>(node, "/v1/status").state != NodeState::Booting
    });
    assert!(ready, "{}", farm.logs(30));
    let pid = node.agent_pid().expect("the agent runs");
    let api = node.api_url().expect("url");
    let address: std::net::SocketAddr = api
        .strip_prefix("http://")
        .expect("http")
        .parse()
        .expect("ip:port");
    // The test holds more sockets than the default soft limit.
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        HELD as u64 + 1024,
        HELD as u64 + 1024,
    )
    .expect("raise the fd limit");
    // A few requests first, so the baseline includes a served connection.
    for _ in 0..5 {
        get(node, "/v1/status");
    }
    let (base_fds, base_rss) = fds_and_rss(pid);

    const SERVED: usize = 100;
    let mut rss_after_rounds = Vec::new();
    for round in 1..=2 {
        // Some connections make one request and stay open (keep-alive), the
        // rest never send a byte.
        let began = std::time::Instant::now();
        let held: Vec<std::net::TcpStream> = (0..HELD)
            .map(|i| {
                let mut stream =
                    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                if i < SERVED {
                    std::io::Write::write_all(
                        &mut stream,
                        b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
                    )
                    .expect("a request");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    let mut answer = [0u8; 4096];
                    let n = std::io::Read::read(&mut stream, &mut answer).expect("an answer");
                    assert!(
                        answer[..n].starts_with(b"HTTP/1.1 200"),
                        "{}",
                        String::from_utf8_lossy(&answer[..n])
                    );
                }
                stream
            })
            .collect();
        let opened = std::time::Instant::now();
        let opening = opened.duration_since(began);
        let (peak_fds, peak_rss) = fds_and_rss(pid);
        assert!(
            peak_fds <= base_fds + CAP + 8,
            "{peak_fds} fds with {HELD} connections held (baseline {base_fds}, cap {CAP})"
        );
        let mut last = (0, 0);
        let released = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            last = fds_and_rss(pid);
            last.0 <= base_fds + 2
        });
        let closed_after = opened.elapsed();
        assert!(
            released,
            "the agent still holds {} fds (baseline {base_fds}) {closed_after:?} after",
            last.0
        );
        assert!(
            closed_after <= Duration::from_secs(5 + 3),
            "closed {closed_after:?} after the last was opened; the idle timeout is 5 s"
        );
        // Every held connection was closed by the server.
        let mut open = 0;
        for mut stream in held {
            stream.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            match std::io::Read::read(&mut stream, &mut byte) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Ok(_) => panic!("the server sent something on an idle connection"),
                Err(_) => open += 1,
            }
        }
        assert_eq!(open, 0, "{open} connections were left open");
        let (after_fds, after_rss) = fds_and_rss(pid);
        eprintln!(
            "round {round}: {HELD} held connections ({SERVED} after a request), opened in {opening:?}: \
             fds {base_fds} -> {peak_fds} -> {after_fds}; RSS {base_rss} -> {peak_rss} -> {after_rss} KiB; \
             all closed {closed_after:?} after the last was opened"
        );
        assert!(
            after_rss <= base_rss + 2 * 1024,
            "RSS {after_rss} KiB after, {base_rss} KiB before"
        );

        rss_after_rounds.push(after_rss);
    }
    // A second flood costs no more: what the first left is the allocator's
    // reuse, not a leak.
    assert!(
        rss_after_rounds[1] <= rss_after_rounds[0] + 1024,
        "RSS grew from {} to {} KiB over a second flood",
        rss_after_rounds[0],
        rss_after_rounds[1]
    );

    // Headers that never finish: closed after the header-read timeout.
    let mut slow = std::net::TcpStream::connect(address).expect("connect");
    std::io::Write::write_all(&mut slow, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let ended = std::io::Read::read_to_end(&mut slow, &mut rest);
    let took = started.elapsed();
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the half-sent request was not closed: {ended:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    let (code, _) = get(node, "/v1/status");
    assert_eq!(code, 200, "the API answers after the flood");
}
