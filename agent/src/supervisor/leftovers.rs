//! Daemons a previous agent left running, found and stopped.
//!
//! A daemon dies with the agent that started it (`grove_daemon::parent`),
//! but one may still be draining, or predate that guard, when a new agent
//! starts; two storaged on one set of disks or two netd on one NIC would
//! fight. Before starting its own, the agent looks through `/proc` for
//! processes in its own network namespace that run one of its daemon
//! binaries, and stops them: SIGTERM, then SIGKILL after a grace period.
//! It does not adopt them: their sockets and output pipes belonged to the
//! previous agent, so a fresh start is the only state it can vouch for.
//! Limits: a binary replaced on disk is still matched (by its old path);
//! a daemon that changed network namespace is not seen.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process running one of the daemon binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub program: PathBuf,
}

/// The processes under `proc_root` in this process's network namespace
/// that run one of `programs`, this process excepted: their executable is
/// the program's (links resolved) and they were started by the program's
/// name. In the boot image the daemons are links to one binary (`grove`),
/// and only the name tells them apart.
pub fn find(proc_root: &Path, programs: &[PathBuf]) -> Vec<Leftover> {
    let Ok(own_net) = std::fs::read_link(proc_root.join("self/ns/net")) else {
        return Vec::new();
    };
    let programs: Vec<(PathBuf, &PathBuf)> = programs
        .iter()
        .map(|p| (p.canonicalize().unwrap_or_else(|_missing| p.clone()), p))
        .collect();
    let own_pid = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            if pid == own_pid {
                return None;
            }
            let dir = proc_root.join(pid.to_string());
            if std::fs::read_link(dir.join("ns/net")).ok()? != own_net {
                return None;
            }
            let exe = executable(&dir)?;
            let name = run_as(&dir)?;
            programs
                .iter()
                .find(|(binary, program)| *binary == exe && program.file_name() == Some(&name))
                .map(|(_, program)| Leftover {
                    pid,
                    program: (*program).clone(),
                })
        })
        .collect()
}

/// The file name the process at `dir` was started by (its `argv[0]`).
fn run_as(dir: &Path) -> Option<std::ffi::OsString> {
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let arg0 = cmdline.split(|&b| b == 0).next()?;
    Path::new(std::ffi::OsStr::from_bytes(arg0))
        .file_name()
        .map(ToOwned::to_owned)
}

/// The executable of the process at `dir`; none for a zombie or a process
/// already gone.
fn executable(dir: &Path) -> Option<PathBuf> {
    let exe = std::fs::read_link(dir.join("exe")).ok()?;
    let text = exe.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// Stops every leftover of `programs`: SIGTERM, up to `grace` to exit, then
/// SIGKILL and up to `grace` again. Blocking: call from a blocking thread.
/// Returns what was found, and what was still running at the end.
pub fn stop(
    proc_root: &Path,
    programs: &[PathBuf],
    grace: Duration,
) -> (Vec<Leftover>, Vec<Leftover>) {
    let found = find(proc_root, programs);
    let mut left = found.clone();
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        if left.is_empty() {
            break;
        }
        for l in &left {
            tracing::warn!(pid = l.pid, program = %l.program.display(), signal = %signal, "stopping a daemon a previous agent left");
            if let Err(e) = kill(Pid::from_raw(l.pid), signal) {
                tracing::debug!(pid = l.pid, error = %e, "cannot signal the leftover");
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let alive = find(proc_root, programs);
            left.retain(|l| alive.contains(l));
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (found, left)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A copy of `sleep` under a name no other process on the host uses.
    fn private_sleep(dir: &Path) -> PathBuf {
        let program = dir.join("grove-leftover-test");
        std::fs::copy("/bin/sleep", &program).unwrap();
        program
    }

    /// Runs `program 60`. A child another test of this process forked
    /// while the copy was open for writing holds that descriptor until it
    /// execs, and the kernel refuses to run a file open for writing
    /// (ETXTBSY): that moment passes, so it is waited out.
    fn sleep_60(program: &Path) -> std::process::Child {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Command::new(program).arg("60").spawn() {
                Err(e)
                    if e.raw_os_error() == Some(nix::libc::ETXTBSY)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                spawned => return spawned.unwrap(),
            }
        }
    }

    #[test]
    fn finds_and_stops_a_process_running_a_daemon_binary() {
        let dir = tempfile::tempdir().unwrap();
        let program = private_sleep(dir.path());
        let mut child = sleep_60(&program);
        let proc_root = Path::new("/proc");
        let want = [program.clone()];
        let deadline = Instant::now() + Duration::from_secs(10);
        // exec has happened once the executable reads as the copy.
        while find(proc_root, &want).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = find(proc_root, &want);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id() as i32);

        let (stopped, left) = stop(proc_root, &want, Duration::from_secs(5));
        assert_eq!(stopped, found);
        assert!(left.is_empty(), "{left:?}");
        // Another test of this process may have started the process-wide
        // reaper (`waitpid(-1)`), which then collects the child first:
        // gone is what counts, its SIGTERM is checked where the status is
        // still ours.
        match child.wait() {
            Ok(status) => assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(Signal::SIGTERM as i32)
            ),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ECHILD), "{e}");
                assert!(!proc_root.join(child.id().to_string()).exists());
            }
        }
    }

    #[test]
    fn a_link_runs_the_program_its_name_says() {
        let dir = tempfile::tempdir().unwrap();
        let binary = private_sleep(dir.path());
        let (netd, storaged) = (dir.path().join("netd"), dir.path().join("storaged"));
        std::os::unix::fs::symlink(&binary, &netd).unwrap();
        std::os::unix::fs::symlink(&binary, &storaged).unwrap();
        let mut child = sleep_60(&netd);
        let proc_root = Path::new("/proc");
        let both = [storaged.clone(), netd.clone()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while find(proc_root, &both).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = find(proc_root, &both);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found,
            [Leftover {
                pid: child.id() as i32,
                program: netd
            }]
        );
        assert!(find(proc_root, &[storaged]).is_empty());
    }

    #[test]
    fn a_binary_nobody_runs_has_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let program = private_sleep(dir.path());
        assert!(find(Path::new("/proc"), std::slice::from_ref(&program)).is_empty());
        assert!(find(Path::new("/nonexistent"), &[program]).is_empty());
    }
}
