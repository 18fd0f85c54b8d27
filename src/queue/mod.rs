//! The offline mutation queue: a durable outbox of writes the upstream could not take, and the replay
//! worker that delivers them once it can.
//!
//! Promises: an item is acknowledged (202) only after its synced RocksDB write; it is removed only after
//! the upstream answered it; every attempt carries the same `Idempotency-Key`, so a crash between the
//! upstream's answer and the removal replays it again with that key (at-least-once delivery,
//! exactly-once effect at a backend that honours the key). Items replay in order (one line per user by
//! default; per-route ordering keys make independent lines within a user's), higher priority first among
//! lines. A user whose credentials the upstream refuses (401/403) waits alone: the other users' lines go on.

pub mod backoff;
pub mod events;
mod record;
mod replay;
pub mod spool;
mod supersede;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use serde::Serialize;
use tokio::sync::Notify;

pub use events::QueueEvent;
pub use record::{ItemState, OutboxRecord};
pub use replay::{Delivery, ReplayWorker, SendError};

use crate::clock::now_ms;
use crate::config::QueueSettings;
use crate::store::{Store, StoreError};

/// Whether the worker replays at all (users waiting for newer credentials are kept apart, see
/// [`Outbox::waiting_users`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum QueueState {
    /// Replaying whatever is due.
    Running,
    /// Paused by the admin.
    Paused,
}

/// A replay line: one user's writes with one ordering key (`None`: the user's default line).
type Line = (String, Option<String>);

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store failed: the write was NOT queued.
    #[error("outbox write failed: {0}")]
    Store(#[from] StoreError),
    /// No item with that id.
    #[error("no queued item {0}")]
    NotFound(String),
    /// The request does not apply to this item.
    #[error("{0}")]
    Refused(String),
    /// The spool directory could not be opened.
    #[error("spool: {0}")]
    Spool(String),
    /// The group commit this write was part of failed: the write was NOT queued.
    #[error("outbox write failed: {0}")]
    Batch(String),
}

/// The outbox: durable items plus the in-memory state the request path reads cheaply.
pub struct Outbox {
    store: Arc<Store>,
    settings: QueueSettings,
    next_seq: AtomicU64,
    state: Mutex<QueueState>,
    /// Newer credentials per partition, learned after a 401/403 pause.
    credentials: Mutex<HashMap<String, HeaderValue>>,
    /// Users whose stored credentials the upstream refused: their lines wait for newer ones.
    waiting_auth: Mutex<std::collections::BTreeSet<String>>,
    /// In-memory mirror of what is pending, so the request path never scans the store.
    index: Mutex<Index>,
    /// Serialises enqueue decisions with replay removals, so order checks see a consistent queue. Held
    /// by the group-commit leader around one synced batch.
    order_lock: Mutex<()>,
    /// Writes waiting for the next group commit, each with the slot its answer goes to.
    waiting: Mutex<Vec<(OutboxRecord, AnswerSlot)>>,
    wake: Notify,
    events: events::Events,
    /// Dead letters in all (the request path checks this before computing a user's partition).
    dead_total: AtomicU64,
    /// A replay worker is running (for `/readyz`).
    worker_running: std::sync::atomic::AtomicBool,
    /// How replay attempts ended.
    replays: events::ReplayCounts,
    /// Files of large bodies (`None` with encryption at rest: bodies stay in sealed records).
    spool: Option<spool::Spool>,
    /// The item the replay worker is sending (never superseded under it).
    in_flight: Mutex<std::collections::HashSet<u64>>,
}

type EnqueueResult = Result<(String, usize), String>;
/// Where a group commit leaves one write's answer.
type AnswerSlot = Arc<Mutex<Option<EnqueueResult>>>;

#[derive(Default)]
struct Index {
    /// Pending writes per user and affected path (their own path and the paths they invalidate), under
    /// `partition \0 path`.
    paths: HashMap<String, usize>,
    /// Pending items: seq → line.
    pending: std::collections::BTreeMap<u64, Line>,
    /// Pending items per line, oldest first: order checks and the replay worker's choice of line heads
    /// cost O(lines), not O(queue).
    lines: HashMap<Line, std::collections::BTreeSet<u64>>,
    /// Dead letters per user partition (for `X-Outpost-Dead-Letters`).
    dead: HashMap<String, usize>,
    /// Pending PUT/PATCH items that a newer write may supersede: (partition, route, target) → seq.
    targets: HashMap<supersede::Target, u64>,
}

impl Outbox {
    /// Opens the outbox over the store (items survive restarts).
    pub fn open(store: Arc<Store>, settings: QueueSettings) -> Result<Outbox, QueueError> {
        let last = store.outbox_last_seq()?;
        let mut outbox = Outbox {
            store,
            settings,
            next_seq: AtomicU64::new(last + 1),
            state: Mutex::new(QueueState::Running),
            credentials: Mutex::new(HashMap::new()),
            waiting_auth: Mutex::new(std::collections::BTreeSet::new()),
            index: Mutex::new(Index::default()),
            order_lock: Mutex::new(()),
            waiting: Mutex::new(Vec::new()),
            wake: Notify::new(),
            events: events::Events::default(),
            dead_total: AtomicU64::new(0),
            worker_running: std::sync::atomic::AtomicBool::new(false),
            replays: events::ReplayCounts::default(),
            spool: None,
            in_flight: Mutex::new(std::collections::HashSet::new()),
        };
        if !outbox.store.encrypted() {
            let spool = spool::Spool::open(outbox.store.dir()).map_err(|e| QueueError::Spool(e.to_string()))?;
            outbox.spool = Some(spool);
        }
        let mut named = std::collections::HashSet::new();
        for item in record::all(&outbox.store)? {
            if let Some(f) = &item.body_file {
                named.insert(f.clone());
            }
            match item.state {
                ItemState::Pending => outbox.count_paths(&item, 1),
                ItemState::DeadLetter => outbox.count_dead(&item.partition, 1),
                ItemState::Overridden | ItemState::Superseded => {}
            }
        }
        if let Some(spool) = &outbox.spool {
            // Files whose record never committed (a crash in between) or was removed.
            match spool.sweep(&named) {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "removed spool files no queued write names"),
                Err(e) => tracing::warn!(error = %e, "sweeping the spool failed"),
            }
        }
        Ok(outbox)
    }

    /// Where large write bodies are spooled (`None` with encryption at rest).
    pub fn spool(&self) -> Option<&spool::Spool> {
        self.spool.as_ref()
    }

    fn count_dead(&self, partition: &str, add: isize) {
        let mut ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let n = ix.dead.entry(partition.to_string()).or_insert(0);
        *n = n.saturating_add_signed(add);
        if *n == 0 {
            ix.dead.remove(partition);
        }
        let total: usize = ix.dead.values().sum();
        self.dead_total.store(total as u64, Ordering::Relaxed);
    }

    /// True when any write has stopped for good (cheap; checked on every request).
    pub fn has_dead_letters(&self) -> bool {
        self.dead_total.load(Ordering::Relaxed) > 0
    }

    /// Dead letters of every user.
    pub fn dead_letters(&self) -> u64 {
        self.dead_total.load(Ordering::Relaxed)
    }

    /// Writes of this user that stopped for good and wait for the app or the user (retry or drop).
    pub fn dead_letters_for(&self, partition: &str) -> usize {
        self.index
            .lock()
            .map(|ix| ix.dead.get(partition).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Listens to what happens to queued writes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<QueueEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: &'static str, item: &OutboxRecord, status: Option<u16>) {
        self.events.emit(QueueEvent {
            event,
            id: item.id.clone(),
            method: item.method.clone(),
            uri: item.uri.clone(),
            status,
            by: item.superseded_by.clone(),
        });
    }

    /// Why the data dir is not taking writes, if it is not (a write that failed to queue says so).
    pub fn store_trouble(&self) -> Option<crate::store::Trouble> {
        self.store.trouble()
    }

    #[cfg(test)]
    pub(crate) fn store_for_tests(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The data directory (named in answers about a full disk).
    pub fn data_dir(&self) -> &std::path::Path {
        self.store.dir()
    }

    /// True while a replay worker runs over this outbox.
    pub fn replay_running(&self) -> bool {
        self.worker_running.load(Ordering::Relaxed)
    }

    /// How replay attempts ended since start: (result, count) for every result.
    pub fn replay_counts(&self) -> Vec<(&'static str, u64)> {
        self.replays.all()
    }

    pub(crate) fn count_replay(&self, result: &str) {
        self.replays.count(result);
    }

    pub(crate) fn set_replay_running(&self, on: bool) {
        self.worker_running.store(on, Ordering::Relaxed);
    }

    /// Replay settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    fn count_paths(&self, item: &OutboxRecord, add: isize) {
        let mut ix = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let key: Line = (item.partition.clone(), item.ordering_key.clone());
        let changed = if add > 0 {
            ix.pending.insert(item.seq, key.clone()).is_none()
        } else {
            ix.pending.remove(&item.seq).is_some()
        };
        if changed {
            let line = ix.lines.entry(key.clone()).or_default();
            if add > 0 {
                line.insert(item.seq);
            } else {
                line.remove(&item.seq);
            }
            if line.is_empty() {
                ix.lines.remove(&key);
            }
        }
        if let Some(t) = supersede::target_of(item) {
            if add > 0 {
                ix.targets.insert(t, item.seq);
            } else if ix.targets.get(&t) == Some(&item.seq) {
                ix.targets.remove(&t);
            }
        }
        let own = item.uri.split('?').next().unwrap_or("");
        for path in std::iter::once(own).chain(item.invalidates.iter().map(String::as_str)) {
            let key = format!("{}\0{path}", item.partition);
            let e = ix.paths.entry(key.clone()).or_insert(0);
            *e = e.saturating_add_signed(add);
            if *e == 0 {
                ix.paths.remove(&key);
            }
        }
    }

    /// Pending writes of this user affecting `path` (for `X-Outpost-Pending`; never another user's).
    pub fn pending_for(&self, partition: &str, path: &str) -> usize {
        let key = format!("{partition}\0{path}");
        self.index
            .lock()
            .map(|ix| ix.paths.get(&key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// This user's waiting PUT, PATCH and DELETE writes to exactly `path`, oldest first (what a GET of it
    /// overlays). Reads the store only when the in-memory index says there is one.
    pub fn pending_writes_to(&self, partition: &str, path: &str) -> Vec<OutboxRecord> {
        if self.pending_for(partition, path) == 0 {
            return Vec::new();
        }
        let mut out: Vec<OutboxRecord> = record::all(&self.store)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| {
                i.state == ItemState::Pending
                    && i.partition == partition
                    && matches!(i.method.as_str(), "PUT" | "PATCH" | "DELETE")
                    && i.uri.split('?').next() == Some(path)
            })
            .collect();
        out.sort_by_key(|i| i.seq);
        out
    }

    /// This user's pending writes to the collection at `path` (a POST of an item) or to one of its items
    /// (`path/{id}`: PUT, PATCH, DELETE), oldest first; the store is read only when the index says so.
    pub fn pending_list_writes(&self, partition: &str, path: &str) -> Vec<OutboxRecord> {
        let under = format!("{partition}\0{path}");
        let any = self
            .index
            .lock()
            .map(|ix| {
                ix.paths.keys().any(|k| {
                    k.strip_prefix(&under)
                        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
                })
            })
            .unwrap_or(false);
        if !any {
            return Vec::new();
        }
        let mut out: Vec<OutboxRecord> = record::all(&self.store)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| {
                let own = i.uri.split('?').next().unwrap_or("");
                let item = crate::routes::list_item(path, own).is_some();
                i.state == ItemState::Pending
                    && i.partition == partition
                    && match i.method.as_str() {
                        "POST" => own == path,
                        "PUT" | "PATCH" | "DELETE" => item,
                        _ => false,
                    }
            })
            .collect();
        out.sort_by_key(|i| i.seq);
        out
    }

    /// True when a new write in `ordering_key`'s line must queue behind pending items to keep order
    /// (`None` is the global line: any pending item).
    pub fn has_pending_in_line(&self, partition: &str, ordering_key: &Option<String>) -> bool {
        self.index
            .lock()
            .map(|ix| match ordering_key {
                None => ix.lines.keys().any(|(p, _)| p == partition),
                Some(_) => {
                    ix.lines.contains_key(&(partition.to_string(), None))
                        || ix.lines.contains_key(&(partition.to_string(), ordering_key.clone()))
                }
            })
            .unwrap_or(true)
    }

    /// Stores a write durably (synced) and returns its id and 1-based position among pending items.
    /// Blocking. Concurrent callers share one synced batch (group commit): whoever takes the commit
    /// lock writes everything waiting, in arrival order, so one fsync acknowledges many writes.
    /// The request fields of `new` are kept; the queue assigns its id, sequence, times and attempt state.
    pub fn enqueue(&self, new: OutboxRecord) -> Result<(String, usize), QueueError> {
        let slot = Arc::new(Mutex::new(None));
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((new, slot.clone()));
        let _order = self.order_lock.lock().unwrap_or_else(|p| p.into_inner());
        let answered = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = answered {
            // An earlier leader committed this write with its batch.
            return r.map_err(QueueError::Batch);
        }
        let batch = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        let now = now_ms();
        let mut records = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for (new, slot) in batch {
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            records.push(OutboxRecord {
                id: format!("q{seq}"),
                seq,
                enqueued_ms: now,
                attempts: 0,
                next_try_ms: now,
                last_error: None,
                state: ItemState::Pending,
                response: None,
                ..new
            });
            slots.push(slot);
        }
        // Newer writes take the place of the earlier ones they supersede; those are kept as records.
        let replaced = self.supersede(&mut records);
        let mut batch = records.clone();
        batch.extend(replaced.iter().map(|(_, old)| old.clone()));
        match record::put_all(&self.store, &batch) {
            Ok(()) => {
                for (was, old) in &replaced {
                    self.count_paths(was, -1);
                    if let (Some(spool), Some(f)) = (&self.spool, &was.body_file) {
                        spool.remove(f);
                    }
                    self.emit("superseded", old, None);
                }
                for (item, slot) in records.iter().zip(&slots) {
                    self.count_paths(item, 1);
                    self.emit("queued", item, None);
                    let position = self.depth();
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok((item.id.clone(), position)));
                }
                self.wake.notify_one();
            }
            Err(e) => {
                let msg = e.to_string();
                for slot in &slots {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(msg.clone()));
                }
            }
        }
        let mine = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        mine.unwrap_or_else(|| Err("group commit lost this write".into()))
            .map_err(QueueError::Batch)
    }

    /// The oldest pending item of each ordering line (what the replay worker may send next).
    pub fn line_heads(&self) -> Result<Vec<OutboxRecord>, QueueError> {
        let seqs: Vec<u64> = self
            .index
            .lock()
            .map(|ix| ix.lines.values().filter_map(|l| l.first().copied()).collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(item) = record::get(&self.store, seq)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// All items (pending, dead letters, overridden), in order.
    pub fn list(&self) -> Result<Vec<OutboxRecord>, QueueError> {
        Ok(record::all(&self.store)?)
    }

    /// Number of pending items.
    pub fn depth(&self) -> usize {
        self.index.lock().map(|ix| ix.pending.len()).unwrap_or(0)
    }

    fn find(&self, id: &str) -> Result<OutboxRecord, QueueError> {
        record::all(&self.store)?
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))
    }

    /// Makes an item (pending or dead letter) due now.
    pub fn retry(&self, id: &str) -> Result<(), QueueError> {
        let mut item = self.find(id)?;
        if let Some(by) = &item.superseded_by {
            // Its content lives on in the write that replaced it; sending it again would undo that one.
            return Err(QueueError::Refused(format!(
                "{id} was superseded by {by}; there is nothing to retry"
            )));
        }
        if item.state != ItemState::Pending {
            self.count_paths(&item, 1);
        }
        if item.state == ItemState::DeadLetter {
            self.count_dead(&item.partition, -1);
        }
        item.state = ItemState::Pending;
        item.next_try_ms = now_ms();
        item.attempts = 0;
        record::put(&self.store, &item)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Retries every dead letter; returns how many.
    pub fn retry_dead_letters(&self) -> Result<usize, QueueError> {
        let dead: Vec<_> = self
            .list()?
            .into_iter()
            .filter(|i| i.state == ItemState::DeadLetter)
            .collect();
        for i in &dead {
            self.retry(&i.id)?;
        }
        Ok(dead.len())
    }

    /// Removes an item for good.
    pub fn drop_item(&self, id: &str) -> Result<(), QueueError> {
        let item = self.find(id)?;
        self.remove(&item)
    }

    pub(crate) fn remove(&self, item: &OutboxRecord) -> Result<(), QueueError> {
        let _order = self.order_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.store.outbox_delete(item.seq)?;
        if let (Some(spool), Some(f)) = (&self.spool, &item.body_file) {
            spool.remove(f);
        }
        match item.state {
            ItemState::Pending => self.count_paths(item, -1),
            ItemState::DeadLetter => self.count_dead(&item.partition, -1),
            ItemState::Overridden | ItemState::Superseded => {}
        }
        Ok(())
    }

    pub(crate) fn update(&self, item: &OutboxRecord, was_pending: bool) -> Result<(), QueueError> {
        record::put(&self.store, item)?;
        if was_pending && item.state != ItemState::Pending {
            self.count_paths(item, -1);
            let status = item.response.as_ref().map(|(s, _)| *s);
            match item.state {
                ItemState::DeadLetter => {
                    self.count_dead(&item.partition, 1);
                    self.emit("dead_letter", item, status);
                }
                ItemState::Overridden => self.emit("overridden", item, status),
                ItemState::Pending | ItemState::Superseded => {}
            }
        }
        Ok(())
    }

    /// Current state.
    pub fn state(&self) -> QueueState {
        self.state.lock().map(|s| s.clone()).unwrap_or(QueueState::Running)
    }

    pub(crate) fn set_state(&self, s: QueueState) {
        if let Ok(mut st) = self.state.lock() {
            if *st != s {
                tracing::info!(state = ?s, "queue state");
                *st = s;
            }
        }
        self.wake.notify_one();
    }

    /// Pauses or resumes replay (admin).
    pub fn set_paused(&self, paused: bool) {
        self.set_state(if paused {
            QueueState::Paused
        } else {
            QueueState::Running
        });
    }

    /// True while some user's writes wait for newer credentials (the request path then works out
    /// partitions).
    pub fn waiting_for_credentials(&self) -> bool {
        !self.waiting_auth.lock().map(|w| w.is_empty()).unwrap_or(true)
    }

    /// Users whose writes wait for newer credentials.
    pub fn waiting_users(&self) -> Vec<String> {
        self.waiting_auth
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// True when `partition`'s writes wait for newer credentials.
    pub fn is_waiting(&self, partition: &str) -> bool {
        self.waiting_auth.lock().is_ok_and(|w| w.contains(partition))
    }

    /// The upstream refused `partition`'s stored credentials: its lines wait for newer ones.
    pub(crate) fn wait_for_credentials(&self, partition: &str) {
        let mut w = self.waiting_auth.lock().unwrap_or_else(|p| p.into_inner());
        if w.insert(partition.to_string()) {
            tracing::info!(
                partition,
                "stored credentials refused; this user's writes wait for newer ones"
            );
        }
    }

    /// The request path saw the upstream accept `authorization` from a request of `partition`: if that
    /// user's writes wait for newer credentials, remember them and resume that user. Cheap when nobody
    /// waits.
    pub fn credentials_accepted(&self, partition: &str, authorization: &HeaderValue) {
        if !self.is_waiting(partition) {
            return;
        }
        if let Ok(mut c) = self.credentials.lock() {
            c.insert(partition.to_string(), authorization.clone());
        }
        tracing::info!(
            partition,
            "newer credentials accepted upstream; resuming this user's writes"
        );
        if let Ok(mut w) = self.waiting_auth.lock() {
            w.remove(partition);
        }
        self.wake.notify_one();
    }

    /// Credentials to use instead of the stored ones for `partition`.
    pub fn credential_for(&self, partition: &str) -> Option<HeaderValue> {
        self.credentials.lock().ok().and_then(|c| c.get(partition).cloned())
    }

    /// Wakes the replay worker (enqueue, retry, upstream back online).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }
}
