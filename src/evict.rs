//! The size budget: keeps blobs plus entries under `max_size` by evicting least recently used content,
//! in the background and in bounded batches, never on the request path.
//!
//! Order: blobs no entry references (refcount 0) first, then least recently used entries (which release
//! their blobs). Pinned entries are never evicted; if only pinned content is left over the budget, new
//! fills are not stored (`accepting() == false`) rather than evicting pins. Recording an access is an
//! in-memory `lru` update; the order is persisted to the `access` column family in batches, an entry's
//! time at most once per [`PERSIST_GRAIN_MS`] while it is hit and exactly at a clean stop (every entry
//! also gets a record there in the batch that commits it, so start-up loads the order from `access` alone).
//! A key whose entry is gone (an access persisted just after a removal) is dropped when it is reached; one
//! whose record was dropped in that race gets it back at the next persist, since its commit touched it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::store::{Budget, RetainDrop, Store, StoreError};

/// Entries evicted per batch before yielding.
const BATCH: usize = 256;

/// Why something was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    /// Over the size budget.
    Size,
    /// A blob no entry referenced.
    Unreferenced,
    /// Cleared by the admin or a logout.
    Cleared,
    /// Older than the newest `keep_last` of its retention group.
    Retention,
    /// Not used for longer than `max_unused`.
    Unused,
    /// Its kind was over the kind's own limit (`[budget] KIND = SIZE`).
    KindLimit,
}

impl EvictReason {
    /// Every reason (metrics exist for each from the start).
    pub const ALL: [EvictReason; 6] = [
        EvictReason::Size,
        EvictReason::KindLimit,
        EvictReason::Unreferenced,
        EvictReason::Cleared,
        EvictReason::Unused,
        EvictReason::Retention,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Size => "size",
            EvictReason::Unreferenced => "unreferenced",
            EvictReason::Cleared => "cleared",
            EvictReason::Unused => "unused",
            EvictReason::Retention => "retention",
            EvictReason::KindLimit => "kind_limit",
        }
    }
}

/// Counts for stats.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EvictionCounts {
    /// Per reason: (items, bytes).
    pub by_reason: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

/// The access order and the accesses not yet persisted, under one lock: a hit takes it once.
struct Order {
    /// Least recently used first, with each key's last access.
    lru: LruCache<Vec<u8>, Seen>,
    /// Accesses not yet persisted, one slot per key (a hot key costs no memory per hit). Hashed with
    /// foldhash, not SipHash: the keys are ours, and SipHash was a visible share of a hit's CPU.
    dirty: hashbrown::HashMap<Vec<u8>, u64>,
}

/// When an entry was last used and the access time last persisted for it (ms since the epoch).
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: u64,
    saved: u64,
}

/// A hit persists its access time only when the one persisted for its entry is at least this old: with a
/// working set of 100,000 URLs hit at random, persisting every hit's time rewrote most of `access` every
/// five seconds (see docs/benchmarks.md). The order in memory is exact; after a crash the persisted one
/// may be this much behind (a clean stop persists it exactly), which moves an entry in the LRU order by at
/// most this much and its `max_unused` expiry by at most this much earlier.
const PERSIST_GRAIN_MS: u64 = 60_000;

/// The budget keeper.
pub struct Evictor {
    store: Arc<Store>,
    max_size: AtomicU64,
    auto_evict: AtomicBool,
    used: AtomicU64,
    accepting: AtomicBool,
    order: Mutex<Order>,
    pinned: Mutex<HashSet<Vec<u8>>>,
    max_unused: Option<Duration>,
    counts: Mutex<EvictionCounts>,
    /// Limits of single kinds (`[budget] audio = "500MB"`), under the global one.
    kind_limits: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Something was stored since the kinds' sizes were last counted.
    kinds_changed: AtomicBool,
    /// When they were last counted (a count reads every entry, so at most once a second).
    kinds_counted: Mutex<Option<std::time::Instant>>,
    wake: Notify,
}

impl Evictor {
    /// Opens with the current usage (blob records only: cheap, so a large store starts fast). The access
    /// order is loaded by [`Evictor::run`] in the background; nothing is evicted before it is.
    pub fn open(
        store: Arc<Store>,
        max_size: u64,
        auto_evict: bool,
        max_unused: Option<Duration>,
    ) -> Result<Evictor, StoreError> {
        let used = store.blob_bytes()?;
        Ok(Evictor {
            store,
            max_size: AtomicU64::new(max_size),
            auto_evict: AtomicBool::new(auto_evict),
            used: AtomicU64::new(used),
            accepting: AtomicBool::new(true),
            order: Mutex::new(Order {
                lru: LruCache::unbounded(),
                dirty: hashbrown::HashMap::new(),
            }),
            pinned: Mutex::new(HashSet::new()),
            max_unused,
            counts: Mutex::new(EvictionCounts::default()),
            kind_limits: Mutex::new(Default::default()),
            kinds_changed: AtomicBool::new(true),
            kinds_counted: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    /// Loads the persisted access order (one pass over `access`, not the entries), keeping accesses recorded since
    /// start as the most recent. Blocking.
    fn load_order(&self) -> Result<usize, StoreError> {
        let mut keys = self.store.entry_access_times()?;
        keys.sort_by_key(|(_, t)| *t);
        let mut loaded = LruCache::unbounded();
        for (k, t) in keys {
            loaded.put(k, Seen { at: t, saved: t });
        }
        let n = loaded.len();
        if let Ok(mut o) = self.order.lock() {
            // Entries touched or stored since start are newer than anything persisted.
            for (k, t) in o.lru.iter().rev() {
                loaded.put(k.clone(), *t);
            }
            o.lru = loaded;
        }
        Ok(n)
    }

    /// Bytes of blobs on disk.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn max_size(&self) -> u64 {
        self.max_size.load(Ordering::Relaxed)
    }

    /// Whether eviction runs by itself.
    pub fn auto_evict(&self) -> bool {
        self.auto_evict.load(Ordering::Relaxed)
    }

    /// Changes the budget and mode (admin settings) and evicts if needed.
    pub fn configure(&self, max_size: u64, auto_evict: bool) {
        self.max_size.store(max_size, Ordering::Relaxed);
        self.auto_evict.store(auto_evict, Ordering::Relaxed);
        self.update_accepting();
        self.wake.notify_one();
    }

    /// Sets the limits of single kinds (start and config reload) and evicts if needed.
    pub fn set_kind_limits(&self, limits: std::collections::BTreeMap<String, u64>) {
        if let Ok(mut l) = self.kind_limits.lock() {
            *l = limits;
        }
        self.kinds_changed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The limits of single kinds.
    pub fn kind_limits(&self) -> std::collections::BTreeMap<String, u64> {
        self.kind_limits.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Keeps every kind that has a limit under it: its least recently used entries go first, pins stay.
    /// Sizes are the stored answers' bodies per kind (as `kind_usage` counts them), recounted only after
    /// something was stored. Blocking. Returns bytes freed.
    pub fn enforce_kind_limits(&self) -> Result<u64, StoreError> {
        let limits = self.kind_limits();
        if limits.is_empty() || !self.kinds_changed.load(Ordering::Relaxed) {
            return Ok(0);
        }
        if let Ok(mut last) = self.kinds_counted.lock() {
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                // Counted moments ago: the loop's next round (5 s at most) counts again.
                return Ok(0);
            }
            *last = Some(std::time::Instant::now());
        }
        self.kinds_changed.store(false, Ordering::Relaxed);
        let usage = self.store.kind_usage()?;
        let mut over: std::collections::HashMap<String, u64> = limits
            .iter()
            .filter_map(|(kind, limit)| {
                let used = usage.get(kind).map_or(0, |u| u.1);
                (used > *limit).then(|| (kind.clone(), used - limit))
            })
            .collect();
        if over.is_empty() {
            return Ok(0);
        }
        // Least recently used first.
        let oldest: Vec<Vec<u8>> = self
            .order
            .lock()
            .map(|o| o.lru.iter().rev().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        let mut freed = 0;
        for key in oldest {
            if over.is_empty() {
                break;
            }
            if self.is_pinned(&key) {
                continue;
            }
            let Some(entry) = self.store.entry(&key)? else { continue };
            let Some(excess) = over.get_mut(&entry.kind) else {
                continue;
            };
            let size = if entry.body_dropped { 0 } else { entry.size };
            freed += self.remove_entry(&key, EvictReason::KindLimit)?;
            if size >= *excess {
                over.remove(&entry.kind);
            } else {
                *excess -= size;
            }
        }
        for (kind, excess) in over {
            tracing::warn!(kind, excess, "only pinned answers are left over this kind's limit");
        }
        Ok(freed)
    }

    /// False when new fills must not be stored (over budget with auto-evict off, or only pins left).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    fn update_accepting(&self) {
        let over = self.used() > self.max_size();
        if !over {
            self.accepting.store(true, Ordering::Relaxed);
        } else if !self.auto_evict() {
            self.accepting.store(false, Ordering::Relaxed);
        }
    }

    /// A stored response was used (cheap: memory only; persisted later, see [`PERSIST_GRAIN_MS`]).
    pub fn touch(&self, key: &[u8]) {
        let now = now_ms();
        if let Ok(mut o) = self.order.lock() {
            let persist = match o.lru.get_mut(key) {
                Some(seen) => {
                    seen.at = now;
                    let due = now.saturating_sub(seen.saved) >= PERSIST_GRAIN_MS;
                    if due {
                        seen.saved = now;
                    }
                    due
                }
                None => {
                    // A new key (its commit) is always persisted: its commit batch's record may have
                    // raced a removal (see the module doc).
                    o.lru.put(key.to_vec(), Seen { at: now, saved: now });
                    true
                }
            };
            if persist {
                *o.dirty.entry_ref(key).or_insert(now) = now;
            }
        }
    }

    /// A response was committed; `new_bytes` is the size of a blob that did not exist before.
    pub fn committed(&self, key: &[u8], new_bytes: u64) {
        self.touch(key);
        let used = self.used.fetch_add(new_bytes, Ordering::Relaxed) + new_bytes;
        if !self.kinds_changed.swap(true, Ordering::Relaxed) && self.kind_limits.lock().is_ok_and(|l| !l.is_empty()) {
            self.wake.notify_one();
        }
        if used > self.max_size() {
            self.update_accepting();
            self.wake.notify_one();
        }
    }

    /// Replaces the set of pinned entry keys.
    pub fn set_pins(&self, pins: HashSet<Vec<u8>>) {
        if let Ok(mut p) = self.pinned.lock() {
            *p = pins;
        }
        self.wake.notify_one();
    }

    /// Whether an entry is pinned.
    pub fn is_pinned(&self, key: &[u8]) -> bool {
        self.pinned.lock().map(|p| p.contains(key)).unwrap_or(false)
    }

    /// Evictions so far.
    pub fn counts(&self) -> EvictionCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn count(&self, reason: EvictReason, bytes: u64) {
        self.count_many(reason, 1, bytes);
    }

    fn count_many(&self, reason: EvictReason, items: u64, bytes: u64) {
        tracing::debug!(reason = reason.as_str(), items, bytes, "evicted");
        if let Ok(mut c) = self.counts.lock() {
            let e = c.by_reason.entry(reason.as_str()).or_default();
            e.0 += items;
            e.1 += bytes;
        }
    }

    /// Deletes an entry (and its blob when no longer referenced), for eviction and clearing.
    pub fn remove_entry(&self, key: &[u8], reason: EvictReason) -> Result<u64, StoreError> {
        let Some(entry) = self.store.entry(key)? else {
            if let Ok(mut o) = self.order.lock() {
                o.lru.pop(key);
            }
            // An access persisted just after its entry went (or a `Vary` list's key): only the record.
            self.store.forget_access(key)?;
            return Ok(0);
        };
        self.store.remove_entry(key)?;
        if let Ok(mut o) = self.order.lock() {
            o.lru.pop(key);
        }
        let mut freed = 0;
        if let Some(rec) = self.store.blob_info(&entry.blob)? {
            if rec.refcount == 0 {
                self.store.delete_blob(&entry.blob)?;
                self.used.fetch_sub(rec.size.min(self.used()), Ordering::Relaxed);
                freed = rec.size;
            }
        }
        self.count(reason, freed);
        Ok(freed)
    }

    /// Removes every stored answer for one URL (`url_key`: a primary key without its partition), all
    /// its `Vary` variants, in `partition` or in all. Returns (entries removed, bytes freed). Blocking.
    pub fn purge(&self, url_key: &[u8], partition: Option<&str>) -> Result<(usize, u64), StoreError> {
        let mut removed = 0;
        let mut freed = 0;
        for k in self.store.url_keys(url_key, partition)? {
            if self.store.entry(&k)?.is_some() {
                freed += self.remove_entry(&k, EvictReason::Cleared)?;
                removed += 1;
            } else {
                // The record listing a varying answer's fields.
                self.store.remove_entry(&k)?;
            }
        }
        Ok((removed, freed))
    }

    /// Applies per-group retention after a commit into `group` (blocking): bodies beyond the newest
    /// `keep_last` are dropped and blobs left without references are deleted at once.
    pub fn retain(&self, group: &str, keep_last: usize, drop: RetainDrop) -> Result<u64, StoreError> {
        let r = self.store.retain_group(group, keep_last, drop)?;
        if r.dropped == 0 {
            return Ok(0);
        }
        let mut freed = 0;
        for (hash, size) in &r.released {
            self.store.delete_blob(hash)?;
            self.used.fetch_sub((*size).min(self.used()), Ordering::Relaxed);
            freed += size;
        }
        self.count_many(EvictReason::Retention, r.dropped, freed);
        self.update_accepting();
        Ok(freed)
    }

    /// One eviction pass (blocking: RocksDB and file deletes). Returns bytes freed.
    pub fn evict_once(&self) -> Result<u64, StoreError> {
        let mut freed = 0;
        if self.used() > self.max_size() {
            for (hash, size) in self.store.unreferenced_blobs()? {
                if self.used() <= self.max_size() {
                    break;
                }
                self.store.delete_blob(&hash)?;
                self.used.fetch_sub(size.min(self.used()), Ordering::Relaxed);
                self.count(EvictReason::Unreferenced, size);
                freed += size;
            }
        }
        let mut skipped_pinned = Vec::new();
        let mut n = 0;
        while self.used() > self.max_size() && n < BATCH {
            let next = self.order.lock().ok().and_then(|mut o| o.lru.pop_lru());
            let Some((key, t)) = next else { break };
            n += 1;
            if self.is_pinned(&key) && self.store.entry(&key)?.is_some() {
                skipped_pinned.push((key, t));
            } else {
                // A key whose entry is gone only loses its access record there.
                freed += self.remove_entry(&key, EvictReason::Size)?;
            }
        }
        let only_pins_left =
            self.used() > self.max_size() && self.order.lock().map(|o| o.lru.is_empty()).unwrap_or(true);
        if let Ok(mut o) = self.order.lock() {
            for (k, t) in skipped_pinned {
                o.lru.put(k, t);
            }
        }
        if only_pins_left {
            tracing::warn!(
                used = self.used(),
                max = self.max_size(),
                "only pinned content is left over the budget; new fills are not stored"
            );
            self.accepting.store(false, Ordering::Relaxed);
        } else {
            self.update_accepting();
        }
        Ok(freed)
    }

    /// Evicts entries whose last use is older than `max_unused` (pins excepted). Blocking.
    pub fn expire_unused(&self) -> Result<u64, StoreError> {
        let Some(max) = self.max_unused else { return Ok(0) };
        let cutoff = now_ms().saturating_sub(max.as_millis() as u64);
        let mut freed = 0;
        let mut kept = Vec::new();
        loop {
            let next = self.order.lock().ok().and_then(|mut o| {
                let old = o.lru.peek_lru().is_some_and(|(_, t)| t.at < cutoff);
                if old {
                    o.lru.pop_lru()
                } else {
                    None
                }
            });
            let Some((key, t)) = next else { break };
            if self.is_pinned(&key) {
                kept.push((key, t));
                continue;
            }
            freed += self.remove_entry(&key, EvictReason::Unused)?;
        }
        if let Ok(mut o) = self.order.lock() {
            // Pinned entries stay; they are looked at again when they reach the old end.
            for (k, t) in kept {
                o.lru.put(k, t);
            }
        }
        Ok(freed)
    }

    /// Writes the accesses due; `exact` (at a stop) also those within [`PERSIST_GRAIN_MS`] of the last one
    /// persisted, so a clean restart keeps the exact order.
    fn persist_access(&self, exact: bool) {
        let batch: Vec<(Vec<u8>, u64)> = self
            .order
            .lock()
            .map(|mut o| {
                let mut dirty = std::mem::take(&mut o.dirty);
                if exact {
                    for (k, seen) in o.lru.iter_mut() {
                        if seen.at > seen.saved {
                            seen.saved = seen.at;
                            dirty.insert(k.clone(), seen.at);
                        }
                    }
                }
                dirty.into_iter().collect()
            })
            .unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.put_access_times(&batch) {
            tracing::warn!(error = %e, "persisting the access order failed");
        }
    }

    /// Background loop: evicts while over budget (with auto-evict on), persists the access order.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        // Compared with file modification times, so the real wall clock, not the pausable one.
        let started = std::time::SystemTime::now();
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            match me.load_order() {
                Ok(n) => tracing::debug!(entries = n, "access order loaded"),
                Err(e) => tracing::error!(error = %e, "loading the access order failed"),
            }
            // Blob files renamed into place whose entry never committed (a crash) are removed; files
            // this process created are left alone, their commit may be in flight.
            match me.store.remove_orphan_blobs(started) {
                Ok(0) => {}
                Ok(n) => tracing::info!(orphans = n, "removed blob files left by an interrupted fill"),
                Err(e) => tracing::warn!(error = %e, "removing orphan blob files failed"),
            }
        })
        .await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.persist_access(true)).await;
                    return;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.max_unused.map_or(Duration::from_secs(5), |m| m.min(Duration::from_secs(5)))) => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                me.persist_access(false);
                if let Err(e) = me.expire_unused() {
                    tracing::error!(error = %e, "expiring unused entries failed");
                }
                if me.auto_evict() {
                    if let Err(e) = me.enforce_kind_limits() {
                        tracing::error!(error = %e, "evicting over a kind's limit failed");
                    }
                }
                while me.auto_evict() && me.used() > me.max_size() {
                    match me.evict_once() {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "eviction failed");
                            break;
                        }
                    }
                }
                me.update_accepting();
            })
            .await;
        }
    }

    /// Wakes the loop.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Budget for Evictor {
    fn accepting(&self) -> bool {
        Evictor::accepting(self)
    }
    fn touch(&self, key: &[u8]) {
        Evictor::touch(self, key)
    }
    fn committed(&self, key: &[u8], new_bytes: u64) {
        Evictor::committed(self, key, new_bytes)
    }
    fn retain(&self, group: &str, keep_last: usize, drop: RetainDrop) -> Result<u64, StoreError> {
        Evictor::retain(self, group, keep_last, drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobId, Commit, DiskStorage, Entry, Storage};

    fn commit(store: &Arc<Store>, path: &str) -> Vec<u8> {
        let key = format!("anon\0api\0{path}").into_bytes();
        let disk = DiskStorage(store.clone());
        let mut sink = disk.begin_fill().unwrap();
        sink.write(path.as_bytes()).unwrap();
        let placeholder = BlobId {
            hash: String::new(),
            size: 0,
        };
        let entry = Entry::stored(
            200,
            &http::HeaderMap::new(),
            &placeholder,
            now_ms(),
            ("audio".into(), "media".into(), path.into()),
        );
        let commit = Commit {
            primary: &key,
            key: &key,
            vary_fields: &[],
            entry,
        };
        disk.commit_fill(sink, commit).unwrap();
        key
    }

    /// `max_unused` on tokio's paused clock: no real time passes, the clock moves by `advance`.
    #[tokio::test(start_paused = true)]
    async fn entries_unused_for_max_unused_expire_as_the_clock_moves_and_pins_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (a, pinned) = (commit(&store, "/a.mp3"), commit(&store, "/p.mp3"));
        let ev = Evictor::open(store.clone(), 1 << 30, true, Some(Duration::from_secs(60))).unwrap();
        for k in [&a, &pinned] {
            ev.committed(k, 1);
            ev.touch(k);
        }
        ev.set_pins(HashSet::from([pinned.clone()]));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(ev.expire_unused().unwrap(), 0, "59 s unused is not yet 60");
        assert!(store.entry(&a).unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(ev.expire_unused().unwrap() > 0);
        assert!(store.entry(&a).unwrap().is_none(), "unused for 61 s: evicted");
        assert!(store.entry(&pinned).unwrap().is_some(), "pinned: kept however old");
        let counts = ev.counts();
        assert_eq!(counts.by_reason.get("unused").map(|c| c.0), Some(1));
        // A use resets the clock of an entry.
        let b = commit(&store, "/b.mp3");
        ev.committed(&b, 1);
        ev.touch(&b);
        tokio::time::advance(Duration::from_secs(45)).await;
        ev.touch(&b);
        tokio::time::advance(Duration::from_secs(45)).await;
        ev.expire_unused().unwrap();
        assert!(store.entry(&b).unwrap().is_some(), "used 45 s ago");

        // The background loop does the same by itself as the clock moves.
        let ev = Arc::new(ev);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ev.clone().run(async move {
            let _ = rx.await;
        }));
        tokio::time::advance(Duration::from_secs(61)).await;
        let mut waited = 0;
        while store.entry(&b).unwrap().is_some() {
            waited += 1;
            assert!(waited < 1000, "the loop never expired the entry");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tx.send(());
        task.await.unwrap();
    }

    /// Hits persist an entry's access time at most once per grain; a clean stop persists the exact one.
    #[tokio::test(start_paused = true)]
    async fn access_times_are_persisted_once_per_grain_and_exactly_at_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let a = commit(&store, "/a.mp3");
        let ev = Evictor::open(store.clone(), 1 << 30, true, None).unwrap();
        let persisted = || -> u64 {
            let times = store.entry_access_times().unwrap();
            times.iter().find(|(k, _)| *k == a).map(|(_, t)| *t).unwrap()
        };
        ev.committed(&a, 1);
        let t0 = now_ms();
        ev.persist_access(false);
        assert_eq!(persisted(), t0, "a new entry's access is persisted");
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..100 {
            ev.touch(&a);
        }
        assert!(
            ev.order.lock().unwrap().dirty.is_empty(),
            "hits within the grain write nothing"
        );
        ev.persist_access(false);
        assert_eq!(persisted(), t0);
        tokio::time::advance(Duration::from_millis(PERSIST_GRAIN_MS)).await;
        ev.touch(&a);
        ev.persist_access(false);
        assert_eq!(persisted(), now_ms(), "a hit a grain later is persisted");
        tokio::time::advance(Duration::from_secs(1)).await;
        ev.touch(&a);
        ev.persist_access(false);
        assert_eq!(persisted(), now_ms() - 1000);
        ev.persist_access(true);
        assert_eq!(persisted(), now_ms(), "a stop persists the exact last use");
    }
}
