//! Views of the whole node for operators: status, capacity, metrics.

pub mod capacity;
pub mod metrics;
pub mod status;
