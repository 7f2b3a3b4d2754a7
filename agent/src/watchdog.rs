//! The hardware watchdog: armed and fed while the agent is healthy.
//!
//! When the agent is the machine's init and the machine has a watchdog
//! (`/dev/watchdog0`: `i6300esb` in QEMU, `iTCO_wdt` on Intel boards), the
//! agent opens it, which arms it, and keeps feeding it. The feeding is done
//! by a thread of its own, but only while the async runtime keeps sending it
//! a heartbeat: a runtime that hangs stops the heartbeats, the feeding
//! stops, and the hardware resets the machine after its timeout. A clean
//! stop disarms it (the magic close, `V`) before the agent reboots or
//! powers off.
//!
//! Limits: the timeout is the driver's own (reading it needs no ioctl, and
//! setting it would); the heartbeat says the runtime runs, not that every
//! daemon is well (the supervisor restarts those).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The watchdog as `/v1/node` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogReport {
    pub device: String,
    /// The driver's name for it (`i6300ESB timer`).
    pub identity: String,
    pub timeout_secs: u64,
    /// Whether the agent holds it armed.
    pub armed: bool,
}

/// A watchdog device found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub identity: String,
    pub timeout: Duration,
}

/// The first watchdog of this machine, from sysfs under `sys` and its node
/// under `dev`.
pub fn find(sys: &Path, dev: &Path) -> Option<Device> {
    let class = sys.join("class/watchdog/watchdog0");
    let path = dev.join("watchdog0");
    if !class.exists() || !path.exists() {
        return None;
    }
    let read = |name: &str| {
        std::fs::read_to_string(class.join(name))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let timeout = read("timeout").parse().unwrap_or(30);
    Some(Device {
        path,
        identity: read("identity"),
        timeout: Duration::from_secs(timeout),
    })
}

/// How often a device with `timeout` is fed: four times per timeout.
pub fn interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(250))
}

/// An armed watchdog and the thread that feeds it.
#[derive(Debug)]
pub struct Watchdog {
    report: WatchdogReport,
    beats: mpsc::Sender<Beat>,
    interval: Duration,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Beat {
    Alive,
    /// Disarm and stop.
    Close,
}

impl Watchdog {
    /// Opens (and so arms) `device` and starts its feeder thread.
    pub fn arm(device: &Device) -> std::io::Result<Watchdog> {
        let mut file = std::fs::OpenOptions::new().write(true).open(&device.path)?;
        let interval = interval(device.timeout);
        let (beats, heard) = mpsc::channel();
        let name = device.path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || feed(&mut file, &heard, interval, &name))?;
        tracing::info!(
            device = %device.path.display(),
            identity = %device.identity,
            timeout_secs = device.timeout.as_secs(),
            "hardware watchdog armed"
        );
        Ok(Watchdog {
            report: WatchdogReport {
                device: device.path.display().to_string(),
                identity: device.identity.clone(),
                timeout_secs: device.timeout.as_secs(),
                armed: true,
            },
            beats,
            interval,
            thread: Some(thread),
        })
    }

    pub fn report(&self) -> WatchdogReport {
        self.report.clone()
    }

    /// A handle the async side beats with.
    pub fn beater(&self) -> Beater {
        Beater {
            beats: self.beats.clone(),
            interval: self.interval,
        }
    }

    /// Disarms the watchdog (magic close) and waits for its thread.
    pub fn close(mut self) {
        let _ = self.beats.send(Beat::Close);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the watchdog thread panicked");
        }
    }
}

/// The async side's heartbeat.
#[derive(Debug, Clone)]
pub struct Beater {
    beats: mpsc::Sender<Beat>,
    interval: Duration,
}

impl Beater {
    /// Beats every interval until the watchdog is closed; a runtime that
    /// hangs stops beating.
    pub async fn run(self) {
        loop {
            if self.beats.send(Beat::Alive).is_err() {
                return;
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// The feeder: one keepalive write per heartbeat heard; none once the
/// heartbeats stop, so the hardware fires.
fn feed(file: &mut std::fs::File, heard: &mpsc::Receiver<Beat>, interval: Duration, name: &str) {
    let mut starved = false;
    loop {
        match heard.recv_timeout(interval * 2) {
            Ok(Beat::Alive) => {
                if starved {
                    tracing::warn!(device = name, "heartbeats again; feeding the watchdog");
                    starved = false;
                }
                if let Err(e) = file.write_all(b"\0").and_then(|()| file.flush()) {
                    tracing::error!(device = name, error = %e, "cannot feed the watchdog");
                }
            }
            Ok(Beat::Close) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                match file.write_all(b"V").and_then(|()| file.flush()) {
                    Ok(()) => tracing::info!(device = name, "hardware watchdog disarmed"),
                    Err(e) => {
                        tracing::error!(device = name, error = %e, "cannot disarm the watchdog")
                    }
                }
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !starved {
                    tracing::error!(
                        device = name,
                        "no heartbeat from the agent's runtime: the watchdog is no longer fed"
                    );
                    starved = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, timeout: &str) -> (PathBuf, PathBuf) {
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        let class = sys.join("class/watchdog/watchdog0");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(class.join("identity"), "i6300ESB timer\n").expect("identity");
        std::fs::write(class.join("timeout"), timeout).expect("timeout");
        std::fs::write(dev.join("watchdog0"), "").expect("node");
        (sys, dev)
    }

    #[test]
    fn the_first_watchdog_is_found_with_its_name_and_timeout() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            find(&root.path().join("sys"), &root.path().join("dev")),
            None
        );
        let (sys, dev) = fake(root.path(), "30\n");
        let device = find(&sys, &dev).expect("a watchdog");
        assert_eq!(device.identity, "i6300ESB timer");
        assert_eq!(device.timeout, Duration::from_secs(30));
        assert_eq!(interval(device.timeout), Duration::from_millis(7500));
    }

    #[test]
    fn it_is_fed_while_the_heartbeats_come_and_disarmed_on_close() {
        let root = tempfile::tempdir().unwrap();
        let (sys, dev) = fake(root.path(), "1\n");
        let device = find(&sys, &dev).expect("a watchdog");
        let watchdog = Watchdog::arm(&device).expect("armed");
        assert!(watchdog.report().armed);
        let beats = watchdog.beater();
        for _ in 0..3 {
            beats.beats.send(Beat::Alive).expect("beat");
        }
        // No heartbeat for longer than two intervals: nothing is written.
        std::thread::sleep(Duration::from_millis(800));
        watchdog.close();
        let written = std::fs::read(dev.join("watchdog0")).unwrap();
        assert_eq!(
            written, b"\0\0\0V",
            "three keepalives, then the magic close"
        );
    }
}
