//! The last lines of each daemon's output, kept in memory for the API.
//!
//! A bounded ring per service: old lines fall off, so a chatty daemon costs
//! a fixed amount of memory. Lines are stored as written; over-long lines are
//! cut at [`MAX_LINE`] bytes.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Longest line kept, in bytes.
pub const MAX_LINE: usize = 4096;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a daemon's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix time in milliseconds when the agent read it.
    pub at_ms: u64,
    pub stream: Stream,
    pub text: String,
}

/// A bounded ring of lines.
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    lines: Mutex<VecDeque<LogLine>>,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    pub fn push(&self, stream: Stream, mut text: String) {
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let line = LogLine {
            at_ms: crate::clock::unix_ms(),
            stream,
            text,
        };
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let skip = lines.len().saturating_sub(n);
        lines.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(Stream::Stderr, format!("line {i}"));
        }
        let texts: Vec<String> = ring.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["line 2", "line 3", "line 4"]);
        let last: Vec<String> = ring.tail(1).into_iter().map(|l| l.text).collect();
        assert_eq!(last, ["line 4"]);
    }

    #[test]
    fn cuts_long_lines_on_a_char_boundary() {
        let ring = LogRing::new(1);
        ring.push(Stream::Stdout, "é".repeat(MAX_LINE));
        let line = &ring.tail(1)[0];
        assert!(line.text.len() <= MAX_LINE);
        assert!(line.text.chars().all(|c| c == 'é'));
    }
}
