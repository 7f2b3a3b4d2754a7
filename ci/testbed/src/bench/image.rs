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
#[derive(Debug, Clone, Copy)]
struct Run {
    floor: Duration,
    api: [Duration; PATHS.len()],
    ready: [Duration; PATHS.len()],
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
        };
        let mut line = format!("  run {}: floor {:.2} s", i + 1, floor.as_secs_f64());
        for (k, spec) in specs.iter().enumerate() {
            let (api, ready) = boot_image(&farm, first + 1 + k, &image, spec)?;
            run.api[k] = api;
            run.ready[k] = ready;
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
    report(&results, &dir);
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

/// QEMU's start to `/v1/status` answering, and to `ready`.
fn boot_image(
    farm: &Farm,
    index: usize,
    image: &BootImage,
    spec: &MachineSpec,
) -> Result<(Duration, Duration), ImageBenchError> {
    let started = Instant::now();
    let mut node = QemuNode::boot(farm, index, image, spec)?;
    let mut url = None;
    let answered = crate::wait_until(BOOT_LIMIT, Duration::from_millis(20), || {
        if url.is_none() {
            url = node
                .lease(farm.lan(0))
                .map(|ip| format!("http://{ip}:8080/v1/status"));
        }
        url.as_deref().is_some_and(|u| {
            matches!(
                http::http_get_timeout(u, Duration::from_millis(500)),
                Ok((200, _))
            )
        })
    });
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
    node.stop()?;
    Ok((api, ready_after))
}

fn report(results: &[Run], dir: &Path) {
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
