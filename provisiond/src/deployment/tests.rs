//! The deployment against the vectors made with ThreeFold's own SDK, byte
//! for byte, and against bad input.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

use super::signature::{
    Signature, SignatureError, SignatureStyle, SignatureType, signed_message, verify_one,
};
use super::*;

const VECTORS: &str = include_str!("../../tests/data/zos-vectors.json");

/// The private key in the vectors' network: it must never show in an error.
const PRIVATE_KEY: &str = "GDx0v1Zx8h7R0QeQ0eF0y7w5sT0d3n9yqv2j4h1k5mI=";

fn vectors() -> Vec<Value> {
    serde_json::from_str(VECTORS).expect("the vectors are JSON")
}

fn vector(name_prefix: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(name_prefix))
        })
        .expect("vector present")
}

fn wire(v: &Value) -> &str {
    v["wire_json"].as_str().expect("wire_json")
}

fn key32(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn keys_of(v: &Value) -> BTreeMap<u32, [u8; 32]> {
    v["signers"]
        .as_array()
        .expect("signers")
        .iter()
        .map(|s| {
            let twin = u32::try_from(s["twin_id"].as_u64().expect("twin")).expect("u32");
            (twin, key32(s["public_key_hex"].as_str().expect("key")))
        })
        .collect()
}

#[test]
fn every_vector_comes_out_byte_for_byte() {
    let all = vectors();
    assert_eq!(all.len(), 3, "the vector file holds three deployments");
    for v in &all {
        let name = v["name"].as_str().expect("name");
        let deployment = Deployment::parse(wire(v).as_bytes()).expect(name);
        assert_eq!(
            deployment.challenge(),
            v["challenge"].as_str().expect("challenge"),
            "{name}"
        );
        let hash = deployment.hash();
        assert_eq!(hash.hex(), v["md5_hex"].as_str().expect("md5"), "{name}");
        assert_eq!(
            hex::encode(hash.chain_hash()),
            v["chain_deployment_hash_hex"].as_str().expect("chain hash"),
            "{name}"
        );
        let style = deployment.signature_requirement.signature_style;
        assert_eq!(
            style.as_str(),
            v["signature_style"].as_str().expect("style"),
            "{name}"
        );
        let message = signed_message(&hash, style);
        if let Some(hex_text) = v["signed_message_hex"].as_str() {
            assert_eq!(hex::encode(&message), hex_text, "{name}");
        } else {
            let ascii = v["signed_message_ascii"].as_str().expect("signed message");
            assert_eq!(message, ascii.as_bytes(), "{name}");
        }
        for signer in v["signers"].as_array().expect("signers") {
            let twin = u32::try_from(signer["twin_id"].as_u64().expect("twin")).expect("u32");
            let kind: SignatureType =
                serde_json::from_value(signer["type"].clone()).expect("signature type");
            let key = key32(signer["public_key_hex"].as_str().expect("key"));
            let signature = signer["signature_hex"].as_str().expect("signature");
            verify_one(twin, kind, &key, &message, signature).expect(name);
            let entry = deployment
                .signature_requirement
                .signature_of(twin)
                .expect("the wire holds the signer's entry");
            assert_eq!(entry.signature, signature, "{name}");
        }
        let weight = deployment
            .signature_requirement
            .verify(deployment.twin_id, &hash, &keys_of(v))
            .expect(name);
        assert_eq!(weight, 1, "{name}");
    }
}

/// The byte ranges of `text` whose change a node does not see: the contract
/// id (not in the challenge), the SDK's `__type` keys and an empty `gpu`
/// (both ignored).
fn ignored_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    for pattern in ["\"contract_id\":0,", ",\"gpu\":[]"] {
        for (at, found) in text.match_indices(pattern) {
            ranges.push(at..at + found.len());
        }
    }
    for (at, _) in text.match_indices("\"__type\":\"") {
        let end = text[at..].find("\",").expect("the __type value ends") + at + 2;
        ranges.push(at..end);
    }
    ranges
}

#[test]
fn one_changed_byte_anywhere_fails() {
    for v in vectors() {
        let name = v["name"].as_str().expect("name").to_owned();
        let text = wire(&v).to_owned();
        let keys = keys_of(&v);
        let ignored = ignored_ranges(&text);
        let mut tried = 0;
        for i in 0..text.len() {
            if ignored.iter().any(|r| r.contains(&i)) {
                continue;
            }
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            tried += 1;
            let accepted = match Deployment::parse(&bytes) {
                Err(_refused) => false,
                Ok(d) => d
                    .signature_requirement
                    .verify(d.twin_id, &d.hash(), &keys)
                    .is_ok(),
            };
            assert!(
                !accepted,
                "{name}: changing byte {i} ({:?}) still verifies",
                &text[i.saturating_sub(20)..(i + 20).min(text.len())]
            );
        }
        assert!(tried > 200, "{name}: only {tried} bytes tried");
    }
}

#[test]
fn the_contract_id_is_not_hashed() {
    let v = vector("A-provisioning");
    let with_contract = wire(&v).replace("\"contract_id\":0", "\"contract_id\":77");
    let d = Deployment::parse(with_contract.as_bytes()).expect("parses");
    assert_eq!(d.contract_id, 77);
    assert_eq!(d.hash().hex(), v["md5_hex"].as_str().expect("md5"));
    let without: Value = {
        let mut w: Value = serde_json::from_str(wire(&v)).expect("json");
        w.as_object_mut().expect("object").remove("contract_id");
        w
    };
    let d = Deployment::parse(without.to_string().as_bytes()).expect("parses");
    assert_eq!(d.contract_id, 0);
    assert_eq!(d.hash().hex(), v["md5_hex"].as_str().expect("md5"));
}

#[test]
fn go_clients_nulls_read_as_empty() {
    let v = vector("A-provisioning");
    let mut w: Value = serde_json::from_str(wire(&v)).expect("json");
    w["workloads"][2]["data"]["gpu"] = Value::Null;
    w["workloads"][2]["data"]["env"] = Value::Null;
    w["workloads"][0]["description"] = Value::Null;
    let d = Deployment::parse(w.to_string().as_bytes()).expect("nulls are accepted");
    let challenge = d.challenge();
    assert!(!challenge.contains("SSH_KEY"), "env was emptied");
    assert!(challenge.contains("/sbin/zinit init"));
}

#[test]
fn the_first_signature_of_a_twin_counts() {
    let v = vector("A-provisioning");
    let keys = keys_of(&v);
    let mut d = Deployment::parse(wire(&v).as_bytes()).expect("parses");
    let good = d.signature_requirement.signatures[0].clone();
    let stale = Signature {
        signature: "00".repeat(64),
        ..good.clone()
    };
    d.signature_requirement.signatures = vec![good.clone(), stale.clone()];
    d.signature_requirement
        .verify(42, &d.hash(), &keys)
        .expect("a stale second entry is ignored");
    d.signature_requirement.signatures = vec![stale, good];
    assert!(matches!(
        d.signature_requirement.verify(42, &d.hash(), &keys),
        Err(SignatureError::Invalid { twin: 42, .. })
    ));
}

/// A deployment of twin 1 with a volume, asking the given signatures.
fn multi(requests: &[(u32, bool, u64)], weight_required: u64, style: &str) -> Deployment {
    let requests: Vec<Value> = requests
        .iter()
        .map(|(twin, required, weight)| json!({"twin_id": twin, "required": required, "weight": weight}))
        .collect();
    let text = json!({
        "version": 0, "twin_id": 1, "contract_id": 9, "metadata": "", "description": "",
        "expiration": 0,
        "workloads": [{"version": 0, "name": "data", "type": "volume",
                       "data": {"size": 1073741824}, "metadata": "", "description": ""}],
        "signature_requirement": {"requests": requests, "weight_required": weight_required,
                                  "signatures": [], "signature_style": style}
    });
    Deployment::parse(text.to_string().as_bytes()).expect("the multi-signature deployment parses")
}

fn ed_key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn sign_ed(d: &mut Deployment, twin: u32) {
    let message = signed_message(&d.hash(), d.signature_requirement.signature_style);
    let signature = ed_key(u8::try_from(twin).expect("small twin")).sign(&message);
    d.signature_requirement.signatures.push(Signature {
        twin_id: twin,
        signature: hex::encode(signature.to_bytes()),
        signature_type: SignatureType::Ed25519,
    });
}

fn ed_keys() -> BTreeMap<u32, [u8; 32]> {
    (1..=3u8)
        .map(|n| (u32::from(n), ed_key(n).verifying_key().to_bytes()))
        .collect()
}

/// A deployment of twin 1 asking `requests`, signed by each of `signers`
/// with its ed25519 key, as twin 1 verifies it against `keys`.
fn verdict(
    requests: &[(u32, bool, u64)],
    weight_required: u64,
    signers: &[u32],
    keys: &BTreeMap<u32, [u8; 32]>,
) -> Result<u64, SignatureError> {
    let mut d = multi(requests, weight_required, "");
    for &twin in signers {
        sign_ed(&mut d, twin);
    }
    d.signature_requirement.verify(1, &d.hash(), keys)
}

#[test]
fn multi_signature_weights() {
    let keys = ed_keys();
    let mut fewer = keys.clone();
    fewer.remove(&2);
    let mut swapped = keys.clone();
    swapped.insert(1, ed_key(2).verifying_key().to_bytes());
    let optional = [(1, false, 1), (2, false, 1), (3, false, 1)];
    assert_eq!(
        verdict(&optional, 2, &[1], &keys),
        Err(SignatureError::Weight {
            got: 1,
            required: 2
        })
    );
    assert_eq!(verdict(&optional, 2, &[1, 3], &keys), Ok(2));
    assert_eq!(
        verdict(&optional, 2, &[2, 3], &keys),
        Err(SignatureError::Missing { twin: 1 }),
        "the originator is required even when its request says not"
    );
    assert_eq!(
        verdict(
            &[(1, true, 1), (2, false, 1), (3, true, 1)],
            2,
            &[1, 2],
            &keys
        ),
        Err(SignatureError::Missing { twin: 3 })
    );
    assert_eq!(
        verdict(&optional, 2, &[1, 2], &fewer),
        Err(SignatureError::UnknownTwin { twin: 2 })
    );
    assert!(matches!(
        verdict(&optional, 1, &[1], &swapped),
        Err(SignatureError::Invalid { twin: 1, .. })
    ));
}

#[test]
fn sr25519_in_both_styles() {
    // Substrate's sr25519 keys: a mini secret expanded the ed25519 way.
    let pair = schnorrkel::MiniSecretKey::from_bytes(&[7u8; 32])
        .expect("32 bytes")
        .expand_to_keypair(schnorrkel::ExpansionMode::Ed25519);
    let sign = |message: &[u8]| pair.sign_simple(b"substrate", message).to_bytes();
    let keys: BTreeMap<u32, [u8; 32]> = [(1, pair.public.to_bytes())].into();
    for style in ["", "polka-wallet"] {
        let mut d = multi(&[(1, true, 1)], 1, style);
        let message = signed_message(&d.hash(), d.signature_requirement.signature_style);
        d.signature_requirement.signatures.push(Signature {
            twin_id: 1,
            signature: hex::encode(sign(&message)),
            signature_type: SignatureType::Sr25519,
        });
        assert_eq!(
            d.signature_requirement.verify(1, &d.hash(), &keys),
            Ok(1),
            "style {style:?}"
        );
        // The same signature read as ed25519 does not verify.
        d.signature_requirement.signatures[0].signature_type = SignatureType::Ed25519;
        assert!(d.signature_requirement.verify(1, &d.hash(), &keys).is_err());
        d.signature_requirement.signatures[0].signature_type = SignatureType::Sr25519;
        // Signed in the other style, it does not verify.
        let other = if style.is_empty() {
            SignatureStyle::PolkaWallet
        } else {
            SignatureStyle::Default
        };
        d.signature_requirement.signatures[0].signature =
            hex::encode(sign(&signed_message(&d.hash(), other)));
        assert!(matches!(
            d.signature_requirement.verify(1, &d.hash(), &keys),
            Err(SignatureError::Invalid {
                twin: 1,
                kind: SignatureType::Sr25519
            })
        ));
    }
}

#[test]
fn a_type_without_driver_is_refused_by_name() {
    let v = vector("A-provisioning");
    let d = Deployment::parse(wire(&v).as_bytes()).expect("parses");
    let supported = [
        WorkloadType::Network,
        WorkloadType::Zmount,
        WorkloadType::Volume,
    ];
    let error = d
        .ensure_supported(&supported)
        .expect_err("zmachine has no driver");
    assert_eq!(
        error.to_string(),
        "workloads[2] ('vm1'): workload type zmachine is not supported on this node yet"
    );
    d.ensure_supported(&WorkloadType::ALL).expect("all types");
}

#[test]
fn debug_never_shows_the_private_key() {
    let v = vector("A-provisioning");
    let d = Deployment::parse(wire(&v).as_bytes()).expect("parses");
    assert!(!format!("{d:?}").contains(PRIVATE_KEY));
    assert!(!format!("{d:#?}").contains(&PRIVATE_KEY[..20]));
}

type Edit = fn(&mut Value);

fn push(list: &mut Value, item: Value) {
    list.as_array_mut().expect("a list").push(item);
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let v = vector("A-provisioning");
    let base: Value = serde_json::from_str(wire(&v)).expect("json");
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("twin 0", |w| w["twin_id"] = json!(0), "twin_id"),
        ("twin as text", |w| w["twin_id"] = json!("42"), "twin_id"),
        (
            "no twin",
            |w| {
                w.as_object_mut().map(|o| o.remove("twin_id"));
            },
            "twin_id",
        ),
        (
            "metadata as number",
            |w| w["metadata"] = json!(5),
            "metadata",
        ),
        (
            "bad name",
            |w| w["workloads"][0]["name"] = json!("net-1"),
            "workloads[0].name",
        ),
        (
            "empty name",
            |w| w["workloads"][0]["name"] = json!(""),
            "workloads[0].name",
        ),
        (
            "reserved name",
            |w| w["workloads"][1]["name"] = json!("ygg"),
            "workloads[1].name",
        ),
        (
            "long name",
            |w| w["workloads"][1]["name"] = json!("d".repeat(37)),
            "workloads[1].name",
        ),
        (
            "duplicate name",
            |w| w["workloads"][1]["name"] = json!("net1"),
            "workloads[1].name",
        ),
        (
            "unknown type",
            |w| w["workloads"][1]["type"] = json!("qsfs"),
            "unknown workload type \"qsfs\"",
        ),
        (
            "no data",
            |w| {
                w["workloads"][1].as_object_mut().map(|o| o.remove("data"));
            },
            "data",
        ),
        (
            "workload version above",
            |w| w["workloads"][0]["version"] = json!(1),
            "workloads[0].version",
        ),
        (
            "range not /16",
            |w| w["workloads"][0]["data"]["ip_range"] = json!("10.20.0.0/24"),
            "workloads[0].data.ip_range",
        ),
        (
            "range v6",
            |w| w["workloads"][0]["data"]["ip_range"] = json!("fd00::/16"),
            "workloads[0].data.ip_range",
        ),
        (
            "range host bits",
            |w| w["workloads"][0]["data"]["ip_range"] = json!("10.20.0.1/16"),
            "workloads[0].data.ip_range",
        ),
        (
            "range not a prefix",
            |w| w["workloads"][0]["data"]["ip_range"] = json!("10.20.0.0"),
            "workloads[0].data.ip_range",
        ),
        (
            "subnet outside",
            |w| w["workloads"][0]["data"]["subnet"] = json!("10.30.2.0/24"),
            "workloads[0].data.subnet",
        ),
        (
            "subnet host bits",
            |w| w["workloads"][0]["data"]["subnet"] = json!("10.20.2.1/24"),
            "workloads[0].data.subnet",
        ),
        (
            "subnet the whole range",
            |w| w["workloads"][0]["data"]["subnet"] = json!("10.20.0.0/16"),
            "workloads[0].data.subnet",
        ),
        (
            "private key not base64",
            |w| {
                w["workloads"][0]["data"]["wireguard_private_key"] =
                    json!("GDx0v1Zx8h7R0QeQ0eF0y7w5sT0d3n9yqv2j4h1k5m!=")
            },
            "wireguard_private_key",
        ),
        (
            "private key short",
            |w| {
                w["workloads"][0]["data"]["wireguard_private_key"] =
                    json!("GDx0v1Zx8h7R0QeQ0eF0yw==")
            },
            "wireguard_private_key",
        ),
        (
            "private key missing",
            |w| {
                w["workloads"][0]["data"]
                    .as_object_mut()
                    .map(|o| o.remove("wireguard_private_key"));
            },
            "wireguard_private_key",
        ),
        (
            "port 0",
            |w| w["workloads"][0]["data"]["wireguard_listen_port"] = json!(0),
            "wireguard_listen_port",
        ),
        (
            "port too big",
            |w| w["workloads"][0]["data"]["wireguard_listen_port"] = json!(70000),
            "wireguard_listen_port",
        ),
        (
            "peer overlaps",
            |w| w["workloads"][0]["data"]["peers"][0]["subnet"] = json!("10.20.2.0/25"),
            "peers[0].subnet",
        ),
        (
            "peer outside",
            |w| w["workloads"][0]["data"]["peers"][0]["subnet"] = json!("10.99.3.0/24"),
            "peers[0].subnet",
        ),
        (
            "peer key",
            |w| w["workloads"][0]["data"]["peers"][0]["wireguard_public_key"] = json!("abc"),
            "peers[0].wireguard_public_key",
        ),
        (
            "peer no allowed ips",
            |w| w["workloads"][0]["data"]["peers"][0]["allowed_ips"] = json!([]),
            "peers[0].allowed_ips",
        ),
        (
            "peer bad allowed ip",
            |w| w["workloads"][0]["data"]["peers"][0]["allowed_ips"][1] = json!("100.64.20.3"),
            "peers[0].allowed_ips[1]",
        ),
        (
            "peer endpoint name",
            |w| w["workloads"][0]["data"]["peers"][0]["endpoint"] = json!("peer.example:3011"),
            "peers[0].endpoint",
        ),
        (
            "peer twice",
            |w| {
                let mut second = w["workloads"][0]["data"]["peers"][0].clone();
                second["subnet"] = json!("10.20.4.0/24");
                push(&mut w["workloads"][0]["data"]["peers"], second);
            },
            "peers[1].wireguard_public_key",
        ),
        (
            "zmount size 0",
            |w| w["workloads"][1]["data"]["size"] = json!(0),
            "workloads[1].data.size",
        ),
        (
            "zmount size negative",
            |w| w["workloads"][1]["data"]["size"] = json!(-1),
            "workloads[1].data.size",
        ),
        (
            "zmachine cpu 0",
            |w| w["workloads"][2]["data"]["compute_capacity"]["cpu"] = json!(0),
            "compute_capacity.cpu",
        ),
        (
            "zmachine small memory",
            |w| w["workloads"][2]["data"]["compute_capacity"]["memory"] = json!(1024),
            "compute_capacity.memory",
        ),
        (
            "zmachine two networks",
            |w| {
                let second = w["workloads"][2]["data"]["network"]["interfaces"][0].clone();
                push(
                    &mut w["workloads"][2]["data"]["network"]["interfaces"],
                    second,
                );
            },
            "network.interfaces",
        ),
        (
            "zmachine bad ip",
            |w| w["workloads"][2]["data"]["network"]["interfaces"][0]["ip"] = json!("10.20.2"),
            "interfaces[0].ip",
        ),
        (
            "zmachine unknown mount",
            |w| w["workloads"][2]["data"]["mounts"][0]["name"] = json!("disk9"),
            "mounts[0].name",
        ),
        (
            "zmachine unknown public ip",
            |w| w["workloads"][2]["data"]["network"]["public_ip"] = json!("ip1"),
            "public_ip",
        ),
        (
            "no requirement",
            |w| {
                w.as_object_mut().map(|o| o.remove("signature_requirement"));
            },
            "signature_requirement",
        ),
        (
            "unknown style",
            |w| w["signature_requirement"]["signature_style"] = json!("metamask"),
            "signature_requirement.signature_style",
        ),
        (
            "unknown signature type",
            |w| w["signature_requirement"]["signatures"][0]["signature_type"] = json!("rsa"),
            "signature_requirement.signatures[0].signature_type",
        ),
        (
            "originator not asked",
            |w| w["signature_requirement"]["requests"][0]["twin_id"] = json!(7),
            "signature_requirement.requests",
        ),
        (
            "twin asked twice",
            |w| {
                let again = w["signature_requirement"]["requests"][0].clone();
                push(&mut w["signature_requirement"]["requests"], again);
            },
            "signature_requirement.requests[1].twin_id",
        ),
        (
            "weight out of reach",
            |w| w["signature_requirement"]["weight_required"] = json!(2),
            "signature_requirement.weight_required",
        ),
    ];
    for (what, edit, field) in cases {
        let mut w = base.clone();
        edit(&mut w);
        let error = Deployment::parse(w.to_string().as_bytes())
            .expect_err(what)
            .to_string();
        assert!(
            error.contains(field),
            "{what}: {error:?} does not name {field:?}"
        );
        assert!(
            !error.contains(PRIVATE_KEY),
            "{what}: the error shows the private key"
        );
    }
    let malformed: &[(&str, &[u8])] = &[
        ("not JSON", b"{\"version\":"),
        ("trailing data", b"{} {}"),
        ("an array", b"[]"),
        ("empty", b""),
    ];
    for (what, body) in malformed {
        assert!(Deployment::parse(body).is_err(), "{what} was accepted");
    }
    let twice = wire(&v).replacen("{\"version\":0,", "{\"version\":0,\"version\":0,", 1);
    assert!(
        Deployment::parse(twice.as_bytes()).is_err(),
        "a key given twice was accepted"
    );
    let mut trailing = wire(&v).to_owned();
    trailing.push_str(" x");
    assert!(
        Deployment::parse(trailing.as_bytes()).is_err(),
        "trailing bytes were accepted"
    );
}

#[test]
fn every_type_parses_and_hashes_in_zos_order() {
    let text = json!({
        "version": 1, "twin_id": 5, "metadata": "m", "description": "d", "expiration": 0,
        "workloads": [
            {"version": 1, "name": "pub", "type": "ip", "data": {"v4": true, "v6": false},
             "metadata": "", "description": ""},
            {"version": 0, "name": "db", "type": "zdb",
             "data": {"size": 1024, "mode": "user", "password": "pw", "public": true},
             "metadata": "", "description": ""},
            {"version": 0, "name": "gw", "type": "gateway-name-proxy",
             "data": {"name": "site", "tls_passthrough": false, "backends": ["http://192.0.2.1:8080"]},
             "metadata": "", "description": ""},
            {"version": 0, "name": "gw2", "type": "gateway-fqdn-proxy",
             "data": {"fqdn": "a.example.org", "tls_passthrough": true, "backends": ["192.0.2.1:443"],
                      "network": "net1"},
             "metadata": "", "description": ""},
            {"version": 0, "name": "v", "type": "volume", "data": {"size": 10},
             "metadata": "", "description": ""}
        ],
        "signature_requirement": {"requests": [{"twin_id": 5, "required": true, "weight": 1}],
                                  "weight_required": 1, "signatures": []}
    });
    let d = Deployment::parse(text.to_string().as_bytes()).expect("parses");
    assert_eq!(
        d.challenge(),
        "15md01pubipfalse\
         0dbzdb1024userpwtrue\
         0gwgateway-name-proxysitefalsehttp://192.0.2.1:8080\
         0gw2gateway-fqdn-proxya.example.orgtrue192.0.2.1:443net1\
         0vvolume10\
         5true11"
            .replace("01pubipfalse", "01pubiptruefalse")
    );
    assert!(
        !format!("{d:?}").contains("\"pw\""),
        "the zdb password is hidden"
    );
}

/// A deployment of a volume, a zmount and a container mounting `mount`.
fn container_deployment(mount: &str) -> String {
    let image = format!("10.1.0.1:5000/grove/app@sha256:{}", "ab".repeat(32));
    json!({
        "version": 0, "twin_id": 7, "contract_id": 0, "metadata": "", "description": "",
        "expiration": 0,
        "signature_requirement": {"requests": [{"twin_id": 7, "required": false, "weight": 1}],
                                  "weight_required": 1, "signatures": [], "signature_style": ""},
        "workloads": [
            {"version": 0, "name": "data", "type": "volume", "data": {"size": 1 << 20},
             "metadata": "", "description": "", "result": {}},
            {"version": 0, "name": "disk", "type": "zmount", "data": {"size": 1 << 20},
             "metadata": "", "description": "", "result": {}},
            {"version": 0, "name": "app", "type": "container",
             "data": {"image": image, "interface": {"network": "net", "ip": "10.20.1.5"},
                      "compute_capacity": {"cpu": 1, "memory": 128 << 20}, "size": 256 << 20,
                      "mounts": [{"name": mount, "mountpoint": "/data"}],
                      "env": {"B": "2", "A": "1"}},
             "metadata": "", "description": "", "result": {}},
        ],
    })
    .to_string()
}

#[test]
fn a_container_mounts_volumes_of_its_deployment_only() {
    let d = Deployment::parse(container_deployment("data").as_bytes()).expect("parses");
    assert!(
        d.challenge().contains("data/dataA=1B=2"),
        "{}",
        d.challenge()
    );
    for (mount, what) in [("disk", "a zmount"), ("nothing", "no workload")] {
        let error = Deployment::parse(container_deployment(mount).as_bytes())
            .expect_err(what)
            .to_string();
        assert!(
            error.contains("workloads[2].data.mounts[0].name")
                && error.contains(&format!("no volume named '{mount}'")),
            "{what}: {error}"
        );
    }
}
