//! The machine's power button, for the agent as its init: a press stops
//! the node cleanly and powers it off, as Ctrl-Alt-Del and SIGTERM do. A
//! BMC's or a hypervisor's "power off" (ACPI) arrives the same way.
//!
//! The kernel's ACPI button driver (`button`) shows the button as an input
//! device named "Power Button"; `evdev` gives it a `/dev/input/event*`
//! node, whose events are read on a thread of their own (a read blocks
//! until the button is pressed).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The name the ACPI button driver gives the power button.
const POWER_BUTTON: &str = "Power Button";
/// `struct input_event` on 64-bit Linux: a timeval (16 bytes), type (u16),
/// code (u16), value (i32).
const EVENT_LEN: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// The event devices of the machine's power buttons, from sysfs.
pub fn find(sys: &Path, dev: &Path) -> Vec<PathBuf> {
    let Ok(listing) = std::fs::read_dir(sys.join("class/input")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = listing
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .is_ok_and(|n| n.trim() == POWER_BUTTON)
        })
        .map(|e| dev.join("input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Whether one `input_event` is a press of the power key.
fn is_press(event: &[u8; EVENT_LEN]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Reads `events` until the power key is pressed; `Err` when the device
/// cannot be read.
pub fn wait_for_press(mut events: impl Read) -> std::io::Result<()> {
    let mut event = [0u8; EVENT_LEN];
    loop {
        events.read_exact(&mut event)?;
        if is_press(&event) {
            return Ok(());
        }
    }
}

/// Watches every power button on threads of their own and calls `pressed`
/// on the first press.
pub fn watch(sys: &Path, dev: &Path, pressed: impl Fn() + Clone + Send + 'static) {
    for device in find(sys, dev) {
        let pressed = pressed.clone();
        let spawned = std::thread::Builder::new()
            .name("power-button".to_owned())
            .spawn(move || {
                let read = std::fs::File::open(&device).and_then(wait_for_press);
                match read {
                    Ok(()) => {
                        tracing::warn!(device = %device.display(), "power button pressed; stopping the node");
                        pressed();
                    }
                    Err(e) => {
                        tracing::error!(device = %device.display(), error = %e, "cannot read the power button")
                    }
                }
            });
        match spawned {
            Ok(_) => tracing::info!("listening to the power button"),
            Err(e) => tracing::error!(error = %e, "cannot watch the power button"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn a_press_of_the_power_key_ends_the_wait_and_nothing_else_does() {
        let mut stream = Vec::new();
        stream.extend(event(0x00, 0, 0)); // a sync
        stream.extend(event(EV_KEY, 28, 1)); // Enter
        stream.extend(event(EV_KEY, KEY_POWER, 0)); // a release
        stream.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(wait_for_press(stream.as_slice()).is_ok());

        let no_press = [event(EV_KEY, KEY_POWER, 0), event(EV_KEY, 28, 1)].concat();
        let e = wait_for_press(no_press.as_slice()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn power_buttons_are_found_by_name() {
        let sys = tempfile::tempdir().unwrap();
        for (event, name) in [
            ("event0", "AT Translated Set 2 keyboard"),
            ("event1", "Power Button"),
            ("event2", "Sleep Button"),
        ] {
            grove_daemon::fsutil::write_tree(
                sys.path(),
                &format!("class/input/{event}/device/name"),
                &format!("{name}\n"),
            )
            .unwrap();
        }
        grove_daemon::fsutil::write_tree(sys.path(), "class/input/input3/name", "Power Button\n")
            .unwrap();
        assert_eq!(
            find(sys.path(), Path::new("/dev")),
            [PathBuf::from("/dev/input/event1")]
        );
    }
}
