//! The agent's owned background tasks: named, instrumented, drained.
//!
//! Every long-lived task the agent starts goes into a [`Tasks`] set under a
//! name. [`Tasks::drain`] waits for all of them to end after shutdown
//! tripped, aborts the ones still running after a grace period and names
//! them in the log, so no loop outlives the agent unseen. [`until`] makes a
//! loop that never ends by itself stop when shutdown trips.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use grove_daemon::shutdown::Shutdown;
use tokio::task::{Id, JoinSet};
use tracing::Instrument;

/// A set of named tasks, each yielding a `T`.
#[derive(Debug)]
pub struct Tasks<T> {
    set: JoinSet<T>,
    names: HashMap<Id, &'static str>,
}

impl<T: Send + 'static> Default for Tasks<T> {
    fn default() -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }
}

impl<T: Send + 'static> Tasks<T> {
    /// Spawns `task` under `name`, inside a span carrying that name.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = T> + Send + 'static) {
        let span = tracing::info_span!("task", task = name);
        let id = self.set.spawn(task.instrument(span)).id();
        self.names.insert(id, name);
    }

    /// Waits for every task to end; after `grace`, aborts those still
    /// running. Returns what the tasks that ended yielded, with their names.
    pub async fn drain(mut self, grace: Duration) -> Vec<(&'static str, T)> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut done = Vec::new();
        let mut aborted = false;
        loop {
            let next = if aborted {
                Ok(self.set.join_next_with_id().await)
            } else {
                tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await
            };
            match next {
                Ok(None) => break,
                Ok(Some(Ok((id, value)))) => done.push((self.finished(id), value)),
                Ok(Some(Err(e))) if e.is_cancelled() => {
                    self.finished(e.id());
                }
                Ok(Some(Err(e))) => {
                    let name = self.finished(e.id());
                    tracing::error!(task = name, error = %e, "task failed");
                }
                Err(_elapsed) => {
                    let left: Vec<_> = self.names.values().collect();
                    tracing::warn!(tasks = ?left, ?grace, "tasks did not end in time, aborting");
                    self.set.abort_all();
                    aborted = true;
                }
            }
        }
        done
    }

    /// Forgets a task that ended, returning its name.
    fn finished(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unnamed")
    }
}

impl Tasks<()> {
    /// Spawns `task` under `name`, to run until it ends or `shutdown`
    /// trips ([`until`]).
    pub fn spawn_until(
        &mut self,
        name: &'static str,
        shutdown: &Shutdown,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(name, until(shutdown.clone(), task));
    }
}

/// Runs `task` until it ends or `shutdown` trips, whichever comes first.
pub async fn until(shutdown: Shutdown, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        () = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_collects_results_and_aborts_what_hangs() {
        let shutdown = Shutdown::new();
        let mut tasks = Tasks::default();
        tasks.spawn("quick", async { 1 });
        tasks.spawn("hangs", async {
            std::future::pending::<()>().await;
            2
        });
        let stopper = shutdown.clone();
        tasks.spawn("loop", async move {
            until(stopper, std::future::pending()).await;
            3
        });
        shutdown.trigger();
        let started = std::time::Instant::now();
        let mut done = tasks.drain(Duration::from_millis(200)).await;
        done.sort();
        assert_eq!(done, vec![("loop", 3), ("quick", 1)]);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
