//! Response entries and blob records in RocksDB.
//!
//! `entries`: cache key → [`Entry`] (or, at a primary key of a response with `Vary`, the list of fields).
//! `blobs`: blob hash → [`BlobRecord`] (size, how many entries reference it).
//! An entry and the refcount changes it causes are written in one `WriteBatch`, after the blob is durable.

use serde::{Deserialize, Serialize};

use super::recent::Hot;
use super::{BlobId, Store, StoreError};

/// A stored response: head, where its body is, and when it was received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Status code.
    pub status: u16,
    /// Header fields (stored as name/raw-value pairs in order; shared, so cloning an entry on every hit
    /// copies no header).
    pub headers: StoredHeaders,
    /// Body blob hash.
    pub blob: String,
    /// Body length.
    pub size: u64,
    /// Unix ms when the request was sent.
    pub request_time_ms: u64,
    /// Unix ms when the response head arrived.
    pub response_time_ms: u64,
    /// The request's values of the response's `Vary` fields.
    #[serde(default)]
    pub vary: Vec<(String, String)>,
    /// Route kind (stats, clearing).
    pub kind: String,
    /// Route name.
    pub route: String,
    /// Request target, for people.
    pub url: String,
    /// Set by an unsafe request's success (§4.4): must be revalidated before use while online.
    #[serde(default)]
    pub invalidated: bool,
    /// Retention group (route, partition and the expanded `retain.group`), when the route has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The body was dropped by per-group retention; the head is kept as metadata and never served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_dropped: bool,
    /// A copy of the body when it is at most [`super::INLINE_MAX`] bytes, kept in the entry's record
    /// after its JSON (not inside it): a hit reads one record and opens no file. The blob stays the
    /// body's reference (refcounts, eviction, export, ranges over large bodies); the copy is checked
    /// against the blob's hash whenever the record is read from disk. Absent in older records.
    #[serde(skip)]
    pub inline: Option<bytes::Bytes>,
}

impl Entry {
    /// A fresh entry for `blob`, received at `time_ms`, with `headers`; no Vary, group or flags.
    pub fn stored(
        status: u16,
        headers: &http::HeaderMap,
        blob: &BlobId,
        time_ms: u64,
        (kind, route, url): (String, String, String),
    ) -> Entry {
        let mut e = Entry {
            status,
            headers: StoredHeaders::default(),
            blob: blob.hash.clone(),
            size: blob.size,
            request_time_ms: time_ms,
            response_time_ms: time_ms,
            vary: Vec::new(),
            kind,
            route,
            url,
            invalidated: false,
            group: None,
            body_dropped: false,
            inline: None,
        };
        e.set_headers(headers);
        e
    }

    /// The headers as a `HeaderMap`.
    pub fn header_map(&self) -> http::HeaderMap {
        self.headers.map().clone()
    }

    /// Replaces the stored headers.
    pub fn set_headers(&mut self, h: &http::HeaderMap) {
        self.headers = StoredHeaders::from_map(h.clone());
    }
}

/// A stored response's header fields: kept as a shared `HeaderMap` in memory, written as a list of
/// `[name, value]` pairs, the value as text when it is visible ASCII (nearly always) and as an array of
/// bytes otherwise — records written before text values existed (bytes only) read the same. Invalid stored
/// names or values are skipped when read, never a panic.
#[derive(Debug, Clone, Default)]
pub struct StoredHeaders(std::sync::Arc<SharedHead>);

/// The fields and what a reader derived from them once (see [`StoredHeaders::derived`]).
#[derive(Debug, Default)]
struct SharedHead {
    map: http::HeaderMap,
    derived: std::sync::OnceLock<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl PartialEq for StoredHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.0.map == other.0.map
    }
}

impl Eq for StoredHeaders {}

impl StoredHeaders {
    /// Fields read back from a record.
    pub(super) fn from_map(h: http::HeaderMap) -> StoredHeaders {
        StoredHeaders(std::sync::Arc::new(SharedHead {
            map: h,
            derived: std::sync::OnceLock::new(),
        }))
    }

    /// The fields.
    pub fn map(&self) -> &http::HeaderMap {
        &self.0.map
    }

    /// A value computed from the fields by `f` once per stored head and shared by every clone of it
    /// (a hit then reads its freshness facts without parsing the fields again). The fields never
    /// change after a head is read, so the value cannot go stale. One type per head: a caller asking
    /// for another type than the first gets `f` computed each time.
    pub fn derived<T: std::any::Any + Send + Sync + Clone>(&self, f: impl Fn(&http::HeaderMap) -> T) -> T {
        let slot = self.0.derived.get_or_init(|| std::sync::Arc::new(f(&self.0.map)));
        match slot.downcast_ref::<T>() {
            Some(v) => v.clone(),
            None => f(&self.0.map),
        }
    }
}

impl Serialize for StoredHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.map.len()))?;
        for (n, v) in self.0.map.iter() {
            // Text is a third of the size of a byte array in JSON and faster to read back.
            match v.to_str() {
                Ok(text) => seq.serialize_element(&(n.as_str(), text))?,
                Err(_) => seq.serialize_element(&(n.as_str(), v.as_bytes()))?,
            }
        }
        seq.end()
    }
}

/// A stored header value: text, or an array of bytes (older records, and values that are not ASCII).
struct StoredValue(Vec<u8>);

impl<'de> Deserialize<'de> for StoredValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StoredValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header value as text or as an array of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StoredValue, E> {
                Ok(StoredValue(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StoredValue, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8192));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(StoredValue(out))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl<'de> Deserialize<'de> for StoredHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(String, StoredValue)>::deserialize(d)?;
        let mut h = http::HeaderMap::with_capacity(pairs.len());
        for (n, StoredValue(v)) in pairs {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_bytes(&v),
            ) {
                h.append(n, v);
            }
        }
        Ok(StoredHeaders::from_map(h))
    }
}

/// A blob's bookkeeping.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRecord {
    /// Bytes.
    pub size: u64,
    /// Entries pointing at it.
    pub refcount: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) enum Record {
    Entry(Entry),
    Vary(Vec<String>),
}

/// What a primary key holds.
#[derive(Debug)]
pub enum Lookup {
    /// Nothing.
    Miss,
    /// A response without `Vary`, stored at the primary key (shared with the store's hot records, so
    /// a hit copies nothing of it).
    Entry(std::sync::Arc<Entry>),
    /// Responses vary on these fields; look up the variant key.
    Vary(Vec<String>),
}

/// Key in the `groups` family: group, 0, response time (big-endian, so a prefix scan is oldest first),
/// entry key.
fn group_index_key(group: &str, time_ms: u64, entry_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 9 + entry_key.len());
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&time_ms.to_be_bytes());
    k.extend_from_slice(entry_key);
    k
}

/// What per-group retention drops from entries beyond `keep_last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainDrop {
    /// The body; the head stays as metadata.
    Body,
    /// The whole entry.
    Entry,
}

/// What one retention pass did.
#[derive(Debug, Default)]
pub struct Retained {
    /// Entries whose body (or the whole entry) was dropped.
    pub dropped: u64,
    /// Blobs no entry references any more: (hash, size), for the caller to delete.
    pub released: Vec<(String, u64)>,
}

impl Store {
    fn get_record(&self, key: &[u8]) -> Result<Option<Hot>, StoreError> {
        let gen = {
            let mut c = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((r, _)) = c.map.get(key) {
                return Ok(Some(r.clone()));
            }
            c.gen
        };
        let Some(bytes) = self.db.get_pinned_cf(self.cf("entries"), key)? else {
            return Ok(None);
        };
        let held = bytes.len();
        let decoded = match self.unseal(key, &bytes) {
            Some(plain) => super::record::decode(&plain, true),
            None => Err("failed authentication".to_string()),
        };
        match decoded {
            Ok(mut r) => {
                // What a hit serves is checked as a blob is before its first use; a copy that does not
                // match is left out (the blob, verified on its own, answers instead).
                if let Record::Entry(e) = &mut r {
                    if e.inline.as_ref().is_some_and(|b| self.blobs().name_of(b) != e.blob) {
                        tracing::warn!(blob = %e.blob, "the body kept with a cache entry does not match its hash; ignored");
                        e.inline = None;
                    }
                }
                let r = Hot::from(r);
                let mut c = self.records.lock().unwrap_or_else(|p| p.into_inner());
                if c.gen == gen && c.admit(key) {
                    let evicted = c.put(key.to_vec(), r.clone(), held);
                    // Freed after the lock: other hits wait for the cache, not for the allocator.
                    drop(c);
                    drop(evicted);
                }
                Ok(Some(r))
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable cache entry ignored");
                Ok(None)
            }
        }
    }

    /// Drops cached records after a write to `entries` (`None`: all of them).
    pub(super) fn forget(&self, keys: Option<&[&[u8]]>) {
        self.tallies.changed();
        let mut c = self.records.lock().unwrap_or_else(|p| p.into_inner());
        c.gen += 1;
        match keys {
            Some(keys) => {
                for k in keys {
                    c.pop(k);
                }
            }
            None => c.clear(),
        }
    }

    /// Reads what is stored at a primary key.
    pub fn lookup(&self, key: &[u8]) -> Result<Lookup, StoreError> {
        Ok(match self.get_record(key)? {
            None => Lookup::Miss,
            Some(Hot::Entry(e)) => Lookup::Entry(e),
            Some(Hot::Vary(f)) => Lookup::Vary(f),
        })
    }

    /// Reads a variant (or any) entry key.
    pub fn entry(&self, key: &[u8]) -> Result<Option<std::sync::Arc<Entry>>, StoreError> {
        Ok(match self.get_record(key)? {
            Some(Hot::Entry(e)) => Some(e),
            _ => None,
        })
    }

    fn blob_record(&self, hash: &str) -> Result<Option<BlobRecord>, StoreError> {
        match self.db.get_pinned_cf(self.cf("blobs"), hash.as_bytes())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupt {
                cf: "blobs",
                reason: e.to_string(),
            }),
        }
    }

    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        // Serialising our own plain structs cannot fail.
        serde_json::to_vec(v).unwrap_or_default()
    }

    /// An `entries` value as stored (sealed when encrypted), in [`super::record`]'s layout.
    pub(super) fn encode_record(&self, key: &[u8], r: &Record) -> Vec<u8> {
        self.seal(key, super::record::encode(r))
    }

    /// An `entries` value's head read back (its inline body, if any, left out: scans of heads copy no
    /// body); `None` if it is undecodable or fails authentication.
    pub(super) fn decode_record(&self, key: &[u8], stored: &[u8]) -> Option<Record> {
        super::record::decode(&self.unseal(key, stored)?, false).ok()
    }

    /// An `entries` value read back whole, inline body included (to rewrite it, or to check the body).
    pub(super) fn decode_record_whole(&self, key: &[u8], stored: &[u8]) -> Option<Record> {
        super::record::decode(&self.unseal(key, stored)?, true).ok()
    }

    /// True when a stored (unsealed) `entries` value is an entry rather than a `Vary` list.
    pub(super) fn is_entry_value(v: &[u8]) -> bool {
        super::record::is_entry(v)
    }

    /// Commits `entry` at `key` (and the `Vary` field list at `primary` when it differs), pointing at the
    /// durable blob `blob`; adjusts refcounts of the new and any replaced blob in the same batch.
    pub fn commit_entry(
        &self,
        primary: &[u8],
        key: &[u8],
        vary_fields: &[String],
        entry: &Entry,
        blob: &BlobId,
    ) -> Result<bool, StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = rocksdb::WriteBatch::default();
        let entries = self.cf("entries");
        let blobs = self.cf("blobs");
        let old = self.entry(key)?;
        // An answer that starts to vary: the plain entry at the primary key is replaced by the list of
        // fields, so its blob reference and group index go with it (in this batch).
        let replaced_primary = if key != primary { self.entry(primary)? } else { None };
        // An entry whose body retention dropped holds no reference any more (it was released then).
        let same_blob = old.as_ref().is_some_and(|o| o.blob == blob.hash && !o.body_dropped);
        let existing = self.blob_record(&blob.hash)?;
        let new_blob = existing.is_none();
        if new_blob && !self.blob_file_present(blob) {
            // `finish` found the file already there (same content) and kept it, but the evictor deleted
            // that blob (record, then file, under this lock) before this commit: nothing to point at.
            return Err(StoreError::Blob(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("blob {} was evicted while this fill finished; not stored", blob.hash),
            )));
        }
        // Refcount changes per blob, applied once each (two changes to one blob in one batch must add up).
        let mut deltas: Vec<(String, i64)> = Vec::new();
        let mut change = |hash: &str, d: i64| match deltas.iter_mut().find(|(h, _)| h == hash) {
            Some((_, n)) => *n += d,
            None => deltas.push((hash.to_string(), d)),
        };
        if !same_blob {
            change(&blob.hash, 1);
            if let Some(o) = old.as_ref().filter(|o| !o.body_dropped) {
                change(&o.blob, -1);
            }
        }
        if let Some(p) = &replaced_primary {
            if !p.body_dropped {
                change(&p.blob, -1);
            }
        }
        for (hash, d) in deltas {
            if d == 0 {
                continue;
            }
            let rec = if hash == blob.hash {
                existing.or(Some(BlobRecord {
                    size: blob.size,
                    refcount: 0,
                }))
            } else {
                self.blob_record(&hash)?
            };
            if let Some(mut r) = rec {
                r.refcount = (r.refcount as i64 + d).max(0) as _;
                batch.put_cf(blobs, hash.as_bytes(), Self::encode(&r));
            }
        }
        for (o, k) in [(&old, key), (&replaced_primary, primary)] {
            if let Some(g) = o
                .as_ref()
                .and_then(|o| o.group.as_ref().map(|g| (g, o.response_time_ms)))
            {
                batch.delete_cf(self.cf("groups"), group_index_key(g.0, g.1, k));
            }
        }
        if let Some(g) = &entry.group {
            batch.put_cf(self.cf("groups"), group_index_key(g, entry.response_time_ms, key), b"");
        }
        if key != primary {
            batch.put_cf(
                entries,
                primary,
                self.encode_record(primary, &Record::Vary(vary_fields.to_vec())),
            );
        } else if let Lookup::Vary(_) = self.lookup(primary)? {
            // The response stopped varying: variants under this primary become unreachable; they age out.
        }
        if replaced_primary.is_some() {
            batch.delete_cf(self.cf("access"), primary);
        }
        batch.put_cf(entries, key, self.encode_record(key, &Record::Entry(entry.clone())));
        // Every entry has an access record from its commit on, so the evictor's order loads from
        // `access` alone (a scan of `entries` would read every record, and map them all with mmap reads).
        batch.put_cf(self.cf("access"), key, entry.response_time_ms.to_be_bytes());
        self.db.write(batch)?;
        self.forget(Some(&[primary, key]));
        Ok(new_blob)
    }

    /// Rewrites an entry's head (after a 304), keeping its blob. Its retention-index key moves with its
    /// response time (a 304 renews it), in the same batch. An entry no longer stored (or stored with
    /// another body since) is left alone.
    pub fn update_entry(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = rocksdb::WriteBatch::default();
        // Evicted while it was being revalidated: writing it back would make an entry without a body.
        let Some(old) = self.entry(key)?.filter(|o| o.blob == entry.blob) else {
            return Ok(());
        };
        if let Some(g) = &old.group {
            batch.delete_cf(self.cf("groups"), group_index_key(g, old.response_time_ms, key));
        }
        if let Some(g) = &entry.group {
            batch.put_cf(self.cf("groups"), group_index_key(g, entry.response_time_ms, key), b"");
        }
        batch.put_cf(
            self.cf("entries"),
            key,
            self.encode_record(key, &Record::Entry(entry.clone())),
        );
        self.db.write(batch)?;
        self.forget(Some(&[key]));
        Ok(())
    }

    /// Deletes an entry and releases its blob reference.
    pub fn remove_entry(&self, key: &[u8]) -> Result<(), StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(self.cf("entries"), key);
        batch.delete_cf(self.cf("access"), key);
        let Some(old) = self.entry(key)? else {
            self.db.write(batch)?;
            self.forget(Some(&[key]));
            return Ok(());
        };
        if let Some(g) = &old.group {
            batch.delete_cf(self.cf("groups"), group_index_key(g, old.response_time_ms, key));
        }
        if let Some(mut r) = self.blob_record(&old.blob)? {
            r.refcount = r.refcount.saturating_sub(1);
            batch.put_cf(self.cf("blobs"), old.blob.as_bytes(), Self::encode(&r));
        }
        self.db.write(batch)?;
        self.forget(Some(&[key]));
        Ok(())
    }

    /// Marks every entry under `primary` (all its variants) as invalidated (RFC 9111 §4.4). Returns how
    /// many were marked.
    pub fn invalidate(&self, primary: &[u8]) -> Result<usize, StoreError> {
        let entries = self.cf("entries");
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0;
        let iter = self.db.prefix_iterator_cf(entries, primary);
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(primary) {
                break;
            }
            // Only the key itself or its variants (primary + VARIANT_SEP + hash), not longer paths.
            if k.len() != primary.len() && k[primary.len()] != super::VARIANT_SEP {
                continue;
            }
            if let Some(Record::Entry(mut e)) = self.decode_record_whole(&k, &v) {
                if !e.invalidated {
                    e.invalidated = true;
                    batch.put_cf(entries, &k, self.encode_record(&k, &Record::Entry(e)));
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.db.write(batch)?;
            self.forget(None);
        }
        Ok(n)
    }

    /// Per-group retention: keeps the newest `keep_last` stored bodies of `group` and drops the rest
    /// (their bodies, or the whole entries), with every index, entry and refcount change in one batch.
    pub fn retain_group(&self, group: &str, keep_last: usize, drop: RetainDrop) -> Result<Retained, StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let groups = self.cf("groups");
        let mut prefix = group.as_bytes().to_vec();
        prefix.push(0);
        let mut members = Vec::new();
        for item in self.db.prefix_iterator_cf(groups, &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            members.push(k.to_vec());
        }
        let mut out = Retained::default();
        if members.len() <= keep_last {
            return Ok(out);
        }
        let excess = members.len() - keep_last;
        let mut batch = rocksdb::WriteBatch::default();
        // Several old entries may share a blob: count down in memory, write each record once.
        let mut records: std::collections::HashMap<String, BlobRecord> = std::collections::HashMap::new();
        for idx in &members[..excess] {
            batch.delete_cf(groups, idx);
            let Some(entry_key) = idx.get(prefix.len() + 8..) else {
                continue;
            };
            let Some(e) = self.entry(entry_key)? else { continue };
            let mut e = Entry::clone(&e);
            if e.body_dropped {
                continue;
            }
            if !records.contains_key(&e.blob) {
                if let Some(r) = self.blob_record(&e.blob)? {
                    records.insert(e.blob.clone(), r);
                }
            }
            if let Some(r) = records.get_mut(&e.blob) {
                r.refcount = r.refcount.saturating_sub(1);
            }
            match drop {
                RetainDrop::Body => {
                    e.body_dropped = true;
                    e.blob = String::new();
                    e.inline = None;
                    batch.put_cf(
                        self.cf("entries"),
                        entry_key,
                        self.encode_record(entry_key, &Record::Entry(e)),
                    );
                }
                RetainDrop::Entry => {
                    batch.delete_cf(self.cf("entries"), entry_key);
                    batch.delete_cf(self.cf("access"), entry_key);
                }
            }
            out.dropped += 1;
        }
        for (hash, r) in &records {
            batch.put_cf(self.cf("blobs"), hash.as_bytes(), Self::encode(r));
            if r.refcount == 0 {
                out.released.push((hash.clone(), r.size));
            }
        }
        self.db.write(batch)?;
        self.forget(None);
        Ok(out)
    }

    /// The blob directory.
    pub fn blobs(&self) -> &super::BlobStore {
        &self.blobs
    }

    /// Removes blob files that no record knows (a crash between rename and commit leaves them).
    /// Blocking; run off the request path.
    pub fn remove_orphan_blobs(&self, older_than: std::time::SystemTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (hash, _, path) in self.blobs.list()? {
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < older_than);
            let misplaced = self.blobs.path(&hash).as_ref() != Some(&path);
            if old && (misplaced || self.blob_record(&hash)?.is_none()) {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => removed += 1,
                }
            }
        }
        Ok(removed)
    }

    /// Total bytes of the blob records (one pass over `blobs` only).
    pub fn blob_bytes(&self) -> Result<u64, StoreError> {
        let mut bytes = 0u64;
        for item in self.scan("blobs") {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                bytes += r.size;
            }
        }
        Ok(bytes)
    }
}

impl Store {
    /// A blob's record (size and refcount).
    pub fn blob_info(&self, hash: &str) -> Result<Option<BlobRecord>, StoreError> {
        self.blob_record(hash)
    }
}

/// What the evictor and the stats need from the store.
impl Store {
    /// Every entry key with its last access, read from `access` alone (every entry has a record there
    /// from its commit on). A key may outlive its entry by a moment (an access persisted just after the
    /// entry went): the evictor drops such keys when it reaches them.
    pub fn entry_access_times(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan("access") {
            let (k, v) = item?;
            let t = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            out.push((k.to_vec(), t));
        }
        Ok(out)
    }

    /// Drops the access record of a key whose entry is gone (nothing else is touched).
    pub fn forget_access(&self, key: &[u8]) -> Result<(), StoreError> {
        Ok(self.db.delete_cf(self.cf("access"), key)?)
    }

    /// Gives every entry without an access record one (its response time): data dirs written before
    /// schema 5 recorded accesses only for entries used since. One pass over the entries, at upgrade.
    pub(super) fn backfill_access(&self) -> Result<usize, StoreError> {
        let access = self.cf("access");
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0;
        for item in self.scan("entries") {
            let (k, v) = item?;
            let Some(Record::Entry(e)) = self.decode_record(&k, &v) else {
                continue;
            };
            if self.db.get_pinned_cf(access, &k)?.is_none() {
                batch.put_cf(access, &k, e.response_time_ms.to_be_bytes());
                n += 1;
            }
            if batch.len() >= 10_000 {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.db.write(batch)?;
        Ok(n)
    }

    /// Persists access times in one unsynced batch (losing the last few on a crash only blurs the order).
    pub fn put_access_times(&self, batch: &[(Vec<u8>, u64)]) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        let access = self.cf("access");
        for (k, t) in batch {
            wb.put_cf(access, k, t.to_be_bytes());
        }
        self.db.write(wb)?;
        Ok(())
    }

    /// Blobs with refcount 0: (hash, size).
    pub fn unreferenced_blobs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan("blobs") {
            let (k, v) = item?;
            if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                if r.refcount == 0 {
                    out.push((String::from_utf8_lossy(&k).into_owned(), r.size));
                }
            }
        }
        Ok(out)
    }

    /// True when the blob's file is in place with its full length.
    fn blob_file_present(&self, blob: &BlobId) -> bool {
        self.blobs
            .path(&blob.hash)
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() == self.blobs.file_len(blob.size))
    }

    /// Deletes a blob's record, then its file (a crash in between leaves an orphan file, removed at start).
    pub fn delete_blob(&self, hash: &str) -> Result<(), StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.blob_record(hash)?.is_some_and(|r| r.refcount > 0) {
            return Ok(());
        }
        self.db.delete_cf(self.cf("blobs"), hash.as_bytes())?;
        self.tallies.changed();
        self.blobs.remove(hash)?;
        Ok(())
    }

    /// A blob failed verification: every entry pointing at it goes, then its record and file, so nothing
    /// is left that serves it or that `verify` would find dangling. Returns how many entries went.
    /// Corruption is rare, so finding the entries is a scan.
    pub fn drop_corrupt_blob(&self, hash: &str) -> Result<usize, StoreError> {
        let mut keys = Vec::new();
        for item in self.scan("entries") {
            let (k, v) = item?;
            if let Some(Record::Entry(e)) = self.decode_record(&k, &v) {
                if e.blob == hash && !e.body_dropped {
                    keys.push(k.to_vec());
                }
            }
        }
        for k in &keys {
            self.remove_entry(k)?;
        }
        self.delete_blob(hash)?;
        Ok(keys.len())
    }

    /// Entry keys whose kind and/or partition match (for clearing).
    pub fn entry_keys_where(&self, kind: Option<&str>, partition: Option<&str>) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan("entries") {
            let (k, v) = item?;
            let Some(Record::Entry(e)) = self.decode_record(&k, &v) else {
                continue;
            };
            if kind.is_some_and(|want| e.kind != want) {
                continue;
            }
            if partition.is_some_and(|p| super::key_partition(&k) != p.as_bytes()) {
                continue;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// Records that the media at each primary key is the object `id` (a `media_alias` rule). Unsynced:
    /// losing the newest aliases in a crash costs a download, never a wrong answer.
    pub fn put_media_aliases(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let meta = self.cf("meta");
        let mut batch = rocksdb::WriteBatch::default();
        for (id, key) in pairs {
            let mut by_id = format!("alias-id:{id}").into_bytes();
            by_id.push(0);
            by_id.extend_from_slice(key);
            batch.put_cf(meta, by_id, b"");
            let mut by_key = b"alias-key:".to_vec();
            by_key.extend_from_slice(key);
            batch.put_cf(meta, by_key, id.as_bytes());
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// The media id recorded for a primary key.
    pub fn media_alias_of(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        let mut by_key = b"alias-key:".to_vec();
        by_key.extend_from_slice(key);
        Ok(self
            .db
            .get_pinned_cf(self.cf("meta"), by_key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every primary key recorded for media id `id`.
    pub fn media_alias_keys(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut prefix = format!("alias-id:{id}").into_bytes();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf("meta"), &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(k[prefix.len()..].to_vec());
        }
        Ok(out)
    }

    /// Reads a persisted setting.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf("meta"), format!("setting:{name}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Persists (or with `None` removes) a setting.
    pub fn set_setting(&self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let key = format!("setting:{name}");
        match value {
            Some(v) => self.db.put_cf(self.cf("meta"), key, v)?,
            None => self.db.delete_cf(self.cf("meta"), key)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_derived_from_stored_fields_is_computed_once_and_shared_by_clones() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut map = http::HeaderMap::new();
        map.insert(http::header::AGE, http::HeaderValue::from_static("7"));
        let head = StoredHeaders::from_map(map);
        let copy = head.clone();
        let calls = AtomicUsize::new(0);
        let age = |h: &http::HeaderMap| {
            calls.fetch_add(1, Ordering::Relaxed);
            h.get(http::header::AGE).map(|v| v.as_bytes().to_vec())
        };
        assert_eq!(head.derived(age), Some(b"7".to_vec()));
        assert_eq!(copy.derived(age), Some(b"7".to_vec()));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "computed once for the head and its clone"
        );
        // Another type than the first is computed each time, never mistaken for the kept one.
        assert_eq!(copy.derived(|h| h.len()), 1);
        // A new head (new fields) starts empty.
        assert_eq!(StoredHeaders::from_map(http::HeaderMap::new()).derived(age), None);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_commit_pointing_at_a_blob_evicted_meanwhile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blobs().begin().unwrap();
        w.write(b"bytes a fill found already stored").unwrap();
        let blob = store.blobs().finish(w).unwrap();
        // The evictor deleted that blob (record, then file) before the fill committed.
        store.delete_blob(&blob.hash).unwrap();
        let err = store.commit_entry(b"k", b"k", &[], &entry(&blob), &blob).unwrap_err();
        assert!(err.to_string().contains("evicted while this fill finished"), "{err}");
        assert!(store.entry(b"k").unwrap().is_none());
        assert!(store.blob_info(&blob.hash).unwrap().is_none());
        assert_eq!(store.verify(false).unwrap().problems(), 0);
    }

    #[test]
    fn stored_headers_read_both_value_forms_and_skip_invalid_fields() {
        // Older records hold every value as bytes; newer ones as text where they can.
        let json =
            r#"[["content-type",[97,47,98]],["bad name",[120]],["x-two","1"],["x-two",[50]],["x-bin",[104,233]]]"#;
        let h: StoredHeaders = serde_json::from_str(json).unwrap();
        assert_eq!(h.map().get("content-type").unwrap(), "a/b");
        assert_eq!(h.map().len(), 4, "the invalid name is skipped");
        assert_eq!(h.map().get_all("x-two").iter().count(), 2);
        assert_eq!(h.map().get("x-bin").unwrap().as_bytes(), &[104, 233]);
        let written = serde_json::to_string(&h).unwrap();
        assert_eq!(
            written,
            r#"[["content-type","a/b"],["x-two","1"],["x-two","2"],["x-bin",[104,233]]]"#
        );
        let again: StoredHeaders = serde_json::from_str(&written).unwrap();
        assert_eq!(again, h);
        assert!(serde_json::from_str::<StoredHeaders>(r#"[["a",{"x":1}]]"#).is_err());
    }

    fn entry(blob: &BlobId) -> Entry {
        let names = ("audio".into(), "media".into(), "/x".into());
        Entry::stored(200, &http::HeaderMap::new(), blob, 0, names)
    }

    #[test]
    fn refcounts_follow_the_entries_that_point_at_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blobs().begin().unwrap();
        w.write(&[7u8; 1000]).unwrap();
        let blob = store.blobs().finish(w).unwrap();
        store.commit_entry(b"k1", b"k1", &[], &entry(&blob), &blob).unwrap();
        store.commit_entry(b"k2", b"k2", &[], &entry(&blob), &blob).unwrap();
        // Re-committing the same key with the same blob does not count twice.
        store.commit_entry(b"k2", b"k2", &[], &entry(&blob), &blob).unwrap();
        assert_eq!(store.blob_info(&blob.hash).unwrap().unwrap().refcount, 2);
        assert_eq!(store.dedup_saved().unwrap(), 1000);
        store.remove_entry(b"k1").unwrap();
        assert_eq!(store.blob_info(&blob.hash).unwrap().unwrap().refcount, 1);
        store.remove_entry(b"k2").unwrap();
        assert_eq!(store.blob_info(&blob.hash).unwrap().unwrap().refcount, 0);
        assert_eq!(store.dedup_saved().unwrap(), 0);
    }

    /// Entries `k1` and `k2`, one body, both received at 42 ms.
    fn two_entries_stored_at_42(store: &Store) {
        let mut w = store.blobs().begin().unwrap();
        w.write(b"a body").unwrap();
        let blob = store.blobs().finish(w).unwrap();
        let mut e = entry(&blob);
        e.response_time_ms = 42;
        store.commit_entry(b"k1", b"k1", &[], &e, &blob).unwrap();
        store.commit_entry(b"k2", b"k2", &[], &e, &blob).unwrap();
    }

    #[test]
    fn every_entry_has_an_access_record_from_commit_to_removal_and_verify_mends_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        two_entries_stored_at_42(&store);
        assert_eq!(
            store.entry_access_times().unwrap(),
            vec![(b"k1".to_vec(), 42), (b"k2".to_vec(), 42)]
        );
        store.remove_entry(b"k1").unwrap();
        assert_eq!(store.entry_access_times().unwrap(), vec![(b"k2".to_vec(), 42)]);
        // A persisted access that outlived its entry, and an entry that lost its record.
        store.put_access_times(&[(b"gone".to_vec(), 7)]).unwrap();
        store.forget_access(b"k2").unwrap();
        let found = store.verify(false).unwrap();
        assert_eq!((found.stale_access_keys, found.entries_without_access), (1, 1));
        assert_eq!(found.problems(), 1, "only the missing record is a problem");
        store.verify(true).unwrap();
        let keys: Vec<_> = store
            .entry_access_times()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k2".to_vec()]);
        let clean = super::super::verify::VerifyReport {
            blob_files: 1,
            entries: 1,
            ..Default::default()
        };
        assert_eq!(store.verify(false).unwrap(), clean);
    }

    #[test]
    fn an_upgrade_from_schema_4_gives_every_entry_an_access_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            two_entries_stored_at_42(&store);
            // Schema 4 wrote access records only for entries used since; k2 was used at 99.
            store.forget_access(b"k1").unwrap();
            store.put_access_times(&[(b"k2".to_vec(), 99)]).unwrap();
            store.set_schema_for_test(b"4");
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.entry_access_times().unwrap(),
            vec![(b"k1".to_vec(), 42), (b"k2".to_vec(), 99)]
        );
        assert_eq!(store.verify(false).unwrap().problems(), 0);
    }

    #[test]
    fn an_answer_that_starts_to_vary_releases_the_plain_entry_and_verify_stays_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob_of = |bytes: &[u8]| {
            let mut w = store.blobs().begin().unwrap();
            w.write(bytes).unwrap();
            store.blobs().finish(w).unwrap()
        };
        let plain = blob_of(&[1u8; 500]);
        let variant = blob_of(&[2u8; 500]);
        store.commit_entry(b"p", b"p", &[], &entry(&plain), &plain).unwrap();
        // The same URL now answers with `Vary: accept-language`: the entry moves under a variant key.
        let fields = vec!["accept-language".to_string()];
        store
            .commit_entry(b"p", b"p\x01v1", &fields, &entry(&variant), &variant)
            .unwrap();
        assert_eq!(
            store.blob_info(&plain.hash).unwrap().unwrap().refcount,
            0,
            "the plain body is released"
        );
        assert_eq!(store.blob_info(&variant.hash).unwrap().unwrap().refcount, 1);
        // Same bytes for a second variant and again under the first: counted once per entry.
        store
            .commit_entry(b"p", b"p\x01v2", &fields, &entry(&variant), &variant)
            .unwrap();
        store
            .commit_entry(b"p", b"p\x01v1", &fields, &entry(&variant), &variant)
            .unwrap();
        assert_eq!(store.blob_info(&variant.hash).unwrap().unwrap().refcount, 2);
        let report = store.verify(false).unwrap();
        assert_eq!(report.problems(), 0, "{report:?}");
    }

    #[test]
    fn a_corrupt_blob_takes_every_entry_using_it_and_leaves_verify_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blobs().begin().unwrap();
        w.write(&[9u8; 3000]).unwrap();
        let blob = store.blobs().finish(w).unwrap();
        store.commit_entry(b"k1", b"k1", &[], &entry(&blob), &blob).unwrap();
        store.commit_entry(b"k2", b"k2", &[], &entry(&blob), &blob).unwrap();
        std::fs::write(store.blobs().path(&blob.hash).unwrap(), [0u8; 3000]).unwrap();
        assert_eq!(store.drop_corrupt_blob(&blob.hash).unwrap(), 2);
        assert!(store.entry(b"k1").unwrap().is_none() && store.entry(b"k2").unwrap().is_none());
        assert!(store.blob_info(&blob.hash).unwrap().is_none());
        let report = store.verify(false).unwrap();
        assert_eq!(report.problems(), 0, "{report:?}");
    }

    #[test]
    fn retention_keeps_the_newest_bodies_of_a_group_and_their_heads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut hashes = Vec::new();
        for i in 0..5u64 {
            let mut w = store.blobs().begin().unwrap();
            // Entries 0 and 1 share their bytes: the shared blob is released only when both are dropped.
            w.write(format!("body {}", i.max(1)).as_bytes()).unwrap();
            let blob = store.blobs().finish(w).unwrap();
            let mut e = entry(&blob);
            e.group = Some("g".into());
            e.response_time_ms = 100 + i;
            let k = format!("k{i}");
            store.commit_entry(k.as_bytes(), k.as_bytes(), &[], &e, &blob).unwrap();
            hashes.push(blob.hash);
        }
        let r = store.retain_group("g", 3, RetainDrop::Body).unwrap();
        assert_eq!(r.dropped, 2);
        assert_eq!(r.released.len(), 1, "the blob of k0 and k1 has no reference left");
        assert_eq!(r.released[0].0, hashes[0]);
        let old = store.entry(b"k0").unwrap().unwrap();
        assert!(old.body_dropped && old.blob.is_empty() && old.url == "/x");
        assert!(!store.entry(b"k2").unwrap().unwrap().body_dropped);
        // A second pass finds nothing more to do.
        assert_eq!(store.retain_group("g", 3, RetainDrop::Body).unwrap().dropped, 0);
        let r = store.retain_group("g", 1, RetainDrop::Entry).unwrap();
        assert_eq!(r.dropped, 2);
        assert!(store.entry(b"k2").unwrap().is_none());
        assert!(store.entry(b"k4").unwrap().is_some());
    }
}
