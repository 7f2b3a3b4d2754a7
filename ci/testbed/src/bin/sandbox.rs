//! `sandbox`: a farm of Grove nodes on this host to try things by hand.
//!
//! Starts `--nodes N` nodes (3 unless told), waits until each node's
//! operator API answers, prints where everything is, then waits for Ctrl-C
//! or SIGTERM and tears the farm down. Limits: needs root and the workspace
//! binaries (`cargo build --workspace --bins`); one farm LAN with DHCP.
#![allow(clippy::print_stdout, reason = "this binary's output is its interface")]
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use grove_testbed::{
    Daemon, DiskSpec, Farm, FarmSpec, Node, NodeSpec, http_get, report, wait_until,
};
use nix::sys::signal::{SigSet, Signal};

const USAGE: &str = "usage: sandbox [--nodes N]";
/// How long a node's API may take to answer after its agent starts.
const API_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let nodes = match parse(std::env::args().skip(1)) {
        Ok(Some(nodes)) => nodes,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("sandbox: {message}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    // Blocked before any thread exists, so every thread inherits the mask
    // and the signals wait for `sigwait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("sandbox: cannot block SIGINT/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    println!("starting a farm of {nodes} node(s)...");
    // Each node gets a sparse SSD and HDD, so its storage has pools.
    // netd brings the uplink up by DHCP from the farm LAN's dnsmasq.
    let node = NodeSpec::default()
        .addressing(grove_testbed::Addressing::None)
        .disks(vec![DiskSpec::ssd(4096), DiskSpec::hdd(8192)]);
    // Uptime every minute rather than every 40, so reports show up soon.
    let node = node.config(Daemon::Agent, "[chain]\nuptime_interval_secs = 60\n");
    let farm = match Farm::start(FarmSpec::with_nodes(vec![node; nodes]).without_agents()) {
        Ok(farm) => farm,
        Err(e) => {
            eprintln!("sandbox: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    // The farm's embedded registry, on the host's side of the farm LAN.
    let registry = match grove_testbed::registry::Registry::start(&farm, REGISTRY_PORT, None) {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("sandbox: {}", report(&e));
            return teardown(farm, ExitCode::FAILURE);
        }
    };
    let registry_url = registry.url().to_owned();
    for node in farm.nodes() {
        let cmdline = format!("grove.farm=1 grove.chain=embedded grove.chain.url={registry_url}");
        if let Err(e) = node.set_cmdline(&cmdline).and_then(|()| node.start_agent()) {
            eprintln!("sandbox: {}", report(&e));
            drop(registry);
            return teardown(farm, ExitCode::FAILURE);
        }
    }
    for node in farm.nodes() {
        if let Err(message) = wait_for_api(node) {
            drop(registry);
            eprintln!("sandbox: {message}\n{}", farm.logs(40));
            return teardown(farm, ExitCode::FAILURE);
        }
    }
    println!(
        "farm {} on LAN {} (host {}), run directory {}",
        farm.run_id(),
        farm.lan_subnet(),
        farm.host_ip(),
        farm.dir().display()
    );
    for node in farm.nodes() {
        let url = node.api_url().unwrap_or_default();
        println!(
            "  {:<4} netns {}  ip {}  api {}  log {}",
            node.name(),
            node.netns(),
            node.lan_ip().map(|ip| ip.to_string()).unwrap_or_default(),
            url,
            node.agent_log().display()
        );
    }
    println!(
        "embedded registry {registry_url} (farm 1), state {}",
        farm.dir().join("registry.json").display()
    );
    print_signing(&registry, &farm);
    println!("Ctrl-C or SIGTERM tears the farm down.");
    match signals.wait() {
        Ok(signal) => println!("{signal}: tearing down..."),
        Err(e) => eprintln!("sandbox: waiting for a signal failed ({e}); tearing down..."),
    }
    drop(registry);
    teardown(farm, ExitCode::SUCCESS)
}

/// Where the farm's embedded registry listens, on the host's LAN address.
const REGISTRY_PORT: u16 = 8800;

/// `Ok(None)` for `--help`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<usize>, String> {
    let mut nodes = 3;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" | "-n" => {
                let value = args.next().ok_or("--nodes needs a number")?;
                nodes = value.parse().map_err(|e| format!("--nodes {value}: {e}"))?;
            }
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(nodes))
}

fn wait_for_api(node: &Node) -> Result<(), String> {
    // The node's netd takes its LAN address by DHCP: wait for it too.
    let mut url = String::new();
    let mut answer = None;
    let up = wait_until(API_TIMEOUT, Duration::from_millis(250), || {
        if node.agent_exit().is_some() {
            return true;
        }
        let Ok(base) = node.api_url() else {
            return false;
        };
        url = format!("{base}/v1/node");
        answer = http_get(&url).ok();
        answer.is_some()
    });
    if let Some(status) = node.agent_exit() {
        return Err(format!("the agent of {} exited ({status})", node.name()));
    }
    match answer {
        Some((status, _)) if up => {
            println!("  {} answers {url} with {status}", node.name());
            Ok(())
        }
        _ => Err(format!("{url} did not answer within {API_TIMEOUT:?}")),
    }
}

/// Where the farmer key is, and how to sign a request to a node with it.
fn print_signing(registry: &grove_testbed::registry::Registry, farm: &Farm) {
    let agent = grove_testbed::bin_dir()
        .map(|d| d.join("agent").display().to_string())
        .unwrap_or_else(|_| "agent".to_owned());
    let Some(key) = registry.farmer_key() else {
        println!("farm 1 is owned by {}", registry.farmer());
        return;
    };
    println!(
        "farmer key {} (account {}), owner of farm 1",
        key.display(),
        registry.farmer()
    );
    println!("sign a request to one node with it, for example a reboot:");
    for node in farm.nodes() {
        let (Ok(api), Some(account)) = (node.api_url(), node_account(node)) else {
            continue;
        };
        println!(
            "  {}: eval curl -X POST {api}/v1/reboot $({agent} sign request --key {} --node {account} --path /v1/reboot)",
            node.name(),
            key.display()
        );
    }
}

/// The node's account, once the node knows its farmer (before that, a
/// signed request is answered 503).
fn node_account(node: &Node) -> Option<String> {
    /// The part of the agent's `GET /v1/chain` answer read here.
    #[derive(serde::Deserialize)]
    struct Chain {
        farmer: Option<String>,
        account: Option<String>,
    }
    let url = format!("{}/v1/chain", node.api_url().ok()?);
    let mut account = None;
    wait_until(API_TIMEOUT, Duration::from_millis(250), || {
        account = http_get(&url).ok().and_then(|(_, body)| {
            let chain: Chain = serde_json::from_str(&body).ok()?;
            chain.farmer.and(chain.account)
        });
        account.is_some()
    });
    account
}

fn teardown(mut farm: Farm, code: ExitCode) -> ExitCode {
    match farm.teardown() {
        Ok(()) => {
            println!("farm {} torn down; nothing left behind.", farm.run_id());
            code
        }
        Err(e) => {
            eprintln!("sandbox: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<usize>, String> {
        parse(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags() {
        assert_eq!(args(&[]), Ok(Some(3)));
        assert_eq!(args(&["--nodes", "5"]), Ok(Some(5)));
        assert_eq!(args(&["-n", "1"]), Ok(Some(1)));
        assert_eq!(args(&["--help"]), Ok(None));
        assert!(args(&["--nodes"]).is_err());
        assert!(args(&["--nodes", "x"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
