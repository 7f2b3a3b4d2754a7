//! Running the storage tools (`mkfs.btrfs`, `btrfs`, `wipefs`, `chattr`).
//!
//! Blocking: callers run on a blocking thread. A failure carries the whole
//! command line and what the tool printed on stderr.

use std::ffi::OsStr;
use std::process::Command;

/// A tool that could not be run or failed. Boxed: it travels inside many
/// error types and should not make each of them large.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CmdError(Box<CmdFailure>);

impl CmdError {
    pub fn spawn(command: String, source: std::io::Error) -> Self {
        Self(Box::new(CmdFailure::Spawn { command, source }))
    }

    pub fn failed(command: String, status: String, stderr: String) -> Self {
        Self(Box::new(CmdFailure::Failed {
            command,
            status,
            stderr,
        }))
    }

    pub fn failure(&self) -> &CmdFailure {
        &self.0
    }
}

/// What went wrong with a tool.
#[derive(Debug, thiserror::Error)]
pub enum CmdFailure {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs `program args...`; answers its stdout.
pub fn run<I, S>(program: &str, args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let command = std::iter::once(program.to_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .map_err(|source| CmdError::spawn(command.clone(), source))?;
    if !out.status.success() {
        return Err(CmdError::failed(
            command,
            out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run("sh", ["-c", "echo oops >&2; exit 3"]).expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert_eq!(run("sh", ["-c", "echo hi"]).expect("runs"), "hi\n");
        let missing = run("/nonexistent/tool", ["x"]).expect_err("no such tool");
        assert!(matches!(missing.failure(), CmdFailure::Spawn { .. }));
    }
}
