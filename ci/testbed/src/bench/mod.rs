//! Benchmarks that need real nodes: each measures what an issue names and
//! prints the ratio against the floor it names. Run through `ci/bench`, on
//! release builds, never inside the timed test suite.

pub mod agent;
#[cfg(feature = "provision")]
pub mod compute;
pub mod foundation;
pub mod image;
pub mod mesh;
#[cfg(feature = "provision")]
pub mod provision;
#[cfg(feature = "provision")]
pub mod pull;
pub mod stats;
pub mod storage;
pub mod tenant;
#[cfg(feature = "tfchain")]
pub mod tfchain;

/// Waits until every node's `daemon` answers `GET path` with 200, polling
/// every 20 ms for up to a minute.
fn all_answer(
    farm: &crate::Farm,
    daemon: crate::Daemon,
    path: &str,
) -> Result<(), foundation::BenchError> {
    const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
    for node in farm.nodes() {
        let up = crate::wait_until(WITHIN, std::time::Duration::from_millis(20), || {
            node.socket(daemon)
                .is_ok_and(|s| matches!(crate::http::unix_get(&s, path), Ok((200, _))))
        });
        if !up {
            return Err(foundation::BenchError::NotReady(WITHIN));
        }
    }
    Ok(())
}
