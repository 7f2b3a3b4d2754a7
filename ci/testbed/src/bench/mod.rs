//! Benchmarks that need real nodes: each measures what an issue names and
//! prints the ratio against the floor it names. Run through `ci/bench`, on
//! release builds, never inside the timed test suite.

pub mod agent;
pub mod foundation;
pub mod mesh;
pub mod stats;
pub mod storage;
pub mod tenant;
#[cfg(feature = "tfchain")]
pub mod tfchain;
