//! Disks: discovery from sysfs, signature probing, classification.

pub mod classify;
pub mod discover;
pub mod guard;
pub mod probe;
