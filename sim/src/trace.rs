//! The event trace of one simulated run.
//!
//! Every observable event (frames received, acks, REST answers) is appended with its
//! simulated time. Two runs of one seed must produce the same trace, byte for byte; the
//! hash makes that cheap to compare and to print.

use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Trace {
    inner: Arc<Mutex<TraceInner>>,
}

#[derive(Default)]
struct TraceInner {
    lines: Vec<String>,
    start: Option<std::time::Instant>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Records `event` at the current simulated time.
    pub fn record(&self, event: impl std::fmt::Display) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // std::time::Instant is simulated under madsim.
        let now = std::time::Instant::now();
        let start = *inner.start.get_or_insert(now);
        let line = format!("{:>12} {event}", now.duration_since(start).as_micros());
        inner.lines.push(line);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .clone()
    }

    /// SHA-256 of every line, hex.
    pub fn hash(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut hasher = Sha256::new();
        for line in &inner.lines {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }
}
