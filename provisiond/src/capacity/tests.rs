//! The ledger: reserve, fit, refusal with numbers, updates, release.

use serde_json::{Value, json};

use super::*;

fn node() -> Node {
    Node {
        cores: 4,
        memory: 16 * GIB,
        pools: vec![
            Pool {
                label: "ssd-a".into(),
                kind: PoolKind::Ssd,
                size: 100 * GIB,
                system: 10 * GIB,
            },
            Pool {
                label: "ssd-b".into(),
                kind: PoolKind::Ssd,
                size: 50 * GIB,
                system: 0,
            },
            Pool {
                label: "hdd-a".into(),
                kind: PoolKind::Hdd,
                size: 1000 * GIB,
                system: 0,
            },
        ],
    }
}

fn workload(name: &str, kind: &str, data: Value) -> Value {
    json!({"version": 0, "name": name, "type": kind, "data": data,
           "metadata": "", "description": ""})
}

fn zmount(name: &str, gib: u64) -> Value {
    workload(name, "zmount", json!({"size": gib * GIB}))
}

fn volume(name: &str, gib: u64) -> Value {
    workload(name, "volume", json!({"size": gib * GIB}))
}

fn machine(name: &str, cpu: u8, memory_gib: u64) -> Value {
    workload(
        name,
        "zmachine",
        json!({"flist": "f", "network": {"public_ip": "", "planetary": false,
                "interfaces": [{"network": "net", "ip": "10.1.1.5"}]},
               "size": 0, "compute_capacity": {"cpu": cpu, "memory": memory_gib * GIB},
               "mounts": [], "entrypoint": "", "env": {}, "corex": false}),
    )
}

fn demand(workloads: Vec<Value>) -> Demand {
    let text = json!({
        "version": 0, "twin_id": 1, "contract_id": 1, "metadata": "", "description": "",
        "expiration": 0, "workloads": workloads,
        "signature_requirement": {"requests": [{"twin_id": 1, "required": true, "weight": 1}],
                                  "weight_required": 1, "signatures": []}
    });
    Demand::of(&Deployment::parse(text.to_string().as_bytes()).expect("parses"))
}

#[test]
fn the_system_reserve() {
    let mut ledger = Ledger::new(node());
    assert_eq!(
        ledger.memory_reserve(),
        2 * GIB,
        "10 % of 16 GiB is under 2 GiB"
    );
    assert_eq!(
        ledger.free(),
        Resources {
            cru: 4,
            mru: 14 * GIB,
            sru: 140 * GIB,
            hru: 1000 * GIB
        }
    );
    ledger.node.memory = 64 * GIB;
    assert_eq!(ledger.memory_reserve(), 64 * GIB / 10, "10 % of 64 GiB");
    ledger.node.memory = GIB;
    assert_eq!(ledger.memory_reserve(), GIB, "never more than there is");
    assert_eq!(ledger.free().mru, 0);
}

#[test]
fn a_deployment_that_fits_is_held_and_released() {
    let mut ledger = Ledger::new(node());
    let before = ledger.free();
    let asked = demand(vec![
        zmount("disk", 10),
        volume("data", 5),
        machine("vm", 2, 4),
    ]);
    let allocation = ledger.plan(7, &asked).expect("fits");
    assert_eq!(
        allocation.resources(),
        Resources {
            cru: 2,
            mru: 4 * GIB,
            sru: 17 * GIB,
            hru: 0
        },
        "a machine of 2 cores and 4 GiB has a 2 GiB root disk"
    );
    assert_eq!(ledger.free(), before, "planning changes nothing");
    ledger.hold(7, allocation.clone());
    assert_eq!(ledger.used(), allocation.resources());
    assert_eq!(ledger.overhead(), MACHINE_OVERHEAD);
    assert_eq!(ledger.free().mru, before.mru - 4 * GIB - MACHINE_OVERHEAD);
    assert_eq!(ledger.free().sru, 123 * GIB);
    assert_eq!(ledger.release(7), Some(allocation));
    assert_eq!(ledger.free(), before);
}

#[test]
fn refusals_give_the_numbers() {
    let ledger = Ledger::new(node());
    let cases: Vec<(&str, Demand, &str)> = vec![
        (
            "more SRU than free",
            demand(vec![zmount("a", 80), zmount("b", 80)]),
            "the deployment asks 160 GiB of SRU, 140 GiB is free (largest single pool: 90 GiB)",
        ),
        (
            "one zmount larger than any pool",
            demand(vec![zmount("big", 95)]),
            "workload 'big' asks 95 GiB of SRU on one pool; 140 GiB is free in all, \
             the largest single pool has 90 GiB",
        ),
        (
            "two disks that fit the total but not the pools",
            demand(vec![zmount("a", 60), zmount("b", 60)]),
            "workload 'b' asks 60 GiB of SRU on one pool; 80 GiB is free in all, \
             the largest single pool has 50 GiB",
        ),
        (
            "more MRU than free",
            demand(vec![machine("vm", 2, 15)]),
            "the deployment asks 15 GiB of MRU and the node needs 160 MiB more to run it; \
             14 GiB is free",
        ),
        (
            "more cores than the node",
            demand(vec![machine("vm", 8, 1)]),
            "a machine asks 8 cores, the node has 4",
        ),
    ];
    for (what, asked, message) in cases {
        let error = ledger.plan(1, &asked).expect_err(what);
        assert_eq!(error.to_string(), message, "{what}");
    }
}

#[test]
fn a_machine_that_fits_only_without_its_qemu_is_refused_and_the_overhead_is_not_billed() {
    let mut ledger = Ledger::new(node());
    let free = ledger.free().mru;
    assert_eq!(free, 14 * GIB);
    let exactly = demand(vec![machine("vm", 1, 14)]);
    let error = ledger.plan(1, &exactly).expect_err("QEMU needs room too");
    assert!(
        matches!(
            error,
            CapacityError::Memory {
                overhead: Bytes(MACHINE_OVERHEAD),
                ..
            }
        ),
        "{error}"
    );
    // Two containers and a machine that leave room for what runs them.
    let mut workloads = vec![machine("vm", 1, 13)];
    let image = format!("registry.local/i@sha256:{}", "0".repeat(64));
    for (name, ip) in [("a", "10.1.1.6"), ("b", "10.1.1.7")] {
        workloads.push(workload(
            name,
            "container",
            json!({"image": image, "interface": {"network": "net", "ip": ip},
                   "compute_capacity": {"cpu": 1, "memory": 256 << 20}, "size": 64 << 20,
                   "mounts": [], "entrypoint": [], "env": {}}),
        ));
    }
    let asked = demand(workloads);
    assert_eq!(asked.overhead, MACHINE_OVERHEAD + 2 * CONTAINER_OVERHEAD);
    let allocation = ledger.plan(2, &asked).expect("fits with its overhead");
    assert_eq!(
        allocation.resources().mru,
        13 * GIB + (512 << 20),
        "billed: what the tenant asked"
    );
    ledger.hold(2, allocation);
    assert_eq!(
        ledger.free().mru,
        free - 13 * GIB - (512 << 20) - MACHINE_OVERHEAD - 2 * CONTAINER_OVERHEAD
    );
    // An update of the same contract counts what it already holds.
    assert!(ledger.plan(2, &asked).is_ok());
}

#[test]
fn deployments_add_up() {
    let mut ledger = Ledger::new(node());
    let first = ledger
        .plan(1, &demand(vec![zmount("a", 85)]))
        .expect("fits the large pool");
    assert_eq!(first.disks[0].pool, "ssd-a");
    ledger.hold(1, first);
    let second = ledger
        .plan(2, &demand(vec![zmount("a", 45)]))
        .expect("fits the other pool");
    assert_eq!(second.disks[0].pool, "ssd-b");
    ledger.hold(2, second);
    let error = ledger
        .plan(3, &demand(vec![zmount("a", 6)]))
        .expect_err("no pool has 6 GiB left");
    assert_eq!(
        error.to_string(),
        "workload 'a' asks 6 GiB of SRU on one pool; 10 GiB is free in all, \
         the largest single pool has 5 GiB"
    );
}

/// The pool `allocation` placed disk `workload` on.
fn pool_of<'a>(allocation: &'a Allocation, workload: &str) -> &'a str {
    &allocation
        .disks
        .iter()
        .find(|p| p.disk.workload == workload)
        .expect("placed")
        .pool
}

#[test]
fn an_update_grows_in_place_beside_what_it_removes() {
    let mut ledger = Ledger::new(node());
    let first = ledger
        .plan(1, &demand(vec![zmount("disk", 10), volume("old", 60)]))
        .expect("fits");
    let disk_pool = pool_of(&first, "disk").to_owned();
    ledger.hold(1, first.clone());

    // Growing within the pool's room works, on the same pool.
    let grown = ledger
        .plan(1, &demand(vec![zmount("disk", 45), volume("old", 60)]))
        .expect("grows");
    assert_eq!(
        pool_of(&grown, "disk"),
        disk_pool,
        "a disk never moves pool"
    );

    // The removed volume still holds its room while the update runs.
    let too_big = ledger.plan(1, &demand(vec![zmount("disk", 55), volume("old", 60)]));
    assert!(
        matches!(too_big, Err(CapacityError::NoSinglePool { .. })),
        "growing past the room of the disk's own pool is refused: {too_big:?}"
    );

    let without_old = demand(vec![zmount("disk", 10), volume("new", 80)]);
    let kept = without_old.clone().with_kept(&first, &["old".to_owned()]);
    assert!(
        ledger.plan(1, &without_old).is_ok(),
        "fits once 'old' is gone"
    );
    let error = ledger
        .plan(1, &kept)
        .expect_err("does not fit beside 'old'");
    assert!(error.to_string().contains("SRU"), "{error}");
}
