//! Whole-store tallies for status, stats and kind limits: the number of entries, the bytes stored, the
//! bytes per kind and the bytes saved by content addressing. Each is a pass over a column family
//! (100k entries: ~50-100 ms, and with mmap reads every page of `entries` mapped), and the dashboard
//! asks every second, so each result is kept until the next write to `entries` or `blobs` (every such
//! write goes through `Store::forget` or `Store::delete_blob`, which call [`Tallies::changed`]). Never
//! stale: a write during a pass moves the generation, and the next ask counts again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::entry::Record;
use super::{BlobRecord, Store, StoreError};

/// Per kind: (entries, bytes referenced).
pub type KindUsage = BTreeMap<String, (u64, u64)>;

/// The write generation and the last result of each tally, with the generation it was counted at.
#[derive(Default)]
pub(super) struct Tallies {
    gen: AtomicU64,
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    usage: Option<(u64, (u64, u64))>,
    kinds: Option<(u64, KindUsage)>,
    dedup: Option<(u64, u64)>,
}

impl Tallies {
    /// Something in `entries` or `blobs` changed: every tally is counted again when next asked.
    pub(super) fn changed(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
    }

    fn kept<T: Clone>(
        &self,
        slot: fn(&mut Memo) -> &mut Option<(u64, T)>,
        count: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Read before counting: a write during the pass leaves the result tagged with the older one.
        let gen = self.gen.load(Ordering::Acquire);
        if let Some((g, v)) = slot(&mut self.memo.lock().unwrap_or_else(|p| p.into_inner())) {
            if *g == gen {
                return Ok(v.clone());
            }
        }
        let v = count()?;
        *slot(&mut self.memo.lock().unwrap_or_else(|p| p.into_inner())) = Some((gen, v.clone()));
        Ok(v)
    }
}

impl Store {
    /// Number of entries and total blob bytes (for status).
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        self.tallies.kept(
            |m| &mut m.usage,
            || {
                let mut entries = 0u64;
                for item in self.scan("entries") {
                    let (k, v) = item?;
                    let is_entry = if self.encrypted() {
                        matches!(self.decode_record(&k, &v), Some(Record::Entry(_)))
                    } else {
                        Self::is_entry_value(&v)
                    };
                    if is_entry {
                        entries += 1;
                    }
                }
                Ok((entries, self.blob_bytes()?))
            },
        )
    }

    /// Bytes not stored twice thanks to content addressing: Σ size × (refcount − 1).
    pub fn dedup_saved(&self) -> Result<u64, StoreError> {
        self.tallies.kept(
            |m| &mut m.dedup,
            || {
                let mut saved = 0u64;
                for item in self.scan("blobs") {
                    let (_, v) = item?;
                    if let Ok(r) = serde_json::from_slice::<BlobRecord>(&v) {
                        saved += r.size * r.refcount.saturating_sub(1);
                    }
                }
                Ok(saved)
            },
        )
    }

    /// Per kind: (entries, bytes referenced).
    pub fn kind_usage(&self) -> Result<KindUsage, StoreError> {
        self.tallies.kept(
            |m| &mut m.kinds,
            || {
                let mut out = KindUsage::new();
                for item in self.scan("entries") {
                    let (k, v) = item?;
                    let Some(Record::Entry(e)) = self.decode_record(&k, &v) else {
                        continue;
                    };
                    let s: &mut (u64, u64) = out.entry(e.kind.clone()).or_default();
                    s.0 += 1;
                    if !e.body_dropped {
                        s.1 += e.size;
                    }
                }
                Ok(out)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{BlobId, Entry, Store};

    #[test]
    fn tallies_are_kept_until_a_write_and_never_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let commit = |key: &[u8], bytes: &[u8]| -> BlobId {
            let mut w = store.blobs().begin().unwrap();
            w.write(bytes).unwrap();
            let blob = store.blobs().finish(w).unwrap();
            let names = ("audio".into(), "media".into(), "/x".into());
            let e = Entry::stored(200, &http::HeaderMap::new(), &blob, bytes.len() as u64, names);
            store.commit_entry(key, key, &[], &e, &blob).unwrap();
            blob
        };
        assert_eq!(store.usage().unwrap(), (0, 0));
        let blob = commit(b"k1", b"twelve bytes");
        assert_eq!(store.usage().unwrap(), (1, 12));
        assert_eq!(store.kind_usage().unwrap().get("audio"), Some(&(1, 12)));
        commit(b"k2", b"twelve bytes");
        assert_eq!(store.usage().unwrap(), (2, 12), "the same body is stored once");
        assert_eq!(store.dedup_saved().unwrap(), 12);
        assert_eq!(store.kind_usage().unwrap().get("audio"), Some(&(2, 24)));
        store.remove_entry(b"k1").unwrap();
        store.remove_entry(b"k2").unwrap();
        assert_eq!(store.usage().unwrap(), (0, 12), "the blob is left until deleted");
        store.delete_blob(&blob.hash).unwrap();
        assert_eq!(store.usage().unwrap(), (0, 0));
        assert_eq!(store.dedup_saved().unwrap(), 0);
        assert!(store.kind_usage().unwrap().is_empty());
    }
}
