//! The store after a `kill -9` in the middle of writing.
//!
//! A forked child writes batches without pause: each batch records one
//! deployment, three results and three history entries. The parent kills it
//! at a different moment in each round, reopens the store and checks that
//! every committed batch is whole and nothing of a torn one shows. This test
//! file holds one test, so the fork happens with no other test thread.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, pipe};
use provisiond::store::{DeploymentRecord, Store, WorkloadResult, WorkloadState};

const NAMES: [&str; 3] = ["net", "disk", "data"];

fn record(contract: u64) -> DeploymentRecord {
    DeploymentRecord {
        contract_id: contract,
        twin_id: 9,
        version: 0,
        hash: format!("{contract:032x}"),
        // Large enough that a batch spans several pages.
        wire: "x".repeat(20_000 + usize::try_from(contract % 7).expect("small") * 3_000),
    }
}

fn write_forever(path: &std::path::Path, first: u64, mut progress: std::fs::File) -> ! {
    let code = match Store::open(path) {
        Ok(store) => {
            let mut contract = first;
            loop {
                let done = store.batch().and_then(|mut batch| {
                    batch.put_deployment(&record(contract))?;
                    for name in NAMES {
                        batch.set_result(
                            contract,
                            0,
                            name,
                            &WorkloadResult {
                                created: i64::try_from(contract).expect("small"),
                                state: WorkloadState::Ok,
                                message: name.to_owned(),
                                data: serde_json::Value::Null,
                            },
                        )?;
                    }
                    batch.commit()
                });
                if done.is_err() || progress.write_all(&[1]).is_err() {
                    break 2;
                }
                contract += 1;
            }
        }
        Err(_) => 3,
    };
    std::process::exit(code)
}

#[test]
fn a_kill_mid_write_keeps_every_committed_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provision.redb");
    let mut committed = 0u64;
    for round in 0..6u64 {
        let (reader, writer) = pipe().expect("pipe");
        // SAFETY: this test binary runs this one test: no other thread holds a
        // lock the child could need; the child only writes the store and exits.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(reader);
                // SAFETY: the descriptor is ours, just made by pipe().
                let progress = unsafe { std::fs::File::from_raw_fd(writer.into_raw_fd()) };
                write_forever(&path, committed, progress)
            }
            ForkResult::Parent { child } => child,
        };
        drop(writer);
        // SAFETY: the descriptor is ours, just made by pipe().
        let mut progress = unsafe { std::fs::File::from_raw_fd(reader.into_raw_fd()) };
        // Let the child commit a different number of batches each round,
        // then kill it while it is writing the next.
        let wanted = 5 + round * 7;
        let mut seen = 0u64;
        let mut byte = [0u8; 1];
        while seen < wanted {
            let n = progress.read(&mut byte).expect("progress");
            assert_eq!(
                n, 1,
                "round {round}: the writer stopped after {seen} batches"
            );
            seen += 1;
        }
        kill(child, Signal::SIGKILL).expect("kill");
        waitpid(child, None).expect("wait");
        let mut more = Vec::new();
        progress.read_to_end(&mut more).expect("drain");
        let acknowledged = committed + seen + u64::try_from(more.len()).expect("small");

        let store = Store::open(&path).expect("the store opens after a kill");
        let records = store.deployments().expect("list");
        let ids: Vec<u64> = records.iter().map(|r| r.contract_id).collect();
        let count = u64::try_from(ids.len()).expect("small");
        assert!(
            count >= acknowledged && count <= acknowledged + 1,
            "round {round}: {count} batches in the store, {acknowledged} acknowledged"
        );
        assert_eq!(ids, (0..count).collect::<Vec<_>>(), "round {round}: a gap");
        for record_read in &records {
            assert_eq!(
                record_read,
                &record(record_read.contract_id),
                "round {round}"
            );
            let results = store.results(record_read.contract_id).expect("results");
            assert_eq!(
                results.keys().map(String::as_str).collect::<Vec<_>>(),
                vec!["data", "disk", "net"],
                "round {round}: contract {} torn",
                record_read.contract_id
            );
            assert_eq!(
                store
                    .history(record_read.contract_id)
                    .expect("history")
                    .len(),
                3
            );
        }
        assert!(
            store.results(count).expect("results").is_empty(),
            "round {round}: results of an uncommitted batch"
        );
        committed = count;
    }
    assert!(committed >= 5 + 12 + 19 + 26 + 33 + 40);
}
