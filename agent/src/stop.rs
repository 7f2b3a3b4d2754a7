//! Why the agent stops: a signal or a farmer's reboot.
//!
//! [`Stop`] wraps the process's [`Shutdown`] token with the reason it was
//! tripped, so a reboot request trips shutdown at once, the API answers
//! while the daemons drain, and only after the drain does the agent act on
//! the reason. The first reason given wins; a token tripped by a signal has
//! the reason [`StopReason::Signal`].

use std::sync::{Arc, Mutex};

use grove_daemon::shutdown::Shutdown;

/// What asked the agent to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT: stop, and that is all.
    Signal,
    /// The farmer's signed `POST /v1/reboot`: stop, then restart the machine.
    Reboot,
}

/// The shutdown token and the reason it was tripped.
#[derive(Debug, Clone)]
pub struct Stop {
    shutdown: Shutdown,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stop {
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            reason: Arc::default(),
        }
    }

    /// Records `reason` (unless one was given before) and trips shutdown.
    pub fn request(&self, reason: StopReason) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.shutdown.trigger();
    }

    /// Why the agent is stopping; a signal unless [`Stop::request`] said
    /// otherwise first.
    pub fn reason(&self) -> StopReason {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(StopReason::Signal)
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_the_default_reason() {
        let stop = Stop::new(Shutdown::new());
        stop.shutdown().trigger();
        assert_eq!(stop.reason(), StopReason::Signal);
    }

    #[test]
    fn the_first_reason_wins_and_trips_shutdown() {
        let stop = Stop::new(Shutdown::new());
        stop.request(StopReason::Reboot);
        stop.request(StopReason::Signal);
        assert!(stop.shutdown().is_triggered());
        assert_eq!(stop.reason(), StopReason::Reboot);
    }
}
