//! [`Storage`] in memory: the second implementation of the storage seam, used by the cache flow's tests
//! (no data directory, no RocksDB). Same rules as the disk store: one copy per content, a body is
//! committed only whole, a body that fails verification is dropped with its entry.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Mutex;

use bytes::Bytes;

use super::seam::{Commit, FillSink, Storage};
use super::{Entry, Lookup, StoreError, VARIANT_SEP};
use crate::body::{self, ProxyBody};

enum Record {
    Entry(Entry),
    Vary(Vec<String>),
}

#[derive(Default)]
struct State {
    records: BTreeMap<Vec<u8>, Record>,
    /// hash → (bytes, hash the bytes must still have).
    blobs: HashMap<String, Bytes>,
    aliases: HashMap<Vec<u8>, String>,
    write_errors: u64,
    fail_fills: bool,
}

/// Everything in memory.
#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

struct MemoryFill(Vec<u8>);

impl FillSink for MemoryFill {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of entries (not counting `Vary` field lists).
    pub fn entries(&self) -> usize {
        self.state()
            .records
            .values()
            .filter(|r| matches!(r, Record::Entry(_)))
            .count()
    }

    /// Number of distinct bodies.
    pub fn bodies(&self) -> usize {
        self.state().blobs.len()
    }

    /// Test hook: flips the first byte of every stored body, as a bad disk would.
    pub fn corrupt_bodies(&self) {
        for b in self.state().blobs.values_mut() {
            let mut v = b.to_vec();
            if let Some(x) = v.first_mut() {
                *x ^= 0xff;
            }
            *b = Bytes::from(v);
        }
    }

    /// Test hook: while on, starting a fill fails as on a full disk.
    pub fn fail_fills(&self, on: bool) {
        self.state().fail_fills = on;
    }

    /// Fills that could not be stored.
    pub fn write_errors(&self) -> u64 {
        self.state().write_errors
    }
}

fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl Storage for MemoryStorage {
    fn lookup(&self, key: &[u8]) -> Result<Lookup, StoreError> {
        Ok(match self.state().records.get(key) {
            None => Lookup::Miss,
            Some(Record::Entry(e)) => Lookup::Entry(std::sync::Arc::new(e.clone())),
            Some(Record::Vary(f)) => Lookup::Vary(f.clone()),
        })
    }

    fn entry(&self, key: &[u8]) -> Result<Option<std::sync::Arc<Entry>>, StoreError> {
        Ok(match self.state().records.get(key) {
            Some(Record::Entry(e)) => Some(std::sync::Arc::new(e.clone())),
            _ => None,
        })
    }

    fn begin_fill(&self) -> Result<Box<dyn FillSink>, StoreError> {
        if self.state().fail_fills {
            return Err(StoreError::Blob(io::Error::other("no space left on device (injected)")));
        }
        Ok(Box::new(MemoryFill(Vec::new())))
    }

    fn commit_fill(&self, sink: Box<dyn FillSink>, c: Commit<'_>) -> Result<u64, StoreError> {
        let fill = sink
            .into_any()
            .downcast::<MemoryFill>()
            .map_err(|_| StoreError::Blob(io::Error::other("a fill from another storage")))?;
        let bytes = Bytes::from(fill.0);
        let hash = hash_of(&bytes);
        let mut st = self.state();
        let new_bytes = if st.blobs.contains_key(&hash) {
            0
        } else {
            bytes.len() as u64
        };
        let mut entry = c.entry;
        entry.blob = hash.clone();
        entry.size = bytes.len() as u64;
        st.blobs.insert(hash, bytes);
        if c.key != c.primary {
            st.records
                .insert(c.primary.to_vec(), Record::Vary(c.vary_fields.to_vec()));
        }
        st.records.insert(c.key.to_vec(), Record::Entry(entry));
        Ok(new_bytes)
    }

    fn link(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        self.state().records.insert(key.to_vec(), Record::Entry(entry.clone()));
        Ok(())
    }

    fn update_entry(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        self.link(key, entry)
    }

    fn invalidate(&self, primary: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for (k, r) in self.state().records.range_mut(primary.to_vec()..) {
            if !k.starts_with(primary) {
                break;
            }
            if k.len() != primary.len() && k[primary.len()] != VARIANT_SEP {
                continue;
            }
            if let Record::Entry(e) = r {
                if !e.invalidated {
                    e.invalidated = true;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn verify_body(&self, key: &[u8], entry: &Entry) -> Result<bool, StoreError> {
        let mut st = self.state();
        let ok = st
            .blobs
            .get(&entry.blob)
            .is_some_and(|b| b.len() as u64 == entry.size && hash_of(b) == entry.blob);
        if !ok {
            st.records.remove(key);
            st.blobs.remove(&entry.blob);
        }
        Ok(ok)
    }

    fn read_body(&self, entry: &Entry, start: u64, len: u64) -> Result<ProxyBody, StoreError> {
        let st = self.state();
        let all = st
            .blobs
            .get(&entry.blob)
            .ok_or_else(|| StoreError::Blob(io::Error::new(io::ErrorKind::NotFound, "no such body")))?;
        let end = (start + len).min(all.len() as u64);
        Ok(body::full(all.slice(start.min(end) as usize..end as usize)))
    }

    fn media_alias_of(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        Ok(self.state().aliases.get(key).cloned())
    }

    fn media_alias_keys(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .state()
            .aliases
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn note_write_error(&self, _e: &StoreError) {
        self.state().write_errors += 1;
    }
}
