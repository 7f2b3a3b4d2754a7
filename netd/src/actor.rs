//! A worker task that owns some state, and the handle that reaches it.
//!
//! The mesh and the tenant networks each keep their devices in one task
//! that takes commands in order, so no two changes race; the API holds an
//! [`Actor`] to send a command and await its answer. The task is owned by
//! the handle and drained on shutdown. Limits: commands are answered one at
//! a time, in the order sent.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

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
}
