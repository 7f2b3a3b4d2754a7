//! What keeps running workloads running: the containers' and the
//! machines' drivers each look at their objects every second, tell the
//! [`Watch`] what they saw, and start again, with a backoff of 1 s doubling
//! to 64 s, what stopped. The watch keeps each one's state, restarts and
//! last exit for its workload's result and the dashboard.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One workload's life as the [`Watch`] sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Life {
    pub state: String,
    pub restarts: u32,
    pub oom_kills: u64,
    pub last_exit: Option<String>,
    /// When it last started running, or was first seen running by this
    /// provisiond (an adopted one), in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    #[serde(skip)]
    next_start: Option<Instant>,
}

fn now_ms() -> Option<u64> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// The running objects of one driver.
#[derive(Debug, Default)]
pub struct Watch {
    lives: Mutex<BTreeMap<String, Life>>,
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1 << restarts.min(6))
}

impl Watch {
    fn lives(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Life>> {
        self.lives.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the watch knows of object `id`.
    pub fn life(&self, id: &str) -> Option<Life> {
        self.lives().get(id).cloned()
    }

    /// Starts watching `id`, which runs.
    pub(super) fn track(&self, id: &str) {
        self.lives().entry(id.to_owned()).or_insert_with(|| Life {
            state: "running".into(),
            since_ms: now_ms(),
            ..Life::default()
        });
    }

    pub(super) fn forget(&self, id: &str) {
        self.lives().remove(id);
    }

    pub(super) fn ids(&self) -> Vec<String> {
        self.lives().keys().cloned().collect()
    }

    /// Records what was seen of `id`: running, or not. The first time it
    /// is seen stopped, `exited` writes why into its life and its restart
    /// is scheduled. Answers whether it is due to start now.
    pub(super) fn observe(&self, id: &str, running: bool, exited: impl FnOnce(&mut Life)) -> bool {
        let now = Instant::now();
        let mut lives = self.lives();
        let Some(life) = lives.get_mut(id) else {
            return false;
        };
        if running {
            life.state = "running".into();
            life.next_start = None;
            return false;
        }
        if life.state == "running" {
            exited(life);
            life.since_ms = None;
            life.next_start = Some(now + backoff(life.restarts));
            life.state = "restarting".into();
        }
        life.next_start.is_some_and(|t| t <= now)
    }

    /// Records a start the watch asked for: it counts as a restart; a
    /// failed one is tried again after a longer backoff.
    pub(super) fn started(&self, id: &str, ok: bool) {
        if let Some(life) = self.lives().get_mut(id) {
            life.restarts += 1;
            if ok {
                life.state = "running".into();
                life.since_ms = now_ms();
                life.next_start = None;
            } else {
                life.next_start = Some(Instant::now() + backoff(life.restarts));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_object_is_due_after_its_backoff_and_counted() {
        let watch = Watch::default();
        assert!(!watch.observe("x", false, |_| {}), "not watched");
        watch.track("x");
        assert!(!watch.observe("x", true, |_| panic!("it runs")));
        let due = watch.observe("x", false, |life| life.last_exit = Some("exited".into()));
        assert!(!due, "the first restart waits a second");
        let life = watch.life("x").expect("watched");
        assert_eq!(life.state, "restarting");
        assert_eq!(life.since_ms, None, "not running");
        assert_eq!(life.last_exit.as_deref(), Some("exited"));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(watch.observe("x", false, |_| panic!("already recorded")));
        watch.started("x", false);
        assert!(
            !watch.observe("x", false, |_| {}),
            "a failed start backs off"
        );
        watch.started("x", true);
        let life = watch.life("x").expect("watched");
        assert_eq!((life.state.as_str(), life.restarts), ("running", 2));
        assert!(life.since_ms.is_some());
        watch.forget("x");
        assert_eq!(watch.life("x"), None);
    }
}
