//! Response entries and blob records in RocksDB.
//!
//! `entries`: cache key → [`Entry`] (or, at a primary key of a response with `Vary`, the list of fields).
//! `blobs`: blob hash → [`BlobRecord`] (size, how many entries reference it).
//! An entry and the refcount changes it causes are written in one `WriteBatch`, after the blob is durable.

use serde::{Deserialize, Serialize};

use super::{BlobId, Store, StoreError};

/// A stored response: head, where its body is, and when it was received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Status code.
    pub status: u16,
    /// Header fields in order (values as raw bytes).
    pub headers: Vec<(String, Vec<u8>)>,
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
}

impl Entry {
    /// The headers as a `HeaderMap` (invalid stored names/values are skipped, never a panic).
    pub fn header_map(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::with_capacity(self.headers.len());
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_bytes(v),
            ) {
                h.append(n, v);
            }
        }
        h
    }

    /// Copies a `HeaderMap` into the stored form.
    pub fn set_headers(&mut self, h: &http::HeaderMap) {
        self.headers = h
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
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

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry),
    Vary(Vec<String>),
}

/// What a primary key holds.
#[derive(Debug)]
pub enum Lookup {
    /// Nothing.
    Miss,
    /// A response without `Vary`, stored at the primary key.
    Entry(Entry),
    /// Responses vary on these fields; look up the variant key.
    Vary(Vec<String>),
}

impl Store {
    fn get_record(&self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf("entries"), key)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable cache entry ignored");
                Ok(None)
            }
        }
    }

    /// Reads what is stored at a primary key.
    pub fn lookup(&self, key: &[u8]) -> Result<Lookup, StoreError> {
        Ok(match self.get_record(key)? {
            None => Lookup::Miss,
            Some(Record::Entry(e)) => Lookup::Entry(e),
            Some(Record::Vary(f)) => Lookup::Vary(f),
        })
    }

    /// Reads a variant (or any) entry key.
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(match self.get_record(key)? {
            Some(Record::Entry(e)) => Some(e),
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
        let same_blob = old.as_ref().is_some_and(|o| o.blob == blob.hash);
        let existing = self.blob_record(&blob.hash)?;
        let new_blob = existing.is_none();
        if !same_blob {
            let mut rec = existing.unwrap_or(BlobRecord {
                size: blob.size,
                refcount: 0,
            });
            rec.refcount += 1;
            batch.put_cf(blobs, blob.hash.as_bytes(), Self::encode(&rec));
            if let Some(o) = &old {
                if let Some(mut r) = self.blob_record(&o.blob)? {
                    r.refcount = r.refcount.saturating_sub(1);
                    batch.put_cf(blobs, o.blob.as_bytes(), Self::encode(&r));
                }
            }
        }
        if key != primary {
            batch.put_cf(entries, primary, Self::encode(&Record::Vary(vary_fields.to_vec())));
        } else if let Lookup::Vary(_) = self.lookup(primary)? {
            // The response stopped varying: variants under this primary become unreachable; they age out.
        }
        batch.put_cf(entries, key, Self::encode(&Record::Entry(entry.clone())));
        self.db.write(batch)?;
        Ok(new_blob)
    }

    /// Rewrites an entry's head (after a 304), keeping its blob.
    pub fn update_entry(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        self.db
            .put_cf(self.cf("entries"), key, Self::encode(&Record::Entry(entry.clone())))?;
        Ok(())
    }

    /// Deletes an entry and releases its blob reference.
    pub fn remove_entry(&self, key: &[u8]) -> Result<(), StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = self.entry(key)? else {
            self.db.delete_cf(self.cf("entries"), key)?;
            return Ok(());
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(self.cf("entries"), key);
        if let Some(mut r) = self.blob_record(&old.blob)? {
            r.refcount = r.refcount.saturating_sub(1);
            batch.put_cf(self.cf("blobs"), old.blob.as_bytes(), Self::encode(&r));
        }
        self.db.write(batch)?;
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
            if k.len() != primary.len() && k[primary.len()] != crate::cache::key::VARIANT_SEP {
                continue;
            }
            if let Ok(Record::Entry(mut e)) = serde_json::from_slice::<Record>(&v) {
                if !e.invalidated {
                    e.invalidated = true;
                    batch.put_cf(entries, &k, Self::encode(&Record::Entry(e)));
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.db.write(batch)?;
        }
        Ok(n)
    }

    /// The blob directory.
    pub fn blobs(&self) -> &super::BlobStore {
        &self.blobs
    }

    /// Removes blob files that no record knows (a crash between rename and commit leaves them).
    /// Blocking; run off the request path.
    pub fn remove_orphan_blobs(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (hash, _) in self.blobs.list()? {
            if self.blob_record(&hash)?.is_none() {
                self.blobs.remove(&hash)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of entries and total blob bytes (for status; walks the column families).
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        let mut entries = 0u64;
        for item in self.db.iterator_cf(self.cf("entries"), rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            if v.first() == Some(&b'{') && v.starts_with(b"{\"Entry\"") {
                entries += 1;
            }
        }
        let mut bytes = 0u64;
        for item in self.db.iterator_cf(self.cf("blobs"), rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                bytes += r.size;
            }
        }
        Ok((entries, bytes))
    }
}

impl Store {
    /// Bytes not stored twice thanks to content addressing: Σ size × (refcount − 1).
    pub fn dedup_saved(&self) -> Result<u64, StoreError> {
        let mut saved = 0u64;
        for item in self.db.iterator_cf(self.cf("blobs"), rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                saved += r.size * r.refcount.saturating_sub(1);
            }
        }
        Ok(saved)
    }

    /// A blob's record (size and refcount).
    pub fn blob_info(&self, hash: &str) -> Result<Option<BlobRecord>, StoreError> {
        self.blob_record(hash)
    }
}

/// What the evictor and the stats need from the store.
impl Store {
    /// Every entry key with its last access (from `access`, else when it was stored).
    pub fn entry_access_times(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut out = Vec::new();
        let access = self.cf("access");
        for item in self.db.iterator_cf(self.cf("entries"), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let Ok(Record::Entry(e)) = serde_json::from_slice::<Record>(&v) else {
                continue;
            };
            let t = self
                .db
                .get_pinned_cf(access, &k)?
                .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(e.response_time_ms);
            out.push((k.to_vec(), t));
        }
        Ok(out)
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
        for item in self.db.iterator_cf(self.cf("blobs"), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                if r.refcount == 0 {
                    out.push((String::from_utf8_lossy(&k).into_owned(), r.size));
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob's record, then its file (a crash in between leaves an orphan file, removed at start).
    pub fn delete_blob(&self, hash: &str) -> Result<(), StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.blob_record(hash)?.is_some_and(|r| r.refcount > 0) {
            return Ok(());
        }
        self.db.delete_cf(self.cf("blobs"), hash.as_bytes())?;
        self.blobs.remove(hash)?;
        Ok(())
    }

    /// Entry keys whose kind and/or partition match (for clearing).
    pub fn entry_keys_where(&self, kind: Option<&str>, partition: Option<&str>) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("entries"), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let Ok(Record::Entry(e)) = serde_json::from_slice::<Record>(&v) else {
                continue;
            };
            if kind.is_some_and(|want| e.kind != want) {
                continue;
            }
            if partition.is_some_and(|p| crate::cache::key::key_partition(&k) != p.as_bytes()) {
                continue;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// Per kind: (entries, bytes referenced).
    pub fn kind_usage(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.db.iterator_cf(self.cf("entries"), rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            let Ok(Record::Entry(e)) = serde_json::from_slice::<Record>(&v) else {
                continue;
            };
            let s: &mut (u64, u64) = out.entry(e.kind.clone()).or_default();
            s.0 += 1;
            s.1 += e.size;
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

    fn entry(blob: &BlobId) -> Entry {
        Entry {
            status: 200,
            headers: vec![],
            blob: blob.hash.clone(),
            size: blob.size,
            request_time_ms: 0,
            response_time_ms: 0,
            vary: vec![],
            kind: "audio".into(),
            route: "media".into(),
            url: "/x".into(),
            invalidated: false,
        }
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
}
