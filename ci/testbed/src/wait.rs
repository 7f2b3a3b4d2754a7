//! Polling for a condition with a deadline, the way tests wait for a
//! daemon to come up or a link to change, and watching one hold for a
//! while, the way tests show that nothing restarts.
//!
//! [`wait_until`] checks the condition at once, then every `poll` until it
//! holds or `timeout` has passed; the caller decides what a timeout means.
//! [`holds_for`] checks it the same way for the whole window and stops at
//! the first failure.
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

/// Checks `condition` at once and every `poll` for `window`: true if it
/// held every time, false at the first time it did not.
pub fn holds_for(window: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + window;
    loop {
        if !condition() {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep(poll.min(end - now));
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
    fn a_condition_that_holds_is_checked_for_the_whole_window() {
        let (start, mut calls) = (Instant::now(), 0);
        assert!(holds_for(
            Duration::from_millis(30),
            Duration::from_millis(5),
            || {
                calls += 1;
                true
            }
        ));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(calls >= 2, "{calls}");
    }

    #[test]
    fn a_condition_that_fails_once_ends_the_watch() {
        let mut calls = 0;
        assert!(!holds_for(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                calls < 3
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
