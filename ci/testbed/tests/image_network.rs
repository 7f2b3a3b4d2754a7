//! The image's networking under QEMU, where the image's own kernel runs
//! (the namespace testbed shares the host's, which has neither WireGuard
//! nor 802.1Q): two nodes on one farm LAN mesh over kernel WireGuard, and
//! a node on a tagged switch port gets its lease on the VLAN.

mod common;

use std::time::{Duration, Instant};

use common::{Lan, ONE_AT_A_TIME, comes_up_as, get_json, image};
use grove_testbed::qemu::{MachineSpec, QemuNode};
use grove_testbed::wait_until;
use serde_json::Value;

/// The VLAN of the tagged port.
const VLAN: u16 = 42;

/// The peer with `key` in a `/v1/mesh` answer.
fn peer<'a>(mesh: &'a Value, key: &str) -> Option<&'a Value> {
    mesh["peers"]
        .as_array()?
        .iter()
        .find(|p| p["public_key"] == key)
}

fn counter(peer: Option<&Value>, field: &str) -> u64 {
    peer.and_then(|p| p[field].as_u64()).unwrap_or(0)
}

/// Two nodes booted from the image on one farm LAN, registered with the
/// farm's registry, which gives each the other as its mesh peer. Node 1
/// is booted with `grove.mesh.public=0` (its mesh port is not reachable,
/// as behind a NAT), so it keeps a persistent keepalive to node 0, its
/// relay; node 0 has no endpoint for it until node 1's packets arrive.
/// Both run kernel WireGuard (the image's kernel has the module), both
/// see a recent handshake with the other, node 0 learns node 1's endpoint
/// from its authenticated packets, and the byte counters on both sides go
/// on growing: traffic flows over the mesh.
/// Boots one machine of the image per command line in `params`, machine
/// `i` with `params[i]`, each on a plain port of the LAN or on a port
/// tagged for `tagged`.
fn boot_each(lan: &Lan, params: &[String], tagged: Option<u16>) -> Vec<QemuNode> {
    params
        .iter()
        .enumerate()
        .map(|(index, cmdline)| {
            let spec = MachineSpec {
                cmdline: cmdline.clone(),
                tagged,
                ..MachineSpec::default()
            };
            QemuNode::boot(&lan.farm, index, image(), &spec).expect("QEMU starts")
        })
        .collect()
}

#[test]
fn two_nodes_mesh_over_kernel_wireguard_and_traffic_flows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    let params = [
        lan.node_params(),
        format!("{} grove.mesh.public=0", lan.node_params()),
    ];
    let started = Instant::now();
    let mut nodes = boot_each(&lan, &params, None);
    let apis: Vec<String> = nodes
        .iter_mut()
        .enumerate()
        .map(|(index, node)| {
            let up = comes_up_as(&lan.farm, &lan.registry, node, index, started);
            eprintln!(
                "node {index}: API answered after {:.1} s, ready after {:.1} s",
                up.answered.as_secs_f64(),
                up.ready.as_secs_f64()
            );
            up.api
        })
        .collect();
    let logs = |nodes: &[QemuNode]| nodes.iter().map(|n| n.logs(40)).collect::<String>();

    // Each node's WireGuard key, from its own identity.
    let keys: Vec<String> = apis
        .iter()
        .map(|api| {
            let node = get_json(&format!("{api}/v1/node")).expect("/v1/node answers");
            let key = node["identity"]["wireguard_public_key"].as_str();
            key.expect("a WireGuard public key").to_owned()
        })
        .collect();
    assert_ne!(keys[0], keys[1]);

    // Both meshes are configured on kernel WireGuard, with no userspace
    // process, and /v1/network shows mesh0 as a kernel WireGuard link.
    for (index, api) in apis.iter().enumerate() {
        let mesh = get_json(&format!("{api}/v1/mesh")).expect("/v1/mesh answers");
        assert_eq!(mesh["configured"], true, "node {index}: {mesh}");
        assert_eq!(mesh["backend"], "kernel", "node {index}: {mesh}");
        assert!(mesh["pid"].is_null(), "node {index}: {mesh}");
        assert_eq!(mesh["public_key"], keys[index].as_str(), "{mesh}");
        assert_eq!(mesh["public_endpoint"], index == 0, "node {index}: {mesh}");
        let text = mesh.to_string();
        assert!(!text.contains("private"), "node {index}: {text}");
        let network = get_json(&format!("{api}/v1/network")).expect("/v1/network answers");
        let interfaces = network["interfaces"].as_array().expect("interfaces");
        let mesh0 = interfaces.iter().find(|i| i["name"] == "mesh0");
        let mesh0 = mesh0.unwrap_or_else(|| panic!("node {index} has no mesh0: {network}"));
        assert_eq!(mesh0["kind"], "wireguard", "node {index}: {mesh0}");
    }

    // Each node has the other as its only peer, with a recent handshake
    // and bytes both ways.
    let mut meshes = [Value::Null, Value::Null];
    let handshaken = wait_until(Duration::from_secs(240), Duration::from_secs(1), || {
        (0..2).all(|index| {
            meshes[index] = get_json(&format!("{}/v1/mesh", apis[index])).unwrap_or(Value::Null);
            let other = peer(&meshes[index], &keys[1 - index]);
            other.is_some_and(|p| {
                p["latest_handshake_secs_ago"]
                    .as_u64()
                    .is_some_and(|s| s < 120)
            }) && counter(other, "rx_bytes") > 0
                && counter(other, "tx_bytes") > 0
        })
    });
    assert!(
        handshaken,
        "no handshake both ways:\nnode 0: {}\nnode 1: {}\n{}",
        meshes[0],
        meshes[1],
        logs(&nodes)
    );
    for (index, mesh) in meshes.iter().enumerate() {
        let peers = mesh["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 1, "node {index}: {mesh}");
    }
    // Node 1 goes through node 0, its relay, with a keepalive to it; node
    // 0 was given no endpoint for node 1 and learnt it from its packets.
    assert_eq!(meshes[1]["relay"], keys[0].as_str(), "{}", meshes[1]);
    let to_relay = peer(&meshes[1], &keys[0]).expect("node 0 is node 1's peer");
    assert_eq!(to_relay["persistent_keepalive"], 25, "{to_relay}");
    let node1_ip = apis[1]
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix(":8080"))
        .expect("http://IP:8080");
    let learnt = peer(&meshes[0], &keys[1]).expect("node 1 is node 0's peer");
    assert!(
        learnt["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{node1_ip}:"))),
        "node 0 did not learn node 1's endpoint: {learnt}"
    );

    // Traffic goes on flowing: the counters grow on both sides.
    let before: Vec<(u64, u64)> = (0..2)
        .map(|index| {
            let other = peer(&meshes[index], &keys[1 - index]);
            (counter(other, "rx_bytes"), counter(other, "tx_bytes"))
        })
        .collect();
    let mut now = [Value::Null, Value::Null];
    let grew = wait_until(Duration::from_secs(120), Duration::from_secs(1), || {
        (0..2).all(|index| {
            now[index] = get_json(&format!("{}/v1/mesh", apis[index])).unwrap_or(Value::Null);
            let other = peer(&now[index], &keys[1 - index]);
            let (rx, tx) = (counter(other, "rx_bytes"), counter(other, "tx_bytes"));
            // Node 1 sends keepalives; node 0 receives them.
            if index == 0 {
                rx > before[0].0
            } else {
                tx > before[1].1
            }
        })
    });
    assert!(
        grew,
        "no traffic after {before:?}:\nnode 0: {}\nnode 1: {}",
        now[0], now[1]
    );
    for (index, mesh) in now.iter().enumerate() {
        let other = peer(mesh, &keys[1 - index]).expect("the peer");
        eprintln!(
            "node {index}: {} WireGuard, peer {}: handshake {} s ago, rx {} B, tx {} B",
            mesh["backend"],
            other["public_key"],
            other["latest_handshake_secs_ago"],
            other["rx_bytes"],
            other["tx_bytes"]
        );
    }

    for node in &mut nodes {
        node.stop().expect("QEMU stops");
    }
    drop(nodes);
    lan.teardown();
}

/// Two machines on tagged ports of VLAN 42 of the farm LAN, whose DHCP
/// server is on the VLAN (the port passes only the VLAN's frames, untagged
/// on the LAN's side): node 0 boots with `grove.vlan=42`, gets its lease
/// over the VLAN, comes up and answers its API on that address; node 1,
/// the same machine without `grove.vlan`, asks untagged, is refused by
/// the port and gets no lease.
#[test]
fn a_node_on_a_tagged_port_gets_its_lease_on_the_vlan() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::start();
    let params = [
        format!("{} grove.vlan={VLAN}", lan.node_params()),
        lan.node_params(),
    ];
    let started = Instant::now();
    let mut nodes = boot_each(&lan, &params, Some(VLAN));

    let up = comes_up_as(&lan.farm, &lan.registry, &mut nodes[0], 0, started);
    eprintln!(
        "tagged port: API answered after {:.1} s, ready after {:.1} s",
        up.answered.as_secs_f64(),
        up.ready.as_secs_f64()
    );

    // The uplink is the VLAN link on the NIC, holding the lease.
    let network = get_json(&format!("{}/v1/network", up.api)).expect("/v1/network answers");
    let uplink = &network["uplink"];
    assert_eq!(uplink["vlan"], VLAN, "{network}");
    let ip = lan.farm.lan(0).lease_for(nodes[0].mac()).expect("a lease");
    assert_eq!(up.api, format!("http://{ip}:8080"));
    assert!(
        uplink["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{ip}/"))),
        "{network}"
    );
    // The probe that got the lease ran on the NIC's VLAN link, and that
    // link is the uplink.
    let probes = uplink["probes"].as_array().expect("probes");
    let leased = probes.iter().find(|p| !p["lease"].is_null());
    let nic = leased.and_then(|p| p["nic"].as_str());
    let vlan_link = format!("{}.{VLAN}", nic.expect("a NIC with a lease"));
    assert_eq!(uplink["nic"], vlan_link.as_str(), "{network}");
    let interfaces = network["interfaces"].as_array().expect("interfaces");
    assert!(
        interfaces
            .iter()
            .any(|i| i["name"] == vlan_link.as_str() && i["kind"] == "vlan"),
        "no {vlan_link}: {network}"
    );
    // Everything the node exchanged with the LAN went through the port
    // tagged.
    let counts = nodes[0].trunk_counts().expect("a tagged port");
    assert!(counts.to_lan > 0 && counts.to_machine > 0, "{counts:?}");

    // Node 1 asked untagged: the port refused its DHCP requests, dnsmasq
    // never heard of it, it has no lease, and its screen says so.
    let mut console = String::new();
    let mut untagged = nodes[1].trunk_counts().expect("a tagged port");
    let refused = wait_until(Duration::from_secs(180), Duration::from_millis(500), || {
        console = std::fs::read_to_string(nodes[1].console_log()).unwrap_or_default();
        untagged = nodes[1].trunk_counts().expect("a tagged port");
        (untagged.refused_dhcp >= 3 && console.contains("farm LAN's DHCP server"))
            || !nodes[1].running()
    });
    assert!(
        refused && nodes[1].running(),
        "node 1 did not ask untagged and report a missing lease: {untagged:?}\n{}",
        nodes[1].logs(60)
    );
    assert_eq!(untagged.to_lan, 0, "{untagged:?}");
    assert_eq!(
        lan.farm.lan(0).lease_for(nodes[1].mac()),
        None,
        "untagged DHCP gave node 1 an address"
    );
    let log = std::fs::read_to_string(lan.farm.lan(0).dnsmasq_log()).expect("dnsmasq log");
    assert!(log.contains(nodes[0].mac()), "dnsmasq never served node 0");
    assert!(
        !log.contains(nodes[1].mac()),
        "dnsmasq heard node 1 untagged\n{log}"
    );
    eprintln!(
        "tagged port: node 0's port passed {} frames to the LAN and {} back; \
         node 1's refused {} untagged frames, {} of them DHCP requests",
        counts.to_lan, counts.to_machine, untagged.refused, untagged.refused_dhcp
    );

    for node in &mut nodes {
        node.stop().expect("QEMU stops");
    }
    drop(nodes);
    lan.teardown();
}
