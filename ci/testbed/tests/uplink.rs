//! netd's uplink in testbed nodes: DHCP probing on every NIC, the choice,
//! the bridge, and recovery from a pulled cable.

use std::time::{Duration, Instant};

use grove_testbed::{
    Addressing, Daemon, Farm, FarmSpec, LanSpec, NicSpec, Node, NodeSpec, http_get, wait_until,
};
use netd::uplink::{UplinkReport, UplinkState};

fn start(spec: FarmSpec) -> Farm {
    Farm::start_for_test(spec)
}

/// One node on a DHCP LAN, with no address given by the testbed.
fn start_on_dhcp() -> Farm {
    let node = NodeSpec::default().addressing(Addressing::None);
    start(FarmSpec::with_nodes(vec![node]))
}

/// The operator API's `/v1/node` at the uplink's address in `report`.
fn node_url(report: &UplinkReport) -> String {
    let address = report.address.as_deref().expect("an address");
    let ip = address.split('/').next().expect("ip");
    format!("http://{ip}:8080/v1/node")
}

fn uplink(node: &Node) -> Option<UplinkReport> {
    node.get(Daemon::Netd, "/v1/uplink").ok()
}

fn wait_state(farm: &Farm, node: &Node, state: UplinkState, within: Duration) -> UplinkReport {
    let mut last = None;
    let reached = wait_until(within, Duration::from_millis(100), || {
        last = uplink(node);
        last.as_ref().is_some_and(|r| r.state == state)
    });
    assert!(
        reached,
        "uplink never {state:?}; last: {last:?}\n{}",
        farm.logs(40)
    );
    last.expect("a report")
}

/// Starts the farm LAN's DHCP server (`serving`) or stops it, then
/// [`wait_state`]s the node's uplink in `state` and prints how long that
/// took.
fn switch_dhcp(
    farm: &mut Farm,
    serving: bool,
    state: UplinkState,
    within: Duration,
) -> UplinkReport {
    let lan = farm.lan_mut(0);
    let (switched, how) = if serving {
        (lan.start_dhcp(), "came back")
    } else {
        (lan.stop_dhcp(), "went away")
    };
    switched.unwrap_or_else(|e| panic!("the DHCP server {how}: {e}"));
    let since = Instant::now();
    let report = wait_state(farm, farm.node(0), state, within);
    eprintln!(
        "uplink {state:?} {} s after the DHCP server {how}",
        since.elapsed().as_secs()
    );
    report
}

#[test]
fn the_nic_with_dhcp_becomes_the_uplink_and_the_api_answers_on_its_lease() {
    // eth0 is on a LAN without DHCP, eth1 on the farm LAN, eth2 has no carrier.
    let node = NodeSpec::default().addressing(Addressing::None).nics(vec![
        NicSpec::on_lan(1),
        NicSpec::on_lan(0),
        NicSpec::on_lan(0).without_carrier(),
    ]);
    let farm = start(FarmSpec::with_nodes(vec![node]).lan(LanSpec::without_dhcp()));
    let node = farm.node(0);
    let report = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));

    assert_eq!(report.nic.as_deref(), Some("eth1"), "{report:?}");
    assert_eq!(report.bridge.as_deref(), Some("br-grove"));
    let probed: Vec<(&str, bool, bool)> = report
        .probes
        .iter()
        .map(|p| (p.nic.as_str(), p.carrier, p.lease.is_some()))
        .collect();
    assert_eq!(
        probed,
        [
            ("eth0", true, false),
            ("eth1", true, true),
            ("eth2", false, false)
        ]
    );

    let leased = farm
        .lan(0)
        .lease_for(node.nics()[1].mac())
        .expect("dnsmasq leased eth1's MAC");
    let address = report.address.clone().expect("an address");
    assert_eq!(address, format!("{leased}/24"));
    assert_eq!(report.gateway, Some(farm.lan(0).gateway()));
    let url = format!("http://{leased}:8080/v1/node");
    let (status, _) = http_get(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(status, 200);

    // The bridge holds the address; eth1 is its port and holds none.
    let show = node
        .exec(&["ip", "-4", "-o", "addr", "show"])
        .expect("ip addr");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("br-grove") && l.contains(&address)),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.contains(" eth1 ")), "{text}");
    let master = node
        .exec(&["cat", "/sys/class/net/eth1/master/uevent"])
        .expect("cat");
    assert!(String::from_utf8_lossy(&master.stdout).contains("INTERFACE=br-grove"));

    // Interfaces are reported for registration.
    let interfaces: Vec<netd::uplink::Interface> = node
        .get(Daemon::Netd, "/v1/interfaces")
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)));
    let bridge = interfaces
        .iter()
        .find(|i| i.name == "br-grove")
        .expect("br-grove listed");
    assert_eq!(
        bridge.mac,
        node.nics()[1].mac(),
        "the bridge carries the NIC's MAC"
    );
    assert!(bridge.addresses.contains(&address));
}

/// The NIC's driver is loaded in parallel with netd's start, so netd may
/// find no NIC at first: a NIC that shows while netd waits to probe again
/// is probed at once, not at the next retry 2 s (up to 30 s) later.
#[test]
fn a_nic_that_appears_after_netd_started_is_probed_at_once() {
    let node = NodeSpec::default().addressing(Addressing::None);
    let farm = start(FarmSpec::with_nodes(vec![node]).without_agents());
    let node = farm.node(0);
    // eth0 waits outside the node, in a namespace of the farm's run (so
    // the farm's teardown sweeps it), until netd has found no NIC.
    let shelf = format!("gtb-{}-shelf", farm.run_id());
    grove_testbed::netns::add(&shelf).expect("a namespace to hold eth0");
    let nic = node.nics()[0].name().as_str();
    let moved = node
        .exec_in_netns(&["ip", "link", "set", nic, "netns", &shelf])
        .expect("ip runs");
    assert!(moved.status.success(), "{moved:?}");
    node.start_agent().expect("boot");
    let empty = wait_state(&farm, node, UplinkState::NoLease, Duration::from_secs(30));
    assert!(empty.probes.is_empty(), "{empty:?}");

    grove_testbed::cmd::run(
        "ip",
        &["-n", &shelf, "link", "set", nic, "netns", node.netns()],
    )
    .expect("eth0 into the node");
    let arrived = Instant::now();
    let mac = node.nics()[0].mac();
    let leased = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
        farm.lan(0).lease_for(mac).is_some()
    });
    let to_lease = arrived.elapsed();
    assert!(leased, "eth0 never got a lease\n{}", farm.logs(40));
    let report = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));
    let to_bound = arrived.elapsed();
    eprintln!(
        "eth0 leased {} ms and the uplink bound {} ms after eth0 arrived",
        to_lease.as_millis(),
        to_bound.as_millis()
    );
    assert_eq!(report.nic.as_deref(), Some("eth0"), "{report:?}");
    assert!(
        to_lease <= Duration::from_millis(1500),
        "eth0 leased {} ms after it arrived\n{}",
        to_lease.as_millis(),
        farm.logs(40)
    );
}

#[test]
fn a_pulled_cable_heals_without_a_restart() {
    let farm = start_on_dhcp();
    let node = farm.node(0);
    let report = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));
    let url = node_url(&report);
    let pid_before = node.daemon_pid(Daemon::Netd).expect("netd runs");

    node.nic_set_carrier(0, false).expect("pull the cable");
    wait_state(&farm, node, UplinkState::NoCarrier, Duration::from_secs(5));
    assert!(http_get(&url).is_err(), "answered with the cable pulled");
    std::thread::sleep(Duration::from_secs(3));

    node.nic_set_carrier(0, true).expect("plug it back");
    let plugged = Instant::now();
    let back = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        matches!(http_get(&url), Ok((200, _)))
    });
    assert!(
        back,
        "no connectivity after the cable came back\n{}",
        farm.logs(40)
    );
    eprintln!(
        "API answered again {} ms after the cable came back",
        plugged.elapsed().as_millis()
    );
    wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(15));
    assert_eq!(
        node.daemon_pid(Daemon::Netd),
        Some(pid_before),
        "netd was restarted"
    );
}

#[test]
fn a_static_address_from_the_boot_parameters_is_applied_on_the_bridge() {
    let node = NodeSpec::default().addressing(Addressing::None);
    let farm = start(FarmSpec::with_nodes(vec![node]).without_agents());
    let node = farm.node(0);
    let gw = farm.lan(0).gateway();
    let octets = gw.octets();
    let ip = std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], 77);
    node.set_cmdline(&format!(
        "grove.farm=1 grove.ip={ip}/24 grove.gw={gw} grove.dns=9.9.9.9"
    ))
    .expect("cmdline");
    node.start_agent().expect("boot");
    let report = wait_state(&farm, node, UplinkState::Static, Duration::from_secs(20));
    assert_eq!(report.address, Some(format!("{ip}/24")));
    assert_eq!(report.gateway, Some(gw));
    let url = node_url(&report);
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || matches!(http_get(&url), Ok((200, _)))
    ));
    let resolv = node.exec(&["cat", "/run/grove/resolv.conf"]).expect("cat");
    assert!(String::from_utf8_lossy(&resolv.stdout).contains("nameserver 9.9.9.9"));
    assert!(
        farm.lan(0).lease_for(node.nics()[0].mac()).is_none(),
        "a static node asked for a lease"
    );
}

#[test]
fn a_new_address_is_announced_to_the_lan_at_once() {
    // Node 1 runs nothing and holds a stale entry for the address node 0
    // is about to take, with another MAC: a host that asked for the
    // address before it was there. Node 0 has no gateway and no reason to
    // ask node 1 anything, so only its announcement, a broadcast, can
    // correct the entry before node 1's next retry.
    let spec = || NodeSpec::default().addressing(Addressing::None);
    let farm = start(FarmSpec::with_nodes(vec![spec(), spec()]).without_agents());
    let (node, neighbour) = (farm.node(0), farm.node(1));
    let octets = farm.lan(0).gateway().octets();
    let ip = std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], 78).to_string();
    let nic = neighbour.nics()[0].name().to_string();
    let in_neighbour = |argv: &[&str]| {
        let out = neighbour.exec_in_netns(argv).expect("ip runs");
        assert!(out.status.success(), "{argv:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    in_neighbour(&["ip", "link", "set", &nic, "up"]);
    let stale = "02:00:00:00:00:01";
    in_neighbour(&[
        "ip", "neigh", "replace", &ip, "dev", &nic, "lladdr", stale, "nud", "stale",
    ]);
    let entry = || in_neighbour(&["ip", "neigh", "show", &ip, "dev", &nic]);
    assert!(entry().contains(stale), "{}", entry());

    node.set_cmdline(&format!("grove.farm=1 grove.ip={ip}/24"))
        .expect("cmdline");
    node.start_agent().expect("boot");
    wait_state(&farm, node, UplinkState::Static, Duration::from_secs(20));
    let mac = node.nics()[0].mac().to_owned();
    let learnt = wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
        entry().contains(&mac)
    });
    assert!(
        learnt,
        "the LAN still has {} for {ip}, not the node's {mac}\n{}",
        entry(),
        farm.logs(20)
    );
}

#[test]
fn a_netd_restart_keeps_the_uplink_exactly_as_it_was() {
    let farm = start_on_dhcp();
    let node = farm.node(0);
    let before = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));
    let snapshot = |n: &Node| -> String {
        [
            "ip -4 -o addr show",
            "ip -4 route show",
            "ip -o link show master br-grove",
        ]
        .iter()
        .map(|c| {
            let argv: Vec<&str> = c.split(' ').collect();
            String::from_utf8_lossy(&n.exec(&argv).expect("ip").stdout).into_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
    };
    let state_before = snapshot(node);
    node.restart_daemon(Daemon::Netd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.logs(30)));
    let after = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(10));
    assert_eq!(after.nic, before.nic);
    assert_eq!(after.address, before.address);
    // The whole state is as it was once udhcpc's request has landed.
    let mut now = String::new();
    let same = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        now = snapshot(node);
        now == state_before
    });
    assert!(same, "{now}\n---\n{state_before}");
}

/// netd killed five times over: each time its udhcpc dies with it (and a
/// new netd would stop one that did not), so one udhcpc keeps the lease
/// afterwards, a child of the netd running now, and the bridge keeps its
/// address throughout.
#[test]
fn killing_netd_leaves_one_udhcpc_and_the_address_in_place() {
    let farm = start_on_dhcp();
    let node = farm.node(0);
    let before = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));
    let address = before.address.clone().expect("an address");
    let on_bridge = || {
        let out = node
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", "br-grove"])
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {address} "))
    };
    let mut udhcpc = Vec::new();
    let one = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        udhcpc = node.processes("udhcpc");
        udhcpc.len() == 1
    });
    assert!(one, "udhcpc before any kill: {udhcpc:?}");
    for round in 1..=5 {
        let old = node.kill_daemon(Daemon::Netd).expect("kill -9 netd");
        let mut flushed = false;
        let mut new = None;
        let back = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            flushed |= !on_bridge();
            new = node
                .service(Daemon::Netd)
                .ok()
                .filter(|s| s.state == "ready")
                .and_then(|s| s.pid)
                .filter(|p| *p != old);
            new.is_some()
        });
        assert!(back, "round {round}: netd not back\n{}", farm.logs(30));
        let after = wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(20));
        assert_eq!(after.address, before.address, "round {round}");
        let one = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            flushed |= !on_bridge();
            udhcpc = node.processes("udhcpc");
            udhcpc.len() == 1
        });
        assert!(
            one,
            "round {round}: udhcpc processes {udhcpc:?}\n{}",
            farm.logs(30)
        );
        let parent = grove_testbed::proc::stat(udhcpc[0]).map(|s| s.ppid);
        assert_eq!(
            parent, new,
            "round {round}: udhcpc is not the new netd's child"
        );
        assert!(!flushed, "round {round}: the uplink address was flushed");
    }
}

/// Whether this kernel can make 802.1Q VLAN links, tried for real in a
/// scratch namespace.
fn kernel_has_vlans() -> bool {
    let ns = format!("gtb-vlanprobe-{}", std::process::id());
    let run = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        run(&["netns", "add", &ns]),
        "cannot create a scratch namespace"
    );
    let ok = run(&["-n", &ns, "link", "add", "d0", "type", "dummy"])
        && run(&[
            "-n", &ns, "link", "add", "link", "d0", "name", "d0.5", "type", "vlan", "id", "5",
        ]);
    assert!(
        run(&["netns", "del", &ns]),
        "cannot delete the scratch namespace"
    );
    ok
}

/// With 802.1Q, `vlan:priv=42` puts the uplink on VLAN 42 of a tagged port
/// and a node without it gets nothing there. Without 802.1Q in the kernel,
/// the node says so and never falls back to the untagged network.
#[test]
fn a_vlan_from_the_boot_parameters_tags_the_uplink_or_is_refused_clearly() {
    if kernel_has_vlans() {
        eprintln!("kernel has 802.1Q: testing a tagged uplink");
        let tagged = || {
            NodeSpec::default()
                .addressing(Addressing::None)
                .nics(vec![NicSpec::on_lan(0).tagged(42)])
        };
        let farm = start(FarmSpec::with_nodes(vec![
            tagged().cmdline("grove.farm=1 vlan:priv=42"),
            tagged(),
        ]));
        let (with_vlan, without) = (farm.node(0), farm.node(1));
        let report = wait_state(
            &farm,
            with_vlan,
            UplinkState::Bound,
            Duration::from_secs(30),
        );
        assert_eq!(report.nic.as_deref(), Some("eth0.42"), "{report:?}");
        assert_eq!(report.vlan, Some(42));
        let url = node_url(&report);
        let (status, _) = http_get(&url).expect("API on the VLAN");
        assert_eq!(status, 200);
        let report = wait_state(
            &farm,
            without,
            UplinkState::NoLease,
            Duration::from_secs(30),
        );
        assert!(
            report.probes.iter().all(|p| p.lease.is_none()),
            "{report:?}"
        );
    } else {
        eprintln!("kernel has no 802.1Q: testing that the VLAN is refused, not ignored");
        // Untagged DHCP is right there; the node must not take it.
        let node = NodeSpec::default()
            .addressing(Addressing::None)
            .cmdline("grove.farm=1 vlan:priv=42");
        let farm = start(FarmSpec::with_nodes(vec![node]));
        let node = farm.node(0);
        let report = wait_state(&farm, node, UplinkState::NoLease, Duration::from_secs(30));
        let error = report.error.clone().expect("the VLAN failure is reported");
        assert!(error.contains("eth0.42"), "{error}");
        assert_eq!(report.vlan, Some(42));
        assert!(report.address.is_none(), "{report:?}");
        assert!(
            farm.lan(0).lease_for(node.nics()[0].mac()).is_none(),
            "took an untagged lease"
        );
    }
}

/// The DHCP server goes away long enough for the lease to run out: the
/// uplink loses its address, keeps asking, and gets it back once the server
/// returns, with no restart.
#[test]
fn a_dhcp_server_gone_for_minutes_is_waited_out() {
    let node = NodeSpec::default().addressing(Addressing::None);
    let mut farm = start(FarmSpec {
        lans: vec![LanSpec::default().lease_secs(120)],
        ..FarmSpec::with_nodes(vec![node])
    });
    let before = wait_state(
        &farm,
        farm.node(0),
        UplinkState::Bound,
        Duration::from_secs(30),
    );
    let pid = farm.node(0).daemon_pid(Daemon::Netd).expect("netd runs");

    // Renewal at 60 s and rebinding at 105 s fail; at 120 s the lease ends.
    let lost = switch_dhcp(
        &mut farm,
        false,
        UplinkState::Rebinding,
        Duration::from_secs(180),
    );
    assert!(lost.address.is_none(), "{lost:?}");
    // The server stays away a while after the lease ended: netd keeps
    // asking, with its backoff, and must still take the server back.
    std::thread::sleep(Duration::from_secs(10));
    let after = switch_dhcp(&mut farm, true, UplinkState::Bound, Duration::from_secs(60));
    assert_eq!(
        after.address, before.address,
        "dnsmasq hands the same address back"
    );
    let url = node_url(&after);
    let (status, _) = http_get(&url).expect("API answers again");
    assert_eq!(status, 200);
    assert_eq!(
        farm.node(0).daemon_pid(Daemon::Netd),
        Some(pid),
        "netd was restarted"
    );
}

/// Where the LAN's router advertises an IPv6 prefix, the uplink bridge
/// takes an address in it by SLAAC.
#[test]
fn ipv6_comes_by_slaac_on_the_bridge() {
    let farm = start_on_dhcp();
    let node = farm.node(0);
    wait_state(&farm, node, UplinkState::Bound, Duration::from_secs(30));
    let prefix = farm.lan_subnet().ipv6_prefix();
    let mut seen = String::new();
    let slaac = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let out = node
            .exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", "br-grove", "scope", "global",
            ])
            .expect("ip");
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        seen.contains(&prefix)
    });
    assert!(slaac, "no SLAAC address in {prefix}/64 on br-grove: {seen}");
    // netd reports it with the bridge's other addresses.
    let interfaces: Vec<netd::uplink::Interface> = node
        .get(Daemon::Netd, "/v1/interfaces")
        .unwrap_or_else(|e| panic!("{}", grove_testbed::report(&e)));
    let bridge = interfaces.iter().find(|i| i.name == "br-grove");
    assert!(
        bridge.is_some_and(|b| b.addresses.iter().any(|a| a.starts_with(&prefix))),
        "{interfaces:?}"
    );
}
