//! TFChain: the calls a node sends, built from Grove's own model and
//! encoded against the runtime's metadata.

pub mod calls;
pub mod client;
pub mod uptime;
