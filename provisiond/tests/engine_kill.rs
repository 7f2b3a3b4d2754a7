//! provisiond's engine killed with SIGKILL at 20 moments of a deploy, an
//! update and a removal; restarted on the same store and node, it reaches
//! exactly the state the store recorded, with no orphan and nothing made
//! twice, and then finishes the sequence.
//!
//! A forked child runs the engine over a fake node kept in files (one file
//! per object, and a log of every object made or removed), so what the
//! node holds survives the kill as a real node's objects would. The parent
//! kills the child after a different number of driver calls each round, at
//! the start of a call or in its middle. This file holds one test,
//! so the fork happens with no other test thread.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, pipe};
use provisiond::api::DeploymentState;
use provisiond::deployment::workload::WorkloadType;
use provisiond::driver::{
    Driver, DriverError, DriverFuture, Drivers, Target, is_disk_name, is_netid,
};
use provisiond::engine::{Engine, EngineConfig};
use provisiond::store::Store;

const TWIN: u32 = 7;

/// The fake node in a directory: `<dir>/<type>/<name>` per object, and
/// `<dir>/log` with a line `made <name>` or `removed <name>` per change.
#[derive(Debug)]
struct FileDriver {
    kind: WorkloadType,
    dir: PathBuf,
    /// A byte is written here at the start of every call (the child's
    /// progress, for the parent to time its kill).
    progress: Option<Arc<std::sync::Mutex<std::fs::File>>>,
}

fn log(dir: &Path, line: &str) -> Result<(), DriverError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .map_err(|e| DriverError::Refused(e.to_string()))?;
    writeln!(f, "{line}").map_err(|e| DriverError::Refused(e.to_string()))?;
    f.sync_all()
        .map_err(|e| DriverError::Refused(e.to_string()))
}

impl FileDriver {
    fn tick(&self) {
        if let Some(p) = &self.progress {
            let mut f = p.lock().expect("not poisoned");
            // The parent may have stopped reading; the kill follows.
            drop(f.write_all(&[1]));
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(self.kind.as_str()).join(name)
    }
}

impl Driver for FileDriver {
    fn kind(&self) -> WorkloadType {
        self.kind
    }

    fn object(&self, twin: u32, contract: u64, name: &str) -> String {
        object_name(self.kind, twin, contract, name)
    }

    fn ensure<'a>(&'a self, target: Target<'a>) -> DriverFuture<'a, serde_json::Value> {
        Box::pin(async move {
            self.tick();
            // Slow enough that kills land in the middle of the work.
            tokio::time::sleep(Duration::from_millis(15)).await;
            let name = self.object(target.twin, target.contract, target.workload.name.as_str());
            let path = self.path(&name);
            let data = serde_json::to_string(&target.workload.data).expect("serialises");
            let existed = path.exists();
            let temp = path.with_extension("tmp");
            std::fs::write(&temp, data).map_err(|e| DriverError::Refused(e.to_string()))?;
            std::fs::rename(&temp, &path).map_err(|e| DriverError::Refused(e.to_string()))?;
            if !existed {
                log(&self.dir, &format!("made {name}"))?;
            }
            Ok(serde_json::Value::Null)
        })
    }

    fn remove<'a>(&'a self, object: &'a str) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            self.tick();
            tokio::time::sleep(Duration::from_millis(15)).await;
            if std::fs::remove_file(self.path(object)).is_ok() {
                log(&self.dir, &format!("removed {object}"))?;
            }
            Ok(())
        })
    }

    fn objects(&self) -> DriverFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(self.dir.join(self.kind.as_str()))
                .map_err(|e| DriverError::Refused(e.to_string()))?
            {
                let name = entry
                    .map_err(|e| DriverError::Refused(e.to_string()))?
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                if is_netid(&name) || is_disk_name(&name) {
                    out.push(name);
                }
            }
            Ok(out)
        })
    }
}

fn drivers(dir: &Path, progress: Option<std::fs::File>) -> Drivers {
    let progress = progress.map(|f| Arc::new(std::sync::Mutex::new(f)));
    every_kind(|kind| {
        std::fs::create_dir_all(dir.join(kind.as_str())).expect("dir");
        Arc::new(FileDriver {
            kind,
            dir: dir.to_owned(),
            progress: progress.clone(),
        })
    })
}

async fn engine(dir: &Path, progress: Option<std::fs::File>) -> Engine {
    Engine::start(
        EngineConfig {
            node_id: Some(NODE),
            node: node(100),
            retry: Duration::from_millis(10),
        },
        Store::open(&dir.join("store.redb")).expect("store opens"),
        drivers(dir, progress),
    )
    .await
    .expect("engine starts")
}

/// A runtime of its own, for a forked child or after one was killed.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn held(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kind in ["network", "zmount", "volume"] {
        for entry in std::fs::read_dir(dir.join(kind)).expect("dir") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.ends_with(".tmp") {
                out.insert(name);
            }
        }
    }
    out
}

/// No object was made while it already existed.
fn made_once(dir: &Path, round: usize) {
    let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let mut live = BTreeSet::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("made", name)) => assert!(live.insert(name), "round {round}: {name} made twice"),
            Some(("removed", name)) => {
                assert!(live.remove(name), "round {round}: {name} removed twice")
            }
            _ => panic!("round {round}: bad log line {line:?}"),
        }
    }
}

/// Deploys, updates and removes, waiting for each to settle.
async fn sequence(engine: &Engine, from: Option<(DeploymentState, u32)>) {
    use DeploymentState::*;
    if from.is_none() {
        engine
            .deploy(&submission(&first_version(TWIN)))
            .await
            .expect("admitted");
        assert_eq!(settle(engine, 1).await.state, Ok);
    }
    if from.is_none() || from == Some((Ok, 0)) {
        engine
            .update(1, &submission(&second_version(TWIN)))
            .await
            .expect("admitted");
        assert_eq!(settle(engine, 1).await.state, Ok);
    }
    if from != Some((Deleted, 1)) && from != Some((Deleted, 0)) {
        engine.remove(1).await.expect("admitted");
        assert_eq!(settle(engine, 1).await.state, Deleted);
    }
}

#[test]
fn a_kill_at_any_moment_converges_to_what_the_store_recorded() {
    let want_v0 = first_objects(TWIN);
    let want_v1 = second_objects(TWIN);
    let mut states = BTreeSet::new();
    for round in 0..20usize {
        let dir = tempfile::tempdir().unwrap();
        let (reader, writer) = pipe().expect("pipe");
        // SAFETY: this test binary runs this one test, and no runtime or
        // other thread exists yet in the parent: the child holds no lock
        // it could need. It builds its own runtime and never returns.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(reader);
                let progress = std::fs::File::from(writer);
                runtime().block_on(async {
                    let engine = engine(dir.path(), Some(progress)).await;
                    sequence(&engine, None).await;
                });
                std::process::exit(0)
            }
            ForkResult::Parent { child } => child,
        };
        drop(writer);
        // Kill after a different number of driver calls each round (the
        // sequence makes about ten), at the start of a call or inside it.
        let mut progress = std::fs::File::from(reader);
        let calls = round / 2;
        let mut byte = [0u8; 1];
        for _ in 0..calls {
            if progress.read(&mut byte).expect("progress") == 0 {
                break;
            }
        }
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(8));
        }
        kill(child, Signal::SIGKILL).expect("kill");
        waitpid(child, None).expect("wait");

        runtime().block_on(async {
            let engine = engine(dir.path(), None).await;
            assert!(
                engine.settled(Duration::from_secs(30)).await,
                "round {round}: settles"
            );
            let from = engine.deployment(1).ok().map(|v| (v.state, v.version));
            let want = match from {
                None => BTreeSet::new(),
                Some((DeploymentState::Ok, 0)) => want_v0.clone(),
                Some((DeploymentState::Ok, 1)) => want_v1.clone(),
                Some((DeploymentState::Deleted, _)) => BTreeSet::new(),
                other => panic!("round {round}: not a settled state: {other:?}"),
            };
            states.insert(format!("{from:?}"));
            assert_eq!(
                held(dir.path()),
                want,
                "round {round} ({from:?}): exactly what the store asks"
            );
            made_once(dir.path(), round);
            sequence(&engine, from).await;
            assert!(
                held(dir.path()).is_empty(),
                "round {round}: all removed at the end"
            );
            made_once(dir.path(), round);
            engine.shutdown().await;
        });
    }
    assert!(
        states.len() >= 3,
        "the kills landed in several phases: {states:?}"
    );
}
