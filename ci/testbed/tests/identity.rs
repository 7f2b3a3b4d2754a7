//! The node's identity in a real node: created once, copied to every pool,
//! recovered when the cache disk dies, and never shown or logged.

mod signing;

use std::path::Path;
use std::time::Duration;

use agent::api::NodeReport;
use agent::identity::keys::Seed;
use agent::identity::store::{IdentityReport, Source};
use grove_testbed::{
    Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, unix_get, wait_until,
};
use storaged::report::PoolReport;

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
/// An embedded registry on `port`, and `node` set to boot on it (farm 1)
/// and report uptime every 2 s.
fn booting_on_a_registry(farm: &Farm, node: &Node, port: u16) -> grove_testbed::registry::Registry {
    let registry = grove_testbed::registry::Registry::start(farm, port, None)
        .unwrap_or_else(|e| panic!("registry: {}", grove_testbed::report(&e)));
    node.set_cmdline(&format!("grove.farm=1 grove.chain.url={}", registry.url()))
        .expect("cmdline");
    node.set_config(Daemon::Agent, "[chain]\nuptime_interval_secs = 2\n")
        .expect("agent config");
    registry
}

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
    let registry = booting_on_a_registry(&farm, node, registry_port);

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

/// The agent CLI's answer on stdout.
fn agent_cli(args: &[&str]) -> String {
    grove_testbed::cmd::agent_cli(args).expect("the agent CLI answers")
}

/// `agent sign identity` by the farmer of `key` for the waiting node on
/// `machine`, with the choice `choice` (`--adopt ACCOUNT` or `--fresh`).
fn sign_identity(key: &str, machine: &str, choice: &[&str]) -> String {
    let node = format!("machine:{machine}");
    let mut args = vec!["sign", "identity", "--key", key, "--node", &node];
    args.extend_from_slice(choice);
    agent_cli(&args)
}

/// `agent sign request` by the farmer of `key` of the identity choice
/// `body` for the node of account `node`.
fn sign_choice(key: &str, node: &str, body: &str) -> String {
    signing::request(
        Path::new(key),
        node,
        agent::identity::choice::PATH,
        &["--body", body],
    )
}

/// POSTs `body` to the node's identity choice with the header lines (`-H
/// 'name: value'`) `agent sign` printed, if any.
fn post_choice(node: &Node, signed: &str, body: &str) -> (u16, String) {
    let url = format!(
        "{}{}",
        node.api_url().expect("url"),
        agent::identity::choice::PATH
    );
    let headers = grove_testbed::http::signed_headers(signed);
    grove_testbed::http::curl_post(&url, Some(body.as_bytes()), &headers).expect("curl answers")
}

/// The body `agent sign identity` printed (`-d '...'`).
fn signed_body(signed: &str) -> String {
    signed
        .lines()
        .find_map(|l| l.strip_prefix("-d '")?.strip_suffix('\''))
        .expect("a body")
        .to_owned()
}

/// Waits until the node waits for the farmer's choice, and answers what
/// `/v1/node` says about it.
fn wait_waiting(
    farm: &Farm,
    node: &Node,
    accounts: usize,
) -> agent::identity::choice::WaitingReport {
    node.wait_api(Duration::from_secs(30)).expect("API up");
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        last = node_report(node);
        last.as_ref()
            .and_then(|r| r.waiting.as_ref())
            .is_some_and(|w| w.accounts.len() == accounts)
    });
    assert!(ok, "the node never waited: {last:?}\n{}", farm.logs(40));
    let report = last.expect("a report");
    assert!(report.identity.is_none(), "{report:?}");
    report.waiting.expect("waiting")
}

/// What storaged holds the node to be.
fn storaged_identity(node: &Node) -> storaged::report::IdentityState {
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    serde_json::from_str(&unix_get(&socket, "/v1/identity").expect("identity").1).expect("json")
}

/// The account of the twin that registered the node `node_id` on the
/// embedded registry.
fn registered_account(
    registry: &grove_testbed::registry::Registry,
    node_id: u32,
) -> Option<String> {
    let (_, nodes) = http_get(&format!("{}/v1/nodes?farm_id=1", registry.url())).ok()?;
    let nodes: Vec<agent::registry::model::Node> = serde_json::from_str(&nodes).ok()?;
    let node = nodes.into_iter().find(|n| n.id == node_id)?;
    let (_, twin) = http_get(&format!(
        "{}/v1/twins/{}",
        registry.url(),
        node.registration.twin_id
    ))
    .ok()?;
    serde_json::from_str::<agent::registry::model::Twin>(&twin)
        .ok()
        .map(|t| t.account)
}

/// Waits until the node is registered, and answers its account on the
/// registry.
fn wait_registered(
    farm: &Farm,
    node: &Node,
    registry: &grove_testbed::registry::Registry,
) -> String {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        last = http_get(&format!("{}/v1/chain", node.api_url().expect("url")))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<agent::chain::ChainStatus>(&body).ok())
            .and_then(|s| s.node_id)
            .and_then(|id| registered_account(registry, id));
        last.is_some()
    });
    assert!(ok, "the node never registered\n{}", farm.logs(40));
    last.expect("an account")
}

#[test]
fn a_node_given_two_identities_waits_for_the_farmers_signed_choice() {
    let farm = Farm::start(
        FarmSpec::with_nodes(vec![NodeSpec::default().disks(vec![
            DiskSpec::ssd(1024),
            DiskSpec::ssd(1024),
            DiskSpec::ssd(1024),
        ])])
        .without_agents(),
    )
    .unwrap_or_else(|e| panic!("farm did not start: {}", grove_testbed::report(&e)));
    let node = farm.node(0);
    let (disk_x, disk_y, blank) = (&node.disks()[0], &node.disks()[1], &node.disks()[2]);
    let registry_port = 18_600 + (std::process::id() % 1000) as u16;
    let registry = booting_on_a_registry(&farm, node, registry_port);
    let farmer_key = registry
        .farmer_key()
        .expect("the registry made the farmer's key")
        .display()
        .to_string();

    // Two other nodes each make a pool with their own identity.
    as_machine(node, "machine-x", &[disk_x]);
    node.start_agent().expect("boot node X");
    let x = wait_identity(&farm, node, 1).public.account;
    node.kill_agent().expect("power off");
    as_machine(node, "machine-y", &[disk_y]);
    node.start_agent().expect("boot node Y");
    let y = wait_identity(&farm, node, 1).public.account;
    node.kill_agent().expect("power off");
    assert_ne!(x, y);

    // A new machine given both pools takes neither: it waits, names both
    // accounts and says how to answer.
    as_machine(node, "new-machine", &[disk_x, disk_y]);
    node.start_agent().expect("boot the new machine");
    let waiting = wait_waiting(&farm, node, 2);
    assert_eq!(waiting.accounts, [x.clone(), y.clone()], "{waiting:?}");
    assert_eq!(waiting.target.as_deref(), Some("machine:new-machine"));
    let (_, status) =
        http_get(&format!("{}/v1/status", node.api_url().expect("url"))).expect("status");
    assert!(
        status.contains(agent::identity::choice::PATH) && status.contains("agent sign identity"),
        "{status}"
    );
    let seeds =
        |node: &Node| -> Vec<String> { pools(node).iter().map(|p| seed_on(node, p)).collect() };
    let before = seeds(node);

    // Refused, each changing nothing: unsigned; an account not found; the
    // same signed request again; a request signed for another machine.
    let adopt_x = format!("{{\"adopt\":{x:?}}}");
    let (code, body) = post_choice(node, "", &adopt_x);
    assert_eq!(code, 401, "unsigned: {body}");
    let stranger = agent_cli(&["sign", "account", "--key", &farmer_key]);
    let signed = sign_identity(&farmer_key, "new-machine", &["--adopt", &stranger]);
    let (code, body) = post_choice(node, &signed, &signed_body(&signed));
    assert_eq!(code, 404, "an account not found: {body}");
    assert!(body.contains(&stranger) && body.contains(&x), "{body}");
    let (code, body) = post_choice(node, &signed, &signed_body(&signed));
    assert_eq!(code, 401, "a replay: {body}");
    assert!(body.contains("already used"), "{body}");
    let elsewhere = sign_identity(&farmer_key, "other-machine", &["--adopt", &x]);
    let (code, body) = post_choice(node, &elsewhere, &signed_body(&elsewhere));
    assert_eq!(code, 401, "signed for another machine: {body}");
    let signed = sign_identity(&farmer_key, "new-machine", &["--adopt", &x]);
    let (code, body) = post_choice(node, &signed, "{\"adopt\":\"5Whatever\"}");
    assert_eq!(code, 401, "a body other than the one signed: {body}");
    let fresh_here = sign_identity(&farmer_key, "new-machine", &["--fresh"]);
    let (code, body) = post_choice(node, &fresh_here, &signed_body(&fresh_here));
    assert_eq!(code, 409, "a fresh start with no blank disk: {body}");
    assert!(body.contains("no blank disk"), "{body}");
    // storaged, told directly, checks the choice again.
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    for (body, code, says) in [
        (format!("{{\"adopt\":{stranger:?}}}"), 404, x.as_str()),
        (format!("{{\"fresh\":{x:?}}}"), 409, "already on pool"),
        ("{\"adopt\":1}".to_owned(), 400, "bad request body"),
        ("{\"keep\":\"5x\"}".to_owned(), 400, "bad request body"),
    ] {
        let (status, answer) =
            grove_testbed::unix_post(&socket, "/v1/identity/choice", body.as_bytes())
                .expect("post");
        assert_eq!(status, code, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
    assert_eq!(seeds(node), before, "a refused choice changed a pool");
    assert_eq!(storaged_identity(node).account, None);
    assert!(wait_waiting(&farm, node, 2).accounts.contains(&x));

    // The farmer adopts X: the node is X, on X's pool, and registered as X.
    let signed = sign_identity(&farmer_key, "new-machine", &["--adopt", &x]);
    let (code, body) = post_choice(node, &signed, &signed_body(&signed));
    assert_eq!(code, 200, "{body}\n{}", farm.logs(40));
    let chosen: agent::identity::choice::Chosen = serde_json::from_str(&body).expect("json");
    assert_eq!(chosen.account, x);
    assert!(chosen.changed);
    let adopted = wait_identity(&farm, node, 1);
    assert_eq!(adopted.public.account, x);
    assert_eq!(wait_registered(&farm, node, &registry), x);
    let now = pools(node);
    let on_x = now
        .iter()
        .find(|p| p.device == disk_x.path())
        .expect("X's pool");
    let on_y = now
        .iter()
        .find(|p| p.device == disk_y.path())
        .expect("Y's pool");
    assert!(on_x.this_node && on_x.cache, "{on_x:?}");
    assert!(!on_y.this_node && !on_y.cache, "{on_y:?}");
    assert_eq!(seed_on(node, on_y), before[1], "Y's seed changed");

    // Not waiting any more: another choice is refused; the same one again
    // changes nothing.
    let signed = sign_choice(&farmer_key, &x, &format!("{{\"adopt\":{y:?}}}"));
    let (code, body) = post_choice(node, &signed, &format!("{{\"adopt\":{y:?}}}"));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("not waiting"), "{body}");
    let signed = sign_choice(&farmer_key, &x, &adopt_x);
    let (code, body) = post_choice(node, &signed, &adopt_x);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"changed\":false"), "{body}");
    let socket = node.socket(Daemon::Storaged).expect("storaged");
    let other = format!("{{\"adopt\":{y:?}}}");
    let (status, answer) =
        grove_testbed::unix_post(&socket, "/v1/identity/choice", other.as_bytes()).expect("post");
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains(&x), "{answer}");

    // A restart keeps the choice.
    node.kill_agent().expect("power off");
    node.start_agent().expect("boot again");
    let again = wait_identity(&farm, node, 1);
    assert_eq!(
        again.public.account, x,
        "the choice did not survive a restart"
    );
    assert_eq!(again.source, Source::Cache);
    node.kill_agent().expect("power off");

    // Another new machine, given both pools and a blank disk, starts fresh:
    // a new account, and the other nodes' pools stay byte-identical.
    as_machine(node, "fresh-machine", &[disk_x, disk_y, blank]);
    node.start_agent().expect("boot the fresh machine");
    let waiting = wait_waiting(&farm, node, 2);
    assert_eq!(waiting.target.as_deref(), Some("machine:fresh-machine"));
    let foreign = [disk_x.file(), disk_y.file()].map(|f| {
        (
            f.to_owned(),
            grove_testbed::cmd::sha256(f).expect("sha256sum"),
        )
    });
    let signed = sign_identity(&farmer_key, "fresh-machine", &["--fresh"]);
    let (code, body) = post_choice(node, &signed, &signed_body(&signed));
    assert_eq!(code, 200, "{body}\n{}", farm.logs(40));
    let fresh = wait_identity(&farm, node, 1);
    assert_ne!(fresh.public.account, x);
    assert_ne!(fresh.public.account, y);
    assert_eq!(fresh.source, Source::Created);
    assert_eq!(
        wait_registered(&farm, node, &registry),
        fresh.public.account
    );
    let now = pools(node);
    let on_blank = now
        .iter()
        .find(|p| p.device == blank.path())
        .expect("the new pool");
    assert!(on_blank.this_node && on_blank.cache, "{on_blank:?}");
    let untouched = || {
        for (file, digest) in &foreign {
            assert_eq!(
                &grove_testbed::cmd::sha256(file).expect("sha256sum"),
                digest,
                "{} was written",
                file.display()
            );
        }
    };
    untouched();
    node.kill_agent().expect("power off");
    untouched();
}
