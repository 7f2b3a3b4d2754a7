//! zos's update rules, as a pure function from the running deployment and
//! the one asked to the steps that lead from one to the other.
//!
//! An update raises the version by one and keeps the twin and the contract.
//! Workloads are matched by name: a new name is added (at the new version),
//! a missing name is removed, a name at the new version is changed, and a
//! name left at its version must be left exactly as it is. A workload never
//! changes type, a zmount never shrinks, and a zmachine keeps its image:
//! its root disk was filled from that image once and holds the guest's
//! data since, so a new image is a new machine. Steps come in the order the
//! engine applies them: adds and changes in dependency order (disks and
//! volumes, then networks, then what uses them), removals last and in
//! reverse, so nothing is deleted before the rest of the update has worked.

use crate::deployment::workload::{WorkloadData, WorkloadType};
use crate::deployment::{Deployment, Workload};

/// What happens to one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Change,
    Remove,
}

/// One step of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub name: String,
    pub kind: WorkloadType,
}

/// Why an update is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("the update must have version {expected}, it has {got}")]
    Version { expected: u64, got: u32 },
    #[error("an update cannot change the twin ({current} to {asked})")]
    Twin { current: u32, asked: u32 },
    #[error("an update cannot change the contract ({current} to {asked})")]
    Contract { current: u64, asked: u64 },
    #[error("workload '{name}' is new, so its version must be {expected}, not {got}")]
    NewVersion {
        name: String,
        expected: u32,
        got: u32,
    },
    #[error("workload '{name}' cannot change type ({from} to {to})")]
    TypeChange {
        name: String,
        from: WorkloadType,
        to: WorkloadType,
    },
    #[error("workload '{name}' changed but its version was not raised to {expected}")]
    Unversioned { name: String, expected: u32 },
    #[error("zmount '{name}' cannot shrink from {from} to {to} bytes")]
    Shrink { name: String, from: u64, to: u64 },
    #[error(
        "zmachine '{name}' cannot change its flist: its root disk holds the guest's data; \
         deploy a machine of another name for the new image"
    )]
    MachineImage { name: String },
}

/// The order in which workload types are made; removal goes in reverse.
pub fn rank(kind: WorkloadType) -> u8 {
    match kind {
        WorkloadType::Zmount | WorkloadType::Volume => 0,
        WorkloadType::Network => 1,
        WorkloadType::Ip => 2,
        WorkloadType::Zmachine
        | WorkloadType::Container
        | WorkloadType::Zdb
        | WorkloadType::GatewayNameProxy
        | WorkloadType::GatewayFqdnProxy => 3,
    }
}

fn step(op: Op, w: &Workload) -> Step {
    Step {
        op,
        name: w.name.to_string(),
        kind: w.kind,
    }
}

/// The steps that make a new deployment: every workload added, in order.
pub fn plan_create(next: &Deployment) -> Vec<Step> {
    let mut steps: Vec<Step> = next.workloads.iter().map(|w| step(Op::Add, w)).collect();
    steps.sort_by_key(|s| rank(s.kind));
    steps
}

/// The steps that take `current` to `next`, or why `next` is refused.
pub fn plan_update(current: &Deployment, next: &Deployment) -> Result<Vec<Step>, UpdateError> {
    let expected = u64::from(current.version) + 1;
    if u64::from(next.version) != expected {
        return Err(UpdateError::Version {
            expected,
            got: next.version,
        });
    }
    if next.twin_id != current.twin_id {
        return Err(UpdateError::Twin {
            current: current.twin_id,
            asked: next.twin_id,
        });
    }
    if next.contract_id != current.contract_id {
        return Err(UpdateError::Contract {
            current: current.contract_id,
            asked: next.contract_id,
        });
    }
    let version = next.version;
    let mut steps = Vec::new();
    for w in &next.workloads {
        let Some(old) = current.workload(w.name.as_str()) else {
            if w.version != version {
                return Err(UpdateError::NewVersion {
                    name: w.name.to_string(),
                    expected: version,
                    got: w.version,
                });
            }
            steps.push(step(Op::Add, w));
            continue;
        };
        if old.kind != w.kind {
            return Err(UpdateError::TypeChange {
                name: w.name.to_string(),
                from: old.kind,
                to: w.kind,
            });
        }
        if w.version != version {
            if w != old {
                return Err(UpdateError::Unversioned {
                    name: w.name.to_string(),
                    expected: version,
                });
            }
            continue;
        }
        if let (WorkloadData::Zmount(before), WorkloadData::Zmount(after)) = (&old.data, &w.data)
            && after.size < before.size
        {
            return Err(UpdateError::Shrink {
                name: w.name.to_string(),
                from: before.size,
                to: after.size,
            });
        }
        if let (WorkloadData::Zmachine(before), WorkloadData::Zmachine(after)) =
            (&old.data, &w.data)
            && after.flist != before.flist
        {
            return Err(UpdateError::MachineImage {
                name: w.name.to_string(),
            });
        }
        steps.push(step(Op::Change, w));
    }
    steps.sort_by_key(|s| rank(s.kind));
    let mut removals: Vec<Step> = current
        .workloads
        .iter()
        .filter(|w| next.workload(w.name.as_str()).is_none())
        .map(|w| step(Op::Remove, w))
        .collect();
    removals.sort_by_key(|s| std::cmp::Reverse(rank(s.kind)));
    steps.extend(removals);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn workload(version: u32, name: &str, kind: &str, data: Value) -> Value {
        json!({"version": version, "name": name, "type": kind, "data": data,
               "metadata": "", "description": ""})
    }

    fn deployment(version: u32, twin: u32, contract: u64, workloads: Vec<Value>) -> Deployment {
        let text = json!({
            "version": version, "twin_id": twin, "contract_id": contract, "metadata": "",
            "description": "", "expiration": 0, "workloads": workloads,
            "signature_requirement": {"requests": [{"twin_id": twin, "required": true, "weight": 1}],
                                      "weight_required": 1, "signatures": []}
        });
        Deployment::parse(text.to_string().as_bytes()).expect("test deployment parses")
    }

    fn network(version: u32, port: u16) -> Value {
        workload(
            version,
            "net",
            "network",
            json!({"ip_range": "10.1.0.0/16", "subnet": "10.1.1.0/24",
                   "wireguard_private_key": base64::encode([3u8; 32]),
                   "wireguard_listen_port": port, "peers": []}),
        )
    }

    fn disk(version: u32, name: &str, size: u64) -> Value {
        workload(version, name, "zmount", json!({"size": size}))
    }

    fn volume(version: u32, name: &str, size: u64) -> Value {
        workload(version, name, "volume", json!({"size": size}))
    }

    fn machine(version: u32, flist: &str, cpu: u8) -> Value {
        workload(
            version,
            "vm",
            "zmachine",
            json!({"flist": flist, "network": {"public_ip": "", "planetary": false,
                    "interfaces": [{"network": "net", "ip": "10.1.1.5"}]},
                   "size": 0, "compute_capacity": {"cpu": cpu, "memory": 1 << 30},
                   "mounts": [], "entrypoint": "", "env": {}, "corex": false}),
        )
    }

    fn current() -> Deployment {
        deployment(
            0,
            7,
            100,
            vec![network(0, 3000), disk(0, "disk", 10), volume(0, "data", 5)],
        )
    }

    fn ops(steps: &[Step]) -> Vec<(Op, &str)> {
        steps.iter().map(|s| (s.op, s.name.as_str())).collect()
    }

    #[test]
    fn a_new_deployment_is_made_disks_first() {
        assert_eq!(
            ops(&plan_create(&current())),
            vec![(Op::Add, "disk"), (Op::Add, "data"), (Op::Add, "net")]
        );
    }

    #[test]
    fn updates_add_change_and_remove_by_name_and_leave_the_rest_alone() {
        // (what the update is, its workloads, the steps it takes:
        // removals last, in reverse).
        let cases = [
            (
                "add, change, remove",
                vec![network(1, 3001), disk(1, "disk", 20), volume(1, "more", 1)],
                vec![
                    (Op::Change, "disk"),
                    (Op::Add, "more"),
                    (Op::Change, "net"),
                    (Op::Remove, "data"),
                ],
            ),
            (
                "untouched workloads are left alone",
                vec![network(0, 3000), disk(1, "disk", 10), volume(0, "data", 5)],
                vec![(Op::Change, "disk")],
            ),
        ];
        for (what, workloads, want) in cases {
            let next = deployment(1, 7, 100, workloads);
            assert_eq!(
                ops(&plan_update(&current(), &next).expect("valid update")),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn bad_updates_are_refused() {
        let cases: Vec<(&str, Deployment, UpdateError)> = vec![
            (
                "same version",
                deployment(0, 7, 100, vec![network(0, 3000)]),
                UpdateError::Version {
                    expected: 1,
                    got: 0,
                },
            ),
            (
                "version + 2",
                deployment(2, 7, 100, vec![network(0, 3000)]),
                UpdateError::Version {
                    expected: 1,
                    got: 2,
                },
            ),
            (
                "another twin",
                deployment(1, 8, 100, vec![network(0, 3000)]),
                UpdateError::Twin {
                    current: 7,
                    asked: 8,
                },
            ),
            (
                "another contract",
                deployment(1, 7, 101, vec![network(0, 3000)]),
                UpdateError::Contract {
                    current: 100,
                    asked: 101,
                },
            ),
            (
                "a new workload at an old version",
                deployment(1, 7, 100, vec![network(0, 3000), disk(0, "other", 1)]),
                UpdateError::NewVersion {
                    name: "other".into(),
                    expected: 1,
                    got: 0,
                },
            ),
            (
                "a type change",
                deployment(1, 7, 100, vec![network(0, 3000), volume(1, "disk", 10)]),
                UpdateError::TypeChange {
                    name: "disk".into(),
                    from: WorkloadType::Zmount,
                    to: WorkloadType::Volume,
                },
            ),
            (
                "a change without a new version",
                deployment(1, 7, 100, vec![network(0, 3001), disk(0, "disk", 10)]),
                UpdateError::Unversioned {
                    name: "net".into(),
                    expected: 1,
                },
            ),
            (
                "a shrinking zmount",
                deployment(1, 7, 100, vec![network(0, 3000), disk(1, "disk", 9)]),
                UpdateError::Shrink {
                    name: "disk".into(),
                    from: 10,
                    to: 9,
                },
            ),
        ];
        for (what, next, want) in cases {
            assert_eq!(plan_update(&current(), &next), Err(want), "{what}");
        }
    }

    #[test]
    fn a_machine_keeps_its_image_and_may_change_the_rest() {
        let before = deployment(
            0,
            7,
            100,
            vec![network(0, 3000), machine(0, "r/a@sha256:1", 1)],
        );
        let new_image = deployment(
            1,
            7,
            100,
            vec![network(0, 3000), machine(1, "r/a@sha256:2", 1)],
        );
        assert_eq!(
            plan_update(&before, &new_image),
            Err(UpdateError::MachineImage { name: "vm".into() })
        );
        let more_cpu = deployment(
            1,
            7,
            100,
            vec![network(0, 3000), machine(1, "r/a@sha256:1", 2)],
        );
        assert_eq!(
            ops(&plan_update(&before, &more_cpu).expect("valid update")),
            vec![(Op::Change, "vm")]
        );
    }

    #[test]
    fn a_volume_may_shrink_and_a_zmount_may_keep_its_size() {
        let next = deployment(
            1,
            7,
            100,
            vec![network(0, 3000), disk(1, "disk", 10), volume(1, "data", 4)],
        );
        assert_eq!(
            ops(&plan_update(&current(), &next).expect("valid update")),
            vec![(Op::Change, "disk"), (Op::Change, "data")]
        );
    }
}
