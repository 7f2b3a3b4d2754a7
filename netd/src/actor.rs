//! A worker task that owns some state, and the handle that reaches it.
//!
//! The mesh and the tenant networks each keep their devices in one task
//! that takes commands in order, so no two changes race; the API holds an
//! [`Actor`] to send a command and await its answer. The task is owned by
//! the handle and drained on shutdown. Both workers also share how they
//! run a blocking call ([`blocking`]) and when they restart a userspace
//! process that died ([`Restart`]). Limits: commands are answered one at a
//! time, in the order sent.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The handle to a worker taking commands of type `C`.
#[derive(Debug)]
pub struct Actor<C> {
    name: &'static str,
    commands: mpsc::Sender<C>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl<C> Clone for Actor<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            commands: self.commands.clone(),
            worker: self.worker.clone(),
        }
    }
}

impl<C: Send + 'static> Actor<C> {
    /// Spawns `run` with the command inbox, inside `span`.
    pub fn spawn<F>(
        name: &'static str,
        span: tracing::Span,
        run: impl FnOnce(mpsc::Receiver<C>) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (commands, inbox) = mpsc::channel(16);
        let task = tokio::spawn(run(inbox).instrument(span));
        Self {
            name,
            commands,
            worker: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Sends the command `make` builds and awaits its answer; `stopped` is
    /// the error when the worker is gone.
    pub async fn ask<T, E>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, E>>) -> C,
        stopped: impl Fn() -> E,
    ) -> Result<T, E> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(make(reply)).await.is_err() {
            return Err(stopped());
        }
        answer
            .await
            .unwrap_or_else(|_dropped: oneshot::error::RecvError| Err(stopped()))
    }

    /// Waits for the worker to finish (after shutdown has tripped).
    pub async fn drain(&self) {
        let task = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(worker = self.name, error = %e, "worker failed");
        }
    }
}

/// Runs a blocking call on the blocking pool; a panic there comes back as
/// the caller's error.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<tokio::task::JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// When to restart a userspace process that died: after a backoff that
/// doubles from [`Restart::FIRST`] to [`Restart::MAX`], and starts again
/// from the first once a process ran for [`Restart::STABLE`].
#[derive(Debug)]
pub struct Restart {
    backoff: Duration,
    at: Option<tokio::time::Instant>,
    started: Option<Instant>,
}

impl Default for Restart {
    fn default() -> Self {
        Self {
            backoff: Self::FIRST,
            at: None,
            started: None,
        }
    }
}

impl Restart {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(10);
    /// A process that ran this long resets the backoff.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// A process was started (or adopted) now.
    pub fn started(&mut self) {
        self.started = Some(Instant::now());
    }

    /// The process died: schedules its restart; answers the wait.
    pub fn lost(&mut self) -> Duration {
        if self.started.is_some_and(|s| s.elapsed() >= Self::STABLE) {
            self.backoff = Self::FIRST;
        }
        self.schedule()
    }

    /// Schedules a restart after the current backoff, and doubles it;
    /// answers the wait.
    pub fn schedule(&mut self) -> Duration {
        let wait = self.backoff;
        self.at = Some(tokio::time::Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(Self::MAX);
        wait
    }

    /// When the restart is due, if one is scheduled.
    pub fn due(&self) -> Option<tokio::time::Instant> {
        self.at
    }

    /// The restart is happening now.
    pub fn clear(&mut self) {
        self.at = None;
    }
}

/// Waits until `at`, or forever when nothing is scheduled.
pub async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Cmd {
        Double(u32, oneshot::Sender<Result<u32, String>>),
    }

    #[tokio::test]
    async fn answers_in_order_and_reports_a_stopped_worker() {
        let actor = Actor::spawn(
            "test",
            tracing::Span::none(),
            |mut inbox: mpsc::Receiver<Cmd>| async move {
                // Answers two commands, then stops.
                for _ in 0..2 {
                    if let Some(Cmd::Double(n, reply)) = inbox.recv().await {
                        let _sent = reply.send(Ok(n * 2));
                    }
                }
            },
        );
        let stopped = || "stopped".to_owned();
        assert_eq!(actor.ask(|r| Cmd::Double(2, r), stopped).await, Ok(4));
        assert_eq!(actor.ask(|r| Cmd::Double(5, r), stopped).await, Ok(10));
        actor.drain().await;
        assert_eq!(
            actor.ask(|r| Cmd::Double(1, r), stopped).await,
            Err("stopped".to_owned())
        );
    }

    #[tokio::test]
    async fn the_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() {
        let mut restart = Restart::default();
        assert_eq!(restart.due(), None);
        assert_eq!(restart.lost(), Restart::FIRST);
        assert!(restart.due().is_some());
        assert_eq!(restart.schedule(), Restart::FIRST * 2);
        for _ in 0..10 {
            restart.schedule();
        }
        assert_eq!(restart.schedule(), Restart::MAX);
        restart.clear();
        assert_eq!(restart.due(), None);
        restart.started = Instant::now().checked_sub(Restart::STABLE);
        assert_eq!(restart.lost(), Restart::FIRST);
    }

    #[tokio::test]
    async fn a_blocking_call_answers_its_result_or_its_panic() {
        #[derive(Debug)]
        struct Failed(String);
        impl From<tokio::task::JoinError> for Failed {
            fn from(e: tokio::task::JoinError) -> Self {
                Self(e.to_string())
            }
        }
        let ok: Result<u8, Failed> = blocking(|| Ok(7)).await;
        assert_eq!(ok.expect("answered"), 7);
        let panicked: Result<u8, Failed> = blocking(|| panic!("boom")).await;
        assert!(panicked.expect_err("a panic").0.contains("panic"));
    }
}
