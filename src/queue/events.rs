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
    /// `queued`, `delivered`, `dead_letter` or `overridden`.
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
