//! The registry the node registers with: TFChain in a real region, or the
//! embedded single-machine registry for a farm's first steps and tests.
//! Both hold twins, farms, nodes, uptime and node contracts; [`tenant`] is
//! the side of a tenant who holds a twin key.

pub mod client;
pub mod embedded;
pub mod model;
pub mod tenant;
