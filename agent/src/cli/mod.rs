//! The agent's command-line tools for operators and farmers.

pub mod status;
