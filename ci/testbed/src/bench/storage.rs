//! The storage benchmark: first boot with four blank disks, a restart with
//! four existing pools, and a blank disk attached while the node runs.
//!
//! Each run blanks the node's four disks (every block: storaged samples the
//! whole disk before calling it blank), boots the node and reads how long
//! storaged took from start to `/ready` (the agent records it), then cuts
//! the power and boots again to time the restart, then plugs a fifth blank
//! disk in and times it from attach to a mounted pool. The floor is a shell
//! script running `mkfs.btrfs` and `mount` on the same four disks, one after
//! another, in a private mount namespace.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::foundation::BenchError;
use super::stats::{ms, ratio, summary, verdict};
use crate::spec::{Daemon, DiskSpec, FarmSpec, NodeSpec};
use crate::{Farm, Node, http};

pub const FIRST_BOOT_RATIO_TARGET: f64 = 1.3;
pub const RESTART_TARGET: Duration = Duration::from_millis(500);
/// The issue's bound for a live blank disk to become a pool.
pub const LIVE_TARGET: Duration = Duration::from_secs(5);

/// Runs the benchmark and prints the report.
pub fn run(runs: usize) -> Result<(), BenchError> {
    let disks = vec![
        DiskSpec::ssd(2048),
        DiskSpec::ssd(2048),
        DiskSpec::hdd(2048),
        DiskSpec::hdd(2048),
    ];
    let farm =
        Farm::start(FarmSpec::with_nodes(vec![NodeSpec::default().disks(disks)]).without_agents())?;
    let node = farm.node(0);
    let paths: Vec<PathBuf> = node.disks().iter().map(|d| d.path().to_owned()).collect();
    let hotplug = node.dir().join("hotplug");
    std::fs::create_dir_all(&hotplug).map_err(BenchError::Spawn)?;
    let mut listed: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    listed.push(format!("{:?}", hotplug.display().to_string()));
    node.set_config(
        Daemon::Storaged,
        &format!(
            "disks = [{}]\nhealth_interval_ms = 100\n",
            listed.join(", ")
        ),
    )?;
    let (mut first, mut restart, mut floor, mut live) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        blank(&paths)?;
        floor.push(script_floor(&paths)?);
        blank(&paths)?;
        node.start_agent()?;
        first.push(storaged_ready_after(node)?);
        node.kill_agent()?;
        node.start_agent()?;
        restart.push(storaged_ready_after(node)?);
        live.push(attach_to_pooled(node, &hotplug, run)?);
        node.stop_agent()?;
    }
    let (first50, first90) = summary(&mut first);
    let (restart50, restart90) = summary(&mut restart);
    let (floor50, _) = summary(&mut floor);
    let (live50, live90) = summary(&mut live);
    let ratio = ratio(first50, floor50);
    eprintln!("storage benchmark: {runs} runs, one node with 4 x 2 GiB loop disks (2 SSD, 2 HDD)");
    eprintln!(
        "  first boot, storaged start -> /ready (4 pools + cache): median {:.1} ms, p90 {:.1} ms",
        ms(first50),
        ms(first90)
    );
    eprintln!(
        "  floor, mkfs.btrfs + mount of the same disks from a script: median {:.1} ms",
        ms(floor50)
    );
    eprintln!(
        "  ratio to the floor: {ratio:.2}; target <= {FIRST_BOOT_RATIO_TARGET}: {}",
        verdict(ratio <= FIRST_BOOT_RATIO_TARGET)
    );
    eprintln!(
        "  restart with 4 pools, storaged start -> /ready: median {:.1} ms, p90 {:.1} ms; target <= {} ms: {}",
        ms(restart50),
        ms(restart90),
        RESTART_TARGET.as_millis(),
        verdict(restart50 <= RESTART_TARGET)
    );
    eprintln!(
        "  a blank 2 GiB disk attached live, attach -> pool mounted: median {:.1} ms, p90 {:.1} ms; target <= {} ms: {}",
        ms(live50),
        ms(live90),
        LIVE_TARGET.as_millis(),
        verdict(live50 <= LIVE_TARGET)
    );
    Ok(())
}

/// From plugging a blank disk in (its link appearing in storaged's disk
/// directory) to its pool reported mounted.
fn attach_to_pooled(
    node: &Node,
    hotplug: &std::path::Path,
    run: usize,
) -> Result<Duration, BenchError> {
    let file = node.dir().join(format!("live-{run}.img"));
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(2048 << 20))
        .map_err(BenchError::Spawn)?;
    let disk = crate::Disk::attach_image(file, false)
        .map_err(|e| BenchError::Spawn(std::io::Error::other(e)))?;
    let socket = node.socket(Daemon::Storaged)?;
    let device = disk.path().display().to_string();
    let started = Instant::now();
    std::os::unix::fs::symlink(disk.path(), hotplug.join(format!("live-{run}")))
        .map_err(BenchError::Spawn)?;
    let pooled = crate::wait_until(Duration::from_secs(30), Duration::from_millis(5), || {
        http::unix_get(&socket, "/v1/pools")
            .is_ok_and(|(_, body)| pool_state(&body, &device) == Some("mounted"))
    });
    let took = started.elapsed();
    std::fs::remove_file(hotplug.join(format!("live-{run}"))).map_err(BenchError::Spawn)?;
    if pooled {
        Ok(took)
    } else {
        Err(BenchError::NotReady(Duration::from_secs(30)))
    }
}

/// How long storaged took from its start to `/ready`, as the agent saw it.
fn storaged_ready_after(node: &Node) -> Result<Duration, BenchError> {
    let socket = node.socket(Daemon::Agent)?;
    let mut after = None;
    let ready = crate::wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
        let Ok((200, body)) = http::unix_get(&socket, "/v1/services/storaged") else {
            return false;
        };
        after = ready_after_ms(&body);
        after.is_some()
    });
    match (ready, after) {
        (true, Some(ms)) => Ok(Duration::from_millis(ms)),
        _ => Err(BenchError::NotReady(Duration::from_secs(60))),
    }
}

/// The `state` of the pool on `device` in a `/v1/pools` answer (each pool
/// object names its device before its state).
fn pool_state<'a>(body: &'a str, device: &str) -> Option<&'a str> {
    let rest = body.split(&format!("\"device\":\"{device}\"")).nth(1)?;
    let rest = rest.split("\"label\":").next()?;
    let state = rest.split("\"state\":\"").nth(1)?;
    state.split('"').next()
}

/// `ready_after_ms` from a service status, when it is set.
fn ready_after_ms(body: &str) -> Option<u64> {
    let rest = body.split("\"ready_after_ms\":").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Zeroes every block of the disks (a discard punches holes in the sparse
/// images), as new disks.
fn blank(paths: &[PathBuf]) -> Result<(), BenchError> {
    for p in paths {
        sh(&format!("blkdiscard -f {} 2>/dev/null", p.display()))?;
    }
    Ok(())
}

/// `mkfs.btrfs` and `mount` of every disk, one after another, timed.
fn script_floor(paths: &[PathBuf]) -> Result<Duration, BenchError> {
    let disks: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let script = format!(
        "set -e; mount --make-rprivate /; m=$(mktemp -d); i=0; for d in {}; do \
         i=$((i+1)); mkfs.btrfs -q $d >/dev/null 2>&1; mkdir $m/$i; mount $d $m/$i; done",
        disks.join(" ")
    );
    let started = Instant::now();
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .status()
        .map_err(BenchError::Spawn)?;
    let took = started.elapsed();
    if !status.success() {
        return Err(BenchError::Spawn(std::io::Error::other(format!(
            "floor script failed: {status}"
        ))));
    }
    Ok(took)
}

fn sh(script: &str) -> Result<(), BenchError> {
    let status = Command::new("sh")
        .args(["-c", script])
        .status()
        .map_err(BenchError::Spawn)?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Spawn(std::io::Error::other(format!(
            "`{script}` failed: {status}"
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_pools_state_by_its_device() {
        let body = r#"[{"label":"grove-a","device":"/dev/loop1","kind":"hdd","state":"broken"},{"label":"grove-b","device":"/dev/loop12","state":"mounted"}]"#;
        assert_eq!(pool_state(body, "/dev/loop1"), Some("broken"));
        assert_eq!(pool_state(body, "/dev/loop12"), Some("mounted"));
        assert_eq!(pool_state(body, "/dev/loop2"), None);
    }

    #[test]
    fn reads_ready_after_from_a_status() {
        assert_eq!(
            ready_after_ms(r#"{"name":"storaged","ready_after_ms":123,"x":1}"#),
            Some(123)
        );
        assert_eq!(
            ready_after_ms(r#"{"name":"storaged","ready_after_ms":null}"#),
            None
        );
    }
}
