//! Every call a node sends to TFChain, built from Grove's own model as a
//! dynamic value with the runtime's field names, and encoded against the
//! runtime's metadata.
//!
//! Encoding goes through the metadata's type registry (`frame-decode`, as
//! `subxt` does before it signs), so a call whose shape the runtime does not
//! accept (a missing field, a wrong type, a renamed call) fails here with
//! the reason instead of as an invalid transaction on the chain. The unit
//! tests encode each call against TFChain spec 144's metadata.

use subxt::dynamic::Value;
use subxt::metadata::Metadata;

use crate::registry::model::{NodeRegistration, Resources};

pub const GRID: &str = "TfgridModule";
pub const CONTRACTS: &str = "SmartContractModule";

/// Why a call could not be encoded for the runtime.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{pallet}.{call} does not fit the runtime: {message}")]
    Encode {
        pallet: &'static str,
        call: &'static str,
        message: String,
    },
}

/// A call: pallet, call name and named arguments.
#[derive(Debug, Clone)]
pub struct Call {
    pub pallet: &'static str,
    pub name: &'static str,
    pub args: Vec<(&'static str, Value)>,
}

impl Call {
    fn new(pallet: &'static str, name: &'static str, args: Vec<(&'static str, Value)>) -> Self {
        Self { pallet, name, args }
    }

    /// The arguments as named fields.
    pub fn fields(&self) -> subxt::ext::scale_value::Composite<()> {
        subxt::ext::scale_value::Composite::named(
            self.args.iter().map(|(k, v)| ((*k).to_owned(), v.clone())),
        )
    }

    /// The SCALE call data (pallet index, call index, arguments) as the
    /// runtime described by `metadata` expects it.
    pub fn encode(&self, metadata: &Metadata) -> Result<Vec<u8>, CallError> {
        subxt::ext::frame_decode::extrinsics::encode_call_data(
            self.pallet,
            self.name,
            &self.fields(),
            metadata,
            metadata.types(),
        )
        .map_err(|e| CallError::Encode {
            pallet: self.pallet,
            call: self.name,
            message: e.to_string(),
        })
    }
}

/// Checks that `call` fits the runtime described by `metadata`.
pub fn check(call: &Call, metadata: &Metadata) -> Result<(), CallError> {
    call.encode(metadata).map(drop)
}

fn uint(n: impl Into<u128>) -> Value {
    Value::u128(n.into())
}

fn bytes(b: impl AsRef<[u8]>) -> Value {
    Value::from_bytes(b.as_ref())
}

fn option(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::unnamed_variant("Some", [v]),
        None => Value::unnamed_variant("None", []),
    }
}

/// Each of `items` as a value, in a list.
fn list<T>(items: &[T], value: fn(&T) -> Value) -> Value {
    Value::unnamed_composite(items.iter().map(value))
}

fn resources(r: &Resources) -> Value {
    Value::named_composite([
        ("hru", uint(r.hru)),
        ("sru", uint(r.sru)),
        ("cru", uint(r.cru)),
        ("mru", uint(r.mru)),
    ])
}

/// Where a node is; TFChain wants it on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub city: String,
    pub country: String,
    pub latitude: String,
    pub longitude: String,
}

fn location(l: &Location) -> Value {
    Value::named_composite([
        ("city", bytes(&l.city)),
        ("country", bytes(&l.country)),
        ("latitude", bytes(&l.latitude)),
        ("longitude", bytes(&l.longitude)),
    ])
}

fn node_fields(r: &NodeRegistration, loc: &Location) -> Vec<(&'static str, Value)> {
    let interfaces = r.interfaces.iter().map(|i| {
        Value::named_composite([
            ("name", bytes(&i.name)),
            ("mac", bytes(&i.mac)),
            // The chain keeps IPv4 and IPv6 addresses without their prefix.
            (
                "ips",
                Value::unnamed_composite(
                    i.ips
                        .iter()
                        .map(|ip| bytes(ip.split('/').next().unwrap_or(ip))),
                ),
            ),
        ])
    });
    vec![
        ("resources", resources(&r.resources)),
        ("location", location(loc)),
        ("interfaces", Value::unnamed_composite(interfaces)),
        ("secure_boot", Value::bool(r.secure_boot)),
        ("virtualized", Value::bool(r.virtualized)),
        (
            "serial_number",
            option(Some(bytes(&r.serial_number)).filter(|_| !r.serial_number.is_empty())),
        ),
    ]
}

/// `tfgridModule.userAcceptTc(documentLink, documentHash)`.
pub fn user_accept_tc(link: &str, hash: &str) -> Call {
    Call::new(
        GRID,
        "user_accept_tc",
        vec![
            ("document_link", bytes(link)),
            ("document_hash", bytes(hash)),
        ],
    )
}

/// `tfgridModule.createTwin(relay, pk)`.
pub fn create_twin(relay: Option<&str>, pk: Option<&[u8]>) -> Call {
    Call::new(
        GRID,
        "create_twin",
        vec![
            ("relay", option(relay.map(bytes))),
            ("pk", option(pk.map(bytes))),
        ],
    )
}

/// `tfgridModule.createNode(farmId, resources, location, interfaces, secureBoot, virtualized, serialNumber)`.
pub fn create_node(r: &NodeRegistration, loc: &Location) -> Call {
    let mut args = vec![("farm_id", uint(r.farm_id))];
    args.extend(node_fields(r, loc));
    Call::new(GRID, "create_node", args)
}

/// `tfgridModule.updateNode(nodeId, farmId, ...)`.
pub fn update_node(node_id: u32, r: &NodeRegistration, loc: &Location) -> Call {
    let mut args = vec![("node_id", uint(node_id)), ("farm_id", uint(r.farm_id))];
    args.extend(node_fields(r, loc));
    Call::new(GRID, "update_node", args)
}

/// `tfgridModule.reportUptimeV2(uptime, timestampHint)`.
pub fn report_uptime_v2(uptime: u64, timestamp_hint: u64) -> Call {
    Call::new(
        GRID,
        "report_uptime_v2",
        vec![
            ("uptime", uint(uptime)),
            ("timestamp_hint", uint(timestamp_hint)),
        ],
    )
}

/// What one contract uses on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractUse {
    pub contract_id: u64,
    pub used: Resources,
}

fn contract_use(u: &ContractUse) -> Value {
    Value::named_composite([
        ("contract_id", uint(u.contract_id)),
        ("used", resources(&u.used)),
    ])
}

/// `smartContractModule.reportContractResources(contractResources)`.
pub fn report_contract_resources(uses: &[ContractUse]) -> Call {
    Call::new(
        CONTRACTS,
        "report_contract_resources",
        vec![("contract_resources", list(uses, contract_use))],
    )
}

/// A deployment's hash and data, as a node contract holds them.
fn deployment_fields(hash: &[u8; 32], data: &[u8]) -> [(&'static str, Value); 2] {
    [
        ("deployment_hash", bytes(hash)),
        ("deployment_data", bytes(data)),
    ]
}

/// `smartContractModule.createNodeContract(nodeId, deploymentHash,
/// deploymentData, publicIps, solutionProviderId)`, sent by a tenant.
pub fn create_node_contract(
    node_id: u32,
    deployment_hash: &[u8; 32],
    deployment_data: &[u8],
    public_ips: u32,
    solution_provider_id: Option<u64>,
) -> Call {
    let mut args = vec![("node_id", uint(node_id))];
    args.extend(deployment_fields(deployment_hash, deployment_data));
    args.extend([
        ("public_ips", uint(public_ips)),
        (
            "solution_provider_id",
            option(solution_provider_id.map(uint)),
        ),
    ]);
    Call::new(CONTRACTS, "create_node_contract", args)
}

/// `smartContractModule.updateNodeContract(contractId, deploymentHash,
/// deploymentData)`, sent by the contract's owner.
pub fn update_node_contract(
    contract_id: u64,
    deployment_hash: &[u8; 32],
    deployment_data: &[u8],
) -> Call {
    let mut args = vec![("contract_id", uint(contract_id))];
    args.extend(deployment_fields(deployment_hash, deployment_data));
    Call::new(CONTRACTS, "update_node_contract", args)
}

/// `smartContractModule.cancelContract(contractId)`, sent by the owner.
pub fn cancel_contract(contract_id: u64) -> Call {
    Call::new(
        CONTRACTS,
        "cancel_contract",
        vec![("contract_id", uint(contract_id))],
    )
}

/// Public traffic one contract used in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NruReport {
    pub contract_id: u64,
    pub timestamp: u64,
    pub window: u64,
    pub nru: u64,
}

fn nru_report(r: &NruReport) -> Value {
    Value::named_composite([
        ("contract_id", uint(r.contract_id)),
        ("timestamp", uint(r.timestamp)),
        ("window", uint(r.window)),
        ("nru", uint(r.nru)),
    ])
}

/// `smartContractModule.addNruReports(reports)`.
pub fn add_nru_reports(reports: &[NruReport]) -> Call {
    Call::new(
        CONTRACTS,
        "add_nru_reports",
        vec![("reports", list(reports, nru_report))],
    )
}

#[cfg(test)]
mod tests {
    use subxt::ext::codec::Decode;

    use super::*;
    use crate::registry::model::Interface;

    /// TFChain spec 144's metadata, beside the repository.
    fn metadata() -> Metadata {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/tfchain/metadata-v144.scale"
        );
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!("{path}: {e}: the TFChain metadata must sit beside the repository")
        });
        Metadata::decode(&mut &bytes[..]).expect("the metadata decodes")
    }

    fn registration() -> NodeRegistration {
        NodeRegistration {
            farm_id: 1,
            twin_id: 7,
            resources: Resources {
                hru: 4 << 40,
                sru: 512 << 30,
                cru: 16,
                mru: 64 << 30,
            },
            interfaces: vec![Interface {
                name: "br-grove".into(),
                mac: "02:00:00:00:00:01".into(),
                ips: vec!["10.77.0.10/24".into(), "2001:db8::10/64".into()],
            }],
            serial_number: "SN-1234".into(),
            virtualized: false,
            secure_boot: true,
        }
    }

    fn location() -> Location {
        Location {
            city: "Ghent".into(),
            country: "Belgium".into(),
            latitude: "51.05".into(),
            longitude: "3.72".into(),
        }
    }

    /// Pallet and call indices, as `calls-v144.txt` lists them.
    #[test]
    fn every_call_grove_sends_encodes_against_spec_144() {
        let md = metadata();
        let cases: Vec<(Call, [u8; 2])> = vec![
            (
                user_accept_tc("https://library.threefold.me/info/legal/", "9f1c2b"),
                [25, 25],
            ),
            (create_twin(None, None), [25, 17]),
            (
                create_twin(Some("relay.grid.tf"), Some(&[1, 2, 3])),
                [25, 17],
            ),
            (create_node(&registration(), &location()), [25, 8]),
            (update_node(42, &registration(), &location()), [25, 9]),
            (report_uptime_v2(3600, 1_800_000_000), [25, 38]),
            (
                report_contract_resources(&[ContractUse {
                    contract_id: 9,
                    used: Resources {
                        hru: 0,
                        sru: 10 << 30,
                        cru: 2,
                        mru: 4 << 30,
                    },
                }]),
                [26, 6],
            ),
            (
                create_node_contract(3, &[b'a'; 32], b"{}", 0, None),
                [26, 0],
            ),
            (
                create_node_contract(3, &[b'a'; 32], b"", 1, Some(7)),
                [26, 0],
            ),
            (update_node_contract(9, &[b'b'; 32], b""), [26, 1]),
            (cancel_contract(9), [26, 2]),
            (
                add_nru_reports(&[NruReport {
                    contract_id: 9,
                    timestamp: 1_800_000_000,
                    window: 3600,
                    nru: 1 << 20,
                }]),
                [26, 5],
            ),
        ];
        for (call, indices) in cases {
            let data = call
                .encode(&md)
                .unwrap_or_else(|e| panic!("{}.{}: {e}", call.pallet, call.name));
            assert_eq!(data[..2], indices, "{}.{}", call.pallet, call.name);
        }
    }

    #[test]
    fn uptime_arguments_are_little_endian_u64s() {
        let data = report_uptime_v2(0x0102, 0x0304)
            .encode(&metadata())
            .expect("encodes");
        let mut expected = vec![25, 38];
        expected.extend(0x0102u64.to_le_bytes());
        expected.extend(0x0304u64.to_le_bytes());
        assert_eq!(data, expected);
    }

    #[test]
    fn a_contract_hash_is_32_raw_bytes_without_a_length_prefix() {
        let data = create_node_contract(0x0102, &[b'f'; 32], b"", 0, None)
            .encode(&metadata())
            .expect("encodes");
        let mut expected = vec![26, 0];
        expected.extend(0x0102u32.to_le_bytes());
        expected.extend([b'f'; 32]);
        expected.push(0); // empty deployment data: compact length 0
        expected.extend(0u32.to_le_bytes());
        expected.push(0); // no solution provider
        assert_eq!(data, expected);
    }

    #[test]
    fn a_call_the_runtime_does_not_know_is_refused_by_name() {
        let md = metadata();
        let renamed = Call::new(GRID, "report_uptime_v3", vec![]);
        let e = renamed.encode(&md).expect_err("no such call");
        assert!(e.to_string().contains("report_uptime_v3"), "{e}");
        let missing = Call::new(GRID, "report_uptime_v2", vec![("uptime", Value::u128(1))]);
        assert!(missing.encode(&md).is_err(), "a missing argument must fail");
        let wrong = Call::new(
            GRID,
            "report_uptime_v2",
            vec![
                ("uptime", Value::bool(true)),
                ("timestamp_hint", Value::u128(1)),
            ],
        );
        assert!(wrong.encode(&md).is_err(), "a wrong type must fail");
    }
}
