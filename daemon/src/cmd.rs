//! Running short-lived host tools (`btrfs`, `wipefs`, `ip`, `losetup`, ...)
//! with errors a person can act on.
//!
//! Every call names the program and its arguments once; on failure the
//! error carries the whole command line, the exit status and the trimmed
//! stderr. Blocking: async callers run it on a blocking thread. Output is
//! collected in memory and there is no timeout, so this is only for tools
//! that finish quickly with small output.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// Searched after `PATH`: the admin tools live here and a caller's `PATH`
/// does not always include them.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/bin"];

/// A tool that could not be run or failed. Boxed: it travels inside many
/// error types and should not make each of them large.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CmdError(Box<CmdFailure>);

/// What went wrong with a tool.
#[derive(Debug, thiserror::Error)]
pub enum CmdFailure {
    /// The program could not be started (missing, not executable).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// Feeding standard input or collecting the output failed.
    #[error("lost contact with `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl CmdError {
    pub fn failure(&self) -> &CmdFailure {
        &self.0
    }

    /// The stderr of a command that ran and failed, empty otherwise.
    pub fn stderr(&self) -> &str {
        match self.failure() {
            CmdFailure::Failed { stderr, .. } => stderr,
            CmdFailure::Spawn { .. } | CmdFailure::Io { .. } => "",
        }
    }
}

impl From<CmdFailure> for CmdError {
    fn from(failure: CmdFailure) -> Self {
        Self(Box::new(failure))
    }
}

/// The command line as a person would type it, for messages.
pub fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Where `program` is: itself if it holds a `/`, else the first match in
/// `PATH` and then the sbin directories; unchanged if nowhere, so the spawn
/// error names it.
pub fn resolve(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| Path::new(program).to_owned())
}

/// How a `command` that could not be started fails.
fn cannot_start(command: &str) -> impl FnOnce(std::io::Error) -> CmdError + '_ {
    move |source| {
        CmdFailure::Spawn {
            command: command.to_owned(),
            source,
        }
        .into()
    }
}

/// Runs `program args...`, returning its stdout when it exits 0.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, CmdError> {
    let command = command_line(program, args);
    let output = Command::new(resolve(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(cannot_start(&command))?;
    checked(command, output)
}

/// Runs `program args...` with `input` on its stdin, returning its stdout
/// when it exits 0.
pub fn run_with_input<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    input: &[u8],
) -> Result<String, CmdError> {
    let command = command_line(program, args);
    let mut child = Command::new(resolve(program))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_start(&command))?;
    let fed = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input),
        None => Ok(()),
    };
    let lost = |source| -> CmdError {
        CmdFailure::Io {
            command: command.clone(),
            source,
        }
        .into()
    };
    let output = child.wait_with_output().map_err(lost)?;
    fed.map_err(lost)?;
    checked(command, output)
}

/// Runs `program args...` and hands back its output whatever the exit
/// status; only a failure to start is an error.
pub fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output, CmdError> {
    Command::new(resolve(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(cannot_start(&command_line(program, args)))
}

fn checked(command: String, output: Output) -> Result<String, CmdError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CmdFailure::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        assert_eq!(
            run("echo", &["hi", "there"]).expect("echo runs"),
            "hi there\n"
        );
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run("sh", &["-c", "echo broken >&2; exit 3"]).expect_err("exit 3 fails");
        let text = err.to_string();
        assert!(text.contains("sh -c echo broken >&2; exit 3"), "{text}");
        assert!(text.contains("broken"), "{text}");
        assert_eq!(err.stderr(), "broken");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("/nonexistent/grove-tool", &["x"]).expect_err("cannot start");
        assert!(matches!(err.failure(), CmdFailure::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn sbin_tools_are_found() {
        assert!(resolve("ip").is_absolute());
        assert_eq!(resolve("./x"), PathBuf::from("./x"));
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input("cat", &[] as &[&str], b"label: gpt\n").expect("cat runs");
        assert_eq!(out, "label: gpt\n");
    }
}
