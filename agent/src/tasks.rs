//! The agent's owned background tasks: named, instrumented, drained.
//!
//! Every long-lived task the agent starts goes into a [`Tasks`] set under a
//! name. [`Tasks::drain`] waits for all of them to end after shutdown
//! tripped, aborts the ones still running after a grace period and names
//! them in the log, so no loop outlives the agent unseen. [`until`] makes a
//! loop that never ends by itself stop when shutdown trips. Work a request
//! starts that must outlive its connection goes into [`Detached`], which the
//! agent drains the same way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Tasks that request handlers start and that must run to their end even if
/// the request's connection closes (an upgrade between writing the slot and
/// the reboot). The agent drains them on shutdown; once it has, a new one is
/// refused.
#[derive(Debug, Clone)]
pub struct Detached(Arc<Mutex<Option<Tasks<()>>>>);

impl Default for Detached {
    /// Open: it takes tasks until it is drained.
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Some(Tasks::default()))))
    }
}

impl Detached {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` under `name` on a task of its own and answers what it
    /// yields; `None` when the agent is stopping: the task was not started,
    /// or was aborted when the drain's grace ran out.
    pub async fn run<T: Send + 'static>(
        &self,
        name: &'static str,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let mut tasks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            tasks.as_mut()?.spawn(name, async move {
                // The request may be gone; the task's work stands.
                let _ = answer.send(task.await);
            });
        }
        answered.await.ok()
    }

    /// Refuses new tasks, then waits for the running ones as
    /// [`Tasks::drain`] does.
    pub async fn drain(&self, grace: Duration) {
        let tasks = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(tasks) = tasks {
            tasks.drain(grace).await;
        }
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

    #[tokio::test]
    async fn detached_work_outlives_its_caller_and_is_drained() {
        let detached = Detached::new();
        assert_eq!(detached.run("answers", async { 7 }).await, Some(7));

        // The caller goes away; the work still ends, and the drain waits
        // for it.
        let (began, begun) = tokio::sync::oneshot::channel();
        let (finished, ended) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn({
            let detached = detached.clone();
            async move {
                detached
                    .run("outlives", async move {
                        began.send(()).unwrap();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        finished.send(()).unwrap();
                    })
                    .await
            }
        });
        begun.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        detached.drain(Duration::from_secs(5)).await;
        assert!(ended.await.is_ok(), "the drain waited for the work to end");

        // Drained: nothing new starts.
        let (started, _) = tokio::sync::oneshot::channel::<()>();
        let refused = detached
            .run("late", async move {
                started.send(()).unwrap();
            })
            .await;
        assert_eq!(refused, None);
    }

    #[tokio::test]
    async fn detached_work_that_hangs_is_aborted_after_the_grace() {
        let detached = Detached::new();
        let (began, begun) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn({
            let detached = detached.clone();
            async move {
                let hangs = async move {
                    began.send(()).unwrap();
                    std::future::pending::<()>().await;
                };
                detached.run("hangs", hangs).await
            }
        });
        begun.await.unwrap();
        let started = std::time::Instant::now();
        detached.drain(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(waiting.await.unwrap(), None, "the caller learns it was cut");
    }
}
