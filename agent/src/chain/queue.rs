//! A durable FIFO of reports for the registry.
//!
//! Each report is a file `<seq>.json` in the queue directory, written
//! atomically; the sequence counter is itself a file, so a number is never
//! used twice, even after the queue empties and the node reboots. A report
//! is removed only after the registry acknowledged it, so a crash at any
//! moment loses nothing (a report may be sent again, and the registry
//! recognizes its sequence number).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::model::{ContractResources, MeshInfo, NodeRegistration, UptimeReport};

/// Why the queue could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot use the report queue {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] grove_daemon::fsutil::WriteError),
    #[error("cannot encode a report: {0}")]
    Encode(#[source] serde_json::Error),
}

/// What the node tells the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Report {
    Register {
        registration: NodeRegistration,
        mesh: Option<MeshInfo>,
    },
    Uptime(UptimeReport),
    /// What each of the node's contracts uses (`reportContractResources`);
    /// a newer one supersedes it.
    ContractResources {
        reports: Vec<ContractResources>,
    },
}

/// The queue directory.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

impl Queue {
    pub fn open(dir: &Path) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn counter(&self) -> PathBuf {
        self.dir.join("next-seq")
    }

    /// The next sequence number, reserved durably.
    pub fn next_seq(&self) -> Result<u64, QueueError> {
        let next = std::fs::read_to_string(self.counter())
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let highest_queued = self.entries()?.last().map_or(0, |(seq, _)| *seq);
        let seq = next.max(highest_queued + 1);
        grove_daemon::fsutil::write_atomic(
            &self.counter(),
            format!("{}\n", seq + 1).as_bytes(),
            0o600,
        )?;
        Ok(seq)
    }

    /// Appends `report` under sequence number `seq`.
    pub fn push(&self, seq: u64, report: &Report) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(report).map_err(QueueError::Encode)?;
        grove_daemon::fsutil::write_atomic(
            &self.dir.join(format!("{seq:020}.json")),
            &bytes,
            0o600,
        )?;
        Ok(())
    }

    /// Queued reports, oldest first. Unreadable files are skipped and kept.
    pub fn entries(&self) -> Result<Vec<(u64, PathBuf)>, QueueError> {
        let list = std::fs::read_dir(&self.dir).map_err(|source| QueueError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out: Vec<(u64, PathBuf)> = list
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let seq = name.strip_suffix(".json")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.entries().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest report.
    pub fn front(&self) -> Result<Option<(u64, Report)>, QueueError> {
        for (seq, path) in self.entries()? {
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Report>(&b)) {
                Ok(Ok(report)) => return Ok(Some((seq, report))),
                Ok(Err(e)) => {
                    tracing::error!(report = %path.display(), error = %e, "unreadable report kept aside")
                }
                Err(e) => {
                    tracing::error!(report = %path.display(), error = %e, "unreadable report kept aside")
                }
            }
        }
        Ok(None)
    }

    /// Every readable queued report, oldest first.
    pub fn reports(&self) -> Result<Vec<(u64, Report)>, QueueError> {
        let mut out = Vec::new();
        for (seq, path) in self.entries()? {
            match std::fs::read(&path).map(|b| serde_json::from_slice::<Report>(&b)) {
                Ok(Ok(report)) => out.push((seq, report)),
                Ok(Err(e)) => {
                    tracing::error!(report = %path.display(), error = %e, "unreadable report kept aside")
                }
                Err(e) => {
                    tracing::error!(report = %path.display(), error = %e, "unreadable report kept aside")
                }
            }
        }
        Ok(out)
    }

    /// Removes every report up to and including `seq`.
    pub fn remove_through(&self, seq: u64) -> Result<(), QueueError> {
        for (queued, _) in self.entries()? {
            if queued <= seq {
                self.remove(queued)?;
            }
        }
        Ok(())
    }

    /// Removes report `seq` once the registry has it.
    pub fn remove(&self, seq: u64) -> Result<(), QueueError> {
        let path = self.dir.join(format!("{seq:020}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(QueueError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uptime(seq: u64) -> Report {
        Report::Uptime(UptimeReport {
            seq,
            uptime: seq * 10,
            timestamp: 1000 + seq,
        })
    }

    /// A new queue holding uptime reports 1 to `n`.
    fn queue_of(n: u64) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).expect("open");
        for _ in 0..n {
            let seq = q.next_seq().expect("seq");
            q.push(seq, &uptime(seq)).expect("push");
        }
        (dir, q)
    }

    #[test]
    fn fifo_survives_reopening_and_never_reuses_a_number() {
        let (dir, _written) = queue_of(3);
        let q = Queue::open(dir.path()).expect("reopen");
        assert_eq!(q.len(), 3);
        let (seq, report) = q.front().expect("front").expect("a report");
        assert_eq!((seq, report), (1, uptime(1)));
        q.remove(1).expect("remove");
        q.remove(2).expect("remove");
        q.remove(3).expect("remove");
        assert!(q.is_empty());
        assert_eq!(q.next_seq().expect("seq"), 4, "numbers are never reused");
    }

    #[test]
    fn reports_lists_everything_and_remove_through_drops_the_older_ones() {
        let (dir, q) = queue_of(4);
        std::fs::write(dir.path().join("00000000000000000009.json"), b"not json").unwrap();
        let all = q.reports().expect("reports");
        assert_eq!(
            all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        q.remove_through(3).expect("remove");
        let left = q.reports().expect("reports");
        assert_eq!(left, vec![(4, uptime(4))]);
    }
}
