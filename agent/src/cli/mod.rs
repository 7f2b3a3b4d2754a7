//! The agent's command-line tools for operators and farmers.

pub mod sign;
pub mod status;
