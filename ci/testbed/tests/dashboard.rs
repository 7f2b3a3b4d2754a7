//! The operator dashboard as a person sees it: a real node, the page
//! rendered by headless Chromium at desktop (1280 px) and phone (390 px)
//! width, with its scripts run against the node's live API.
//!
//! Two nodes whose meshes are set up through netd's socket, plus a third
//! peer nobody runs, so the mesh shows one peer that answers and one that
//! does not. The rendered DOM is checked
//! for what an operator reads (usage, human durations, mesh peers that
//! answer). Its layout is measured in the page, through WebDriver, at both
//! widths: nothing wider than the screen, no label or heading broken inside
//! a word. Both screenshots are copied to the directory
//! `GROVE_DASHBOARD_SHOTS` names, when it is set, to be looked at.

use std::path::Path;
use std::time::Duration;

use std::net::{Ipv6Addr, SocketAddr};

use agent::supervisor::ServiceStatus;
use grove_testbed::browser::Browser;
use grove_testbed::mesh::{self, PeerEntry};
use grove_testbed::{Daemon, Farm, FarmSpec, Node, http_get, unix_put, wait_until};
use serde_json::Value;

fn start(spec: FarmSpec) -> Farm {
    Farm::start_for_test(spec)
}

fn get(node: &Node, path: &str) -> Option<String> {
    let url = format!("{}{path}", node.api_url().expect("a LAN address"));
    match http_get(&url) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// Runs headless Chromium on `url` at `width` × `height` with `extra`
/// arguments; returns its standard output.
fn chromium(dir: &Path, url: &str, width: u32, height: u32, extra: &[&str]) -> String {
    let profile = tempfile::tempdir_in(dir).expect("a browser profile directory");
    let size = format!("--window-size={width},{height}");
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        // Scripts run and the first refresh lands before the page is taken.
        "--virtual-time-budget=8000",
        size.as_str(),
        profile_arg.as_str(),
    ];
    args.extend_from_slice(extra);
    args.push(url);
    grove_testbed::cmd::run("chromium", &args).unwrap_or_else(|e| {
        panic!(
            "chromium (ci/setup installs it): {}",
            grove_testbed::report(&e)
        )
    })
}

/// What is wrong with the page's layout, as the page measures it: wider
/// than its window, or a word of a label, heading or header line laid out
/// on two lines. Long identifiers (`.id`: keys, serials, addresses) may
/// break, as they must on a phone.
const LAYOUT_PROBLEMS: &str = r#"
const problems = [];
const root = document.documentElement;
if (root.scrollWidth > window.innerWidth) {
  problems.push(`the page is ${root.scrollWidth} px wide in a ${window.innerWidth} px window`);
}
for (const el of document.querySelectorAll("h1, h2, th, td:first-child, header .sub")) {
  if (el.closest(".id")) continue;
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest(".id")) continue;
    for (const m of n.data.matchAll(/\S+/g)) {
      const range = document.createRange();
      range.setStart(n, m.index);
      range.setEnd(n, m.index + m[0].length);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) problems.push(`"${m[0]}" in <${el.tagName.toLowerCase()}> is broken across ${lines.size} lines`);
    }
  }
}
return problems;
"#;

/// Opens the dashboard at `width` × `height`, waits for its first refresh
/// to fill the page, and answers what [`LAYOUT_PROBLEMS`] finds.
fn layout_problems(dir: &Path, url: &str, width: u32, height: u32) -> Vec<String> {
    let profile = tempfile::tempdir_in(dir).expect("a browser profile directory");
    let browser = Browser::start(profile.path(), width, height)
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)));
    browser.open(url).expect("the browser opens the dashboard");
    let filled = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        browser
            .eval(
                "return document.getElementById('error').style.display === 'none' \
                 && document.querySelectorAll('#mesh tr').length > 1",
            )
            .is_ok_and(|v| v == Value::Bool(true))
    });
    assert!(filled, "the dashboard did not fill at {width} px");
    let problems = browser
        .eval(LAYOUT_PROBLEMS)
        .expect("the layout is measured");
    serde_json::from_value(problems).expect("a list of problems")
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn the_dashboard_shows_usage_durations_and_mesh_peers_at_desktop_and_phone_width() {
    let farm = start(FarmSpec::nodes(2));
    for n in farm.nodes() {
        let up = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            get(n, "/ready").is_some()
        });
        assert!(up, "{} not ready\n{}", n.name(), farm.logs(60));
    }
    let node = farm.node(0);
    let url = format!("{}/", node.api_url().unwrap());

    // Node 0 has node 1 and a ghost as peers; node 1 has node 0.
    let keys: Vec<mesh::Keys> = (0..3).map(|_| mesh::keys().unwrap()).collect();
    let entry = |i: usize| PeerEntry {
        public_key: keys[i].public.clone(),
        endpoint: SocketAddr::from((farm.node(i).lan_ip().unwrap(), mesh::PORT)),
        public_endpoint: true,
    };
    let ghost = PeerEntry {
        public_key: keys[2].public.clone(),
        endpoint: SocketAddr::from((farm.node(1).lan_ip().unwrap(), mesh::PORT + 1)),
        public_endpoint: true,
    };
    let put = |n: &Node, path: &str, body: String| {
        let socket = n.socket(Daemon::Netd).unwrap();
        let (status, answer) = unix_put(&socket, path, body.as_bytes()).unwrap();
        assert_eq!(status, 200, "PUT {path} on {}: {answer}", n.name());
    };
    for (i, peers) in [vec![entry(1), ghost], vec![entry(0)]]
        .into_iter()
        .enumerate()
    {
        put(farm.node(i), "/v1/mesh", mesh::mesh_body(&keys[i], true));
        put(farm.node(i), "/v1/mesh/peers", mesh::peers_body(&peers));
    }
    let mesh_view = |n: &Node| -> Option<Value> {
        get(n, "/v1/mesh").and_then(|b| serde_json::from_str(&b).ok())
    };
    let other: Ipv6Addr = mesh_view(farm.node(1))
        .and_then(|v| v["address"].as_str()?.parse().ok())
        .expect("node 1 has a mesh address");
    // Traffic makes the handshake.
    let pinged = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        mesh::ping(node, other, Duration::from_secs(1)).is_ok_and(|hops| hops.is_some())
    });
    assert!(
        pinged,
        "node 0 cannot reach node 1 over the mesh\n{}",
        farm.logs(60)
    );

    // The live facts the page will show: one peer has answered, and every
    // daemon has a CPU sample.
    let settled = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let answered = mesh_view(node).is_some_and(|m| {
            m["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["latest_handshake_secs_ago"].is_u64()))
        });
        let services: Vec<ServiceStatus> = get(node, "/v1/services")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        let sampled = services.len() == 3
            && services.iter().all(|s| {
                s.usage
                    .is_some_and(|u| u.cpu_percent.is_some() && u.rss_bytes > 0)
            });
        answered && sampled
    });
    assert!(
        settled,
        "no answering mesh peer or no usage samples\n{}",
        farm.logs(60)
    );

    let dom = chromium(farm.dir(), &url, 1280, 900, &["--dump-dom"]);
    for want in [
        // Mesh peers with their last handshake, and whether they answer.
        "<h2>Mesh</h2>",
        "class=\"answers\">answers</span>",
        "class=\"silent\">silent</span>",
        "handshake ",
        "no handshake yet",
        "1 of 2 answer",
        // CPU and memory of the node and of each daemon.
        " busy</div>",
        " used<div class=\"bar\">",
        // What deployments hold, from provisiond.
        "<h2>Deployments</h2>",
        "<td>by state</td><td>none</td>",
        "<td>WireGuard ports</td><td>none</td>",
        "<td class=\"num\">",
        "&nbsp;%",
        "MiB",
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    // A refresh that worked hides the error banner.
    assert!(
        dom.contains("<div id=\"error\" style=\"display: none;\"></div>"),
        "the page could not read the API:\n{dom}"
    );
    // Durations are human: the node's uptime reads like "2 h 5 min" or
    // "42 s", never a bare count of seconds past a minute.
    let uptime = dom
        .split("<td>uptime</td><td>")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_else(|| panic!("no uptime row:\n{dom}"));
    let number: String = uptime.chars().take_while(char::is_ascii_digit).collect();
    let unit = uptime[number.len()..].trim_start_matches("&nbsp;");
    assert!(!number.is_empty(), "uptime {uptime:?}");
    assert!(
        ["d", "h", "min", "s"].iter().any(|u| unit.starts_with(u)),
        "uptime {uptime:?}"
    );
    if unit.starts_with('s') {
        assert!(number.parse::<u64>().unwrap() < 60, "uptime {uptime:?}");
    }

    // Laid out as a person reads it, on a phone and on a desktop.
    for (width, height) in [(390, 844), (1280, 900)] {
        let problems = layout_problems(farm.dir(), &url, width, height);
        assert!(problems.is_empty(), "at {width} px: {problems:#?}");
    }

    // The screenshots are kept for a person to read.
    let shot = farm.dir().join("dashboard-phone.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(farm.dir(), &url, 390, 2200, &[shot_arg.as_str()]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(png_size(&png), (390, 2200));
    let desktop = farm.dir().join("dashboard-desktop.png");
    let desktop_arg = format!("--screenshot={}", desktop.display());
    chromium(farm.dir(), &url, 1280, 1000, &[desktop_arg.as_str()]);
    assert_eq!(png_size(&std::fs::read(&desktop).unwrap()), (1280, 1000));
    if let Some(keep) = std::env::var_os("GROVE_DASHBOARD_SHOTS") {
        for shot in [&shot, &desktop] {
            let to = Path::new(&keep).join(shot.file_name().unwrap());
            std::fs::copy(shot, &to).unwrap();
            eprintln!("screenshot kept at {}", to.display());
        }
    }
}
