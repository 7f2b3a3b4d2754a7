//! netd's own command-line flags, and how to build them.
//!
//! The binary parses [`Flags`]; the agent, which starts netd, builds the
//! same struct from the boot parameters and turns it into arguments with
//! [`Flags::to_args`], so the flag spellings live in one place. A unit test
//! checks that every flag built parses back to the same value.

use crate::uplink::Overrides;

/// What `netd --help` says netd is.
pub const ABOUT: &str = "Node networking: uplink bring-up, the regional WireGuard mesh `mesh0`, tenant networks and their firewall.";

/// What netd takes on its command line besides the daemon's own flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Flags {
    #[command(flatten)]
    pub uplink: Overrides,
    /// storaged's socket: netd reads and writes its mesh and tenant state
    /// only once storaged answers ready there (the system cache, where that
    /// state lives, is mounted by then). The uplink does not wait.
    #[arg(long, value_name = "SOCKET")]
    pub state_after: Option<std::path::PathBuf>,
}

impl Flags {
    /// The daemon with these flags: what its binary runs.
    pub async fn run(
        self,
        config: crate::Config,
        shutdown: grove_daemon::shutdown::Shutdown,
    ) -> Result<(), crate::NetdError> {
        let gate = crate::state::Gate::new(self.state_after.clone());
        crate::run(config, self.overrides(), gate, shutdown).await
    }

    /// The arguments that make netd parse back exactly these flags.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut add = |flag: &str, value: String| {
            args.push(format!("--{flag}"));
            args.push(value);
        };
        let uplink = &self.uplink;
        if let Some(nic) = &uplink.nic {
            add("uplink", nic.to_string());
        }
        if let Some(address) = uplink.address {
            add("address", address.to_string());
        }
        if let Some(gateway) = uplink.gateway {
            add("gateway", gateway.to_string());
        }
        for dns in &uplink.dns {
            add("dns", dns.to_string());
        }
        if let Some(vlan) = uplink.vlan {
            add("vlan", vlan.get().to_string());
        }
        if let Some(socket) = &self.state_after {
            add("state-after", socket.display().to_string());
        }
        args
    }

    /// The uplink overrides these flags ask for.
    pub fn overrides(self) -> Overrides {
        self.uplink
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    type Cli = grove_daemon::cli::Cli<Flags>;

    #[test]
    fn built_flags_parse_back_to_the_same_value() {
        let cases = [
            Flags::default(),
            Flags {
                uplink: Overrides {
                    nic: Some("eth1".parse().unwrap()),
                    address: Some("10.1.2.3/24".parse().unwrap()),
                    gateway: Some(Ipv4Addr::new(10, 1, 2, 1)),
                    dns: vec!["10.1.2.1".parse().unwrap(), "2001:db8::53".parse().unwrap()],
                    vlan: Some("42".parse().unwrap()),
                },
                state_after: Some("/run/grove/storaged.sock".into()),
            },
        ];
        for flags in cases {
            assert_eq!(Cli::flags_of(crate::NAME, flags.to_args()).unwrap(), flags);
        }
    }

    #[test]
    fn a_bad_flag_value_is_refused() {
        assert!(Cli::try_parse_args(crate::NAME, ["--vlan", "5000"]).is_err());
        assert!(Cli::try_parse_args(crate::NAME, ["--uplink", "a/b"]).is_err());
    }
}
