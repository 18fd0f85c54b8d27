//! The storage seam between the cache flow and where bodies and heads live: [`Storage`] (lookup, begin
//! fill, commit, invalidate, update metadata, read a range) and [`Budget`] (what the size budget wants
//! to hear). [`DiskStorage`] is the RocksDB + blob-file implementation; [`super::MemoryStorage`] keeps
//! everything in memory for the cache flow's tests.

use std::any::Any;
use std::io;
use std::sync::Arc;

use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::{BlobId, BlobWriter, Entry, Lookup, RetainDrop, Store, StoreError};
use crate::body::{self, BoxError, ProxyBody};

/// A body being written by a fill; committed with [`Storage::commit_fill`] or dropped.
pub trait FillSink: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Bytes written so far.
    fn len(&self) -> u64;
    /// True when nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// For the storage that made it, to take it back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// Where a committed fill goes.
pub struct Commit<'a> {
    /// The request's primary key.
    pub primary: &'a [u8],
    /// The entry's key (the primary key, or a `Vary` variant under it).
    pub key: &'a [u8],
    /// The response's `Vary` fields (stored at the primary key when `key` is a variant).
    pub vary_fields: &'a [String],
    /// The head; its `blob` and `size` are set from the finished body.
    pub entry: Entry,
}

/// Stored responses, as the cache flow sees them.
pub trait Storage: Send + Sync + 'static {
    /// What is stored at a primary key (an entry, or the `Vary` fields of its variants).
    fn lookup(&self, key: &[u8]) -> Result<Lookup, StoreError>;
    /// The entry at an exact key.
    fn entry(&self, key: &[u8]) -> Result<Option<std::sync::Arc<Entry>>, StoreError>;
    /// Starts storing a body.
    fn begin_fill(&self) -> Result<Box<dyn FillSink>, StoreError>;
    /// Makes a finished body durable, then commits its entry. Blocking. Returns the bytes the store
    /// grew by (0 when an identical body was already stored).
    fn commit_fill(&self, sink: Box<dyn FillSink>, commit: Commit<'_>) -> Result<u64, StoreError>;
    /// Stores `entry` (whose body is already stored) under another key.
    fn link(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError>;
    /// Rewrites an entry's head and metadata, keeping its body.
    fn update_entry(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError>;
    /// Marks the entries of a primary key (and its variants) invalid; returns how many.
    fn invalidate(&self, primary: &[u8]) -> Result<usize, StoreError>;
    /// Checks an entry's body (size and hash); a body that fails is dropped with the entry and
    /// `false` is returned. Blocking.
    fn verify_body(&self, key: &[u8], entry: &Entry) -> Result<bool, StoreError>;
    /// Bytes `start..start + len` of an entry's body.
    fn read_body(&self, entry: &Entry, start: u64, len: u64) -> Result<ProxyBody, StoreError>;
    /// The media id a `media_alias` rule recorded for a key.
    fn media_alias_of(&self, key: &[u8]) -> Result<Option<String>, StoreError>;
    /// Every key recorded for a media id.
    fn media_alias_keys(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Notes a fill that could not be stored (the answer was still served).
    fn note_write_error(&self, e: &StoreError);
    /// True while the storage does not take writes (disk full): fills are not attempted.
    fn troubled(&self) -> bool {
        false
    }
}

/// What the size budget hears from the cache flow.
pub trait Budget: Send + Sync + 'static {
    /// False when new fills must not be stored (over budget with only pins left, or auto-evict off).
    fn accepting(&self) -> bool;
    /// An entry was served.
    fn touch(&self, key: &[u8]);
    /// An entry was committed, growing the store by `new_bytes`.
    fn committed(&self, key: &[u8], new_bytes: u64);
    /// Applies a retention rule to a group after a commit. Blocking.
    fn retain(&self, group: &str, keep_last: usize, drop: RetainDrop) -> Result<u64, StoreError>;
}

/// No budget: everything is accepted and kept (tests, tools).
pub struct Unbounded;

impl Budget for Unbounded {
    fn accepting(&self) -> bool {
        true
    }
    fn touch(&self, _key: &[u8]) {}
    fn committed(&self, _key: &[u8], _new_bytes: u64) {}
    fn retain(&self, _group: &str, _keep_last: usize, _drop: RetainDrop) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Sealed answers up to this size are decrypted in one go on the request's task; larger ones stream
/// through the blocking pool a few chunks at a time.
const SMALL_BODY: u64 = 256 * 1024;

/// Plain blobs larger than this are answered as slices of a map of their file, which the proxy's
/// connections send with `sendfile(2)` (no copy); smaller ones come from memory.
const MAPPED_MIN: u64 = 32 * 1024;

/// The data directory as the cache flow's storage.
pub struct DiskStorage(pub Arc<Store>);

impl FillSink for BlobWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        BlobWriter::write(self, bytes)
    }
    fn len(&self) -> u64 {
        BlobWriter::len(self)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Storage for DiskStorage {
    fn lookup(&self, key: &[u8]) -> Result<Lookup, StoreError> {
        self.0.lookup(key)
    }

    fn entry(&self, key: &[u8]) -> Result<Option<std::sync::Arc<Entry>>, StoreError> {
        self.0.entry(key)
    }

    fn begin_fill(&self) -> Result<Box<dyn FillSink>, StoreError> {
        Ok(Box::new(self.0.blobs().begin()?))
    }

    fn commit_fill(&self, sink: Box<dyn FillSink>, c: Commit<'_>) -> Result<u64, StoreError> {
        let writer = sink
            .into_any()
            .downcast::<BlobWriter>()
            .map_err(|_| StoreError::Blob(io::Error::other("a fill from another storage")))?;
        let mut writer = *writer;
        let inline = writer.take_inline();
        let blob = self.0.blobs().finish(writer)?;
        let mut entry = c.entry;
        entry.inline = inline;
        entry.blob = blob.hash.clone();
        entry.size = blob.size;
        let new_blob = self.0.commit_entry(c.primary, c.key, c.vary_fields, &entry, &blob)?;
        Ok(if new_blob { blob.size } else { 0 })
    }

    fn link(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        let blob = BlobId {
            hash: entry.blob.clone(),
            size: entry.size,
        };
        self.0.commit_entry(key, key, &[], entry, &blob).map(|_| ())
    }

    fn update_entry(&self, key: &[u8], entry: &Entry) -> Result<(), StoreError> {
        self.0.update_entry(key, entry)
    }

    fn invalidate(&self, primary: &[u8]) -> Result<usize, StoreError> {
        self.0.invalidate(primary)
    }

    fn verify_body(&self, _key: &[u8], entry: &Entry) -> Result<bool, StoreError> {
        // Every entry using the blob goes, `_key`'s among them.
        let id = BlobId {
            hash: entry.blob.clone(),
            size: entry.size,
        };
        if self.0.blobs().verify(&id)? {
            return Ok(true);
        }
        let dropped = self.0.drop_corrupt_blob(&id.hash)?;
        tracing::error!(blob = %id.hash, entries = dropped, "blob failed verification; dropped it and every entry using it");
        Ok(false)
    }

    fn read_body(&self, entry: &Entry, start: u64, len: u64) -> Result<ProxyBody, StoreError> {
        let blobs = self.0.blobs();
        let size = entry.size;
        let sealed = blobs.sealed();
        Ok(if len == 0 {
            body::empty()
        } else if let Some(all) = entry.inline.as_ref().filter(|b| b.len() as u64 == size) {
            // Kept with the entry (checked against the blob's hash when the record was read).
            let end = (start + len).min(size);
            body::full(all.slice(start.min(end) as usize..end as usize))
        } else if size <= MAPPED_MIN || (sealed && size <= super::HOT_BLOB_MAX) {
            // Small answers come from memory once read (content-addressed bytes never change).
            let all = blobs.read_small(&entry.blob, size)?;
            let end = (start + len).min(all.len() as u64);
            body::full(all.slice(start.min(end) as usize..end as usize))
        } else if !sealed || len <= SMALL_BODY {
            // Plain: a slice of the file's map, sent from the page cache by the connection.
            body::full(blobs.read_range(&entry.blob, start, len as usize)?)
        } else {
            sealed_body(self.0.clone(), entry.blob.clone(), start, len)
        })
    }

    fn media_alias_of(&self, key: &[u8]) -> Result<Option<String>, StoreError> {
        self.0.media_alias_of(key)
    }

    fn media_alias_keys(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.0.media_alias_keys(id)
    }

    fn note_write_error(&self, e: &StoreError) {
        self.0.note_failure(e)
    }

    fn troubled(&self) -> bool {
        self.0.troubled()
    }
}

/// Streams plaintext bytes `start..start+len` of a sealed blob, a few chunks per blocking read (each
/// chunk is authenticated before any of its bytes are sent).
fn sealed_body(store: Arc<Store>, hash: String, start: u64, len: u64) -> ProxyBody {
    const STEP: u64 = 4 * super::SEALED_CHUNK as u64;
    let s = stream::unfold((store, hash, start, start + len), |(store, hash, at, end)| async move {
        if at >= end {
            return None;
        }
        // Ends on a chunk boundary, so no chunk is opened twice.
        let n = ((at / STEP + 1) * STEP).min(end) - at;
        let (st, h) = (store.clone(), hash.clone());
        let read = tokio::task::spawn_blocking(move || st.blobs().read_range(&h, at, n as usize)).await;
        match read {
            Ok(Ok(b)) => Some((Ok(Frame::data(b)), (store, hash, at + n, end))),
            Ok(Err(e)) => Some((Err(Box::new(e) as BoxError), (store, hash, end, end))),
            Err(e) => Some((Err(Box::new(e) as BoxError), (store, hash, end, end))),
        }
    });
    StreamBody::new(s).boxed()
}
