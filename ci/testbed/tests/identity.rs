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
    Farm::start_for_test(FarmSpec::with_nodes(vec![spec]))
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
    dead.pull().expect("the cache disk dies");
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

/// Points the node's storaged at `disks` only, as the machine `machine`.
fn as_machine(node: &Node, machine: &str, disks: &[&grove_testbed::Disk]) {
    let id_file = node.dir().join(format!("{machine}.id"));
    std::fs::write(&id_file, format!("{machine}\n")).expect("machine id");
    let list: Vec<String> = disks
        .iter()
        .map(|d| format!("{:?}", d.path().display().to_string()))
        .collect();
    node.set_config(
        Daemon::Storaged,
        &format!(
            "disks = [{}]\nmachine_id_file = {:?}\n",
            list.join(", "),
            id_file.display().to_string()
        ),
    )
    .expect("storaged config");
}

fn pools(node: &Node) -> Vec<PoolReport> {
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    serde_json::from_str(&unix_get(&socket, "/v1/pools").expect("pools").1).expect("json")
}

fn seed_on(node: &Node, pool: &PoolReport) -> String {
    let path = pool.mount_point.join(".grove/identity/seed");
    String::from_utf8_lossy(
        &node
            .exec(&["cat", &path.display().to_string()])
            .expect("cat")
            .stdout,
    )
    .into_owned()
}

#[test]
fn a_moved_in_pool_never_changes_who_a_node_is() {
    let farm = Farm::start_for_test(
        FarmSpec::with_nodes(vec![
            NodeSpec::default().disks(vec![DiskSpec::ssd(1024), DiskSpec::hdd(2048)]),
        ])
        .without_agents(),
    );
    let node = farm.node(0);
    let (own_disk, moved_disk) = (&node.disks()[0], &node.disks()[1]);

    let registry_port = 18_400 + (std::process::id() % 1000) as u16;
    let registry = grove_testbed::registry::Registry::start(&farm, registry_port, None)
        .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e)));
    node.set_cmdline(&format!("grove.farm=1 grove.chain.url={}", registry.url()))
        .expect("cmdline");
    node.set_config(Daemon::Agent, "[chain]\nuptime_interval_secs = 2\n")
        .expect("agent config");

    // Another node makes the larger pool, with its own identity, and
    // reports uptime.
    as_machine(node, "other-machine", &[moved_disk]);
    node.start_agent().expect("boot the other node");
    let other = wait_identity(&farm, node, 1);
    let other_seed = seed_on(node, &pools(node)[0]);
    let reported = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        http_get(&format!("{}/v1/nodes/1/uptime", registry.url()))
            .is_ok_and(|(code, body)| code == 200 && body.contains("timestamp"))
    });
    assert!(
        reported,
        "the other node never reported uptime\n{}",
        farm.logs(30)
    );
    node.kill_agent().expect("power off");

    // A new node given only that pool, whose node is alive on the registry,
    // takes no identity: it waits for the farmer, says why, and reports the
    // pool by its account.
    as_machine(node, "new-machine", &[moved_disk]);
    node.start_agent().expect("boot the new node");
    let reported = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        node.socket(Daemon::Storaged).is_ok_and(|s| {
            unix_get(&s, "/v1/pools").is_ok_and(|(_, body)| {
                serde_json::from_str::<Vec<PoolReport>>(&body).is_ok_and(|p| {
                    p.len() == 1
                        && p[0].another_node.as_deref()
                            == Some(&*format!(
                                "another node's pool (account {})",
                                other.public.account
                            ))
                })
            })
        })
    });
    assert!(reported, "{:?}\n{}", pools(node), farm.logs(40));
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let said = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        std::fs::read_to_string(node.agent_log())
            .is_ok_and(|log| log.contains("s ago, within the hour"))
    });
    assert!(said, "the refusal was not explained\n{}", farm.logs(30));
    assert!(
        node_report(node).is_some_and(|r| r.identity.is_none()),
        "the new node took an identity: {:?}",
        node_report(node)
    );
    let moved = &pools(node)[0];
    assert!(!moved.cache && !moved.this_node, "{moved:?}");
    assert_eq!(
        seed_on(node, moved),
        other_seed,
        "the moved-in seed changed"
    );
    node.kill_agent().expect("power off");

    // An established node...
    as_machine(node, "this-machine", &[own_disk]);
    node.start_agent().expect("boot the established node");
    let own = wait_identity(&farm, node, 1);
    assert_ne!(own.public, other.public);
    node.kill_agent().expect("power off");

    // ...given the other node's larger pool keeps its account, cache and
    // WireGuard key, and reports the other pool by its account.
    as_machine(node, "this-machine", &[own_disk, moved_disk]);
    node.start_agent().expect("boot with the moved-in disk");
    let after = wait_identity(&farm, node, 1);
    assert_eq!(after.public, own.public, "the node changed identity");
    assert_eq!(
        after.public.wireguard_public_key,
        own.public.wireguard_public_key
    );
    assert_eq!(after.source, Source::Cache);
    let expected = format!("another node's pool (account {})", other.public.account);
    assert!(
        after.warnings.iter().any(|w| w.contains(&expected)),
        "{:?}",
        after.warnings
    );
    let now = pools(node);
    let cache = now.iter().find(|p| p.cache).expect("a cache pool");
    assert_eq!(cache.device, own_disk.path(), "the cache moved");
    let moved = now
        .iter()
        .find(|p| p.device == moved_disk.path())
        .expect("the moved-in pool");
    assert_eq!(moved.another_node.as_deref(), Some(expected.as_str()));
    assert_eq!(moved.free_bytes, 0, "offered for volumes: {moved:?}");
    assert_eq!(
        seed_on(node, moved),
        other_seed,
        "the moved-in seed changed"
    );
    let out = node
        .exec(&["touch", &moved.mount_point.join("x").display().to_string()])
        .expect("touch");
    assert!(!out.status.success(), "the moved-in pool is writable");

    // Once settled, storaged takes no other account and no bad body.
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    let other_body = format!("{{\"account\":{:?}}}", other.public.account);
    let (status, body) =
        grove_testbed::unix_post(&socket, "/v1/identity", other_body.as_bytes()).expect("post");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(&own.public.account), "{body}");
    let (status, body) =
        grove_testbed::unix_post(&socket, "/v1/identity", b"{\"acount\":1}").expect("post");
    assert_eq!(status, 400, "{body}");
    let same = format!("{{\"account\":{:?}}}", own.public.account);
    let (status, body) =
        grove_testbed::unix_post(&socket, "/v1/identity", same.as_bytes()).expect("post");
    assert_eq!(status, 200, "the same answer again changes nothing: {body}");
    let unchanged = pools(node);
    assert_eq!(
        unchanged.iter().find(|p| p.cache).map(|p| p.device.clone()),
        Some(own_disk.path().to_owned())
    );
    node.kill_agent().expect("power off");

    // A replacement machine given only the other node's pool, whose node
    // has not reported uptime within the hour (a registry that never heard
    // of it), adopts that identity, and the pool with it.
    drop(registry);
    std::fs::remove_file(farm.dir().join("registry.json")).expect("forget the old registry");
    let fresh = grove_testbed::registry::Registry::start(&farm, registry_port + 1, None)
        .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e)));
    node.set_cmdline(&format!("grove.farm=1 grove.chain.url={}", fresh.url()))
        .expect("cmdline");
    as_machine(node, "replacement-machine", &[moved_disk]);
    node.start_agent().expect("boot the replacement");
    let adopted = wait_identity(&farm, node, 1);
    assert_eq!(adopted.public, other.public, "the identity was not adopted");
    let now = pools(node);
    assert!(now[0].this_node && now[0].cache, "{:?}", now[0]);
    let out = node
        .exec(&["touch", &now[0].mount_point.join("x").display().to_string()])
        .expect("touch");
    assert!(out.status.success(), "the adopted pool is not writable");
}
