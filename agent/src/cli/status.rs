//! `agent status --node URL`: a node's status as a table, from its operator
//! API.

use std::fmt::Write;

use grove_daemon::client::{ClientError, SocketClient};

use crate::api::NodeReport;
use crate::operator::capacity::{NodeCapacity, Resource};
use crate::operator::status::StatusReport;
use crate::supervisor::ServiceStatus;

/// Why the status could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0:?} is not a node address: give http://HOST:PORT or HOST:PORT")]
    BadUrl(String),
    #[error(transparent)]
    Fetch(#[from] ClientError),
}

/// What the table is made from.
#[derive(Debug)]
pub struct NodeView {
    pub address: String,
    pub status: StatusReport,
    pub node: NodeReport,
    pub services: Vec<ServiceStatus>,
    pub capacity: NodeCapacity,
    pub chain: crate::chain::ChainStatus,
}

/// `host:port` from `http://host:port[/]` or `host:port`.
pub fn parse_address(url: &str) -> Result<String, StatusError> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let ok = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !rest.contains('/');
    if ok {
        Ok(rest.to_owned())
    } else {
        Err(StatusError::BadUrl(url.to_owned()))
    }
}

/// Asks the node at `url` for everything the table shows.
pub async fn fetch(url: &str) -> Result<NodeView, StatusError> {
    let address = parse_address(url)?;
    let client = SocketClient::tcp(&address).with_timeout(std::time::Duration::from_secs(5));
    let (status, node, services, capacity, chain) = tokio::try_join!(
        client.get::<StatusReport>("/v1/status"),
        client.get::<NodeReport>("/v1/node"),
        client.get::<Vec<ServiceStatus>>("/v1/services"),
        client.get::<NodeCapacity>("/v1/capacity"),
        client.get::<crate::chain::ChainStatus>("/v1/chain"),
    )?;
    Ok(NodeView {
        address,
        status,
        node,
        services,
        capacity,
        chain,
    })
}

/// The node on the registry, one line each.
fn chain_lines(out: &mut String, c: &crate::chain::ChainStatus, now: u64) {
    let or = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_owned());
    let backend = c
        .backend
        .map(|b| format!("{b:?}").to_lowercase())
        .unwrap_or_else(|| "none".into());
    let reachable = if c.connected {
        "connected".to_owned()
    } else {
        match c.unreachable_since {
            Some(since) => format!("unreachable for {} s", now.saturating_sub(since)),
            None => "not connected yet".to_owned(),
        }
    };
    let last = c
        .last_report_at
        .map(|at| format!("{} s ago", now.saturating_sub(at)))
        .unwrap_or_else(|| "none yet".into());
    for (k, val) in [
        (
            "registry",
            format!("{backend} {} ({reachable})", or(c.url.clone(), "-")),
        ),
        (
            "node id",
            or(c.node_id.map(|n| n.to_string()), "not registered"),
        ),
        ("twin", or(c.twin_id.map(|n| n.to_string()), "-")),
        ("farmer", or(c.farmer.clone(), "unknown")),
        ("funds", c.funds.clone()),
        (
            "reports",
            format!("{} queued, last delivered {last}", c.queue_length),
        ),
        (
            "clock",
            c.clock_skew_secs
                .map(|s| format!("{s} s off the chain's"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("refusal", or(c.refusal.clone(), "-")),
    ] {
        let _ = writeln!(out, "{k:<10}{val}");
    }
}

fn gib(n: u64) -> String {
    format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30))
}

/// The table.
pub fn render(v: &NodeView) -> String {
    let mut out = String::new();
    let account = v.status.account.as_deref().unwrap_or("(not loaded yet)");
    let state = format!("{:?}", v.status.state).to_lowercase();
    let farm = v
        .node
        .boot
        .params
        .farm_id
        .map(|f| f.to_string())
        .unwrap_or_else(|| "not set".into());
    for (k, val) in [
        ("node", v.address.as_str()),
        ("state", state.as_str()),
        ("account", account),
        ("farm", farm.as_str()),
        ("hostname", v.node.host.hostname.as_str()),
        ("kernel", v.node.host.kernel.as_str()),
    ] {
        let _ = writeln!(out, "{k:<10}{val}");
    }
    let _ = writeln!(out, "{:<10}{} s", "uptime", v.status.uptime_secs);
    if v.status.reasons.is_empty() {
        let _ = writeln!(out, "{:<10}-", "reasons");
    }
    for (i, r) in v.status.reasons.iter().enumerate() {
        let _ = writeln!(out, "{:<10}{r}", if i == 0 { "reasons" } else { "" });
    }
    let _ = writeln!(out);
    chain_lines(&mut out, &v.chain, crate::clock::unix_ms() / 1000);
    let _ = writeln!(
        out,
        "\n{:<12}{:<10}{:>8}{:>10}  LAST EXIT",
        "SERVICE", "STATE", "PID", "RESTARTS"
    );
    for s in &v.services {
        let _ = writeln!(
            out,
            "{:<12}{:<10}{:>8}{:>10}  {}",
            s.name,
            format!("{:?}", s.state).to_lowercase(),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.restarts,
            s.last_exit
                .as_ref()
                .map(|e| e.reason.as_str())
                .unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<10}{:>12}{:>12}{:>12}{:>12}",
        "RESOURCE", "TOTAL", "RESERVED", "USED", "FREE"
    );
    let row = |out: &mut String, name: &str, r: Resource, fmt: &dyn Fn(u64) -> String| {
        let _ = writeln!(
            out,
            "{name:<10}{:>12}{:>12}{:>12}{:>12}",
            fmt(r.total),
            fmt(r.reserved),
            fmt(r.used),
            fmt(r.free)
        );
    };
    row(&mut out, "cru", v.capacity.cru, &|n| n.to_string());
    row(&mut out, "mru", v.capacity.mru, &gib);
    row(&mut out, "sru", v.capacity.sru, &gib);
    row(&mut out, "hru", v.capacity.hru, &gib);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lines_say_what_is_wrong() {
        let c = crate::chain::ChainStatus {
            backend: Some(crate::boot::ChainBackend::Tfchain),
            url: Some("ws://chain:9944".into()),
            unreachable_since: Some(100),
            funds: "waiting for funds: send at least 1 TFT to 5Node".into(),
            queue_length: 3,
            clock_skew_secs: Some(-600),
            refusal: Some("TFChain refuses a node with less than 100 GiB of SSD".into()),
            ..Default::default()
        };
        let mut out = String::new();
        chain_lines(&mut out, &c, 160);
        for needle in [
            "tfchain ws://chain:9944 (unreachable for 60 s)",
            "not registered",
            "send at least 1 TFT to 5Node",
            "3 queued, last delivered none yet",
            "-600 s off the chain's",
            "100 GiB of SSD",
        ] {
            assert!(out.contains(needle), "{needle} missing from {out}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("http://10.0.0.5:8080").expect("ok"),
            "10.0.0.5:8080"
        );
        assert_eq!(
            parse_address("http://10.0.0.5:8080/").expect("ok"),
            "10.0.0.5:8080"
        );
        assert_eq!(parse_address("node1:80").expect("ok"), "node1:80");
        for bad in [
            "",
            "http://",
            "10.0.0.5",
            "http://10.0.0.5:x",
            "https://a:1",
            "a:1/v1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
