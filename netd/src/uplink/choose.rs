//! Which NIC becomes the uplink, among those that got a lease.
//!
//! A private gateway wins over a public one (a farm LAN beats a NIC
//! plugged straight into a modem), then the lowest address; ties go to the
//! lowest interface name, so the choice is the same on every boot.

use std::net::Ipv4Addr;

use super::dhcp::Lease;
use crate::types::InterfaceName;

fn private(ip: Ipv4Addr) -> bool {
    ip.is_private() || (ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1]))
}

/// The index of the winning lease.
pub fn choose(leases: &[(InterfaceName, Lease)]) -> Option<usize> {
    leases
        .iter()
        .enumerate()
        .min_by_key(|(_, (name, lease))| {
            let gateway_public = !lease.router.is_some_and(private);
            (gateway_public, u32::from(lease.address), name.clone())
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: [u8; 4], gw: Option<[u8; 4]>) -> Lease {
        Lease {
            address: Ipv4Addr::from(ip),
            prefix: 24,
            router: gw.map(Ipv4Addr::from),
            dns: vec![],
            lease_secs: None,
            server: None,
        }
    }

    fn nic(n: &str) -> InterfaceName {
        n.parse().expect("name")
    }

    #[test]
    fn private_gateway_then_lowest_address() {
        let leases = vec![
            (nic("eth0"), lease([85, 1, 2, 3], Some([85, 1, 2, 1]))),
            (nic("eth1"), lease([10, 0, 0, 50], Some([10, 0, 0, 1]))),
            (nic("eth2"), lease([10, 0, 0, 20], Some([10, 0, 0, 1]))),
        ];
        assert_eq!(choose(&leases), Some(2));
        assert_eq!(choose(&leases[..1]), Some(0));
        assert_eq!(choose(&[]), None);
        let no_gw = vec![
            (nic("eth0"), lease([10, 0, 0, 9], None)),
            (nic("eth1"), lease([10, 0, 0, 99], Some([192, 168, 0, 1]))),
        ];
        assert_eq!(
            choose(&no_gw),
            Some(1),
            "a lease with a private gateway beats one without"
        );
    }
}
