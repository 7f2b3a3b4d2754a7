//! A supervised daemon dies with its supervisor.
//!
//! The agent starts each daemon with [`SUPERVISOR_PID_ENV`] set to its own
//! pid. [`die_with_supervisor`] then asks the kernel to send the daemon
//! SIGTERM when that parent goes (`PR_SET_PDEATHSIG`), so a `kill -9` of the
//! agent leaves no daemon behind to fight the next agent's for the disks and
//! NICs; SIGTERM, not SIGKILL, so the daemon still stops its own children.
//! A daemon whose parent is already gone by the time it asks exits at once.
//! Limits: the signal follows the thread that forked the daemon, so the
//! supervisor must spawn from a thread that lives as long as it does.

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

/// The environment variable naming the supervisor's pid.
pub const SUPERVISOR_PID_ENV: &str = "GROVE_SUPERVISOR_PID";

/// Why a supervised daemon must not run.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("{SUPERVISOR_PID_ENV}={value} is not a pid")]
    BadPid { value: String },
    #[error("cannot ask to die with the supervisor: {0}")]
    Prctl(#[source] nix::errno::Errno),
    #[error("the supervisor (pid {supervisor}) is already gone; the parent is now pid {parent}")]
    Orphaned { supervisor: i32, parent: i32 },
}

/// Makes the child `command` starts die with SIGKILL when this process
/// dies, however it dies (`kill_on_drop` does not run on SIGKILL): a tool
/// cut off half way must not go on beside the one the restarted daemon
/// runs. The signal follows the thread that spawns the child, so spawn
/// from the runtime's long-lived threads, never from a blocking task's.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe system calls (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent died before the prctl took effect: nobody would
            // kill this child.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "the parent exited while starting a child",
                ));
            }
            Ok(())
        });
    }
}

/// When started by a supervisor, arranges to receive SIGTERM when it dies;
/// fails if it is already gone. Started by anything else, does nothing.
pub fn die_with_supervisor() -> Result<(), ParentError> {
    let Some(value) = std::env::var_os(SUPERVISOR_PID_ENV) else {
        return Ok(());
    };
    let value = value.to_string_lossy().into_owned();
    let supervisor = value
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or(ParentError::BadPid { value })?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(ParentError::Prctl)?;
    // Checked after the request, so a supervisor that dies in between is
    // seen here rather than missed.
    let parent = getppid();
    if parent != Pid::from_raw(supervisor) {
        return Err(ParentError::Orphaned {
            supervisor,
            parent: parent.as_raw(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_supervisor_nothing_happens() {
        // The test harness is not started with the variable.
        assert!(std::env::var_os(SUPERVISOR_PID_ENV).is_none());
        die_with_supervisor().unwrap();
    }
}
