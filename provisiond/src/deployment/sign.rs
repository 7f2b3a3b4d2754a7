//! Signing a deployment as a twin: what a tenant's tool does before it
//! sends one.
//!
//! The signature covers the deployment's hash (the default style); the
//! twin's entry in `signature_requirement.signatures` is replaced or added.
//! Limits: ed25519 keys only.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

use super::{Deployment, DeploymentError};

/// Signs the deployment JSON `wire` as `twin` with `key`; answers the JSON
/// text to send.
pub fn sign_ed25519(wire: &str, twin: u32, key: &SigningKey) -> Result<String, DeploymentError> {
    let hash = Deployment::parse(wire.as_bytes())?.hash();
    let mut value: Value = serde_json::from_str(wire).map_err(|source| DeploymentError::Json {
        path: ".".to_owned(),
        source,
    })?;
    let entry = json!({
        "twin_id": twin,
        "signature": hex::encode(key.sign(&hash.0).to_bytes()),
        "signature_type": "ed25519",
    });
    let signatures = &mut value["signature_requirement"]["signatures"];
    let mut list: Vec<Value> = signatures
        .as_array()
        .map(|l| l.iter().filter(|s| s["twin_id"] != twin).cloned().collect())
        .unwrap_or_default();
    list.insert(0, entry);
    *signatures = Value::Array(list);
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_signed_deployment_verifies_and_a_changed_one_does_not() {
        let wire = r#"{"version":0,"twin_id":5,"contract_id":1,"metadata":"","description":"","expiration":0,
            "signature_requirement":{"requests":[{"twin_id":5,"required":false,"weight":1}],"weight_required":1,"signatures":[],"signature_style":""},
            "workloads":[{"version":0,"name":"d","type":"zmount","data":{"size":1024},"metadata":"","description":""}]}"#;
        let key = SigningKey::from_bytes(&[4; 32]);
        let keys: BTreeMap<u32, [u8; 32]> = [(5, key.verifying_key().to_bytes())].into();
        let signed = sign_ed25519(wire, 5, &key).expect("signs");
        let d = Deployment::parse(signed.as_bytes()).expect("parses");
        assert_eq!(d.verify(&keys).expect("verifies"), 1);
        let changed = signed.replace("1024", "2048");
        let d = Deployment::parse(changed.as_bytes()).expect("parses");
        assert!(d.verify(&keys).is_err());
    }
}
