//! The node testbed.
