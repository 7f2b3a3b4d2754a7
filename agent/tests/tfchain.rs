//! Against a real TFChain runtime (spec 144 under chopsticks, see
//! `../shared/tfchain/run.sh`): an unfunded node is told apart, a funded
//! node registers, the `Node` read back from chain storage has the node's
//! capacity and interfaces, and its uptime report is accepted.
//!
//! The agent's chain task is also run whole against it, through faults: a
//! node under TFChain's capacity rules (nothing sent), capacity that changes
//! (the chain follows, and a restart with nothing changed sends nothing), a
//! network cut of 10 s and of 2 minutes (through a TCP proxy the test cuts),
//! an agent restart with reports queued, chain time 10 minutes off, and the
//! chain restarted empty (the test restarts it with the script named by
//! `TFCHAIN_RUN`).
//!
//! Run with `TFCHAIN_WS=ws://127.0.0.1:8000 cargo test -p agent --test
//! tfchain -- --ignored --test-threads=1` (the tests share the dev account
//! Alice, so they run one at a time); `ci/test` does so when `TFCHAIN_WS` is
//! set.

use std::time::{Duration, Instant};

use agent::chain::ChainStatus;
use agent::identity::keys::Seed;
use agent::registry::model::{NodeRegistration, Resources};
use agent::tfchain::client::{Tfchain, TfchainError};
use grove_testbed::chain::{self, Daemons, GIB, StandIns, TFT, alice_submit, now};
use subxt::dynamic::{At as _, Value};
use subxt::utils::AccountId32;
use subxt::{OnlineClient, SubstrateConfig};

fn url() -> String {
    std::env::var("TFCHAIN_WS")
        .expect("set TFCHAIN_WS to a TFChain RPC endpoint, e.g. ws://127.0.0.1:8000")
}

/// A client on the agent's backend, and a new farm of Alice's, with chain
/// time near the wall clock, as a live chain keeps it.
async fn farm() -> (OnlineClient<SubstrateConfig>, u32) {
    let client = chain::client(&url()).await.expect("TFChain harness");
    chain::time_travel(&url(), now())
        .await
        .expect("TFChain harness");
    let name = format!("grove_{}_{}", now(), std::process::id());
    let farm = chain::alice_farm(&client, &name)
        .await
        .expect("TFChain harness");
    (client, farm)
}

/// A node key on a new farm of Alice's, with storaged and netd stand-ins
/// that report `ssd` bytes of SSD.
struct NodeKey {
    client: OnlineClient<SubstrateConfig>,
    farm_id: u32,
    seed: Seed,
    dir: tempfile::TempDir,
    storage: StandIns,
}

impl NodeKey {
    /// Without funds.
    async fn new(ssd: u64) -> Self {
        let (client, farm_id) = farm().await;
        let seed = Seed::generate().expect("seed");
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StandIns::start(dir.path(), ssd).expect("TFChain harness");
        Self {
            client,
            farm_id,
            seed,
            dir,
            storage,
        }
    }

    /// With the funds to register.
    async fn funded(ssd: u64) -> Self {
        let key = Self::new(ssd).await;
        key.fund().await;
        key
    }

    async fn fund(&self) {
        chain::fund(&self.client, &self.seed)
            .await
            .expect("TFChain harness");
    }

    /// The node's chain task against the chain at `url`, an uptime report
    /// every `interval_secs`.
    fn start(&self, url: &str, interval_secs: u64) -> chain::Node {
        chain::start(
            url,
            self.farm_id,
            &self.seed,
            self.dir.path(),
            Daemons::from(&self.storage),
            interval_secs,
        )
    }

    async fn nonce(&self) -> u64 {
        nonce(&self.client, &self.seed).await
    }
}

/// How many extrinsics the node's account has sent.
async fn nonce(client: &OnlineClient<SubstrateConfig>, seed: &Seed) -> u64 {
    let at = client.at_current_block().await.expect("block");
    at.tx()
        .account_nonce(&AccountId32(seed.keys().verifying().to_bytes()))
        .await
        .expect("nonce")
}

/// The node's chain task's status once `ok` holds, within `secs` seconds.
async fn until(
    node: &chain::Node,
    secs: u64,
    what: &str,
    ok: impl Fn(&ChainStatus) -> bool,
) -> ChainStatus {
    chain::wait_for(&node.chain, Duration::from_secs(secs), what, ok)
        .await
        .expect("TFChain harness")
}

/// The node of `seed` on the chain, as a client.
async fn connect(seed: &Seed) -> Tfchain {
    Tfchain::connect(&url(), seed.keys().signing().clone())
        .await
        .expect("connect")
}

async fn node_sru(node: u32) -> u64 {
    let chain = Tfchain::connect(&url(), ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
        .await
        .expect("connect");
    chain
        .node_record(node)
        .await
        .expect("read")
        .expect("the node exists")
        .resources
        .sru
}

/// The agent's own chain task, as a node runs it: unfunded it says it waits
/// for funds and names its account; funded, it gets its twin.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn an_unfunded_node_shows_waiting_for_funds_then_gets_its_twin() {
    let (client, farm_id) = farm().await;
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    let account = seed.keys().public().account;
    let dir = tempfile::tempdir().unwrap();
    // No storaged or netd answers: funds and the twin need neither.
    let daemons = Daemons {
        storaged: &dir.path().join("no-storaged.sock"),
        netd: &dir.path().join("no-netd.sock"),
    };
    let node = chain::start(&url(), farm_id, &seed, dir.path(), daemons, 3600);

    let waiting = format!("waiting for funds: send at least 1 TFT to {account}");
    let shown = chain::wait_for(
        &node.chain,
        Duration::from_secs(30),
        "waiting for funds",
        |s| s.funds == waiting,
    )
    .await;
    assert!(shown.is_ok(), "never showed {waiting:?}: {shown:?}");
    eprintln!("/v1/chain funds: {}", node.chain.status().funds);

    chain::fund(&client, &seed).await.expect("TFChain harness");
    let funded = chain::wait_for(&node.chain, Duration::from_secs(90), "a twin", |s| {
        s.twin_id.is_some() && s.funds == "funded"
    })
    .await;
    let twin = funded
        .map(|s| s.twin_id)
        .unwrap_or_else(|e| panic!("no twin after funding: {e}"));
    eprintln!(
        "funded; twin {twin:?}; farmer {:?}",
        node.chain.status().farmer
    );
    assert_eq!(
        node.chain.status().farmer.as_deref(),
        Some(
            agent::identity::keys::ss58(&subxt_signer::sr25519::dev::alice().public_key().0, 42)
                .as_str()
        )
    );
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn a_node_registers_on_tfchain_and_reports_uptime() {
    let url = url();
    // The farmer (the dev account Alice) makes a farm.
    let (client, farm_id) = farm().await;
    eprintln!("farm {farm_id} created by Alice");

    // A fresh node key, not funded yet.
    let seed = agent::identity::keys::Seed::generate().expect("seed");
    let keys = seed.keys();
    let node = Tfchain::connect(&url, keys.signing().clone())
        .await
        .expect("connect as the node");
    eprintln!("node account {}", node.account());
    assert_eq!(node.free_balance().await.expect("balance"), 0);
    let unfunded = node
        .ensure_twin(None)
        .await
        .expect_err("an unfunded account cannot send");
    assert!(
        matches!(unfunded, TfchainError::Unfunded { .. }),
        "{unfunded}"
    );
    eprintln!("unfunded: {unfunded}");

    // The farmer funds it; then it registers.
    chain::fund(&client, &seed).await.expect("TFChain harness");
    assert_eq!(node.free_balance().await.expect("balance"), 10 * TFT);
    let twin = node.ensure_twin(None).await.expect("twin");
    let registration = chain::registration(
        farm_id,
        twin,
        "grove-test-serial".into(),
        "02:00:00:aa:bb:cc",
        "10.77.0.10/24",
    );
    let location = chain::location();
    let node_id = node
        .register(twin, &registration, &location)
        .await
        .expect("createNode");
    eprintln!("twin {twin}, node {node_id}");

    let stored = node
        .node(node_id)
        .await
        .unwrap()
        .expect("the Node is stored");
    let field = |path: &[&str]| -> u128 {
        let mut v = &stored;
        for p in path {
            v = v
                .at(*p)
                .unwrap_or_else(|| panic!("{path:?} missing in {stored:?}"));
        }
        v.as_u128()
            .unwrap_or_else(|| panic!("{path:?} not a number"))
    };
    assert_eq!(field(&["farm_id"]), u128::from(farm_id));
    assert_eq!(field(&["twin_id"]), u128::from(twin));
    assert_eq!(field(&["resources", "sru"]), 512 << 30);
    assert_eq!(field(&["resources", "mru"]), 16 << 30);
    assert_eq!(field(&["resources", "cru"]), 8);
    let interface = stored
        .at("interfaces")
        .and_then(|i| i.at(0))
        .expect("an interface");
    let name_bytes = format!("{:?}", interface.at("name").expect("name"));
    let expected: Vec<String> = b"br-grove".iter().map(|b| b.to_string()).collect();
    assert!(
        expected.iter().all(|b| name_bytes.contains(b.as_str())),
        "interface name {name_bytes} is not br-grove"
    );
    eprintln!("Node read back: {stored}");

    // Updating is an update, not a second node.
    let again = node
        .register(twin, &registration, &location)
        .await
        .expect("updateNode");
    assert_eq!(again, node_id);

    // Chain time only moves per block under chopsticks: bring it to now.
    chain::time_travel(&url, now())
        .await
        .expect("TFChain harness");
    node.report_uptime(42, now())
        .await
        .expect("reportUptimeV2 accepted");
    eprintln!("uptime report accepted");

    // The node follows the chain: a contract made on it, then cancelled.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let follower = Tfchain::connect(&url, keys.signing().clone())
        .await
        .expect("connect");
    let follow = tokio::spawn(async move { follower.follow_events(node_id, tx).await });
    alice_submit(
        &client,
        "SmartContractModule",
        "create_node_contract",
        vec![
            ("node_id", Value::u128(u128::from(node_id))),
            ("deployment_hash", Value::from_bytes([0xab; 32])),
            (
                "deployment_data",
                Value::from_bytes("grove test deployment"),
            ),
            ("public_ips", Value::u128(0)),
            ("solution_provider_id", Value::unnamed_variant("None", [])),
        ],
    )
    .await
    .expect("TFChain harness");
    let created = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("an event within 30 s")
        .expect("the follower runs");
    assert_eq!(
        created.kind,
        agent::tfchain::client::ChainEventKind::ContractCreated
    );
    let contract = created.contract_id.expect("a contract id");
    assert_eq!(
        node.node_contracts(node_id).await.expect("contracts"),
        vec![contract]
    );
    eprintln!(
        "followed: contract {contract} created on node {node_id} (block {})",
        created.block
    );
    alice_submit(
        &client,
        "SmartContractModule",
        "cancel_contract",
        vec![("contract_id", Value::u128(u128::from(contract)))],
    )
    .await
    .expect("TFChain harness");
    // Under chopsticks a user's cancel shows in storage at once, while no
    // NodeContractCanceled event arrives in time: check the storage.
    let mut gone = false;
    for _ in 0..60 {
        if node
            .node_contracts(node_id)
            .await
            .expect("contracts")
            .is_empty()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        gone,
        "contract {contract} still active after cancelContract"
    );
    eprintln!("contract {contract} cancelled: no longer among the node's active contracts");
    follow.abort();
}

// ---- the agent's chain task against the real chain, through faults ----

/// A node under 100 GiB of SSD sends nothing and says why; capacity that
/// grows registers it, capacity that changes updates it within a minute,
/// and an agent restart with nothing changed sends no `updateNode`.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn capacity_under_the_chain_rules_sends_nothing_and_capacity_follows_the_node() {
    let f = NodeKey::funded(4 * GIB).await;
    let node = f.start(&url(), 3600);

    let refused = until(&node, 60, "a refusal", |s| s.refusal.is_some()).await;
    let reason = refused.refusal.clone().expect("refusal");
    assert!(
        reason.contains("100 GiB") && reason.contains("4.0 GiB"),
        "{reason}"
    );
    let problems = refused.problems(now());
    assert_eq!(problems.len(), 1, "one reason: {problems:?}");
    eprintln!("/v1/status reason: {}", problems[0]);
    let sent = f.nonce().await;
    let balance = connect(&f.seed)
        .await
        .free_balance()
        .await
        .expect("balance");
    // Several rounds of the task go by (one every 5 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(f.nonce().await, sent, "an extrinsic was sent");
    let after = connect(&f.seed)
        .await
        .free_balance()
        .await
        .expect("balance");
    assert_eq!(after, balance, "a fee was paid");
    assert_eq!(node.chain.status().node_id, None);
    assert_eq!(
        node.chain.status().refusals.get("InvalidSRUInput"),
        Some(&1)
    );

    // A pool is added: the node registers.
    f.storage
        .ssd
        .store(200 * GIB, std::sync::atomic::Ordering::SeqCst);
    let registered = until(&node, 60, "a node id", |s| {
        s.node_id.is_some() && s.queue_length == 0 && s.last_uptime_report.is_some()
    })
    .await;
    let id = registered.node_id.expect("node id");
    assert_eq!(registered.refusal, None);
    assert_eq!(node_sru(id).await, 200 * GIB);

    // A pool breaks: the chain follows within a minute.
    f.storage
        .ssd
        .store(150 * GIB, std::sync::atomic::Ordering::SeqCst);
    let start = Instant::now();
    while node_sru(id).await != 150 * GIB {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "SRU not updated within a minute"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("SRU on chain followed the node in {:?}", start.elapsed());

    // An agent restart with nothing changed: one uptime report, no update.
    drop(node);
    let before = f.nonce().await;
    let node = f.start(&url(), 3600);
    let again = until(&node, 60, "a report", |s| {
        s.node_id.is_some() && s.last_uptime_report.is_some() && s.queue_length == 0
    })
    .await;
    assert_eq!(again.node_id, Some(id));
    assert_eq!(
        f.nonce().await,
        before + 1,
        "a restart with nothing changed sends the uptime report only"
    );
}

/// Cuts the network between node and chain for `cut`, then restores it:
/// reports resume, the backlog goes out as one report (no duplicate), the
/// queue empties (no loss). Answers the time from the chain answering again
/// to the first delivered report, and that must be within 15 s.
async fn cut_and_restore(cut: Duration) {
    let f = NodeKey::funded(200 * GIB).await;
    let proxy = chain::Proxy::to(&url()).await.expect("TFChain harness");
    let node = f.start(&proxy.url, 4);
    until(&node, 60, "registered and reporting", |s| {
        s.node_id.is_some() && s.last_uptime_report.is_some()
    })
    .await;

    proxy.cut();
    let cut_at = Instant::now();
    let during = until(&node, 60, "the cut seen", |s| {
        !s.connected && s.queue_length >= 2
    })
    .await;
    let problems = during.problems(now());
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cannot reach the registry")),
        "{problems:?}"
    );
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    let before = node.chain.status();
    let sent_before = f.nonce().await;
    let queued = before.queue_length;
    let last_before = before
        .last_uptime_report
        .expect("a report before the cut")
        .seq;
    eprintln!("cut for {:?}: {queued} reports queued", cut_at.elapsed());

    proxy.restore();
    let restored = Instant::now();
    let after = until(&node, 60, "a report after the cut", |s| {
        s.last_uptime_report.is_some_and(|r| r.seq > last_before)
    })
    .await;
    let reconnect = restored.elapsed();
    let resumed = until(&node, 30, "the queue empty", |s| {
        s.queue_length == 0 && s.connected
    })
    .await;
    let delivered = resumed.last_uptime_report.expect("report").seq;
    let sent = f.nonce().await - sent_before;
    // Reports made after the restore go out one by one; the backlog as one.
    let made_since = delivered.saturating_sub(last_before + queued as u64);
    assert!(
        sent >= 1 && sent <= 1 + made_since,
        "{sent} extrinsics for a backlog of {queued} and {made_since} new reports"
    );
    // Chain time under chopsticks stands still between blocks, so a skew
    // may show after a long cut; nothing else may.
    let problems = resumed.problems(now());
    assert!(
        problems.iter().all(|p| p.contains("clock is off")),
        "{problems:?}"
    );
    eprintln!(
        "reconnect: first report delivered {reconnect:?} after the chain answered again (report {}, {sent} extrinsic(s))",
        after.last_uptime_report.expect("report").seq
    );
    drop(node);
    assert!(
        reconnect <= Duration::from_secs(15),
        "reconnect took {reconnect:?}"
    );
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn a_network_cut_of_10_s_then_reports_resume_without_loss_or_duplicate() {
    cut_and_restore(Duration::from_secs(10)).await;
}

#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn a_network_cut_of_2_minutes_then_reports_resume_without_loss_or_duplicate() {
    cut_and_restore(Duration::from_secs(120)).await;
}

/// An agent restarted with reports queued, a registration of an older
/// agent among them in front: it registers and delivers, the queue empties.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn an_agent_restart_with_reports_queued_registers_and_delivers() {
    use agent::chain::queue::{Queue, Report};
    use agent::registry::model::UptimeReport;

    let f = NodeKey::funded(200 * GIB).await;
    let queue = Queue::open(&f.dir.path().join("reports")).expect("queue");
    let stale = Report::Register {
        registration: NodeRegistration {
            farm_id: f.farm_id,
            twin_id: 0,
            resources: Resources::default(),
            interfaces: vec![],
            serial_number: String::new(),
            virtualized: true,
            secure_boot: false,
        },
        mesh: None,
    };
    let seq = queue.next_seq().expect("seq");
    queue.push(seq, &stale).expect("push");
    for uptime in [100, 200] {
        let seq = queue.next_seq().expect("seq");
        queue
            .push(
                seq,
                &Report::Uptime(UptimeReport {
                    seq,
                    uptime,
                    timestamp: now() - 300 + uptime,
                }),
            )
            .expect("push");
    }
    let node = f.start(&url(), 3600);
    let s = until(&node, 60, "registered and delivered", |s| {
        s.node_id.is_some() && s.last_uptime_report.is_some() && s.queue_length == 0
    })
    .await;
    assert!(queue.is_empty());
    // accept the terms, create the twin, create the node, one report.
    assert_eq!(f.nonce().await, 4);
    eprintln!(
        "after a restart with 3 reports queued: node {:?}, report {:?}",
        s.node_id, s.last_uptime_report
    );
}

/// Chain time 10 minutes ahead of the node's clock: reports go with the
/// chain's time and `/v1/status` shows the skew.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn with_chain_time_10_minutes_off_reports_use_the_chains_time() {
    let f = NodeKey::funded(200 * GIB).await;
    chain::time_travel(&url(), now() + 600)
        .await
        .expect("TFChain harness");
    let node = f.start(&url(), 3600);
    let s = until(&node, 60, "a report", |s| {
        s.last_uptime_report.is_some() && s.queue_length == 0
    })
    .await;
    let skew = s.clock_skew_secs.expect("the skew is known");
    assert!((-700..=-590).contains(&skew), "skew {skew}");
    let problems = s.problems(now());
    assert!(
        problems.iter().any(|p| p.contains(&format!("by {skew} s"))),
        "{problems:?}"
    );
    assert_eq!(
        s.refusals.get("transient"),
        None,
        "a report was refused: {s:?}"
    );
    eprintln!("with chain time 10 min off: {problems:?}");
    chain::time_travel(&url(), now())
        .await
        .expect("TFChain harness");
}

/// An unfunded node is degraded with its address and what to send; once
/// funded it registers within 15 s.
#[tokio::test]
#[ignore = "needs a TFChain: set TFCHAIN_WS and run with --ignored (ci/test does when TFCHAIN_WS is set)"]
async fn an_unfunded_node_is_degraded_with_its_address_and_registers_within_15_s_of_funding() {
    let key = NodeKey::new(200 * GIB).await;
    let account = key.seed.keys().public().account;
    let node = key.start(&url(), 3600);
    let s = until(&node, 60, "waiting for funds", |s| {
        s.funds.starts_with("waiting for funds")
    })
    .await;
    assert!(
        s.farmer.is_some(),
        "the farmer is read without funds: {s:?}"
    );
    let problems = s.problems(now());
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&account) && p.contains("1 TFT")),
        "{problems:?}"
    );
    key.fund().await;
    let funded = Instant::now();
    until(&node, 15, "a node id after funding", |s| {
        s.node_id.is_some()
    })
    .await;
    eprintln!("registered {:?} after funding", funded.elapsed());
}

/// The chain restarted empty (all its state gone): the node registers again by
/// itself within 30 s of its farm and funds being there again.
#[tokio::test]
#[ignore = "needs a TFChain and TFCHAIN_RUN, the script that restarts it (run.sh beside the metadata)"]
async fn after_the_chain_restarted_empty_the_node_registers_again_within_30_s() {
    let script = std::env::var("TFCHAIN_RUN")
        .expect("set TFCHAIN_RUN to the script that starts the chain (`SCRIPT stop` stops it)");
    let restart = || {
        let stop = std::process::Command::new(&script)
            .arg("stop")
            .status()
            .expect("stop");
        assert!(stop.success(), "{script} stop: {stop}");
        let start = std::process::Command::new(&script).output().expect("start");
        assert!(start.status.success(), "{script}: {start:?}");
    };
    // From an empty chain, so the farm gets the same id after the reset.
    restart();
    let f = NodeKey::funded(200 * GIB).await;
    let node = f.start(&url(), 3600);
    let first = until(&node, 60, "registered", |s| {
        s.node_id.is_some() && s.queue_length == 0 && s.last_report_at.is_some()
    })
    .await;
    let reported = first.last_report_at.expect("a report before the reset");

    restart();
    let (client, again) = farm().await;
    assert_eq!(again, f.farm_id, "the farm id after the reset");
    chain::fund(&client, &f.seed)
        .await
        .expect("TFChain harness");
    let ready = Instant::now();
    // Under chopsticks the genesis hash stays the same across restarts: the
    // node finds the reset by reading its twin and node again on reconnect.
    let s = until(&node, 30, "registered again", |s| {
        s.node_id.is_some() && s.twin_id.is_some() && s.last_report_at > Some(reported)
    })
    .await;
    let chain = connect(&f.seed).await;
    let twin = chain.twin().await.expect("twin");
    assert_eq!(s.twin_id, twin, "the twin is the new chain's");
    let node_on_chain = chain
        .node_of_twin(twin.expect("a twin on the new chain"))
        .await
        .expect("node");
    assert_eq!(s.node_id, node_on_chain, "the node is the new chain's");
    eprintln!(
        "registered again {:?} after the reset chain had the farm and funds: node {:?}",
        ready.elapsed(),
        s.node_id
    );
}
