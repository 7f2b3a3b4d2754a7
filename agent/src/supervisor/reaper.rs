//! The one place that waits on child processes.
//!
//! As PID 1 the agent must reap every orphan the kernel hands it; elsewhere it
//! makes itself a child subreaper so its daemons' orphans come to it too. One
//! process-wide thread blocks in `waitpid(-1)` and routes each status to
//! whoever spawned that pid; with no children left it sleeps until the next
//! spawn. Spawning happens under the routing table's lock, so a child that
//! dies at once is never mistaken for an orphan. Every child is forked by
//! one more thread that lives as long as the process, because a daemon's
//! parent-death signal (see `grove_daemon::parent`) follows the thread that
//! forked it, and a pool thread may end at any time. Because this thread reaps
//! every child, nothing else in the process may wait on children (no
//! `tokio::process`): all of them are spawned through [`Reaper::spawn`].

use std::collections::HashMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock, mpsc};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Why the reaper could not start or spawn.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] Errno),
    #[error("cannot start the reaper's threads: {0}")]
    Thread(#[source] Arc<std::io::Error>),
    #[error("the spawner thread is gone")]
    SpawnerGone,
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Exit {
    Code { code: i32 },
    Signal { signal: String },
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code { code } => write!(f, "exited with code {code}"),
            Exit::Signal { signal } => write!(f, "killed by {signal}"),
        }
    }
}

/// A child started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    /// Bumped at every spawn, to wake a reaper that had no children.
    spawns: u64,
}

/// A command for the spawner thread, and where its outcome goes.
type SpawnJob = (Command, mpsc::SyncSender<Result<Spawned, ReaperError>>);

/// Routes child exits to their spawners; reaps orphans.
#[derive(Debug, Default)]
pub struct Reaper {
    table: Mutex<Table>,
    spawned: Condvar,
    spawner: Mutex<Option<mpsc::Sender<SpawnJob>>>,
}

static GLOBAL: OnceLock<Result<Arc<Reaper>, ReaperError>> = OnceLock::new();

impl Reaper {
    /// The process's reaper, started on first use.
    pub fn global() -> Result<Arc<Self>, ReaperError> {
        GLOBAL.get_or_init(Self::start).clone()
    }

    fn start() -> Result<Arc<Self>, ReaperError> {
        if std::process::id() != 1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(ReaperError::Subreaper)?;
        }
        let reaper = Arc::new(Self::default());
        let this = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".to_owned())
            .spawn(move || this.reap_forever())
            .map_err(|e| ReaperError::Thread(Arc::new(e)))?;
        let (jobs, queue) = mpsc::channel::<SpawnJob>();
        let this = reaper.clone();
        std::thread::Builder::new()
            .name("spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in queue {
                    // The asker may have given up; the child is then still
                    // reaped and routed to nobody.
                    drop(reply.send(this.spawn_here(&mut command)));
                }
            })
            .map_err(|e| ReaperError::Thread(Arc::new(e)))?;
        *reaper.spawner.lock().unwrap_or_else(|e| e.into_inner()) = Some(jobs);
        Ok(reaper)
    }

    /// Spawns `command` with stdout and stderr piped, on the spawner
    /// thread. Blocking (fork and exec): call from a blocking thread.
    pub fn spawn(&self, command: Command) -> Result<Spawned, ReaperError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = match &*self.spawner.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send((command, reply)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(ReaperError::SpawnerGone);
        }
        answer.recv().unwrap_or(Err(ReaperError::SpawnerGone))
    }

    fn spawn_here(&self, command: &mut Command) -> Result<Spawned, ReaperError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (tx, rx) = oneshot::channel();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = command.spawn().map_err(|source| ReaperError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source: Arc::new(source),
        })?;
        let pid = child.id();
        table.waiting.insert(pid as i32, tx);
        table.spawns += 1;
        drop(table);
        self.spawned.notify_all();
        Ok(Spawned {
            pid,
            exit: rx,
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        })
    }

    fn reap_forever(&self) {
        loop {
            // Read before waiting: a spawn after this point either gives
            // waitpid a child or changes the count, so no wake-up is lost.
            let seen = self.table.lock().unwrap_or_else(|e| e.into_inner()).spawns;
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => self.route(pid, Exit::Code { code }),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => self.route(
                    pid,
                    Exit::Signal {
                        signal: signal_name(sig),
                    },
                ),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // No children: sleep until the next spawn.
                    let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
                    let _woken = self
                        .spawned
                        .wait_while(table, |t| t.spawns == seen)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed; retrying in 1 s");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    fn route(&self, pid: Pid, exit: Exit) {
        // Taking the lock waits out a spawn in progress, so its pid is in
        // the table before the status is routed.
        let tx = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .remove(&pid.as_raw());
        match tx {
            // The spawner may have gone away; then nobody needs the status.
            Some(tx) => drop(tx.send(exit)),
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
        }
    }
}

fn signal_name(sig: Signal) -> String {
    sig.as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn spawn(reaper: &Reaper, script: &str) -> Spawned {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        reaper.spawn(cmd).unwrap()
    }

    #[tokio::test]
    async fn routes_exit_codes_and_signals() {
        let reaper = Reaper::global().unwrap();
        let quick = spawn(&reaper, "exit 3").await;
        let killed = spawn(&reaper, "kill -9 $$").await;
        let code = tokio::time::timeout(Duration::from_secs(5), quick.exit)
            .await
            .expect("exit in time")
            .unwrap();
        assert_eq!(code, Exit::Code { code: 3 });
        let sig = tokio::time::timeout(Duration::from_secs(5), killed.exit)
            .await
            .expect("exit in time")
            .unwrap();
        assert_eq!(
            sig,
            Exit::Signal {
                signal: "SIGKILL".to_owned()
            }
        );
        assert_eq!(sig.to_string(), "killed by SIGKILL");
    }

    /// Zombies whose parent is this process, from /proc.
    fn zombie_children() -> Vec<String> {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so split
                // after its closing parenthesis.
                let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
                let mut fields = rest.split(' ');
                fields.next() == Some("Z") && fields.next() == Some(me.as_str())
            })
            .collect()
    }

    #[tokio::test]
    async fn orphans_are_reaped() {
        let reaper = Reaper::global().unwrap();
        // The shell exits at once; its background child becomes an orphan,
        // re-parented to us (the subreaper), and dies 100 ms later.
        let parent = spawn(&reaper, "sleep 0.1 & exit 0").await;
        tokio::time::timeout(Duration::from_secs(5), parent.exit)
            .await
            .expect("parent exit in time")
            .unwrap();
        let clean = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if zombie_children().is_empty() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), clean)
            .await
            .unwrap_or_else(|_| panic!("zombies left: {:?}", zombie_children()));
    }

    /// A child that asks to die with its parent (as the daemons do) outlives
    /// the pool thread that asked for it, because the fork happens on the
    /// spawner thread: the kernel's parent-death signal follows the thread.
    #[test]
    fn a_child_that_dies_with_its_parent_outlives_the_asking_thread() {
        const NAME: &str = "pdeath-test";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(NAME)
            .thread_keep_alive(Duration::from_millis(1))
            .enable_all()
            .build()
            .unwrap();
        let pool_threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim() == NAME)
                .count()
        };
        runtime.block_on(async {
            let reaper = Reaper::global().unwrap();
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "sleep", "30"]);
            let spawner = reaper.clone();
            let spawned = tokio::task::spawn_blocking(move || spawner.spawn(cmd))
                .await
                .unwrap()
                .unwrap();
            // The pool thread that asked ends once idle.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while pool_threads() > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(pool_threads(), 0, "the pool thread did not end");
            let mut exit = spawned.exit;
            let early = tokio::time::timeout(Duration::from_secs(1), &mut exit).await;
            assert!(
                early.is_err(),
                "the child died with the pool thread: {early:?}"
            );
            nix::sys::signal::kill(Pid::from_raw(spawned.pid as i32), Signal::SIGKILL).unwrap();
            let status = tokio::time::timeout(Duration::from_secs(5), exit)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                status,
                Exit::Signal {
                    signal: "SIGKILL".to_owned()
                }
            );
        });
    }

    #[tokio::test]
    async fn missing_program_is_a_named_error() {
        let reaper = Reaper::global().unwrap();
        let err = reaper
            .spawn(Command::new("/nonexistent/netd"))
            .expect_err("no such program");
        assert!(err.to_string().contains("/nonexistent/netd"), "{err}");
    }
}
