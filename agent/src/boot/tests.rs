use super::*;

#[test]
fn zos_spellings() {
    let c = Cmdline::parse("console=ttyS0 farmer_id=42 runmode=test vlan:priv=100 zos-debug\n");
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.params.farm_id, Some(42));
    assert_eq!(c.params.chain.backend, ChainBackend::Tfchain);
    assert_eq!(c.params.chain.run_mode, Some(RunMode::Test));
    assert_eq!(c.params.network.uplink.vlan.map(VlanId::get), Some(100));
    assert!(c.params.debug);
}

#[test]
fn grove_spellings() {
    let c = Cmdline::parse(
        "grove.farm=7 grove.chain=tfchain grove.chain.url=ws://127.0.0.1:8000 \
         grove.uplink=eth1 grove.ip=10.0.0.5/24 grove.gw=10.0.0.1 grove.dns=1.1.1.1,2606:4700::1111 \
         grove.vlan=12 vlan:pub=13 grove.wipe=SER1,SER2 grove.wipe=SER3 grove.debug=0 \
         grove.slot=b grove.upgrade.deadline=90",
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let p = &c.params;
    assert_eq!(p.farm_id, Some(7));
    assert_eq!(p.chain.url.as_deref(), Some("ws://127.0.0.1:8000"));
    assert_eq!(
        p.network.uplink.nic.as_ref().map(InterfaceName::as_str),
        Some("eth1")
    );
    assert_eq!(
        p.network.uplink.address.map(|a| a.to_string()).as_deref(),
        Some("10.0.0.5/24")
    );
    assert_eq!(p.network.uplink.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(p.network.uplink.dns.len(), 2);
    assert_eq!(p.network.uplink.vlan.map(VlanId::get), Some(12));
    assert_eq!(p.network.public_vlan.map(VlanId::get), Some(13));
    let wipe: Vec<&str> = p.wipe.iter().map(DiskSerial::as_str).collect();
    assert_eq!(wipe, ["SER1", "SER2", "SER3"]);
    assert!(!p.debug);
    assert_eq!(p.upgrade.slot, Some(crate::upgrade::Slot::B));
    assert_eq!(p.upgrade.deadline_secs, Some(90));
}

#[test]
fn network_params_keep_the_command_line_names_in_json() {
    let c = Cmdline::parse(
        "grove.uplink=eth1 grove.ip=10.0.0.5/24 grove.gw=10.0.0.1 grove.dns=1.1.1.1 \
         grove.vlan=12 vlan:pub=13",
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let json = serde_json::to_value(&c.params.network).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "uplink": "eth1",
            "address": "10.0.0.5/24",
            "gateway": "10.0.0.1",
            "dns": ["1.1.1.1"],
            "vlan": 12,
            "public_vlan": 13,
        })
    );
    let back: NetworkParams = serde_json::from_value(json).unwrap();
    assert_eq!(back, c.params.network);
}

#[test]
fn defaults_without_grove_keys() {
    let c = Cmdline::parse("BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet");
    assert!(c.errors.is_empty());
    assert_eq!(c.params, BootParams::default());
    assert_eq!(c.params.chain.backend, ChainBackend::Embedded);
}

/// Every bad value is reported by its key, and the good keys still apply.
#[test]
fn bad_values_are_named_and_the_rest_applies() {
    let cases: &[(&str, &str)] = &[
        ("farmer_id=abc", "farmer_id"),
        ("grove.farm=0", "grove.farm"),
        ("grove.farm=-3", "grove.farm"),
        ("farmer_id=99999999999", "farmer_id"),
        ("vlan:foo=5", "vlan:foo"),
        ("vlan:priv=4095", "vlan:priv"),
        ("vlan:priv=abc", "vlan:priv"),
        ("grove.vlan=0", "grove.vlan"),
        ("runmode=staging", "runmode"),
        ("grove.chain=ethereum", "grove.chain"),
        ("grove.chain.url=127.0.0.1:8000", "grove.chain.url"),
        ("grove.chain.url=ftp://x", "grove.chain.url"),
        ("grove.ip=10.0.0.5", "grove.ip"),
        ("grove.ip=10.0.0.5/40", "grove.ip"),
        ("grove.gw=10.0.0.1", "grove.gw"),
        ("grove.ip=10.0.0.2/24 grove.gw=nope", "grove.gw"),
        ("grove.dns=1.1.1.1,bogus", "grove.dns"),
        ("grove.uplink=averyveryverylongname", "grove.uplink"),
        ("grove.uplink=a/b", "grove.uplink"),
        ("grove.wipe=", "grove.wipe"),
        ("grove.wipe=a/b", "grove.wipe"),
        ("grove.debug=maybe", "grove.debug"),
        ("grove.slot=c", "grove.slot"),
        ("grove.slot=a grove.slot=b", "grove.slot"),
        ("grove.upgrade.deadline=5", "grove.upgrade.deadline"),
        ("grove.upgrade.deadline=soon", "grove.upgrade.deadline"),
        ("grove.frm=3", "grove.frm"),
    ];
    for (bad, key) in cases {
        let c = Cmdline::parse(&format!("quiet grove.farm=5 {bad}"));
        assert_eq!(c.errors.len(), 1, "{bad}: {:?}", c.errors);
        assert_eq!(c.errors[0].param, *key, "{bad}");
        assert!(!c.errors[0].reason.is_empty());
        if !key.contains("farm") && !key.starts_with("farmer") {
            assert_eq!(c.params.farm_id, Some(5), "{bad}: good keys still apply");
        }
    }
}

#[test]
fn conflicting_spellings_keep_the_first_and_report_the_second() {
    let c = Cmdline::parse("farmer_id=3 grove.farm=4");
    assert_eq!(c.params.farm_id, Some(3));
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.errors[0].param, "grove.farm");
    assert!(
        c.errors[0].reason.contains("farmer_id"),
        "{}",
        c.errors[0].reason
    );
    let same = Cmdline::parse("farmer_id=3 grove.farm=3");
    assert!(same.errors.is_empty());
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let c = Cmdline::read(Path::new("/nonexistent/cmdline"));
    assert_eq!(c.errors.len(), 1);
    assert_eq!(c.params, BootParams::default());
}

#[test]
fn the_mesh_endpoint_can_be_declared_private() {
    let c = Cmdline::parse("grove.farm=1 grove.mesh.public=0");
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.params.mesh_public, Some(false));
    assert_eq!(Cmdline::parse("grove.farm=1").params.mesh_public, None);
    let bad = Cmdline::parse("grove.mesh.public=maybe grove.mesh.public=1 grove.mesh.public=0");
    let refused: Vec<(&str, &str)> = bad
        .errors
        .iter()
        .map(|e| (e.param.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        refused,
        [("grove.mesh.public", "maybe"), ("grove.mesh.public", "0")]
    );
    assert_eq!(bad.params.mesh_public, Some(true));
}

#[test]
fn the_stick_entry_command_line_names_its_slot() {
    let c = Cmdline::parse(
        "initrd=\\grove\\a\\initramfs grove.slot=a console=tty0 console=ttyS0,115200 panic=10 grove.farm=1\n",
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.params.upgrade.slot, Some(crate::upgrade::Slot::A));
}
