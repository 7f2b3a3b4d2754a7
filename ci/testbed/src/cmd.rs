//! Running host tools (`ip`, `losetup`, `mkfs.ext4`, `sfdisk`, ...) with
//! errors a person can act on: the runner is [`grove_daemon::cmd`]'s,
//! and here are the testbed's own uses of it (a file's SHA-256, the
//! agent's CLI).

use std::path::Path;

pub use grove_daemon::cmd::{
    CmdError, CmdFailure, command_line, output, resolve, run, run_with_input,
};

/// The SHA-256 of the file at `path`, in hex, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> Result<String, CmdError> {
    let out = run("sha256sum", &[path])?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// Runs the workspace's `agent` binary (its CLI) with `args`; its trimmed
/// stdout.
pub fn agent_cli(args: &[&str]) -> Result<String, AgentCliError> {
    let agent = crate::bins::bin_dir()?.join("agent");
    let out = run(&agent.to_string_lossy(), args)?;
    Ok(out.trim().to_owned())
}

/// Why the agent's CLI gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentCliError {
    #[error(transparent)]
    Bin(#[from] crate::bins::BinError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
}
