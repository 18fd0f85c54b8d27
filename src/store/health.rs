//! Whether the data dir can take writes, and getting it back when it could not.
//!
//! A full disk (or another I/O fault) makes RocksDB stop taking writes: its write-ahead log or a flush
//! failed, and its background error stays set until it recovers (RocksDB polls free space every few
//! seconds and resumes by itself once there is room). Outpost notes every failed write here, so that
//! the rest of the process can act on it without guessing from error text: the write path answers
//! 507 (disk full) or 503 instead of acknowledging, fills are not attempted, the replay worker holds
//! back. [`Store::heal`] probes with a tiny synced write (and a blob-dir file) and clears the state once
//! both succeed; [`watch`] runs it about once a second while there is trouble, so the store heals
//! without a restart.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Store, StoreError};
use crate::clock::now_ms;

/// `meta` key the probe writes.
const PROBE_KEY: &[u8] = b"health-probe";

/// Why the store is not taking writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    /// The first error seen, as RocksDB or the OS worded it.
    pub reason: String,
    /// True when the filesystem is out of space (or quota).
    pub full: bool,
    /// When it started (ms since the epoch).
    pub since_ms: u64,
}

/// Write health of one store.
#[derive(Default)]
pub(super) struct Health {
    trouble: Mutex<Option<Trouble>>,
    /// Writes that failed since start (fills, queue bookkeeping, probes).
    errors: AtomicU64,
    /// Fault injection (tests, drills): queue writes fail as on a full disk.
    fail_queue: std::sync::atomic::AtomicBool,
}

impl Health {
    /// The trouble slot (a poisoned lock still holds a usable value).
    fn state(&self) -> std::sync::MutexGuard<'_, Option<Trouble>> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StoreError {
    /// True when the error says the disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Blob(e) => io_full(e),
            StoreError::Db(e) => text_full(e.as_ref()),
            StoreError::DataDir { reason, .. } => text_full(reason),
            _ => false,
        }
    }
}

fn io_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || e.raw_os_error().is_some_and(crate::platform::is_disk_full_code)
        || text_full(&e.to_string())
}

fn text_full(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    // RocksDB words its own: "IO error: No space left on device: While appending to file ...".
    [
        "no space left",
        "nospace",
        "space limit",
        "not enough space",
        "disk quota",
        "disk full",
    ]
    .iter()
    .any(|w| s.contains(w))
}

impl Store {
    /// Notes a write that failed (the caller answers or logs it); the first of a run is logged.
    pub fn note_failure(&self, e: &StoreError) {
        self.health.errors.fetch_add(1, Ordering::Relaxed);
        let mut t = self.health.state();
        if t.is_none() {
            let full = e.is_disk_full();
            tracing::error!(
                dir = %self.dir.display(),
                error = %e,
                full,
                "the data dir stopped taking writes: queued writes are refused, answers are not stored; \
                 serving what is stored and retrying"
            );
            *t = Some(Trouble {
                reason: e.to_string(),
                full,
                since_ms: now_ms(),
            });
        }
    }

    /// Why the store is not taking writes, if it is not.
    pub fn trouble(&self) -> Option<Trouble> {
        self.health.state().clone()
    }

    /// True while the store is not taking writes.
    pub fn troubled(&self) -> bool {
        self.health.state().is_some()
    }

    /// Fault injection: while on, writes to the outbox (queueing, replay outcomes) and the health
    /// probe fail as on a full disk.
    pub fn inject_queue_write_failures(&self, on: bool) {
        self.health.fail_queue.store(on, Ordering::Relaxed);
    }

    /// The injected failure, when on (noted like a real one).
    pub(super) fn injected_queue_failure(&self) -> Result<(), StoreError> {
        if !self.health.fail_queue.load(Ordering::Relaxed) {
            return Ok(());
        }
        let e = StoreError::Blob(io::Error::new(
            io::ErrorKind::StorageFull,
            "injected queue write failure (disk full)",
        ));
        self.note_failure(&e);
        Err(e)
    }

    /// Writes that failed since start.
    pub fn write_errors(&self) -> u64 {
        self.health.errors.load(Ordering::Relaxed)
    }

    /// Probes a troubled store with a small synced write to RocksDB and a small file in the blob
    /// directory; clears the trouble when both succeed. Returns whether the store takes writes. Blocking.
    pub fn heal(&self) -> bool {
        if !self.troubled() {
            return true;
        }
        let probe = self.probe();
        let mut t = self.health.state();
        match probe {
            Ok(()) => {
                if let Some(was) = t.take() {
                    let secs = now_ms().saturating_sub(was.since_ms) as f64 / 1000.0;
                    tracing::warn!(dir = %self.dir.display(), after_s = secs, "the data dir takes writes again");
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "the data dir still does not take writes");
                if let Some(t) = t.as_mut() {
                    // The newest reason: RocksDB's stopped state repeats the first error, the blob probe
                    // says whether space came back.
                    t.full = e.is_disk_full();
                    t.reason = e.to_string();
                }
                false
            }
        }
    }

    fn probe(&self) -> Result<(), StoreError> {
        if self.health.fail_queue.load(Ordering::Relaxed) {
            return Err(StoreError::Blob(io::Error::new(io::ErrorKind::StorageFull, "injected")));
        }
        self.blobs.probe()?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf("meta"), PROBE_KEY, now_ms().to_be_bytes(), &wo)?;
        Ok(())
    }
}

/// Probes a troubled store about once a second until `stop` resolves (cheap when healthy: a flag read).
pub async fn watch(store: Arc<Store>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if store.troubled() {
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || s.heal()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_recognised_in_every_wording() {
        let enospc = StoreError::Blob(io::Error::from_raw_os_error(28));
        assert!(enospc.is_disk_full() || cfg!(not(unix)));
        assert!(StoreError::Blob(io::Error::new(io::ErrorKind::StorageFull, "x")).is_disk_full());
        assert!(text_full(
            "IO error: No space left on device: While appending to file: db/000012.log"
        ));
        assert!(!StoreError::Blob(io::Error::new(io::ErrorKind::PermissionDenied, "denied")).is_disk_full());
    }

    #[test]
    fn a_failure_is_kept_until_a_probe_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.heal());
        store.note_failure(&StoreError::Blob(io::Error::new(io::ErrorKind::StorageFull, "full")));
        store.note_failure(&StoreError::Blob(io::Error::other("second")));
        let t = store.trouble().unwrap();
        assert!(t.full, "the first error is kept: {t:?}");
        assert_eq!(store.write_errors(), 2);
        store.blobs().inject_write_failures(true);
        assert!(!store.heal(), "the blob probe fails like the disk");
        assert!(store.troubled());
        store.blobs().inject_write_failures(false);
        assert!(store.heal());
        assert_eq!(store.trouble(), None);
    }
}
