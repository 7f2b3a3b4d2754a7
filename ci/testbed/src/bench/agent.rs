//! The agent benchmark: its idle memory, `/v1/status` latency with 200
//! concurrent clients, and registration to first uptime report.
//!
//! One node registers with the farm's embedded registry. Latency is
//! measured with wrk twice: 200 clients that each poll every 50 to 150 ms,
//! unsynchronized like real dashboards (the service time an operator sees),
//! and 200 connections sending as fast as they can (saturation, where on
//! two cores queueing dominates). The agent's RSS is read after the node
//! has idled.

use std::process::Command;
use std::time::{Duration, Instant};

use super::foundation::BenchError;
use super::stats::{ms, verdict};
use crate::registry::Registry;
use crate::spec::{Daemon, DiskSpec, FarmSpec, NodeSpec};
use crate::{Farm, http_get, wait_until};

pub const P99_TARGET: Duration = Duration::from_millis(5);
const REGISTRY_PORT: u16 = 8801;

/// wrk's answer.
#[derive(Debug, Default, Clone, Copy)]
struct Wrk {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
}

/// Runs the benchmark and prints the report.
pub fn run(_runs: usize) -> Result<(), BenchError> {
    let spec = NodeSpec::default()
        .disks(vec![DiskSpec::ssd(1024)])
        .config(Daemon::Agent, "[chain]\nuptime_interval_secs = 60\n");
    let farm = Farm::start(FarmSpec::with_nodes(vec![spec]).without_agents())?;
    let registry = Registry::start(&farm, REGISTRY_PORT, None)
        .map_err(|e| BenchError::Spawn(std::io::Error::other(crate::report(&e))))?;
    let node = farm.node(0);
    node.set_cmdline(&format!(
        "grove.farm=1 grove.chain=embedded grove.chain.url={}",
        registry.url()
    ))?;
    let started = Instant::now();
    node.start_agent()?;
    let api = node.api_url()?;
    let chain = |field: &str| -> bool {
        http_get(&format!("{api}/v1/chain")).is_ok_and(|(_, body)| is_set(&body, field))
    };
    let mut registered = None;
    let reported = wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
        if registered.is_none() && chain("node_id") {
            registered = Some(started.elapsed());
        }
        chain("last_uptime_report")
    });
    let first_uptime = started.elapsed();
    let registered = registered.ok_or(BenchError::NotReady(Duration::from_secs(60)))?;
    if !reported {
        return Err(BenchError::NotReady(Duration::from_secs(60)));
    }
    std::thread::sleep(Duration::from_secs(3));
    let agent_rss = node.agent_pid().map(crate::proc::rss_kib).unwrap_or(0);

    let url = format!("{api}/v1/status");
    let script = farm.dir().join("poll.lua");
    std::fs::write(
        &script,
        "function delay() return math.random(50, 150) end\n",
    )
    .map_err(BenchError::Spawn)?;
    let polling = wrk(&url, Some(&script))?;
    let saturated = wrk(&url, None)?;
    drop(registry);

    eprintln!("agent benchmark: one testbed node on the embedded registry (release build)");
    eprintln!("  idle RSS of agent: {:.1} MB", agent_rss as f64 / 1024.0);
    eprintln!(
        "  /v1/status, 200 clients each polling every 50-150 ms: p50 {:.2} ms, p99 {:.2} ms ({:.0} req/s); target p99 <= {} ms: {}",
        polling.p50_ms,
        polling.p99_ms,
        polling.rps,
        P99_TARGET.as_millis(),
        verdict(polling.p99_ms <= ms(P99_TARGET))
    );
    eprintln!(
        "  /v1/status, 200 connections as fast as they go: p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s",
        saturated.p50_ms, saturated.p99_ms, saturated.rps
    );
    eprintln!(
        "  agent start -> registered: {:.0} ms; -> first uptime report delivered: {:.0} ms (registration to first uptime {:.0} ms)",
        ms(registered),
        ms(first_uptime),
        ms(first_uptime.saturating_sub(registered))
    );
    Ok(())
}

/// Whether the JSON text has `field` with a non-null value.
fn is_set(body: &str, field: &str) -> bool {
    body.split(&format!("\"{field}\":"))
        .nth(1)
        .is_some_and(|rest| !rest.trim_start().starts_with("null"))
}

fn wrk(url: &str, script: Option<&std::path::Path>) -> Result<Wrk, BenchError> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", "1", "-c", "200", "-d", "10s", "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().map_err(BenchError::Spawn)?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_wrk(&text))
}

/// Reads the 50 % and 99 % latencies and requests per second.
fn parse_wrk(text: &str) -> Wrk {
    let to_ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => f64::NAN,
        }
    };
    let mut w = Wrk::default();
    for line in text.lines().map(str::trim) {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("50%"), Some(v)) => w.p50_ms = to_ms(v),
            (Some("99%"), Some(v)) => w.p99_ms = to_ms(v),
            (Some("Requests/sec:"), Some(v)) => w.rps = v.parse().unwrap_or(f64::NAN),
            _ => {}
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_fields_without_a_parser() {
        assert!(is_set(r#"{"node_id":3,"x":null}"#, "node_id"));
        assert!(!is_set(r#"{"node_id":null}"#, "node_id"));
        assert!(!is_set(r#"{"other":1}"#, "node_id"));
    }

    #[test]
    fn reads_wrk_output() {
        let w = parse_wrk(
            "  Latency Distribution\n     50%  350.00us\n     75%    1.20ms\n     99%    4.51ms\nRequests/sec:   1995.31\n",
        );
        assert!((w.p50_ms - 0.35).abs() < 1e-9);
        assert!((w.p99_ms - 4.51).abs() < 1e-9);
        assert!((w.rps - 1995.31).abs() < 1e-9);
    }
}
