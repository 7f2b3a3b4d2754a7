//! The foundation benchmark: a node's idle memory, and its boot time.
//!
//! Boots one testbed node `runs` times. Each run times the agent's start to
//! the moment all four daemons answer `/ready` (the agent's own `/ready`
//! turns 200 only when storaged, netd and provisiond are ready), then waits
//! for the node to idle and sums the RSS of the agent and its daemons. The
//! floor is spawning and reaping four trivial processes one after another.

use std::process::Command;
use std::time::{Duration, Instant};

use super::stats::{ms, ratio, summary, verdict};
use crate::spec::{Daemon, FarmSpec};
use crate::{Farm, http};

/// What the issue asks of the foundation.
pub const RSS_TARGET_MB: f64 = 40.0;
pub const READY_TARGET: Duration = Duration::from_secs(1);

/// A benchmark that could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Testbed(#[from] crate::TestbedError),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error("node not ready within {0:?}")]
    NotReady(Duration),
    #[error("cannot spawn a trivial process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Cmd(#[from] crate::cmd::CmdError),
    #[error(transparent)]
    HandPeer(#[from] crate::tenant::HandPeerError),
    #[error("{what} answered {status}: {body}")]
    Api {
        what: String,
        status: u16,
        body: String,
    },
}

/// One run's measurements.
#[derive(Debug, Clone)]
pub struct Run {
    pub ready: Duration,
    /// RSS in KiB of each process, by name.
    pub rss_kib: Vec<(String, u64)>,
}

/// Runs the benchmark and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let farm = Farm::start(FarmSpec::nodes(1).without_agents())?;
    let node = farm.node(0);
    let mut results = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        node.start_agent()?;
        let socket = node.socket(Daemon::Agent)?;
        let ready = crate::wait_until(Duration::from_secs(10), Duration::from_millis(1), || {
            matches!(http::unix_get(&socket, "/ready"), Ok((200, _)))
        });
        let took = started.elapsed();
        if !ready {
            return Err(BenchError::NotReady(Duration::from_secs(10)));
        }
        std::thread::sleep(Duration::from_secs(2));
        let agent = node.agent_pid().ok_or(BenchError::NotReady(took))?;
        let mut rss_kib = vec![("agent".to_owned(), crate::proc::rss_kib(agent))];
        for child in crate::proc::descendants(agent) {
            rss_kib.push((comm(child.pid), crate::proc::rss_kib(child.pid)));
        }
        results.push(Run {
            ready: took,
            rss_kib,
        });
        node.stop_agent()?;
    }
    let floor = floor(runs)?;
    report(&results, floor);
    Ok(())
}

/// Spawning and reaping four trivial processes, one after another.
fn floor(runs: usize) -> Result<Vec<Duration>, BenchError> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..4 {
                Command::new("true").status().map_err(BenchError::Spawn)?;
            }
            Ok(started.elapsed())
        })
        .collect()
}

fn report(results: &[Run], mut floor: Vec<Duration>) {
    let mut ready: Vec<Duration> = results.iter().map(|r| r.ready).collect();
    let (p50, p90) = summary(&mut ready);
    let (floor50, _) = summary(&mut floor);
    let last = results
        .last()
        .map(|r| r.rss_kib.clone())
        .unwrap_or_default();
    let total_kib: u64 = last.iter().map(|(_, k)| k).sum();
    let total_mb = total_kib as f64 / 1024.0;
    let each = last
        .iter()
        .map(|(n, k)| format!("{n} {:.1}", *k as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "foundation benchmark: {} boots of one testbed node (release build)",
        results.len()
    );
    eprintln!(
        "  idle RSS, agent + 3 daemons: {total_mb:.1} MB ({each}); target <= {RSS_TARGET_MB} MB: {}",
        verdict(total_mb <= RSS_TARGET_MB)
    );
    eprintln!(
        "  agent start -> all four /ready: median {:.1} ms, p90 {:.1} ms; target <= {} ms: {}",
        ms(p50),
        ms(p90),
        READY_TARGET.as_millis(),
        verdict(p50 <= READY_TARGET)
    );
    eprintln!(
        "  floor, spawning four trivial processes: median {:.2} ms",
        ms(floor50)
    );
    eprintln!("  ratio to the floor: {:.1}x", ratio(p50, floor50));
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_gone| pid.to_string())
}
