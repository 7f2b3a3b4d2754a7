//! The latest value of something one task keeps current and others read:
//! a status, a report.
//!
//! A [`Latest`] is a read-write lock that hands out copies and takes
//! changes as closures, so no caller holds the lock across an await. A
//! writer that panicked leaves the value as far as it got; readers go on
//! with it rather than fail (a status is better stale than absent).

use std::sync::{PoisonError, RwLock};

/// The latest `T`.
#[derive(Debug, Default)]
pub struct Latest<T>(RwLock<T>);

impl<T: Clone> Latest<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(value))
    }

    /// A copy of the value now.
    pub fn get(&self) -> T {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the value in place.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_seen_and_a_panicked_writer_leaves_its_change() {
        let latest = std::sync::Arc::new(Latest::new(1));
        latest.update(|v| *v += 1);
        assert_eq!(latest.get(), 2);
        let writer = latest.clone();
        let panicked = std::thread::spawn(move || {
            writer.update(|v| {
                *v = 3;
                panic!("a writer fails half-way");
            })
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(latest.get(), 3);
    }
}
