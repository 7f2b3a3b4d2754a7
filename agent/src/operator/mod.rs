//! Views of the whole node for operators: status, capacity, metrics.

pub mod capacity;
pub mod console;
pub mod metrics;
pub mod snapshot;
pub mod status;
