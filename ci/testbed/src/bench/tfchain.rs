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
use std::time::{Duration, Instant};

use agent::identity::keys::Seed;

use super::foundation::BenchError;
use super::stats::{ms, summary, verdict};
use crate::chain::{self, Daemons, GIB, Proxy, StandIns};

/// The target for reconnect.
pub const RECONNECT_TARGET: Duration = Duration::from_secs(15);
const CUT: Duration = Duration::from_secs(10);

fn fail(what: impl std::fmt::Display) -> BenchError {
    BenchError::Spawn(std::io::Error::other(what.to_string()))
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
        verdict(worst <= RECONNECT_TARGET)
    );
    Ok(())
}

async fn one_run(url: &str, flow: &Path, run: usize) -> Result<Sample, BenchError> {
    let client = chain::client(url).await.map_err(fail)?;
    chain::time_travel(url, chain::now()).await.map_err(fail)?;
    let name = format!("grove_bench_{}_{}_{run}", chain::now(), std::process::id());
    let farm_id = chain::alice_farm(&client, &name).await.map_err(fail)?;
    eprintln!("  run {}: farm {farm_id}", run + 1);
    let seed = Seed::generate().map_err(fail)?;
    chain::fund(&client, &seed).await.map_err(fail)?;

    let dir =
        std::env::temp_dir().join(format!("grove-bench-tfchain-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(BenchError::Spawn)?;
    let stand_ins = StandIns::start(&dir, 200 * GIB).map_err(fail)?;
    let proxy = Proxy::to(url).await.map_err(fail)?;
    let started = Instant::now();
    let node = chain::start(
        &proxy.url,
        farm_id,
        &seed,
        &dir,
        Daemons::from(&stand_ins),
        4,
    );
    wait(&node.chain, Duration::from_secs(120), "registered", |s| {
        s.node_id.is_some()
    })
    .await?;
    let agent_registration = started.elapsed();
    eprintln!("  run {}: the agent registered", run + 1);
    wait(&node.chain, Duration::from_secs(60), "reporting", |s| {
        s.last_uptime_report.is_some() && s.queue_length == 0
    })
    .await?;

    let flow_registration = run_flow(flow, url).await?;
    eprintln!("  run {}: flow.js done", run + 1);

    // Reconnect: cut, wait until reports queue, restore.
    let before = node.chain.status().last_uptime_report.map_or(0, |r| r.seq);
    proxy.cut();
    wait(&node.chain, Duration::from_secs(60), "the cut seen", |s| {
        !s.connected && s.queue_length >= 1
    })
    .await?;
    tokio::time::sleep(CUT).await;
    proxy.restore();
    let restored = Instant::now();
    wait(
        &node.chain,
        Duration::from_secs(60),
        "a report after the cut",
        |s| s.last_uptime_report.is_some_and(|r| r.seq > before),
    )
    .await?;
    let reconnect = restored.elapsed();
    drop(node);
    drop(stand_ins);
    let _removed = std::fs::remove_dir_all(&dir);
    Ok(Sample {
        agent_registration,
        flow_registration,
        reconnect,
    })
}

async fn wait(
    chain: &agent::chain::Chain,
    deadline: Duration,
    what: &str,
    ok: impl Fn(&agent::chain::ChainStatus) -> bool,
) -> Result<agent::chain::ChainStatus, BenchError> {
    chain::wait_for(chain, deadline, what, ok)
        .await
        .map_err(fail)
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
