//! The agent's command-line tools for operators, farmers and tenants.

pub mod command;
pub mod sign;
pub mod status;
pub mod tenant;
