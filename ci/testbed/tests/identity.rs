//! The node's identity in a real node: created once, copied to every pool,
//! recovered when the cache disk dies, and never shown or logged.

use std::time::Duration;

use agent::api::NodeReport;
use agent::identity::keys::Seed;
use agent::identity::store::{IdentityReport, Source};
use grove_testbed::{
    Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, unix_get, wait_until,
};
use storaged::storage::PoolReport;

fn start(spec: NodeSpec) -> Farm {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the testbed creates namespaces and loop devices: run the suite as root (ci/test)"
    );
    Farm::start(FarmSpec::with_nodes(vec![spec]))
        .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)))
}

fn node_report(node: &Node) -> Option<NodeReport> {
    let url = format!("{}/v1/node", node.api_url().ok()?);
    let (status, body) = http_get(&url).ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

fn wait_identity(farm: &Farm, node: &Node, copies: usize) -> IdentityReport {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        last = node_report(node).and_then(|r| r.identity);
        last.as_ref().is_some_and(|i| i.copies.len() == copies)
    });
    assert!(
        ok,
        "identity with {copies} copies never shown; last {last:?}\n{}",
        farm.logs(40)
    );
    last.expect("identity")
}

#[test]
fn the_identity_survives_the_loss_of_the_cache_disk_and_never_leaks() {
    let farm = start(NodeSpec::default().disks(vec![DiskSpec::ssd(1024), DiskSpec::hdd(1024)]));
    let node = farm.node(0);
    let first = wait_identity(&farm, node, 2);
    assert_eq!(first.source, Source::Created);
    assert!(
        first.public.account.starts_with('5'),
        "{}",
        first.public.account
    );
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);

    let out = node
        .exec(&["stat", "-c", "%a", "/var/cache/grove/identity/seed"])
        .expect("stat");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");
    let seed_text = String::from_utf8_lossy(
        &node
            .exec(&["cat", "/var/cache/grove/identity/seed"])
            .expect("cat")
            .stdout,
    )
    .into_owned();
    let seed = Seed::from_file_text(&seed_text).expect("a seed on the cache");
    assert_eq!(seed.keys().public(), first.public);
    let secrets = [
        seed_text.trim().to_owned(),
        seed.keys().wireguard_private_key(),
    ];

    // Nothing an operator or a log can see holds a secret.
    let mut seen = Vec::new();
    for path in ["/v1/node", "/v1/services"]
        .into_iter()
        .map(str::to_owned)
        .chain(
            ["storaged", "netd", "provisiond"].map(|s| format!("/v1/services/{s}/logs?lines=500")),
        )
    {
        let (_, body) = http_get(&format!("{}{path}", node.api_url().expect("url"))).expect("GET");
        seen.push((path, body));
    }
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    seen.push((
        "storaged /v1/pools".into(),
        unix_get(&socket, "/v1/pools").expect("pools").1,
    ));
    seen.push((
        "agent log".into(),
        std::fs::read_to_string(node.agent_log()).expect("log"),
    ));
    for (what, text) in &seen {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} shows a secret");
        }
    }

    // Power loss, and the disk holding the cache dies.
    let pools: Vec<PoolReport> =
        serde_json::from_str(&unix_get(&socket, "/v1/pools").expect("pools").1).expect("json");
    let cache_pool = pools.iter().find(|p| p.cache).expect("a cache pool");
    let survivor = pools.iter().find(|p| !p.cache).expect("another pool");
    node.kill_agent().expect("power loss");
    let dead = node
        .disks()
        .iter()
        .find(|d| d.path() == cache_pool.device)
        .expect("the cache disk");
    dead.detach().expect("the cache disk dies");
    node.start_agent().expect("boot again");

    let after = wait_identity(&farm, node, 1);
    assert_eq!(after.public, first.public, "the node changed identity");
    assert_eq!(
        after.source,
        Source::RecoveredFromPool {
            pool: survivor.label.to_string()
        }
    );
    assert_eq!(after.copies, [survivor.label.to_string()]);
}
