//! Whether an upstream is reachable, and since when.
//!
//! Cheap to read on every request (atomics); changes are logged once per transition.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Online/offline state of one upstream.
pub struct Connectivity {
    name: String,
    online: AtomicBool,
    since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of the state for display.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectivitySnapshot {
    /// Upstream name.
    pub upstream: String,
    /// Reachable as far as we know.
    pub online: bool,
    /// Unix milliseconds of the last transition (or start).
    pub since_ms: u64,
    /// Last failure that marked it offline.
    pub last_error: Option<String>,
}

use crate::clock::now_ms;

impl Connectivity {
    /// Starts optimistic: online until a failure says otherwise.
    pub fn new(name: &str) -> Connectivity {
        Connectivity {
            name: name.to_string(),
            online: AtomicBool::new(true),
            since_ms: AtomicU64::new(now_ms()),
            last_error: Mutex::new(None),
        }
    }

    /// Reachable as far as we know.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// A request or probe failed to connect.
    pub fn mark_offline(&self, reason: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason.to_string());
        }
        if self.online.swap(false, Ordering::AcqRel) {
            self.since_ms.store(now_ms(), Ordering::Release);
            tracing::warn!(upstream = %self.name, %reason, "upstream offline");
        }
    }

    /// A request or probe got an answer.
    pub fn mark_online(&self) {
        if !self.online.swap(true, Ordering::AcqRel) {
            self.since_ms.store(now_ms(), Ordering::Release);
            tracing::info!(upstream = %self.name, "upstream online");
        }
    }

    /// A copy for status pages.
    pub fn snapshot(&self) -> ConnectivitySnapshot {
        ConnectivitySnapshot {
            upstream: self.name.clone(),
            online: self.is_online(),
            since_ms: self.since_ms.load(Ordering::Acquire),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}
