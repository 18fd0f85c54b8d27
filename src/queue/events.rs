//! What happens to queued writes, as a stream for apps that opt in (`GET /api/events` on the admin
//! port): a write was queued, delivered, or stopped for good (dead letter, overridden by the server).
//! Slow listeners miss events (they are told how many) instead of holding memory.

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for a listener that has not read them yet; beyond this it misses the oldest.
const BACKLOG: usize = 256;

/// One thing that happened to a queued write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEvent {
    /// `queued`, `delivered`, `dead_letter`, `overridden` or `superseded`.
    pub event: &'static str,
    /// Queue id (`q<seq>`).
    pub id: String,
    /// HTTP method.
    pub method: String,
    /// Request target.
    pub uri: String,
    /// The upstream's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `superseded`: the id of the write that took its place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The broadcast side.
pub struct Events {
    tx: broadcast::Sender<QueueEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::Sender::new(BACKLOG),
        }
    }
}

impl Events {
    /// Tells every listener (nobody listening is fine).
    pub fn emit(&self, event: QueueEvent) {
        let _ = self.tx.send(event);
    }

    /// A new listener, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QueueEvent> {
        self.tx.subscribe()
    }
}

/// How replay attempts ended, counted since start (`outpost_replays_total{result}`).
#[derive(Default)]
pub struct ReplayCounts {
    counts: [std::sync::atomic::AtomicU64; 7],
}

impl ReplayCounts {
    /// Every result, in the order [`ReplayCounts::all`] gives them.
    pub const RESULTS: [&'static str; 7] = [
        "delivered",
        "retry",
        "not_backend",
        "dead_letter",
        "conflict",
        "overridden",
        "needs_auth",
    ];

    /// One attempt ended with `result` (one of [`ReplayCounts::RESULTS`]; others are ignored).
    pub fn count(&self, result: &str) {
        if let Some(i) = Self::RESULTS.iter().position(|r| *r == result) {
            self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// (result, attempts) for every result, 0 included.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        Self::RESULTS
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}
