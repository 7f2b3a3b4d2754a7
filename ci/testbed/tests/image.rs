//! The boot image: built reproducibly, and booted under QEMU (TCG) on a
//! farm LAN, where it gets DHCP, makes pools of its blank disks, registers
//! with the farm's embedded registry and answers its operator API: from
//! its kernel and initramfs directly, and from its USB stick (`grove.img`)
//! and its ISO (`grove.iso`) under UEFI (OVMF) and legacy BIOS (SeaBIOS),
//! leaving the medium as it was, and from the network (PXE, iPXE).

mod common;

use std::time::{Duration, Instant};

use common::{Lan, ONE_AT_A_TIME, comes_up, ext4_disk, farmer_signed, get_json, image};

use grove_testbed::qemu::{BootImage, BootPath, MachineSpec, Medium, QemuNode, workspace};
use grove_testbed::{Farm, FarmSpec, LanSpec, cmd, wait_until};

#[test]
fn the_same_inputs_build_the_same_bytes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let first = image();
    let dir = tempfile::tempdir().unwrap();
    let second = BootImage::build(dir.path()).expect("image builds again");
    for (a, b) in [
        (&first.kernel, &second.kernel),
        (&first.initramfs, &second.initramfs),
        (&first.usb, &second.usb),
        (&first.iso, &second.iso),
    ] {
        let (ha, hb) = (
            cmd::sha256(a).expect("sha256"),
            cmd::sha256(b).expect("sha256"),
        );
        assert_eq!(ha.len(), 64, "{ha}");
        assert_eq!(ha, hb, "{} and {} differ", a.display(), b.display());
    }
}

#[test]
fn a_missing_tool_stops_the_build_and_names_its_package() {
    let tools = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("image");
    // A PATH with no tools at all; bash itself is named by its full path.
    let run = std::process::Command::new("/bin/bash")
        .arg(workspace().join("image/build"))
        .arg(&target)
        .env("PATH", tools.path())
        .env("HOME", tools.path())
        .output()
        .expect("image/build runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing tools:"), "{stderr}");
    assert!(stderr.contains("zstd (zstd)"), "{stderr}");
    assert!(stderr.contains("cpio (cpio)"), "{stderr}");
    assert!(stderr.contains("boringtun-cli (cargo install"), "{stderr}");
    // image/usb's tools are checked before anything is built, too.
    assert!(stderr.contains("mformat (mtools)"), "{stderr}");
    assert!(stderr.contains("grub-mkimage (grub-common)"), "{stderr}");
    assert!(stderr.contains("xorriso (xorriso)"), "{stderr}");
    assert!(stderr.contains("run ci/setup"), "{stderr}");
    assert!(
        !target.exists(),
        "a refused build wrote {}",
        target.display()
    );
}

/// The direct boot: DHCP, pools, registration, the operator API; and the
/// container and machine runtimes the image carries answer on the node.
#[test]
fn a_node_booted_from_the_image_gets_dhcp_pools_registers_and_answers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    let spec = MachineSpec {
        cmdline: lan.node_params(),
        ..MachineSpec::default()
    };
    let (mut node, up) = lan.boot("direct kernel boot", &spec);
    // The image's runtimes run on the node: provisiond asks each for its
    // version as it starts (QEMU from the compute runtime /init mounted).
    let said = [
        "machines run under QEMU",
        "QEMU emulator version",
        "containers run with runc",
    ];
    let mut console = String::new();
    let seen = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        console = std::fs::read_to_string(node.console_log()).unwrap_or_default();
        said.iter().all(|s| console.contains(s))
    });
    assert!(seen, "the console does not say all of {said:?}\n{console}");
    assert!(!console.contains("cannot run"), "{console}");
    // The compute runtime's loop device is not a disk of the node's.
    assert!(
        up.disks
            .iter()
            .all(|d| !d["name"].as_str().unwrap_or_default().starts_with("loop")),
        "{:?}",
        up.disks
    );
    node.stop().expect("QEMU stops");
    lan.teardown();
}

/// The node as its init runs it, on a farm LAN whose default route leads
/// nowhere (nothing is downloaded at boot), with a foreign ext4 disk:
/// - its hardware watchdog is armed (`/v1/node`) and fed through the
///   whole test;
/// - its status screen on the serial console names its state, node id and
///   API;
/// - a farmer-signed reboot restarts the machine, which comes back with the
///   same account, node id and pools;
/// - Ctrl-Alt-Del stops it cleanly and powers it off;
/// - the foreign disk is listed, not pooled, and byte-identical after all
///   of it.
#[test]
fn a_node_as_init_reboots_with_its_identity_powers_off_and_leaves_a_foreign_disk_alone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start_on(LanSpec::default().router_nowhere());
    let foreign = ext4_disk(lan.farm.dir());
    let foreign_before = cmd::sha256(&foreign).expect("sha256");
    let spec = MachineSpec {
        cmdline: lan.node_params(),
        attached: vec![foreign.clone()],
        reboots: true,
        ..MachineSpec::default()
    };
    let (mut node, up) = lan.boot("direct kernel boot, as init", &spec);
    let api = up.api.clone();

    // The default route leads to an address nobody holds.
    let nowhere = lan.farm.lan(0).subnet().host(253).to_string();
    let network = get_json(&format!("{api}/v1/network")).expect("/v1/network answers");
    assert_eq!(network["uplink"]["gateway"], nowhere.as_str(), "{network}");

    // The foreign disk is seen and left alone.
    let disk = up.disks.iter().find(|d| d["serial"] == "gq0f0");
    let disk = disk.unwrap_or_else(|| panic!("the ext4 disk is not in /v1/disks: {:?}", up.disks));
    assert_eq!(disk["class"], "foreign", "{disk}");
    assert!(disk["pool"].is_null(), "{disk}");

    // The watchdog is armed.
    let report = get_json(&format!("{api}/v1/node")).expect("/v1/node answers");
    let watchdog = &report["watchdog"];
    assert_eq!(watchdog["armed"], true, "{report}");
    assert!(
        watchdog["identity"]
            .as_str()
            .is_some_and(|i| i.contains("6300")),
        "{report}"
    );

    // The status screen says who the node is and where its API answers.
    let chain = get_json(&format!("{api}/v1/chain")).expect("/v1/chain answers");
    let (account, node_id) = (
        chain["account"].as_str().expect("an account").to_owned(),
        chain["node_id"].as_u64().expect("a node id"),
    );
    let screen = [
        "State     READY".to_owned(),
        format!("Node      {node_id}   farm 1"),
        format!("API       {api}"),
    ];
    let mut console = String::new();
    let shown = wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        console = std::fs::read_to_string(node.console_log()).unwrap_or_default();
        screen.iter().all(|line| console.contains(line.as_str()))
    });
    assert!(shown, "no status screen with {screen:?}\n{}", node.logs(60));

    // A farmer-signed reboot: the machine restarts and comes back as the
    // same node, on the same pools.
    let signed = farmer_signed(&lan.registry, &account, "/v1/reboot");
    let headers = grove_testbed::http::signed_headers(&signed);
    let asked = Instant::now();
    let (code, body) = grove_testbed::http::curl_post(&format!("{api}/v1/reboot"), None, &headers)
        .expect("curl answers");
    assert_eq!(code, 202, "{body}");
    let restarted = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        std::fs::read_to_string(node.console_log())
            .is_ok_and(|c| c.contains("reboot: Restarting system"))
    });
    assert!(restarted, "the machine did not restart\n{}", node.logs(60));
    let again = comes_up(&lan.farm, &lan.registry, &mut node, Instant::now());
    assert_eq!(again.api, api, "the same lease");
    let chain = get_json(&format!("{api}/v1/chain")).expect("/v1/chain answers");
    assert_eq!(chain["account"], account.as_str(), "{chain}");
    assert_eq!(chain["node_id"], node_id, "{chain}");
    // The kernel started again after the reboot was asked.
    let report = get_json(&format!("{api}/v1/node")).expect("/v1/node answers");
    let uptime = report["uptime_secs"].as_f64().expect("the host's uptime");
    assert!(
        uptime < asked.elapsed().as_secs_f64(),
        "up {uptime} s, though the reboot was asked {:?} ago",
        asked.elapsed()
    );

    // Ctrl-Alt-Del: the node stops its services and powers off.
    node.send_keys(&["ctrl", "alt", "delete"])
        .expect("the keys are sent");
    assert!(
        node.exits_within(Duration::from_secs(120)),
        "the machine did not power off\n{}",
        node.logs(60)
    );
    let console = std::fs::read_to_string(node.console_log()).expect("console log");
    assert!(console.contains("reboot: Power down"), "{}", node.logs(60));
    assert!(
        console.contains("hardware watchdog disarmed"),
        "{}",
        node.logs(60)
    );

    node.stop().expect("QEMU reaped");
    assert_eq!(
        cmd::sha256(&foreign).expect("sha256"),
        foreign_before,
        "the node wrote to the foreign disk"
    );
    lan.teardown();
}

/// Boots a medium (`grove.img` as a stick, or `grove.iso` as a CD-ROM)
/// made of the image with the node's parameters under the firmware `path`
/// gives, checks what every node must do, that the console shows
/// `evidence` of the path taken, that the kernel got the medium's command
/// line, and that the medium is neither pooled nor written (its bytes are
/// the same after the boot). A stick must be listed in `/v1/disks` as the
/// boot medium.
fn boots_from(name: &str, path: fn(Medium) -> BootPath, iso: bool, evidence: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let lan = Lan::start();
    let (file, medium) = if iso {
        let file = lan.farm.dir().join("grove.iso");
        image
            .iso_image(&file, &lan.node_params())
            .expect("image/iso makes the ISO");
        (file.clone(), Medium::Cdrom(file))
    } else {
        let file = lan.farm.dir().join("grove.img");
        image
            .usb_stick(&file, &lan.node_params())
            .expect("image/usb makes the stick");
        (file.clone(), Medium::Stick(file))
    };
    let before = cmd::sha256(&file).expect("sha256");
    let spec = MachineSpec {
        boot: path(medium),
        ..MachineSpec::default()
    };
    let (mut node, up) = lan.boot(name, &spec);

    // The firmware went the way it should, to the kernel parameters the
    // medium carries.
    let console = std::fs::read_to_string(node.console_log()).expect("console log");
    for line in evidence {
        assert!(
            console.contains(line),
            "no {line:?} on the console\n{}",
            node.logs(80)
        );
    }
    let params = format!("console=ttyS0,115200 panic=10 {}", lan.node_params());
    got_command_line(&node, &console, &params);

    // A stick is a disk the node sees as its boot medium (its ESP's GPT
    // name) and leaves alone.
    let stick = up.disks.iter().find(|d| d["serial"] == "gq0usb");
    if !iso {
        let usb = stick.unwrap_or_else(|| panic!("the stick is not in /v1/disks: {:?}", up.disks));
        assert!(usb["pool"].is_null(), "the stick became a pool: {usb}");
        assert_eq!(usb["boot_medium"], true, "{usb}");
        assert!(
            usb["partition_names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "grove-esp")),
            "{usb}"
        );
    }
    let status = get_json(&format!("{}/v1/status", up.api)).expect("/v1/status answers");
    assert_eq!(status["state"], "ready", "{status}");
    node.stop().expect("QEMU stops");
    let after = cmd::sha256(&file).expect("sha256");
    assert_eq!(before, after, "the node wrote to its boot medium");
    lan.teardown();
}

/// Checks that the kernel's command line, as its console shows it, ends
/// with `params`.
fn got_command_line(node: &QemuNode, console: &str, params: &str) {
    assert!(
        console
            .lines()
            .any(|l| l.contains("Command line:") && l.trim_end().ends_with(params)),
        "the kernel did not get {params:?}\n{}",
        node.logs(80)
    );
}

/// systemd-stub hands a UKI's initramfs over this way.
const UEFI_STUB: &str = "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path";

#[test]
fn a_node_boots_from_the_usb_stick_under_uefi() {
    boots_from("UEFI, grove.img", BootPath::Uefi, false, &[UEFI_STUB]);
}

#[test]
fn a_node_boots_from_the_usb_stick_under_bios() {
    boots_from(
        "BIOS, grove.img",
        BootPath::Bios,
        false,
        // GRUB's menu entry for the slot grubenv names, and its kernel.
        &["Booting `Grove, slot a'", "BOOT_IMAGE=/grove/a/vmlinuz"],
    );
}

#[test]
fn a_node_boots_from_the_iso_under_uefi() {
    boots_from("UEFI, grove.iso", BootPath::Uefi, true, &[UEFI_STUB]);
}

#[test]
fn a_node_boots_from_the_iso_under_bios() {
    boots_from(
        "BIOS, grove.iso",
        BootPath::Bios,
        true,
        &["Booting `Grove'", "BOOT_IMAGE=/grove/vmlinuz"],
    );
}

/// Boots a node from the network under the firmware `path` gives, with
/// the LAN's TFTP root filled by `image/pxe`, checks what every node must
/// do, that dnsmasq sent the script, the kernel and the initramfs, and that
/// the kernel got the script's command line.
fn boots_over_pxe(name: &str, path: fn(Medium) -> BootPath) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    image()
        .pxe_root(&lan.farm.lan(0).tftp_dir(), &lan.node_params())
        .expect("image/pxe fills the LAN's TFTP root");
    let spec = MachineSpec {
        boot: path(Medium::Network),
        ..MachineSpec::default()
    };
    let (mut node, _) = lan.boot(name, &spec);

    // The LAN's dnsmasq sent iPXE the script, then the kernel and the
    // initramfs, and the kernel got the script's command line.
    let log = std::fs::read_to_string(lan.farm.lan(0).dnsmasq_log()).expect("dnsmasq log");
    for sent in log.lines().filter(|l| l.contains("dnsmasq-tftp")) {
        eprintln!("{name}: {sent}");
    }
    for file in ["grove.ipxe", "vmlinuz", "initramfs"] {
        assert!(
            log.lines()
                .any(|l| l.contains("dnsmasq-tftp") && l.contains(" sent ") && l.contains(file)),
            "dnsmasq did not send {file}\n{log}"
        );
    }
    let console = std::fs::read_to_string(node.console_log()).expect("console log");
    // (iPXE on UEFI puts the image's name first, as a loader's argv[0].)
    let params = format!(
        "initrd=initramfs console=tty0 console=ttyS0,115200 panic=10 {}",
        lan.node_params()
    );
    got_command_line(&node, &console, &params);
    node.stop().expect("QEMU stops");
    lan.teardown();
}

#[test]
fn a_node_boots_over_pxe_under_bios() {
    boots_over_pxe("BIOS, PXE", BootPath::Bios);
}

#[test]
fn a_node_boots_over_pxe_under_uefi() {
    boots_over_pxe("UEFI, PXE", BootPath::Uefi);
}

/// Runs an mtools command on the stick's ESP (2 MiB into the disk, as
/// docs/image.md lays it out).
fn on_esp(tool: &str, stick: &std::path::Path, args: &[&str]) {
    let image = format!("{}@@2M", stick.display());
    let out = std::process::Command::new(tool)
        .arg("-i")
        .arg(&image)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtools runs (ci/setup installs mtools)");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn under_bios_the_stick_boots_the_slot_grubenv_names_or_else_the_other() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let farm = Farm::start_for_test(FarmSpec::with_nodes(Vec::new()).without_agents());
    let stick = farm.dir().join("grove.img");
    image.usb_stick(&stick, "grove.farm=1").expect("image/usb");
    // grubenv names slot B, whose kernel is gone.
    let header = "# GRUB Environment Block\ngrove_slot=b\n";
    let grubenv = format!("{header}{}", "#".repeat(1024 - header.len()));
    let env_file = farm.dir().join("grubenv");
    std::fs::write(&env_file, grubenv).expect("grubenv written");
    let env_path = env_file.to_str().expect("a UTF-8 path");
    on_esp("mcopy", &stick, &["-o", env_path, "::/grub/grubenv"]);
    on_esp("mdel", &stick, &["::/grove/b/vmlinuz"]);

    let spec = MachineSpec {
        boot: BootPath::Bios(Medium::Stick(stick)),
        disks: Vec::new(),
        ..MachineSpec::default()
    };
    let mut node = QemuNode::boot(&farm, 0, image, &spec).expect("QEMU starts");
    let mut console = String::new();
    let started = wait_until(Duration::from_secs(180), Duration::from_millis(500), || {
        console = std::fs::read_to_string(node.console_log()).unwrap_or_default();
        console.contains("grove-init: starting the agent") || !node.running()
    });
    assert!(started, "the agent did not start\n{}", node.logs(60));
    let tried_b = console.find("Booting `Grove, slot b'");
    let fell_back = console.find("Falling back to `Grove, slot a'");
    assert!(
        tried_b.is_some() && fell_back.is_some() && tried_b < fell_back,
        "GRUB did not try slot B, then slot A\n{}",
        node.logs(60)
    );
    assert!(
        console.contains("Command line: BOOT_IMAGE=/grove/a/vmlinuz "),
        "{}",
        node.logs(60)
    );
    node.stop().expect("QEMU stops");
    let mut farm = farm;
    farm.teardown().expect("clean teardown");
}
