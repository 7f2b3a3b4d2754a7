//! The image benchmark: the boot image booted under QEMU (TCG) by each path
//! a farmer uses, from QEMU's start to the operator API answering, against
//! the floor.
//!
//! Each run boots the floor (the same kernel with the busybox `/init` that
//! `image/build` writes as `floor-initramfs`: it prints a line and powers
//! off), then the image directly (`-kernel`), then from its USB stick and
//! from the network (PXE, iPXE) under OVMF and under SeaBIOS, on the same
//! farm LAN with the farm's registry,
//! and times each from QEMU's start: the floor to its line on the serial
//! console, the image to `/v1/status` answering 200 and to `ready`. It
//! also prints the image's sizes from the build's manifest. Limits: the ISO
//! is not timed (it boots as the stick does), and QEMU's own start is in
//! every number.

use std::path::Path;
use std::time::{Duration, Instant};

use super::stats::{ms, summary};
use crate::qemu::{BootImage, BootPath, MachineSpec, Medium, QemuError, QemuNode};
use crate::registry::{Registry, RegistryError};
use crate::spec::FarmSpec;
use crate::{Farm, http};

/// What the issue asks: the direct boot within the floor plus this.
pub const OVER_FLOOR_TARGET: Duration = Duration::from_secs(4);
/// What the issue asks of the compressed initramfs, bytes.
pub const INITRAMFS_TARGET: u64 = 40_000_000;
/// The line the floor's `/init` prints.
const FLOOR_LINE: &str = "grove-floor: userspace";
/// How long one boot may take before the run fails.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum ImageBenchError {
    #[error(transparent)]
    Testbed(#[from] crate::TestbedError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{what} did not happen within {BOOT_LIMIT:?}\n{logs}")]
    Timeout { what: &'static str, logs: String },
    #[error("cannot lay out the daemons as one program in {dir}: {source}")]
    OneProgram {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The paths each run boots the image by, after the floor.
const PATHS: [&str; 5] = [
    "direct kernel",
    "UEFI, grove.img",
    "BIOS, grove.img",
    "UEFI, PXE",
    "BIOS, PXE",
];

/// One run's measurements: the floor, then per path (in [`PATHS`] order)
/// the API answering and `ready`.
#[derive(Debug, Clone)]
struct Run {
    floor: Duration,
    api: [Duration; PATHS.len()],
    ready: [Duration; PATHS.len()],
    /// The direct path's node once idle.
    idle: Option<Idle>,
    /// The direct path's boot, step by step (see [`MILESTONES`]).
    timeline: Vec<(String, Option<Duration>)>,
}

/// How long a node that became ready is left alone before its memory is
/// read.
const IDLE_AFTER: Duration = Duration::from_secs(15);

/// Memory of an idle node, as its operator API reports it.
#[derive(Debug, Clone, Default)]
struct Idle {
    /// The machine's memory not available (`/v1/node`): kernel, the
    /// unpacked initramfs, page cache that cannot be dropped, processes.
    used: u64,
    /// Each supervised daemon's resident set (`/v1/services`).
    daemons: Vec<(String, u64)>,
}

/// Reads the memory of the node whose API is `api` (`http://IP:8080`).
fn idle_memory(api: &str) -> Option<Idle> {
    let get = |path: &str| -> Option<serde_json::Value> {
        let (code, body) =
            http::http_get_timeout(&format!("{api}{path}"), Duration::from_secs(5)).ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let node = get("/v1/node")?;
    let memory = &node["memory"];
    let used = memory["total_bytes"].as_u64()? - memory["available_bytes"].as_u64()?;
    let agent = node["agent"]["rss_bytes"]
        .as_u64()
        .map(|rss| ("agent".to_owned(), rss));
    let daemons = agent
        .into_iter()
        .chain(get("/v1/services")?.as_array()?.iter().filter_map(|s| {
            Some((
                s["name"].as_str()?.to_owned(),
                s["usage"]["rss_bytes"].as_u64()?,
            ))
        }))
        .collect();
    Some(Idle { used, daemons })
}

/// The same processes of a testbed node (namespaces on this host),
/// [`IDLE_AFTER`] after its agent said ready: each one's resident set.
/// The daemons run as in the image, links to one `grove` (from beside this
/// program): a resident set counts each page of a shared binary once per
/// process, so four separate binaries would not compare.
fn testbed_idle() -> Result<Vec<(String, u64)>, ImageBenchError> {
    let bins = crate::bin_dir().map_err(crate::TestbedError::from)?;
    let dir = bins.join("one-program");
    let lay_out = || -> std::io::Result<()> {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir(&dir)?;
        // A copy, not a link: the agent starts the daemons it finds beside
        // its own executable.
        std::fs::copy(bins.join("grove"), dir.join("grove"))?;
        for daemon in ["agent", "netd", "storaged", "provisiond"] {
            std::os::unix::fs::symlink("grove", dir.join(daemon))?;
        }
        Ok(())
    };
    lay_out().map_err(|source| ImageBenchError::OneProgram {
        dir: dir.clone(),
        source,
    })?;
    let mut farm = Farm::start(FarmSpec::nodes(1).bin_dir(&dir))?;
    let node = farm.node(0);
    let socket = node
        .socket(crate::Daemon::Agent)
        .map_err(crate::TestbedError::from)?;
    let ready = crate::wait_until(BOOT_LIMIT, Duration::from_millis(100), || {
        matches!(http::unix_get(&socket, "/ready"), Ok((200, _)))
    });
    if !ready {
        return Err(ImageBenchError::Timeout {
            what: "the testbed node's ready",
            logs: String::new(),
        });
    }
    std::thread::sleep(IDLE_AFTER);
    let agent = node.agent_pid().ok_or(ImageBenchError::Timeout {
        what: "the testbed node's agent",
        logs: String::new(),
    })?;
    let mut rss = vec![("agent".to_owned(), crate::proc::rss_kib(agent) * 1024)];
    for child in crate::proc::descendants(agent) {
        let name = std::fs::read_to_string(format!("/proc/{}/comm", child.pid)).unwrap_or_default();
        rss.push((
            name.trim().to_owned(),
            crate::proc::rss_kib(child.pid) * 1024,
        ));
    }
    farm.teardown()?;
    Ok(rss)
}

/// Runs the benchmark and prints the report.
pub fn run(runs: usize) -> Result<(), ImageBenchError> {
    let image = BootImage::for_test()?;
    let dir = image.dir.clone();
    let floor_image = BootImage {
        initramfs: dir.join("floor-initramfs"),
        ..image.clone()
    };
    let mut farm = Farm::start(FarmSpec::with_nodes(Vec::new()).without_agents())?;
    let port = free_port(farm.host_ip());
    let registry = Registry::start(&farm, port, None)?;
    let params = format!("grove.farm=1 grove.chain.url={}", registry.url());
    let stick = farm.dir().join("grove.img");
    image.usb_stick(&stick, &params)?;
    image.pxe_root(&farm.lan(0).tftp_dir(), &params)?;
    let direct = MachineSpec {
        cmdline: params,
        ..MachineSpec::default()
    };
    let specs = [
        direct.clone(),
        MachineSpec {
            boot: BootPath::Uefi(Medium::Stick(stick.clone())),
            ..direct.clone()
        },
        MachineSpec {
            boot: BootPath::Bios(Medium::Stick(stick)),
            ..direct.clone()
        },
        MachineSpec {
            boot: BootPath::Uefi(Medium::Network),
            ..direct.clone()
        },
        MachineSpec {
            boot: BootPath::Bios(Medium::Network),
            ..direct.clone()
        },
    ];
    let mut results = Vec::new();
    for i in 0..runs {
        let first = (PATHS.len() + 1) * i;
        let floor = boot_floor(&farm, first, &floor_image, &direct)?;
        let mut run = Run {
            floor,
            api: [Duration::ZERO; PATHS.len()],
            ready: [Duration::ZERO; PATHS.len()],
            idle: None,
            timeline: Vec::new(),
        };
        let mut line = format!("  run {}: floor {:.2} s", i + 1, floor.as_secs_f64());
        for (k, spec) in specs.iter().enumerate() {
            let boot = boot_image(&farm, first + 1 + k, &image, spec, k == 0)?;
            run.api[k] = boot.api;
            run.ready[k] = boot.ready;
            if k == 0 {
                run.idle = boot.idle;
                run.timeline = timeline(&boot.console, boot.api);
            }
            let (api, ready) = (boot.api, boot.ready);
            line.push_str(&format!(
                "; {}: API {:.2} s, ready {:.2} s",
                PATHS[k],
                api.as_secs_f64(),
                ready.as_secs_f64()
            ));
        }
        eprintln!("{line}");
        results.push(run);
    }
    drop(registry);
    farm.teardown()?;
    let testbed = testbed_idle()?;
    report(&results, &dir, &testbed);
    Ok(())
}

fn free_port(ip: std::net::Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18800)
}

/// QEMU's start to the floor's line on the console.
fn boot_floor(
    farm: &Farm,
    index: usize,
    image: &BootImage,
    spec: &MachineSpec,
) -> Result<Duration, ImageBenchError> {
    let started = Instant::now();
    let mut node = QemuNode::boot(farm, index, image, spec)?;
    let printed = crate::wait_until(BOOT_LIMIT, Duration::from_millis(20), || {
        std::fs::read_to_string(node.console_log()).is_ok_and(|t| t.contains(FLOOR_LINE))
    });
    let took = started.elapsed();
    if !printed {
        return Err(ImageBenchError::Timeout {
            what: "the floor's line",
            logs: node.logs(30),
        });
    }
    node.stop()?;
    Ok(took)
}

/// One boot of the image, timed from QEMU's start.
struct Boot {
    /// To `/v1/status` answering.
    api: Duration,
    /// To `/v1/status` saying `ready`.
    ready: Duration,
    /// The node's memory [`IDLE_AFTER`] after it became ready, when asked.
    idle: Option<Idle>,
    /// Its console's lines, each with when it appeared.
    console: Vec<(Duration, String)>,
}

/// Boots `image` by `spec` and times it; when `idle` asks, also reads the
/// node's memory once it has been idle.
fn boot_image(
    farm: &Farm,
    index: usize,
    image: &BootImage,
    spec: &MachineSpec,
    idle: bool,
) -> Result<Boot, ImageBenchError> {
    let started = Instant::now();
    let mut node = QemuNode::boot(farm, index, image, spec)?;
    let clock = ConsoleClock::start(node.console_log(), started);
    let mut lease = None;
    let answered = crate::wait_until(BOOT_LIMIT, Duration::from_millis(20), || {
        if lease.is_none() {
            lease = node.lease(farm.lan(0));
        }
        // A connection to an address not yet on the node waits for ARP:
        // short tries keep that wait out of the number, and only a
        // connection made is asked the full question.
        lease.is_some_and(|ip| {
            let api = std::net::SocketAddr::from((ip, 8080));
            std::net::TcpStream::connect_timeout(&api, Duration::from_millis(50)).is_ok()
                && matches!(
                    http::http_get_timeout(
                        &format!("http://{api}/v1/status"),
                        Duration::from_secs(2)
                    ),
                    Ok((200, _))
                )
        })
    });
    let url = lease.map(|ip| format!("http://{ip}:8080/v1/status"));
    let api = started.elapsed();
    let logs = |node: &QemuNode| node.logs(30);
    let Some(url) = url.filter(|_| answered) else {
        return Err(ImageBenchError::Timeout {
            what: "the operator API",
            logs: logs(&node),
        });
    };
    let ready = crate::wait_until(BOOT_LIMIT, Duration::from_millis(50), || {
        http::http_get_timeout(&url, Duration::from_millis(500))
            .is_ok_and(|(code, body)| code == 200 && body.contains("\"state\":\"ready\""))
    });
    let ready_after = started.elapsed();
    if !ready {
        return Err(ImageBenchError::Timeout {
            what: "ready",
            logs: logs(&node),
        });
    }
    let memory = if idle {
        std::thread::sleep(IDLE_AFTER);
        idle_memory(url.trim_end_matches("/v1/status"))
    } else {
        None
    };
    let console = clock.lines();
    node.stop()?;
    Ok(Boot {
        api,
        ready: ready_after,
        idle: memory,
        console,
    })
}

fn report(results: &[Run], dir: &Path, testbed: &[(String, u64)]) {
    let mut floor: Vec<Duration> = results.iter().map(|r| r.floor).collect();
    let (floor50, floor90) = summary(&mut floor);
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let secs = |d: Duration| ms(d) / 1000.0;
    eprintln!(
        "image benchmark: {} runs under QEMU TCG (release daemons), each path after the floor",
        results.len()
    );
    eprintln!(
        "  floor, same kernel, busybox /init prints: median {:.2} s, p90 {:.2} s",
        secs(floor50),
        secs(floor90)
    );
    for (k, path) in PATHS.iter().enumerate() {
        let mut api: Vec<Duration> = results.iter().map(|r| r.api[k]).collect();
        let mut ready: Vec<Duration> = results.iter().map(|r| r.ready[k]).collect();
        let (api50, api90) = summary(&mut api);
        let (ready50, ready90) = summary(&mut ready);
        // The target is for the direct path.
        let target = if k == 0 {
            format!(
                "; target floor + {} s: {}",
                OVER_FLOOR_TARGET.as_secs(),
                verdict(api50 <= floor50 + OVER_FLOOR_TARGET)
            )
        } else {
            String::new()
        };
        eprintln!(
            "  {path}: QEMU start -> operator API answers: median {:.2} s, p90 {:.2} s; floor + {:.2} s, {:.2}x the floor{target}",
            secs(api50),
            secs(api90),
            secs(api50.saturating_sub(floor50)),
            api50.as_secs_f64() / floor50.as_secs_f64().max(1e-9),
        );
        eprintln!(
            "  {path}: QEMU start -> /v1/status ready (pools made, registered): median {:.2} s, p90 {:.2} s",
            secs(ready50),
            secs(ready90)
        );
        if k == 0 {
            // Each run against its own floor: how far the median above
            // is from the runs' noise.
            let mut over: Vec<Duration> = results
                .iter()
                .map(|r| r.api[k].saturating_sub(r.floor))
                .collect();
            let each: Vec<String> = over.iter().map(|d| format!("{:.2}", secs(*d))).collect();
            let (over50, _) = summary(&mut over);
            eprintln!(
                "  {path}, run by run against its own floor: + {} s; median + {:.2} s: {}",
                each.join(", + "),
                secs(over50),
                verdict(over50 <= OVER_FLOOR_TARGET)
            );
        }
    }
    if let Some(last) = results.last() {
        eprintln!(
            "  direct path, step by step (the last run; from QEMU's start, and since the step before):"
        );
        let mut before = Duration::ZERO;
        for (label, at) in &last.timeline {
            match at {
                Some(at) => {
                    eprintln!(
                        "    {:>6.2} s  +{:>5.2} s  {label}",
                        secs(*at),
                        secs(at.saturating_sub(before))
                    );
                    before = *at;
                }
                None => eprintln!(
                    "    {:>6}    {:>6}    {label}: not seen on the console",
                    "-", "-"
                ),
            }
        }
    }
    let idle: Vec<&Idle> = results.iter().filter_map(|r| r.idle.as_ref()).collect();
    if let Some(last) = idle.last() {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let mut used: Vec<u64> = idle.iter().map(|i| i.used).collect();
        used.sort_unstable();
        let sum = |list: &[(String, u64)]| list.iter().map(|(_, rss)| rss).sum::<u64>();
        let each = |list: &[(String, u64)]| {
            list.iter()
                .map(|(name, rss)| format!("{name} {:.1}", mib(*rss)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "  idle node ({} s after ready, direct path, {} MiB machine): memory in use median {:.0} MiB; the agent's and daemons' RSS {:.1} MiB ({} MiB)",
            IDLE_AFTER.as_secs(),
            crate::qemu::MEMORY_MIB,
            mib(used[used.len() / 2]),
            mib(sum(&last.daemons)),
            each(&last.daemons)
        );
        eprintln!(
            "  the same on a testbed node ({} s after ready, the daemons links to one grove from {}, as in the image): {:.1} MiB ({} MiB); the image's node {:.2}x",
            IDLE_AFTER.as_secs(),
            crate::bins::bin_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            mib(sum(testbed)),
            each(testbed),
            sum(&last.daemons) as f64 / sum(testbed).max(1) as f64
        );
    }
    let manifest = std::fs::read_to_string(dir.join("manifest")).unwrap_or_default();
    let field = |name: &str| {
        manifest.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    let mb = |b: u64| b as f64 / 1e6;
    if let (Some(zstd), Some(cpio), Some(kernel)) = (
        field("initramfs_zstd_bytes"),
        field("initramfs_cpio_bytes"),
        field("vmlinuz_bytes"),
    ) {
        eprintln!(
            "  sizes: initramfs {:.1} MB zstd ({:.1} MB unpacked), vmlinuz {:.1} MB; target initramfs <= {:.1} MB: {}",
            mb(zstd),
            mb(cpio),
            mb(kernel),
            mb(INITRAMFS_TARGET),
            verdict(zstd <= INITRAMFS_TARGET)
        );
    }
    if let Some(img) = field("grove_img_bytes") {
        eprintln!("  grove.img {:.1} MB", mb(img));
    }
}

/// Milestones of a direct boot: a label and the
/// words that all stand in the console line that marks it (ANSI colours
/// taken out).
const MILESTONES: [(&str, &[&str]); 11] = [
    ("kernel's first line", &["Linux version"]),
    ("initramfs unpacked", &["Freeing initrd memory"]),
    ("/init runs", &["Run /init as init process"]),
    (
        "modules loaded, agent starts",
        &["grove-init: starting the agent"],
    ),
    ("storaged started", &["started", "service=\"storaged\""]),
    ("storaged ready", &["ready", "service=\"storaged\""]),
    ("netd started", &["started", "service=\"netd\""]),
    ("uplink chosen (lease)", &["uplink chosen"]),
    ("netd ready", &["ready", "service=\"netd\""]),
    ("provisiond ready", &["ready", "service=\"provisiond\""]),
    ("status ready", &["State", "READY"]),
];

/// Each line of a machine's serial console with the time it appeared,
/// read by a thread that reads what the console's log gained every 10 ms
/// from QEMU's start until it is stopped.
struct ConsoleClock {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, String)>>,
}

impl ConsoleClock {
    fn start(log: std::path::PathBuf, started: Instant) -> Self {
        use std::io::Read;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut file = None;
            // What was read after the last complete line.
            let mut partial = Vec::new();
            loop {
                let done = stopped.load(std::sync::atomic::Ordering::Relaxed);
                if file.is_none() {
                    file = std::fs::File::open(&log).ok();
                }
                if let Some(f) = file.as_mut() {
                    let before = partial.len();
                    let _ = f.read_to_end(&mut partial);
                    if partial.len() > before
                        && let Some(end) = partial.iter().rposition(|&b| b == b'\n')
                    {
                        let now = started.elapsed();
                        let rest = partial.split_off(end + 1);
                        for line in String::from_utf8_lossy(&partial).lines() {
                            lines.push((now, strip_ansi(line)));
                        }
                        partial = rest;
                    }
                }
                if done {
                    return lines;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { stop, thread }
    }

    /// Stops the thread; the lines it saw.
    fn lines(self) -> Vec<(Duration, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `line` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// When each of [`MILESTONES`] first appeared in `lines`, with the API's
/// first answer, in the order they happened; those never seen last.
fn timeline(lines: &[(Duration, String)], api: Duration) -> Vec<(String, Option<Duration>)> {
    let mut marks: Vec<(String, Option<Duration>)> = MILESTONES
        .iter()
        .map(|(label, words)| {
            let at = lines
                .iter()
                .find(|(_, line)| words.iter().all(|w| line.contains(w)))
                .map(|(at, _)| *at);
            ((*label).to_owned(), at)
        })
        .collect();
    marks.push(("operator API answers".to_owned(), Some(api)));
    marks.sort_by_key(|(_, at)| at.unwrap_or(Duration::MAX));
    marks
}
