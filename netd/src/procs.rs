//! The child processes netd runs (udhcpc, boringtun-cli): dying with netd,
//! and finding the ones a previous netd left behind.
//!
//! [`die_with_parent`] asks the kernel to SIGKILL a child when netd dies,
//! however it dies (`kill_on_drop` does not run on SIGKILL); [`find`] scans
//! `/proc` (a parameter) for live processes in netd's own network
//! namespace whose command line matches, so a new netd can adopt or stop
//! them. Limits: the death signal follows the thread that spawned the
//! child, so children are spawned from the runtime's long-lived threads,
//! never from a blocking task's thread.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Makes the child `command` starts die with SIGKILL when netd dies.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    grove_daemon::parent::die_with_parent(command);
}

/// Whether `/proc/<pid>` is a live (not zombie) process.
pub fn alive(proc_pid: &Path) -> bool {
    std::fs::read_to_string(proc_pid.join("stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Pids of live processes in this process's network namespace, other than
/// this process, whose arguments (`argv`, NUL-split, empty ones dropped)
/// `matches`; in ascending order.
pub fn find(proc_root: &Path, matches: impl Fn(&[&[u8]]) -> bool) -> Vec<i32> {
    let own_net = std::fs::metadata(proc_root.join("self/ns/net")).map(|m| m.ino());
    let Ok(own_net) = own_net else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).is_ok_and(|p| p != me))
        .filter(|pid| {
            let dir = proc_root.join(pid.to_string());
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let same_net = std::fs::metadata(dir.join("ns/net")).is_ok_and(|m| m.ino() == own_net);
            matches(&args) && same_net && alive(&dir)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `arg` is a path whose file name is `name`'s.
pub fn runs(arg: &[u8], name: &Path) -> bool {
    let Some(name) = name.file_name() else {
        return false;
    };
    Path::new(std::str::from_utf8(arg).unwrap_or_default()).file_name() == Some(name)
}

/// SIGKILLs `pids` and waits (up to `within`) until they are gone or
/// zombies. Blocking. The pids still alive after that.
pub fn kill_all(proc_root: &Path, pids: &[i32], within: Duration) -> Vec<i32> {
    for pid in pids {
        let _gone = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + within;
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| alive(&proc_root.join(pid.to_string())))
            .collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_its_arguments_and_kills_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("1234.5")
            .spawn()
            .expect("sleep runs");
        let pid = i32::try_from(child.id()).expect("pid");
        let proc_root = Path::new("/proc");
        let matches = |args: &[&[u8]]| {
            args.first()
                .is_some_and(|a| runs(a, Path::new("/bin/sleep")))
                && args.get(1).is_some_and(|a| *a == b"1234.5")
        };
        assert!(alive(&proc_root.join(pid.to_string())));
        // The kernel fills a new program's arguments in a moment after
        // the spawn returns; until then the cmdline reads empty.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = find(proc_root, matches);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            found = find(proc_root, matches);
        }
        assert_eq!(found, [pid]);
        assert!(kill_all(proc_root, &[pid], Duration::from_secs(5)).is_empty());
        let _reaped = child.wait();
        assert!(find(proc_root, matches).is_empty());
    }

    #[tokio::test]
    async fn a_child_dies_with_the_thread_that_made_it() {
        // A thread stands in for netd: the death signal follows it.
        let handle = tokio::runtime::Handle::current();
        let pid = std::thread::spawn(move || {
            let _context = handle.enter();
            let mut command = tokio::process::Command::new("sleep");
            command.arg("1234.6");
            die_with_parent(&mut command);
            let child = command.spawn().expect("sleep runs");
            child.id().expect("pid")
        })
        .join()
        .expect("thread");
        let dir = Path::new("/proc").join(pid.to_string());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(&dir) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !alive(&dir),
            "the child outlived the thread that spawned it"
        );
    }
}
