//! The engine stopped at every point of a deploy, an update and a removal:
//! after a restart on the same store and node, each deployment reaches the
//! state asked, with no orphan and nothing made twice.
//!
//! The engine's tasks are dropped at an await point (after a given number
//! of driver calls, and while a call is in flight), as a kill would stop
//! them; the store's own atomicity under SIGKILL is `store_crash`'s test.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use provisiond::api::DeploymentState;
use provisiond::engine::Engine;

const TWIN: u32 = 7;

/// Stops `engine` once the fake node has seen `calls` calls, or when it
/// settled before.
async fn stop_after(engine: &Engine, fake: &FakeNode, calls: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.lock().calls.len() < calls
        && !engine.is_settled()
        && tokio::time::Instant::now() < deadline
    {
        tokio::task::yield_now().await;
    }
    engine.shutdown().await;
}

fn no_duplicates(fake: &FakeNode) {
    let made = fake.lock().made.clone();
    let distinct: BTreeSet<_> = made.iter().collect();
    // A name may be made again only after it was removed; here nothing is
    // removed and made again, so each is made once.
    assert_eq!(made.len(), distinct.len(), "made twice: {made:?}");
}

#[tokio::test]
async fn a_stop_at_any_point_converges() {
    let want_v0 = first_objects(TWIN);
    let want_v1 = second_objects(TWIN);
    let mut points = 0;
    for phase in ["deploy", "update", "remove"] {
        for cut in 0..6 {
            points += 1;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            let fake = FakeNode::default();
            let engine = start(&path, &fake, 100).await;
            let base = match phase {
                "deploy" => 0,
                _ => {
                    engine
                        .deploy(&submission(&first_version(TWIN)))
                        .await
                        .expect("admitted");
                    assert_eq!(settle(&engine, 1).await.state, DeploymentState::Ok);
                    if phase == "remove" {
                        engine
                            .update(1, &submission(&second_version(TWIN)))
                            .await
                            .expect("admitted");
                        assert_eq!(settle(&engine, 1).await.state, DeploymentState::Ok);
                    }
                    fake.lock().calls.len()
                }
            };
            match phase {
                "deploy" => drop(
                    engine
                        .deploy(&submission(&first_version(TWIN)))
                        .await
                        .expect("admitted"),
                ),
                "update" => drop(
                    engine
                        .update(1, &submission(&second_version(TWIN)))
                        .await
                        .expect("admitted"),
                ),
                _ => drop(engine.remove(1).await.expect("admitted")),
            }
            stop_after(&engine, &fake, base + cut).await;
            drop(engine);
            let engine = start(&path, &fake, 100).await;
            assert!(
                engine.settled(Duration::from_secs(20)).await,
                "{phase} {cut}: settles"
            );
            let view = engine.deployment(1).expect("restored");
            let (state, want) = match phase {
                "deploy" => (DeploymentState::Ok, &want_v0),
                "update" => (DeploymentState::Ok, &want_v1),
                _ => (DeploymentState::Deleted, &BTreeSet::new()),
            };
            assert_eq!(view.state, state, "{phase} {cut}: {view:?}");
            assert_eq!(&fake.names(), want, "{phase} {cut}: exactly what is asked");
            if phase != "remove" {
                no_duplicates(&fake);
            }
            engine.shutdown().await;
        }
    }
    assert_eq!(points, 18);
}
