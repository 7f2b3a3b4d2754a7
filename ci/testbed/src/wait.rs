//! Polling for a condition with a deadline, the way tests wait for a
//! daemon to come up or a link to change.
//!
//! The condition is checked at once, then every `poll` until it holds or
//! `timeout` has passed; the caller decides what a timeout means.
//! Limits: the condition runs on the calling thread and is not interrupted,
//! so one slow check can overrun the deadline by its own duration.

use std::time::{Duration, Instant};

/// Checks `condition` every `poll` until it returns true (then true) or
/// `timeout` passes (then false).
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_once_does_not_sleep() {
        let start = Instant::now();
        assert!(wait_until(
            Duration::from_secs(10),
            Duration::from_secs(10),
            || true
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn becomes_true_after_a_few_polls() {
        let mut calls = 0;
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                calls == 3
            }
        ));
        assert_eq!(calls, 3);
    }

    #[test]
    fn never_true_times_out() {
        assert!(!wait_until(
            Duration::from_millis(30),
            Duration::from_millis(5),
            || false
        ));
    }
}
