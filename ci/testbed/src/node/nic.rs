//! A node's NIC: a veth pair whose node end is `eth<k>` inside the node's
//! namespace and whose LAN end `n<i>e<k>` is a port of the LAN's bridge.
//!
//! The pair is created from the LAN namespace with the node end moved
//! straight into the node, with a MAC derived from run, node and NIC index
//! so tests can find the node's DHCP lease; carrier is simulated by taking
//! the LAN end down or up. Limits: link speed, duplex and driver name are
//! those of veth, not of real hardware.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cmd::{self, CmdError};
use crate::ifname::{IfName, IfNameError};
use crate::lan::Lan;
use crate::run::RunId;
use crate::spec::NicSpec;

/// A NIC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error("invalid interface name")]
    Name(#[from] IfNameError),
    #[error("could not create {name} of {netns}")]
    Create {
        name: IfName,
        netns: String,
        #[source]
        source: CmdError,
    },
    #[error("could not set carrier of {name} (LAN port {port})")]
    Carrier {
        name: IfName,
        port: IfName,
        #[source]
        source: CmdError,
    },
}

/// One NIC of a node.
#[derive(Debug)]
pub struct Nic {
    name: IfName,
    lan: usize,
    port: IfName,
    lan_netns: String,
    mac: String,
    carrier: AtomicBool,
}

impl Nic {
    /// Creates NIC `k` of node `node` (namespace `netns`) on `lan`.
    pub fn create(
        run: &RunId,
        node: usize,
        k: usize,
        spec: NicSpec,
        netns: &str,
        lan: &Lan,
    ) -> Result<Nic, NicError> {
        let nic = Nic {
            name: IfName::new(format!("eth{k}"))?,
            lan: spec.lan,
            port: IfName::new(format!("n{node}e{k}"))?,
            lan_netns: lan.netns().to_owned(),
            mac: mac(run, node, k),
            carrier: AtomicBool::new(spec.carrier),
        };
        let ns = nic.lan_netns.as_str();
        let port = nic.port.as_str();
        let create: &[&str] = &[
            "-n",
            ns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            nic.name.as_str(),
            "address",
            &nic.mac,
            "netns",
            netns,
        ];
        // A tagged port: only the VLAN link joins the bridge.
        let tagged = spec.vlan.map(|id| (format!("{port}v"), id.to_string()));
        let mut steps: Vec<Vec<&str>> = vec![create.to_vec()];
        let bridged = match &tagged {
            Some((vlan, id)) => {
                steps.push(vec![
                    "-n", ns, "link", "add", "link", port, "name", vlan, "type", "vlan", "id", id,
                ]);
                steps.push(vec!["-n", ns, "link", "set", vlan, "up"]);
                vlan.as_str()
            }
            None => port,
        };
        steps.push(vec![
            "-n",
            ns,
            "link",
            "set",
            bridged,
            "master",
            lan.bridge().as_str(),
        ]);
        for args in steps {
            cmd::run("ip", &args).map_err(|source| NicError::Create {
                name: nic.name.clone(),
                netns: netns.to_owned(),
                source,
            })?;
        }
        nic.set_carrier(spec.carrier)?;
        Ok(nic)
    }

    /// `eth<k>`, as the node sees it.
    pub fn name(&self) -> &IfName {
        &self.name
    }

    /// The LAN this NIC is plugged into.
    pub fn lan(&self) -> usize {
        self.lan
    }

    /// The LAN end of the cable, a port of the LAN's bridge.
    pub fn port(&self) -> &IfName {
        &self.port
    }

    /// The node end's MAC address, `02:rr:rr:rr:ii:kk`.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// Whether the cable is plugged in (the LAN end is up).
    pub fn carrier(&self) -> bool {
        self.carrier.load(Ordering::SeqCst)
    }

    /// Plugs (true) or pulls (false) the cable.
    pub fn set_carrier(&self, up: bool) -> Result<(), NicError> {
        let state = if up { "up" } else { "down" };
        cmd::run(
            "ip",
            &[
                "-n",
                &self.lan_netns,
                "link",
                "set",
                self.port.as_str(),
                state,
            ],
        )
        .map_err(|source| NicError::Carrier {
            name: self.name.clone(),
            port: self.port.clone(),
            source,
        })?;
        self.carrier.store(up, Ordering::SeqCst);
        Ok(())
    }
}

/// A locally administered unicast MAC unique per run, node and NIC.
fn mac(run: &RunId, node: usize, k: usize) -> String {
    let id = run.as_str();
    format!(
        "02:{}:{}:{}:{:02x}:{:02x}",
        &id[0..2],
        &id[2..4],
        &id[4..6],
        node % 256,
        k % 256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let run = RunId::parse("0a1b2c").expect("valid");
        assert_eq!(mac(&run, 0, 1), "02:0a:1b:2c:00:01");
        assert_eq!(mac(&run, 17, 0), "02:0a:1b:2c:11:00");
        assert_ne!(mac(&run, 1, 0), mac(&run, 0, 1));
    }
}
