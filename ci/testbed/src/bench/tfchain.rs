//! The TFChain benchmark: registration from agent start (funded) to node
//! id, against the reference client doing the same three calls in the same
//! run; and chain reconnect, from the chain answering again to the first
//! delivered report.
//!
//! Needs a TFChain (`TFCHAIN_WS`, e.g. the runtime under chopsticks) and the
//! reference client `flow.js` (`TFCHAIN_FLOW`, run with `node`). The agent's
//! own chain task runs in this process, as a node runs it, with storaged's
//! capacity (200 GiB of SSD) and netd's interfaces served on local sockets;
//! the chain is reached through a TCP proxy that the benchmark cuts for 10 s
//! and restores.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::boot::{BootParams, ChainBackend, ChainParams};
use agent::chain::{Chain, ChainConfig, ChainStatus, MeshConfig, Sources};
use agent::identity::keys::Seed;
use subxt::dynamic::Value;
use subxt::{OnlineClient, SubstrateConfig};

use super::foundation::BenchError;
use super::stats::{ms, summary};

/// The target for reconnect.
pub const RECONNECT_TARGET: Duration = Duration::from_secs(15);
const TFT: u128 = 10_000_000;
const GIB: u64 = 1 << 30;
const CUT: Duration = Duration::from_secs(10);

fn fail(what: impl std::fmt::Display) -> BenchError {
    BenchError::Spawn(std::io::Error::other(what.to_string()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One run's measurements.
#[derive(Debug, Clone, Copy)]
struct Sample {
    agent_registration: Duration,
    flow_registration: Duration,
    reconnect: Duration,
}

/// Runs the benchmark and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let url = std::env::var("TFCHAIN_WS")
        .map_err(|_| fail("set TFCHAIN_WS to a TFChain endpoint, e.g. ws://127.0.0.1:8000"))?;
    let flow = std::env::var("TFCHAIN_FLOW")
        .map(PathBuf::from)
        .map_err(|_| fail("set TFCHAIN_FLOW to the reference client flow.js"))?;
    let runtime = tokio::runtime::Runtime::new().map_err(BenchError::Spawn)?;
    let mut samples = Vec::new();
    for i in 0..runs {
        let sample = runtime.block_on(one_run(&url, &flow, i))?;
        eprintln!(
            "  run {}: agent {:.0} ms, flow.js {:.0} ms, reconnect {:.0} ms",
            i + 1,
            ms(sample.agent_registration),
            ms(sample.flow_registration),
            ms(sample.reconnect)
        );
        samples.push(sample);
    }
    let (agent, _) = summary(
        &mut samples
            .iter()
            .map(|s| s.agent_registration)
            .collect::<Vec<_>>(),
    );
    let (flow_p50, _) = summary(
        &mut samples
            .iter()
            .map(|s| s.flow_registration)
            .collect::<Vec<_>>(),
    );
    let mut reconnects: Vec<Duration> = samples.iter().map(|s| s.reconnect).collect();
    let worst = reconnects.iter().max().copied().unwrap_or_default();
    let (reconnect, _) = summary(&mut reconnects);
    eprintln!("tfchain benchmark: {runs} run(s) against {url}");
    eprintln!(
        "  registration, agent start (funded) -> node id: median {:.0} ms; flow.js connect + userAcceptTc + createTwin + createNode: median {:.0} ms; ratio {:.2}",
        ms(agent),
        ms(flow_p50),
        agent.as_secs_f64() / flow_p50.as_secs_f64().max(f64::EPSILON)
    );
    eprintln!(
        "  reconnect, chain answering again after a {} s cut -> first delivered report: median {:.0} ms, worst {:.0} ms; target <= {} s: {}",
        CUT.as_secs(),
        ms(reconnect),
        ms(worst),
        RECONNECT_TARGET.as_secs(),
        if worst <= RECONNECT_TARGET {
            "meets"
        } else {
            "MISSES"
        }
    );
    Ok(())
}

async fn one_run(url: &str, flow: &Path, run: usize) -> Result<Sample, BenchError> {
    // A throwaway key gives a client on the agent's own backend.
    let client = agent::tfchain::client::Tfchain::connect(
        url,
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    )
    .await
    .map_err(fail)?
    .client()
    .clone();
    time_travel(url, now()).await?;
    let farm_id = alice_farm(&client, run).await?;
    eprintln!("  run {}: farm {farm_id}", run + 1);
    let seed = Seed::generate().map_err(fail)?;
    fund(&client, &seed).await?;

    let dir =
        std::env::temp_dir().join(format!("grove-bench-tfchain-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(BenchError::Spawn)?;
    let sockets = StandIns::start(&dir)?;
    let proxy = Proxy::to(url).await?;
    let started = Instant::now();
    let (chain, task) = start(&proxy.url, farm_id, &seed, &dir, &sockets);
    let registered = wait_for(&chain, Duration::from_secs(120), |s| s.node_id.is_some()).await?;
    let agent_registration = started.elapsed();
    eprintln!("  run {}: the agent registered", run + 1);
    let _ = registered;
    wait_for(&chain, Duration::from_secs(60), |s| {
        s.last_uptime_report.is_some() && s.queue_length == 0
    })
    .await?;

    let flow_registration = run_flow(flow, url).await?;
    eprintln!("  run {}: flow.js done", run + 1);

    // Reconnect: cut, wait until reports queue, restore.
    let before = chain.status().last_uptime_report.map_or(0, |r| r.seq);
    proxy.cut();
    wait_for(&chain, Duration::from_secs(60), |s| {
        !s.connected && s.queue_length >= 1
    })
    .await?;
    tokio::time::sleep(CUT).await;
    proxy.restore();
    let restored = Instant::now();
    wait_for(&chain, Duration::from_secs(60), |s| {
        s.last_uptime_report.is_some_and(|r| r.seq > before)
    })
    .await?;
    let reconnect = restored.elapsed();
    task.abort();
    drop(sockets);
    let _removed = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        agent_registration,
        flow_registration,
        reconnect,
    })
}

/// `node flow.js URL`: its connect time plus its node's three calls.
async fn run_flow(flow: &Path, url: &str) -> Result<Duration, BenchError> {
    let out = tokio::process::Command::new("node")
        .arg(flow)
        .arg(url)
        .current_dir(flow.parent().unwrap_or(Path::new(".")))
        .output()
        .await
        .map_err(BenchError::Spawn)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(fail(format!(
            "flow.js failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_flow(&text).ok_or_else(|| fail(format!("cannot read flow.js's timings: {text}")))
}

/// The connect time and the node's userAcceptTc, createTwin and createNode
/// times from flow.js's output.
fn parse_flow(text: &str) -> Option<Duration> {
    let connect: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("connected to "))?
        .split(" in ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let node = text.split("\nnode:").nth(1)?;
    let mut total = connect;
    for call in [
        "tfgridModule.userAcceptTc",
        "tfgridModule.createTwin",
        "tfgridModule.createNode",
    ] {
        let line = node
            .lines()
            .find(|l| l.trim_start().starts_with("ok") && l.contains(call))?;
        let after = line.split(call).nth(1)?;
        total += after.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(total))
}

fn start(
    url: &str,
    farm_id: u32,
    seed: &Seed,
    dir: &Path,
    sockets: &StandIns,
) -> (Arc<Chain>, tokio::task::JoinHandle<()>) {
    let chain = Arc::new(Chain::default());
    let params = BootParams {
        farm_id: Some(farm_id),
        chain: ChainParams {
            backend: ChainBackend::Tfchain,
            url: Some(url.to_owned()),
            run_mode: None,
        },
        ..BootParams::default()
    };
    let config = ChainConfig {
        uptime_interval_secs: 4,
        queue_dir: dir.join("reports"),
        ..ChainConfig::default()
    };
    let sources = Sources {
        identity: Arc::new(agent::identity::Identity::with_seed(seed)),
        storaged: storaged::client::StoragedClient::new(sockets.storaged.clone()),
        netd: netd::client::NetdClient::new(sockets.netd.clone()),
        proc_root: "/proc".into(),
        mesh: MeshConfig {
            enabled: false,
            ..MeshConfig::default()
        },
    };
    let task = tokio::spawn(chain.clone().run(
        params,
        config,
        sources,
        grove_daemon::shutdown::Shutdown::new(),
    ));
    (chain, task)
}

async fn wait_for(
    chain: &Chain,
    deadline: Duration,
    ok: impl Fn(&ChainStatus) -> bool,
) -> Result<ChainStatus, BenchError> {
    let start = Instant::now();
    loop {
        let s = chain.status();
        if ok(&s) {
            return Ok(s);
        }
        if start.elapsed() > deadline {
            return Err(fail(format!(
                "the chain task did not get there in {deadline:?}: {s:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// storaged's capacity and netd's interfaces on local sockets.
struct StandIns {
    storaged: PathBuf,
    netd: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl StandIns {
    fn start(dir: &Path) -> Result<StandIns, BenchError> {
        let storaged = dir.join("storaged.sock");
        let netd = dir.join("netd.sock");
        let ssd = 200 * GIB;
        let capacity = axum::Router::new()
            .route(
                "/ready",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"ready": true})) }),
            )
            .route(
            "/v1/capacity",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({
                    "ssd": {"total_bytes": ssd, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": ssd},
                    "hdd": {"total_bytes": 0, "reserved_bytes": 0, "used_bytes": 0, "free_bytes": 0},
                    "cache": {"mount_point": "/var/cache/grove", "pool": "grove-a", "kind": "ssd", "degraded": null},
                    "broken_pools": []
                }))
            }),
        );
        let interfaces = axum::Router::new().route(
            "/v1/interfaces",
            axum::routing::get(|| async { axum::Json(serde_json::json!([])) }),
        );
        let mut tasks = Vec::new();
        for (path, app) in [(&storaged, capacity), (&netd, interfaces)] {
            let listener = tokio::net::UnixListener::bind(path).map_err(BenchError::Spawn)?;
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Ok(StandIns {
            storaged,
            netd,
            tasks,
        })
    }
}

/// A TCP proxy to the chain that can be cut (every connection dropped, new
/// ones refused) and restored.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn to(upstream: &str) -> Result<Proxy, BenchError> {
        let target = upstream
            .strip_prefix("ws://")
            .ok_or_else(|| fail("TFCHAIN_WS must be a ws:// URL"))?
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(BenchError::Spawn)?;
        let url = format!("ws://{}", listener.local_addr().map_err(BenchError::Spawn)?);
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let (c, g, target) = (c.clone(), g.clone(), target.clone());
                tokio::spawn(async move {
                    let born = g.load(Ordering::SeqCst);
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let pipe = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut_off = async {
                        while !c.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = pipe => {}
                        () = cut_off => {}
                    }
                });
            }
        });
        Ok(Proxy {
            url,
            cut,
            generation,
            task,
        })
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn time_travel(url: &str, secs: u64) -> Result<(), BenchError> {
    let rpc = subxt::rpcs::RpcClient::from_insecure_url(url)
        .await
        .map_err(fail)?;
    let _: serde_json::Value = rpc
        .request("dev_timeTravel", subxt::rpcs::rpc_params![secs * 1000])
        .await
        .map_err(fail)?;
    Ok(())
}

async fn alice_submit(
    client: &OnlineClient<SubstrateConfig>,
    pallet: &str,
    call: &str,
    fields: Vec<(&str, Value)>,
) -> Result<(), BenchError> {
    let alice = subxt_signer::sr25519::dev::alice();
    let payload = subxt::dynamic::tx(
        pallet,
        call,
        subxt::ext::scale_value::Composite::named(
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)),
        ),
    );
    let at = client.at_current_block().await.map_err(fail)?;
    at.tx()
        .sign_and_submit_then_watch_default(&payload, &alice)
        .await
        .map_err(|e| fail(format!("{pallet}.{call}: {e}")))?
        .wait_for_finalized_success()
        .await
        .map_err(|e| fail(format!("{pallet}.{call}: {e}")))?;
    Ok(())
}

async fn fetch(
    client: &OnlineClient<SubstrateConfig>,
    item: &str,
    key: Value,
) -> Result<Option<u32>, BenchError> {
    let at = client.at_current_block().await.map_err(fail)?;
    let address = subxt::dynamic::storage::<Vec<Value>, Value>("TfgridModule", item);
    let value = at
        .storage()
        .try_fetch(address, vec![key])
        .await
        .map_err(fail)?;
    Ok(value
        .map(|v| v.decode_as::<u32>())
        .transpose()
        .map_err(fail)?
        .filter(|id| *id != 0))
}

/// A new farm of the dev account Alice.
async fn alice_farm(client: &OnlineClient<SubstrateConfig>, run: usize) -> Result<u32, BenchError> {
    let alice = subxt_signer::sr25519::dev::alice()
        .public_key()
        .to_account_id();
    if fetch(client, "TwinIdByAccountID", Value::from_bytes(alice.0))
        .await?
        .is_none()
    {
        alice_submit(
            client,
            "TfgridModule",
            "user_accept_tc",
            vec![
                (
                    "document_link",
                    Value::from_bytes(agent::tfchain::client::TC_LINK),
                ),
                (
                    "document_hash",
                    Value::from_bytes(agent::tfchain::client::TC_HASH),
                ),
            ],
        )
        .await?;
        alice_submit(
            client,
            "TfgridModule",
            "create_twin",
            vec![
                ("relay", Value::unnamed_variant("None", [])),
                ("pk", Value::unnamed_variant("None", [])),
            ],
        )
        .await?;
    }
    let name = format!("grove_bench_{}_{}_{run}", now(), std::process::id());
    alice_submit(
        client,
        "TfgridModule",
        "create_farm",
        vec![
            ("name", Value::from_bytes(&name)),
            ("public_ips", Value::unnamed_composite([])),
        ],
    )
    .await?;
    fetch(client, "FarmIdByName", Value::from_bytes(&name))
        .await?
        .ok_or_else(|| fail("the farm was not created"))
}

async fn fund(client: &OnlineClient<SubstrateConfig>, seed: &Seed) -> Result<(), BenchError> {
    alice_submit(
        client,
        "Balances",
        "transfer_keep_alive",
        vec![
            (
                "dest",
                Value::unnamed_variant(
                    "Id",
                    [Value::from_bytes(seed.keys().verifying().to_bytes())],
                ),
            ),
            ("value", Value::u128(10 * TFT)),
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_js_timings_are_read() {
        let text = "connected to ws://127.0.0.1:8000 in 812 ms: substrate-threefold v144 (dev)\n\
farmer:\n  ok  tfgridModule.userAcceptTc             100 ms  block 0x12  fee 1\n\
node:\n  ok  tfgridModule.userAcceptTc              50 ms  block 0x13  fee 1\n\
  ok  tfgridModule.createTwin                60 ms  block 0x14  fee 1\n\
  ok  tfgridModule.createNode                70 ms  block 0x15  fee 1\n\
  ok  tfgridModule.reportUptimeV2            80 ms  block 0x16  fee 1\n";
        assert_eq!(
            parse_flow(text),
            Some(Duration::from_millis(812 + 50 + 60 + 70))
        );
        assert_eq!(parse_flow("nothing"), None);
    }
}
