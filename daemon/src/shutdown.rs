//! Orderly shutdown on SIGTERM or SIGINT.
//!
//! [`Shutdown`] is a cloneable token: the signal listener trips it once, and
//! every server loop and owned task waits on it. After it trips, a daemon
//! gets [`GRACE`] to drain before its binary exits anyway.

use std::time::Duration;

use tokio::sync::watch;

/// How long a daemon may take to drain after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(5);

/// A shutdown token: cheap to clone, trips once.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// Trips the token; every waiter wakes.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the token has tripped.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone, which only happens once every
        // clone is dropped: nobody can trip the token any more, so wait on.
        if rx.wait_for(|tripped| *tripped).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Spawns the task that trips the token on SIGTERM or SIGINT.
    pub fn on_signals(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                () = this.wait() => {}
            }
            this.trigger();
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_wakes() {
        let s = Shutdown::new();
        let a = s.clone();
        let waiter = tokio::spawn(async move { a.wait().await });
        assert!(!s.is_triggered());
        s.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert!(s.is_triggered());
    }
}
