//! Drivers for hardware that shows up after `/init` looked, for the agent
//! as the machine's init: a USB stick that its controller finds a moment
//! after the controller's driver loads, a disk or a NIC plugged into a
//! running node. The image has no udev; this is the part of it Grove needs.
//!
//! The kernel announces each new device on its uevent netlink socket, with
//! the device's modalias; `modprobe` loads the drivers that match it. The
//! socket is opened first, then the devices already present without a
//! driver are looked up in sysfs, so a device that appeared in between is
//! not missed. Each alias is asked for once. Messages from anyone but the
//! kernel are ignored.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, socket,
};

/// The kernel's multicast group of uevents.
const KERNEL_GROUP: u32 = 1;
/// What loads a driver by modalias (busybox's, in the image).
pub const MODPROBE: &str = "/sbin/modprobe";

/// Starts loading drivers, with `modprobe`, for the devices in `sys`
/// without one and then for each new device, on a thread of its own, for
/// as long as the process lives.
pub fn spawn(sys: PathBuf, modprobe: PathBuf) -> std::io::Result<()> {
    let socket = open()?;
    std::thread::Builder::new()
        .name("hotplug".to_owned())
        .spawn(move || listen(&socket, &sys, &modprobe))?;
    Ok(())
}

fn open() -> std::io::Result<OwnedFd> {
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(socket.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
    Ok(socket)
}

fn listen(socket: &OwnedFd, sys: &Path, modprobe: &Path) {
    let mut asked = BTreeSet::new();
    let mut load = |aliases| load(modprobe, &mut asked, aliases);
    load(unclaimed(sys));
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match recvfrom::<NetlinkAddr>(socket.as_raw_fd(), &mut buf) {
            Ok((n, from)) => {
                if from.is_some_and(|a| a.pid() == 0)
                    && let Some(alias) = added(&buf[..n])
                {
                    load(vec![alias]);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            // The socket's queue overflowed: events were lost, sysfs
            // still tells what is there.
            Err(nix::errno::Errno::ENOBUFS) => load(unclaimed(sys)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the kernel's device events; new hardware gets no driver");
                return;
            }
        }
    }
}

/// The modalias of a device a uevent says was added.
fn added(message: &[u8]) -> Option<String> {
    let mut action = None;
    let mut alias = None;
    // `ACTION@DEVPATH`, then `KEY=VALUE` fields, each ending in a NUL.
    for field in message.split(|b| *b == 0).skip(1) {
        let field = std::str::from_utf8(field).ok()?;
        if let Some(value) = field.strip_prefix("ACTION=") {
            action = Some(value);
        } else if let Some(value) = field.strip_prefix("MODALIAS=") {
            alias = Some(value);
        }
    }
    (action == Some("add")).then_some(alias?.to_owned())
}

/// The modaliases of the devices in `sys` that no driver has claimed.
fn unclaimed(sys: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(buses) = std::fs::read_dir(sys.join("bus")) else {
        return found;
    };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for device in devices.flatten() {
            let path = device.path();
            if path.join("driver").exists() {
                continue;
            }
            if let Ok(alias) = std::fs::read_to_string(path.join("modalias"))
                && !alias.trim().is_empty()
            {
                found.push(alias.trim().to_owned());
            }
        }
    }
    found
}

/// Asks `modprobe` for the drivers of the aliases not asked for before.
fn load(modprobe: &Path, asked: &mut BTreeSet<String>, aliases: Vec<String>) {
    let new: Vec<String> = aliases
        .into_iter()
        .filter(|a| asked.insert(a.clone()))
        .collect();
    if new.is_empty() {
        return;
    }
    tracing::debug!(aliases = ?new, "loading drivers for new devices");
    // modprobe fails for an alias no module matches: most devices' drivers
    // are built in, or there is none. Spawned and waited for through the
    // reaper, which reaps every child of the process.
    let mut command = std::process::Command::new(modprobe);
    command.args(["-q", "-a"]).args(&new);
    let ran = crate::supervisor::reaper::Reaper::global()
        .map_err(|e| e.to_string())
        .and_then(|reaper| reaper.spawn(command).map_err(|e| e.to_string()))
        .and_then(|spawned| {
            spawned
                .exit
                .blocking_recv()
                .map(drop)
                .map_err(|_gone| "its exit was never reported".to_owned())
        });
    if let Err(e) = ran {
        tracing::error!(error = %e, "cannot run modprobe for new devices");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_device_names_its_alias_and_nothing_else_does() {
        let add = b"add@/devices/pci0000:00/0000:00:04.0/usb2/2-1/2-1:1.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0/usb2/2-1/2-1:1.0\0SUBSYSTEM=usb\0MODALIAS=usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00\0SEQNUM=812\0";
        assert_eq!(
            added(add).as_deref(),
            Some("usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00")
        );
        let remove = b"remove@/devices/x\0ACTION=remove\0DEVPATH=/devices/x\0MODALIAS=usb:v1\0";
        assert_eq!(added(remove), None);
        let bind = b"bind@/devices/x\0ACTION=bind\0DEVPATH=/devices/x\0MODALIAS=usb:v1\0";
        assert_eq!(added(bind), None);
        let no_alias = b"add@/devices/virtual/net/veth0\0ACTION=add\0SUBSYSTEM=net\0";
        assert_eq!(added(no_alias), None);
        assert_eq!(added(b""), None);
        assert_eq!(added(b"add@/x\0ACTION=add\0MODALIAS=\xff\0"), None);
    }

    /// A `modprobe` that writes the aliases it is asked for to `log`.
    fn recording_modprobe(dir: &Path, log: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("modprobe");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nshift 2\nfor a; do echo \"$a\" >>'{}'; done\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// A device of this machine with a modalias, and that alias.
    fn a_device_with_an_alias() -> (PathBuf, String) {
        for bus in std::fs::read_dir("/sys/bus").unwrap().flatten() {
            let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
                continue;
            };
            for device in devices.flatten() {
                let path = std::fs::canonicalize(device.path()).unwrap();
                if let Ok(alias) = std::fs::read_to_string(path.join("modalias"))
                    && !alias.trim().is_empty()
                    && path.join("uevent").exists()
                {
                    return (path, alias.trim().to_owned());
                }
            }
        }
        panic!("no device in /sys/bus has a modalias");
    }

    #[test]
    fn a_device_the_kernel_announces_gets_its_driver_asked_for_once() {
        // The real kernel: a synthetic "add" for a device already here
        // (written to its uevent file, root only) goes out on the uevent
        // socket as a new device's would, with its modalias.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("asked");
        let empty_sys = dir.path().join("sys");
        std::fs::create_dir(&empty_sys).unwrap();
        spawn(empty_sys, recording_modprobe(dir.path(), &log)).unwrap();
        let (device, alias) = a_device_with_an_alias();
        let asked = || std::fs::read_to_string(&log).unwrap_or_default();
        for _ in 0..2 {
            std::fs::write(device.join("uevent"), "add").unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !asked().lines().any(|l| l == alias) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The second announcement is not asked again.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let times = asked().lines().filter(|l| *l == alias).count();
        assert_eq!(
            times,
            1,
            "{alias} of {} asked {times} times",
            device.display()
        );
    }

    #[test]
    fn devices_present_without_a_driver_are_asked_for_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("asked");
        let sys = dir.path().join("sys");
        let usb = sys.join("bus/usb/devices/2-1:1.0");
        std::fs::create_dir_all(&usb).unwrap();
        std::fs::write(usb.join("modalias"), "usb:v46F4p0001ic08\n").unwrap();
        let modprobe = recording_modprobe(dir.path(), &log);
        let mut asked = BTreeSet::new();
        load(&modprobe, &mut asked, unclaimed(&sys));
        load(&modprobe, &mut asked, unclaimed(&sys));
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "usb:v46F4p0001ic08\n"
        );
    }

    #[test]
    fn devices_without_a_driver_are_the_unclaimed_ones() {
        let sys = tempfile::tempdir().unwrap();
        let device = |bus: &str, name: &str, alias: &str, driver: bool| {
            let dir = sys.path().join("bus").join(bus).join("devices").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("modalias"), format!("{alias}\n")).unwrap();
            if driver {
                std::os::unix::fs::symlink(sys.path(), dir.join("driver")).unwrap();
            }
        };
        device("usb", "2-1:1.0", "usb:v46F4p0001ic08", false);
        device("pci", "0000:00:04.0", "pci:v00001B36d0000000D", true);
        device("platform", "serial8250", "", false);
        assert_eq!(unclaimed(sys.path()), vec!["usb:v46F4p0001ic08".to_owned()]);
        assert!(unclaimed(&sys.path().join("missing")).is_empty());
    }
}
