//! Boot parameters: the kernel command line, parsed into typed values.
//!
//! Grove's own keys are `grove.*`; zos's spellings (`farmer_id=`, `runmode=`,
//! `vlan:priv=`, `zos-debug`) are accepted too, so a zos farmer's boot config
//! works unchanged. Parsing never fails as a whole: every bad key is collected
//! as a [`ParamError`] naming the key, its value and the reason, and the rest
//! still applies, so a typo is reported in the status instead of crash-looping
//! the node. Keys that belong to the kernel or to nobody are ignored.

mod tokenize;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use netd::types::{InterfaceName, Ipv4Cidr, VlanId};
use serde::{Deserialize, Serialize};
use storaged::types::DiskSerial;

/// Which registry the node talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChainBackend {
    /// The single-machine registry: a farm's first steps, the sandbox, tests.
    #[default]
    Embedded,
    /// A real TFChain region, over Substrate RPC.
    Tfchain,
}

/// zos's `runmode`: which public TFChain network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Dev,
    Qa,
    Test,
    Main,
}

impl RunMode {
    /// The public RPC endpoint of that network.
    pub fn chain_url(self) -> &'static str {
        match self {
            RunMode::Dev => "wss://tfchain.dev.grid.tf/ws",
            RunMode::Qa => "wss://tfchain.qa.grid.tf/ws",
            RunMode::Test => "wss://tfchain.test.grid.tf/ws",
            RunMode::Main => "wss://tfchain.grid.tf/ws",
        }
    }
}

/// Where the registry is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainParams {
    pub backend: ChainBackend,
    /// Explicit URL; when absent the run mode's, or the embedded default.
    pub url: Option<String>,
    pub run_mode: Option<RunMode>,
}

/// Network overrides: netd's for the uplink (the private network), and the
/// public network's VLAN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkParams {
    #[serde(flatten)]
    pub uplink: netd::uplink::Overrides,
    /// VLAN tag on the public network.
    pub public_vlan: Option<VlanId>,
}

/// Everything the kernel command line says to Grove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootParams {
    pub farm_id: Option<u32>,
    pub chain: ChainParams,
    pub network: NetworkParams,
    pub debug: bool,
    /// Disks the farmer asked to wipe, by serial.
    pub wipe: Vec<DiskSerial>,
    /// Whether other nodes can reach this node's mesh port at its LAN
    /// address (`grove.mesh.public=0` behind a NAT without a forwarded
    /// port); `None` keeps `[mesh] public_endpoint` of `agent.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_public: Option<bool>,
    pub upgrade: UpgradeParams,
}

/// The stick's slot the system booted from, and how long a system on
/// trial after an upgrade has to become ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeParams {
    /// `grove.slot=a|b`, which the stick's boot entries set.
    pub slot: Option<crate::upgrade::Slot>,
    /// `grove.upgrade.deadline=SECONDS`.
    pub deadline_secs: Option<u64>,
}

impl BootParams {
    /// The flags that tell storaged what the command line asks of it.
    pub fn storaged_flags(&self) -> storaged::flags::Flags {
        storaged::flags::Flags {
            wipe: self.wipe.clone(),
        }
    }

    /// The flags that tell netd what the command line asks of it.
    pub fn netd_flags(&self) -> netd::flags::Flags {
        netd::flags::Flags {
            uplink: self.network.uplink.clone(),
            state_after: None,
        }
    }
}

/// One key of the command line that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamError {
    /// The key as written, like `farmer_id`.
    pub param: String,
    pub value: String,
    pub reason: String,
}

/// The parsed command line: what applies, and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmdline {
    /// The raw text, as read.
    pub raw: String,
    pub params: BootParams,
    pub errors: Vec<ParamError>,
}

impl Cmdline {
    /// Reads and parses the command line at `path`; an unreadable file is
    /// itself reported as an error, with defaults for everything.
    pub fn read(path: &Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(e) => Self {
                raw: String::new(),
                params: BootParams::default(),
                errors: vec![ParamError {
                    param: path.display().to_string(),
                    value: String::new(),
                    reason: format!("cannot read the kernel command line: {e}"),
                }],
            },
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut parser = Parser::default();
        for (key, value) in tokenize::tokens(text) {
            parser.apply(&key, value.as_deref());
        }
        parser.finish();
        Self {
            raw: text.trim().to_owned(),
            params: parser.params,
            errors: parser.errors,
        }
    }
}

#[derive(Default)]
struct Parser {
    params: BootParams,
    errors: Vec<ParamError>,
    /// The key that set each single-valued parameter, to name conflicts.
    set_by: Vec<(&'static str, String)>,
}

impl Parser {
    fn apply(&mut self, key: &str, value: Option<&str>) {
        let v = value.unwrap_or("");
        match key {
            "grove.farm" | "farmer_id" => {
                if let Some(id) = self.parse_with(key, v, parse_farm_id) {
                    self.set_once("farm", key, v, |p| &mut p.farm_id, id);
                }
            }
            "grove.chain" => {
                if let Some(b) = self.parse_with(key, v, parse_backend) {
                    self.params.chain.backend = b;
                }
            }
            "grove.chain.url" => {
                if let Some(url) = self.parse_with(key, v, parse_url) {
                    self.set_once("chain url", key, v, |p| &mut p.chain.url, url);
                }
            }
            "runmode" => {
                if let Some(mode) = self.parse_with(key, v, parse_run_mode) {
                    self.params.chain.backend = ChainBackend::Tfchain;
                    self.set_once("run mode", key, v, |p| &mut p.chain.run_mode, mode);
                }
            }
            "grove.debug" | "zos-debug" => {
                if let Some(on) = self.parse_with(key, value.unwrap_or("1"), parse_bool) {
                    self.params.debug = on;
                }
            }
            "grove.wipe" => {
                for serial in v.split(',') {
                    if let Some(s) = self.parse_with(key, serial, |s| {
                        s.parse::<DiskSerial>().map_err(|e| e.to_string())
                    }) && !self.params.wipe.contains(&s)
                    {
                        self.params.wipe.push(s);
                    }
                }
            }
            "grove.mesh.public" => {
                if let Some(on) = self.parse_with(key, v, parse_bool) {
                    self.set_once("mesh endpoint", key, v, |p| &mut p.mesh_public, on);
                }
            }
            "grove.uplink" => {
                if let Some(n) = self.parse_with(key, v, |s| {
                    s.parse::<InterfaceName>().map_err(|e| e.to_string())
                }) {
                    self.set_once("uplink", key, v, |p| &mut p.network.uplink.nic, n);
                }
            }
            "grove.ip" => {
                if let Some(c) =
                    self.parse_with(key, v, |s| s.parse::<Ipv4Cidr>().map_err(|e| e.to_string()))
                {
                    self.set_once("address", key, v, |p| &mut p.network.uplink.address, c);
                }
            }
            "grove.gw" => {
                if let Some(gw) = self.parse_with(key, v, |s| {
                    s.parse::<Ipv4Addr>()
                        .map_err(|e| format!("not an IPv4 address: {e}"))
                }) {
                    self.set_once("gateway", key, v, |p| &mut p.network.uplink.gateway, gw);
                }
            }
            "grove.dns" => {
                for server in v.split(',') {
                    if let Some(ip) = self.parse_with(key, server, |s| {
                        s.parse::<IpAddr>()
                            .map_err(|e| format!("not an IP address: {e}"))
                    }) {
                        self.params.network.uplink.dns.push(ip);
                    }
                }
            }
            "grove.vlan" | "vlan:priv" => {
                if let Some(id) =
                    self.parse_with(key, v, |s| s.parse::<VlanId>().map_err(|e| e.to_string()))
                {
                    self.set_once("vlan", key, v, |p| &mut p.network.uplink.vlan, id);
                }
            }
            "vlan:pub" => {
                if let Some(id) =
                    self.parse_with(key, v, |s| s.parse::<VlanId>().map_err(|e| e.to_string()))
                {
                    self.set_once("public vlan", key, v, |p| &mut p.network.public_vlan, id);
                }
            }
            "grove.slot" => {
                if let Some(slot) = self.parse_with(key, v, str::parse::<crate::upgrade::Slot>) {
                    self.set_once("slot", key, v, |p| &mut p.upgrade.slot, slot);
                }
            }
            "grove.upgrade.deadline" => {
                if let Some(secs) = self.parse_with(key, v, parse_deadline) {
                    self.set_once(
                        "upgrade deadline",
                        key,
                        v,
                        |p| &mut p.upgrade.deadline_secs,
                        secs,
                    );
                }
            }
            k if k.starts_with("vlan:") => self.error(
                key,
                v,
                "unknown VLAN parameter: use vlan:priv=ID, vlan:pub=ID or grove.vlan=ID".to_owned(),
            ),
            k if k.starts_with("grove.") => {
                self.error(key, v, "unknown Grove boot parameter".to_owned())
            }
            _ => {}
        }
    }

    /// Checks that need the whole line: a gateway means nothing without a
    /// static address to reach it from.
    fn finish(&mut self) {
        let uplink = &self.params.network.uplink;
        if let (Some(gw), None) = (uplink.gateway, uplink.address) {
            self.error(
                "grove.gw",
                &gw.to_string(),
                "a static gateway needs a static address (grove.ip=ADDR/PREFIX)".to_owned(),
            );
            self.params.network.uplink.gateway = None;
        }
    }

    fn parse_with<T>(
        &mut self,
        key: &str,
        value: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(key, value, reason);
                None
            }
        }
    }

    /// Sets a single-valued parameter; a second, different value for it
    /// (under any spelling) is refused and the first one kept.
    fn set_once<T: PartialEq>(
        &mut self,
        what: &'static str,
        key: &str,
        value: &str,
        field: impl FnOnce(&mut BootParams) -> &mut Option<T>,
        new: T,
    ) {
        let slot = field(&mut self.params);
        match slot {
            Some(old) if *old != new => {
                let first = self
                    .set_by
                    .iter()
                    .find(|(w, _)| *w == what)
                    .map(|(_, k)| k.clone())
                    .unwrap_or_default();
                self.error(
                    key,
                    value,
                    format!("conflicts with the {what} already given by {first}"),
                );
            }
            Some(_) => {}
            None => {
                *slot = Some(new);
                self.set_by.push((what, key.to_owned()));
            }
        }
    }

    fn error(&mut self, key: &str, value: &str, reason: String) {
        self.errors.push(ParamError {
            param: key.to_owned(),
            value: value.to_owned(),
            reason,
        });
    }
}

fn parse_farm_id(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("farm id 0 does not exist; farm ids start at 1".to_owned()),
        Ok(id) => Ok(id),
        Err(e) => Err(format!("farm id must be a positive number: {e}")),
    }
}

fn parse_backend(s: &str) -> Result<ChainBackend, String> {
    match s {
        "embedded" => Ok(ChainBackend::Embedded),
        "tfchain" => Ok(ChainBackend::Tfchain),
        _ => Err("chain backend must be embedded or tfchain".to_owned()),
    }
}

fn parse_run_mode(s: &str) -> Result<RunMode, String> {
    match s {
        "dev" | "development" => Ok(RunMode::Dev),
        "qa" => Ok(RunMode::Qa),
        "test" | "testing" => Ok(RunMode::Test),
        "main" | "prod" | "production" => Ok(RunMode::Main),
        _ => Err("run mode must be dev, qa, test or main".to_owned()),
    }
}

fn parse_url(s: &str) -> Result<String, String> {
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        "chain URL needs a scheme (ws://, wss://, http:// or https://)".to_owned()
    })?;
    if !matches!(scheme, "ws" | "wss" | "http" | "https") {
        return Err(format!("unsupported URL scheme {scheme:?}"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err("chain URL has no host".to_owned());
    }
    Ok(s.to_owned())
}

fn parse_deadline(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(secs @ 30..=86_400) => Ok(secs),
        Ok(_) => Err("the upgrade deadline is 30 to 86400 seconds".to_owned()),
        Err(e) => Err(format!("the upgrade deadline is a number of seconds: {e}")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("must be 1/0, true/false, yes/no or on/off".to_owned()),
    }
}

#[cfg(test)]
mod tests;
