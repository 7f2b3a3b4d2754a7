//! The registry the node registers with: TFChain in a real region, or the
//! embedded single-machine registry for a farm's first steps and tests.

pub mod client;
pub mod embedded;
pub mod model;
pub mod tenant;
