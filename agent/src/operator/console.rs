//! The status screen on the node's own consoles.
//!
//! A farmer's first look at a node is its screen. When the agent is the
//! machine's init, it keeps a screen of at most 80×25 up to date on the
//! first virtual terminal (redrawn in place) and prints it on each serial
//! console when something on it changes (a serial log scrolls, so it is not
//! redrawn every few seconds). It says who the node is, whether it is well
//! and, when it is not, the first things to look at and where the operator
//! API answers.
//!
//! [`render`] is a pure function of a [`View`], so the layout's limits are
//! unit-tested; [`show_forever`] writes it to the consoles, off the async
//! workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::operator::status::NodeState;

/// The screen's size: what every console can show.
pub const COLUMNS: usize = 80;
pub const ROWS: usize = 25;

/// How often the screen is made again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// What the screen shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub version: String,
    pub hostname: String,
    pub state: Option<NodeState>,
    pub reasons: Vec<String>,
    pub node_id: Option<u32>,
    pub farm_id: Option<u32>,
    pub twin_id: Option<u32>,
    pub account: Option<String>,
    /// The farm LAN address, `10.0.0.5/24`, and the NIC it is on.
    pub address: Option<String>,
    pub nic: Option<String>,
    pub gateway: Option<String>,
    /// The operator API's URL, once the node has an address.
    pub api: Option<String>,
    /// One line per disk kind: `SSD  3.9 GiB, 3.1 GiB free`.
    pub storage: Vec<String>,
    /// `(name, state)` of each supervised daemon.
    pub services: Vec<(String, String)>,
}

/// The screen for `view`: at most [`ROWS`] lines of at most [`COLUMNS`]
/// characters, each line ending in `\n`.
pub fn render(view: &View) -> String {
    let mut lines: Vec<String> = Vec::new();
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
    let id = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    lines.push(format!(
        "Grove {}  {}",
        view.version,
        if view.hostname.is_empty() {
            "node"
        } else {
            &view.hostname
        }
    ));
    lines.push("=".repeat(COLUMNS));
    let state = match view.state {
        Some(NodeState::Ready) => "READY",
        Some(NodeState::Booting) => "BOOTING",
        Some(NodeState::Degraded) => "DEGRADED",
        None => "STARTING",
    };
    lines.push(format!("State     {state}"));
    lines.push(format!(
        "Node      {}   farm {}   twin {}",
        id(view.node_id),
        id(view.farm_id),
        id(view.twin_id)
    ));
    lines.push(format!("Account   {}", dash(&view.account)));
    lines.push(format!(
        "Address   {} on {}   gateway {}",
        dash(&view.address),
        dash(&view.nic),
        dash(&view.gateway)
    ));
    lines.push(format!(
        "API       {}",
        view.api
            .as_deref()
            .unwrap_or("not yet: the node has no address on the farm LAN")
    ));
    lines.push(String::new());
    lines.push("Storage".to_owned());
    if view.storage.is_empty() {
        lines.push("  no pools yet".to_owned());
    }
    lines.extend(view.storage.iter().map(|s| format!("  {s}")));
    lines.push(String::new());
    let services: Vec<String> = view
        .services
        .iter()
        .map(|(name, state)| format!("{name} {state}"))
        .collect();
    lines.push(format!("Services  {}", services.join("  ")));
    lines.push(String::new());

    // What to do: the reasons, as many as fit, then where to read more.
    let footer = match (&view.state, &view.api) {
        (Some(NodeState::Ready), Some(api)) => format!("Operators: {api}/ from the farm LAN"),
        (_, Some(api)) => format!("More: {api}/v1/status and /v1/services"),
        (_, None) => "Check the NIC's cable and the farm LAN's DHCP server.".to_owned(),
    };
    let room = ROWS.saturating_sub(lines.len() + 2);
    if view.reasons.is_empty() {
        lines.push("Nothing needs attention.".to_owned());
    } else {
        lines.push("Needs attention:".to_owned());
        let shown = if view.reasons.len() > room.saturating_sub(1) {
            room.saturating_sub(2)
        } else {
            view.reasons.len()
        };
        lines.extend(view.reasons.iter().take(shown).map(|r| format!("  - {r}")));
        if shown < view.reasons.len() {
            lines.push(format!("  ... and {} more", view.reasons.len() - shown));
        }
    }
    lines.truncate(ROWS - 1);
    lines.push(footer);

    let mut screen = String::new();
    for line in lines {
        screen.push_str(&fit(&line));
        screen.push('\n');
    }
    screen
}

/// `line` cut to [`COLUMNS`] characters, with `...` where it was cut.
fn fit(line: &str) -> String {
    if line.chars().count() <= COLUMNS {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(COLUMNS - 3).collect();
    cut.push_str("...");
    cut
}

/// A place the screen goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    /// A virtual terminal: cleared and redrawn in place.
    Terminal(PathBuf),
    /// A serial console: the screen printed again when it changes.
    Serial(PathBuf),
}

/// The consoles of this machine: the first virtual terminal when there is
/// one, and each serial console the kernel writes to (`console=ttyS0`),
/// from `/sys/class/tty/console/active`.
pub fn outputs(sys: &Path, dev: &Path) -> Vec<Output> {
    let mut out = Vec::new();
    if dev.join("tty1").exists() && sys.join("class/tty/tty1").exists() {
        out.push(Output::Terminal(dev.join("tty1")));
    }
    let active = std::fs::read_to_string(sys.join("class/tty/console/active")).unwrap_or_default();
    for name in active.split_whitespace() {
        if name.starts_with("ttyS") || name.starts_with("ttyAMA") || name.starts_with("hvc") {
            out.push(Output::Serial(dev.join(name)));
        }
    }
    out
}

/// Writes `screen` to `output`: a terminal is cleared first.
fn write(output: &Output, screen: &str) -> std::io::Result<()> {
    use std::io::Write;
    let (path, text) = match output {
        Output::Terminal(path) => (path, format!("\x1b[H\x1b[2J{screen}")),
        Output::Serial(path) => (path, format!("\n{screen}\n")),
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Keeps the screen on this machine's consoles ([`outputs`]): made from
/// `view` every [`REFRESH`], written when it changed.
pub async fn show_forever(view: impl Fn() -> View + Send + 'static) {
    let outputs = tokio::task::spawn_blocking(|| outputs(Path::new("/sys"), Path::new("/dev")))
        .await
        .unwrap_or_default();
    tracing::info!(?outputs, "status screen");
    let mut last = String::new();
    let mut failed = std::collections::BTreeSet::new();
    loop {
        let screen = render(&view());
        if screen != last {
            let (outs, text) = (outputs.clone(), screen.clone());
            let results = tokio::task::spawn_blocking(move || {
                outs.iter()
                    .map(|o| (o.clone(), write(o, &text)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (output, result) in results {
                match result {
                    Ok(()) => {
                        failed.remove(&output);
                    }
                    Err(e) if failed.insert(output.clone()) => {
                        tracing::warn!(?output, error = %e, "cannot write the status screen");
                    }
                    Err(_) => {}
                }
            }
            last = screen;
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> View {
        View {
            version: "0.1.0".into(),
            hostname: "grove".into(),
            state: Some(NodeState::Ready),
            reasons: Vec::new(),
            node_id: Some(17),
            farm_id: Some(1),
            twin_id: Some(23),
            account: Some("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into()),
            address: Some("10.77.0.10/24".into()),
            nic: Some("eth0".into()),
            gateway: Some("10.77.0.1".into()),
            api: Some("http://10.77.0.10:8080".into()),
            storage: vec!["SSD  4.0 GiB, 3.1 GiB free".into()],
            services: vec![
                ("storaged".into(), "ready".into()),
                ("netd".into(), "ready".into()),
            ],
        }
    }

    fn within_limits(screen: &str) {
        let lines: Vec<&str> = screen.lines().collect();
        assert!(lines.len() <= ROWS, "{} lines:\n{screen}", lines.len());
        for line in lines {
            assert!(line.chars().count() <= COLUMNS, "too wide: {line:?}");
        }
    }

    #[test]
    fn a_ready_node_shows_who_it_is_and_where_its_api_answers() {
        let screen = render(&ready());
        within_limits(&screen);
        for text in [
            "Grove 0.1.0  grove",
            "State     READY",
            "Node      17   farm 1   twin 23",
            "Address   10.77.0.10/24 on eth0   gateway 10.77.0.1",
            "API       http://10.77.0.10:8080",
            "  SSD  4.0 GiB, 3.1 GiB free",
            "Services  storaged ready  netd ready",
            "Nothing needs attention.",
            "Operators: http://10.77.0.10:8080/ from the farm LAN",
        ] {
            assert!(screen.contains(text), "no {text:?} in\n{screen}");
        }
    }

    #[test]
    fn a_node_with_many_problems_still_fits_and_says_how_many_are_left_out() {
        let mut view = ready();
        view.state = Some(NodeState::Degraded);
        view.reasons = (0..40)
            .map(|i| format!("problem {i}: {}", "x".repeat(120)))
            .collect();
        view.storage = (0..3).map(|i| format!("pool {i}")).collect();
        let screen = render(&view);
        within_limits(&screen);
        assert!(screen.contains("State     DEGRADED"), "{screen}");
        assert!(screen.contains("  - problem 0: xxx"), "{screen}");
        assert!(screen.contains("more"), "{screen}");
        assert!(
            screen.trim_end().ends_with("/v1/status and /v1/services"),
            "{screen}"
        );
    }

    #[test]
    fn a_node_without_an_address_says_what_to_check() {
        let view = View {
            version: "0.1.0".into(),
            reasons: vec!["netd is starting".into()],
            ..View::default()
        };
        let screen = render(&view);
        within_limits(&screen);
        for text in [
            "State     STARTING",
            "Node      -   farm -   twin -",
            "API       not yet",
            "no pools yet",
            "  - netd is starting",
            "Check the NIC's cable and the farm LAN's DHCP server.",
        ] {
            assert!(screen.contains(text), "no {text:?} in\n{screen}");
        }
    }

    #[test]
    fn the_consoles_are_the_first_terminal_and_the_active_serial_ones() {
        let root = tempfile::tempdir().unwrap();
        let (sys, dev) = (root.path().join("sys"), root.path().join("dev"));
        std::fs::create_dir_all(sys.join("class/tty/console")).unwrap();
        std::fs::create_dir_all(sys.join("class/tty/tty1")).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("tty1"), "").expect("tty1");
        std::fs::write(sys.join("class/tty/console/active"), "tty0 ttyS0\n").expect("active");
        assert_eq!(
            outputs(&sys, &dev),
            [
                Output::Terminal(dev.join("tty1")),
                Output::Serial(dev.join("ttyS0"))
            ]
        );
        std::fs::write(sys.join("class/tty/console/active"), "tty0\n").expect("active");
        assert_eq!(outputs(&sys, &dev), [Output::Terminal(dev.join("tty1"))]);
    }

    #[test]
    fn the_screen_is_written_and_a_terminal_is_cleared_first() {
        let root = tempfile::tempdir().unwrap();
        let (tty, serial) = (root.path().join("tty1"), root.path().join("ttyS0"));
        std::fs::write(&tty, "").expect("tty1");
        std::fs::write(&serial, "").expect("ttyS0");
        write(&Output::Terminal(tty.clone()), "screen\n").unwrap();
        write(&Output::Serial(serial.clone()), "screen\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&tty).unwrap(),
            "\x1b[H\x1b[2Jscreen\n"
        );
        assert_eq!(std::fs::read_to_string(&serial).unwrap(), "\nscreen\n\n");
        let missing = write(&Output::Serial(root.path().join("ttyS9")), "screen\n");
        assert!(missing.is_err());
    }
}
