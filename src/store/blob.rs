//! Content-addressed blob files: `blobs/<h0h1>/<h2h3>/<blake3 hex>`.
//!
//! Promises: a blob file exists under its final name only once its bytes are durable (temp file in
//! `blobs/tmp/` → write → fsync → rename → fsync the directory); its name is the BLAKE3 hash of its bytes,
//! so identical bodies share one file; a file whose size or hash does not match is never handed out.
//! With encryption at rest (see [`super::crypt`]) files are sealed in chunks and named by a keyed hash;
//! everything above this module sees the same plaintext bytes, sizes and names either way.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::crypt::{self, AtRest};

/// A blob's identity: its BLAKE3 hash (hex) and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobId {
    /// Lower-case hex BLAKE3 of the bytes.
    pub hash: String,
    /// Byte length.
    pub size: u64,
}

/// The blob directory.
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Contents of small, recently read blobs. Content-addressed bytes never change, so nothing here
    /// can go stale; a deleted blob just leaves its copy to age out.
    hot: std::sync::Mutex<HotBlobs>,
    /// Read-only maps of recently read blobs: a range answer is a slice of the page cache, with no copy
    /// into the process (audio players read the same files range after range). A removed blob's map
    /// is dropped with it (once the answers still using it are sent), so its disk space is freed.
    handles: std::sync::Mutex<lru::LruCache<String, Arc<BlobMap>>>,
    /// Where the maps are, for connections that send them with `sendfile(2)`.
    regions: Arc<crate::sendfile::FileRegions>,
    /// Fault injection (tests, drills): every write and commit of a blob fails like a full disk.
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Set when blobs are sealed (encryption at rest).
    at_rest: Option<Arc<AtRest>>,
}

/// Blob maps kept.
const HANDLES: usize = 64;

/// A read-only map of a blob file, registered as a file region while it exists.
struct BlobMap {
    map: memmap2::Mmap,
    regions: Arc<crate::sendfile::FileRegions>,
}

impl BlobMap {
    fn new(file: File, regions: &Arc<crate::sendfile::FileRegions>) -> io::Result<BlobMap> {
        let map = map_blob(&file)?;
        regions.register(map.as_ptr(), map.len(), Arc::new(file));
        Ok(BlobMap {
            map,
            regions: regions.clone(),
        })
    }
}

impl Drop for BlobMap {
    fn drop(&mut self) {
        // Runs before the map field is unmapped: no one can find the region once its address is free.
        self.regions.unregister(self.map.as_ptr());
    }
}

/// A shared map as the owner of `Bytes`.
struct MappedBlob(Arc<BlobMap>);

impl AsRef<[u8]> for MappedBlob {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

/// Maps a blob file read-only.
#[allow(unsafe_code)]
fn map_blob(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: a mapped file must not change or shrink while mapped. Blob files are write-once: written
    // under a temp name, fsynced, renamed into place under their content hash and never opened for
    // writing again; they are only ever unlinked, which leaves existing maps valid. One process owns a
    // data dir (lock file), and `outpost verify --repair` refuses a dir in use. Only tampering with the
    // data dir from outside while Outpost runs could break this.
    unsafe { memmap2::Mmap::map(file) }
}

struct HotBlobs {
    map: lru::LruCache<String, bytes::Bytes>,
    bytes: usize,
    cap: usize,
}

impl HotBlobs {
    fn shrink(&mut self) {
        while self.bytes > self.cap {
            match self.map.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

/// Blobs up to this size are kept in memory once read.
pub const HOT_BLOB_MAX: u64 = 256 * 1024;
/// Memory for hot blobs until [`BlobStore::set_hot_bytes`] says otherwise.
const HOT_BYTES: usize = 8 << 20;

/// Bodies up to this size are also kept inside their entry's record (see [`crate::store::Entry::inline`]):
/// a hit on one reads one RocksDB record and opens no file. Small enough that scans of the `entries`
/// family stay cheap; large enough for typical JSON answers (messages, library pages, media heads).
pub const INLINE_MAX: u64 = 8 * 1024;

/// A blob being written. Dropping it without [`BlobWriter::finish`] deletes the temp file.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
    /// The plaintext so far while it is no longer than [`INLINE_MAX`] (then `None` for good).
    inline: Option<Vec<u8>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    seal: Option<Sealing>,
}

/// A sealed blob in the making: plaintext waits in `pending` until it is known not to be the last chunk.
struct Sealing {
    at_rest: Arc<AtRest>,
    prefix: [u8; 16],
    pending: Vec<u8>,
    index: u64,
}

impl Sealing {
    fn flush(&mut self, file: &mut File, last: bool) -> io::Result<()> {
        let rest = if last {
            Vec::new()
        } else {
            self.pending.split_off(crypt::CHUNK)
        };
        let mut chunk = std::mem::replace(&mut self.pending, rest);
        self.at_rest.seal_chunk(&self.prefix, self.index, last, &mut chunk)?;
        file.write_all(&chunk)?;
        self.index += 1;
        Ok(())
    }
}

fn injected(fail: &std::sync::atomic::AtomicBool) -> io::Result<()> {
    if fail.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "injected write failure (disk full)",
        ));
    }
    Ok(())
}

impl BlobWriter {
    /// Appends bytes (page-cache write; durability comes at `finish`).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        injected(&self.fail)?;
        match &mut self.seal {
            None => self.file.write_all(bytes)?,
            Some(seal) => {
                seal.pending.extend_from_slice(bytes);
                // Keep the tail: only `finish` knows which chunk is the last.
                while seal.pending.len() > crypt::CHUNK {
                    seal.flush(self.file.as_file_mut(), false)?;
                }
            }
        }
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        if self.size > INLINE_MAX {
            self.inline = None;
        } else if let Some(v) = &mut self.inline {
            v.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// The whole body when it is no longer than [`INLINE_MAX`], for its entry record to keep a copy of.
    /// Only meaningful once every byte is written.
    pub fn take_inline(&mut self) -> Option<bytes::Bytes> {
        self.inline.take().filter(|v| !v.is_empty()).map(bytes::Bytes::from)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

fn is_hex_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// Opens `dir/blobs`, creating it, and removes temp files a crash left behind. With `at_rest`, new
    /// blobs are sealed and existing ones are read as sealed.
    pub fn open(data_dir: &Path, at_rest: Option<Arc<AtRest>>) -> io::Result<BlobStore> {
        let root = data_dir.join("blobs");
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        for e in fs::read_dir(&tmp)? {
            let e = e?;
            let _ = fs::remove_file(e.path());
        }
        Ok(BlobStore {
            root,
            tmp,
            hot: std::sync::Mutex::new(HotBlobs {
                map: lru::LruCache::unbounded(),
                bytes: 0,
                cap: HOT_BYTES,
            }),
            handles: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(HANDLES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            fail_writes: Default::default(),
            at_rest,
            regions: Default::default(),
        })
    }

    /// Bounds the memory kept for small blobs read recently.
    pub fn set_hot_bytes(&self, bytes: usize) {
        if let Ok(mut h) = self.hot.lock() {
            h.cap = bytes;
            h.shrink();
        }
    }

    /// The memory regions of blob maps (see [`crate::sendfile`]).
    pub fn regions(&self) -> Arc<crate::sendfile::FileRegions> {
        self.regions.clone()
    }

    /// True when blobs are sealed (encryption at rest).
    pub fn sealed(&self) -> bool {
        self.at_rest.is_some()
    }

    /// Length on disk of a blob of `size` plaintext bytes.
    pub fn file_len(&self, size: u64) -> u64 {
        if self.sealed() {
            crypt::sealed_len(size)
        } else {
            size
        }
    }

    /// Where the blob with `hash` lives. Only hashes reach the filesystem, never URL text.
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        if !is_hex_hash(hash) {
            return None;
        }
        Some(self.root.join(&hash[0..2]).join(&hash[2..4]).join(hash))
    }

    /// Starts a new blob.
    pub fn begin(&self) -> io::Result<BlobWriter> {
        injected(&self.fail_writes)?;
        let mut file = tempfile::Builder::new().prefix("fill-").tempfile_in(&self.tmp)?;
        let seal = match &self.at_rest {
            None => None,
            Some(a) => {
                // The header names the blob, known only at the end; its place is reserved now.
                file.write_all(&[0u8; crypt::HEADER])?;
                Some(Sealing {
                    at_rest: a.clone(),
                    prefix: AtRest::new_prefix(),
                    pending: Vec::with_capacity(crypt::CHUNK + 16),
                    index: 0,
                })
            }
        };
        Ok(BlobWriter {
            file,
            hasher: match &self.at_rest {
                None => blake3::Hasher::new(),
                Some(a) => a.name_hasher(),
            },
            size: 0,
            inline: Some(Vec::new()),
            fail: self.fail_writes.clone(),
            seal,
        })
    }

    /// Checks that the blob directory takes a write: a 256 KiB file in `tmp/`, synced and removed (a
    /// one-byte probe would pass on a disk with no room for any real body). Blocking.
    pub fn probe(&self) -> io::Result<()> {
        injected(&self.fail_writes)?;
        let mut file = tempfile::Builder::new().prefix("probe-").tempfile_in(&self.tmp)?;
        file.write_all(&[0u8; 256 * 1024])?;
        file.as_file().sync_data()?;
        Ok(())
    }

    /// Fault injection: while on, every blob write fails as on a full disk (reads keep working).
    pub fn inject_write_failures(&self, on: bool) {
        self.fail_writes.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes the blob durable under its hash. If that blob already exists the new copy is dropped
    /// (one copy per content). Blocking: call from a blocking context.
    pub fn finish(&self, w: BlobWriter) -> io::Result<BlobId> {
        let BlobWriter {
            mut file,
            hasher,
            size,
            fail,
            seal,
            inline: _,
        } = w;
        injected(&fail)?;
        let hash = hasher.finalize().to_hex().to_string();
        let Some(dest) = self.path(&hash) else {
            return Err(io::Error::other("hash is not hex"));
        };
        if dest.exists()
            && fs::metadata(&dest)
                .map(|m| m.len() == self.file_len(size))
                .unwrap_or(false)
        {
            return Ok(BlobId { hash, size });
        }
        if let Some(mut seal) = seal {
            seal.flush(file.as_file_mut(), true)?;
            let header = seal.at_rest.header(&seal.prefix, &hash)?;
            crate::platform::write_all_at(file.as_file(), &header, 0)?;
        }
        file.as_file().sync_all()?;
        let dir = dest
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(dir)?;
        file.persist(&dest).map_err(|e| e.error)?;
        crate::platform::sync_dir(dir)?;
        Ok(BlobId { hash, size })
    }

    /// The name (hash) a blob of exactly `bytes` has in this store: BLAKE3, keyed when sealed.
    pub fn name_of(&self, bytes: &[u8]) -> String {
        let mut h = match &self.at_rest {
            None => blake3::Hasher::new(),
            Some(a) => a.name_hasher(),
        };
        h.update(bytes);
        h.finalize().to_hex().to_string()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, hash: &str) -> io::Result<File> {
        let path = self
            .path(hash)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a blob hash"))?;
        File::open(path)
    }

    /// `len` bytes at `offset` of a blob, as a slice of a cached read-only map of the file.
    pub fn read_range(&self, hash: &str, offset: u64, len: usize) -> io::Result<bytes::Bytes> {
        if let Some(a) = &self.at_rest {
            return self.read_sealed(a, hash, offset, len).map(bytes::Bytes::from);
        }
        let cached = self.handles.lock().ok().and_then(|mut h| h.get(hash).cloned());
        let map = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(BlobMap::new(self.open_blob(hash)?, &self.regions)?);
                if let Ok(mut h) = self.handles.lock() {
                    h.put(hash.to_string(), m.clone());
                }
                m
            }
        };
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= map.map.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the blob"))?;
        Ok(bytes::Bytes::from_owner(MappedBlob(map)).slice(start..end))
    }

    /// The whole content of a blob of `size` ≤ [`HOT_BLOB_MAX`] bytes, from memory when it was read
    /// recently. Blocking (one positioned read on a miss).
    pub fn read_small(&self, hash: &str, size: u64) -> io::Result<bytes::Bytes> {
        if let Some(b) = self.hot.lock().ok().and_then(|mut h| h.map.get(hash).cloned()) {
            return Ok(b);
        }
        let buf = match &self.at_rest {
            Some(a) => self.read_sealed(a, hash, 0, size as usize)?,
            None => {
                let file = self.open_blob(hash)?;
                let mut buf = vec![0u8; size as usize];
                crate::platform::read_exact_at(&file, &mut buf, 0)?;
                buf
            }
        };
        let b = bytes::Bytes::from(buf);
        if size <= HOT_BLOB_MAX {
            if let Ok(mut h) = self.hot.lock() {
                if h.map.put(hash.to_string(), b.clone()).is_none() {
                    h.bytes += b.len();
                }
                h.shrink();
            }
        }
        Ok(b)
    }

    /// Plaintext bytes `offset..offset+len` of a sealed blob: opens only the chunks they lie in.
    fn read_sealed(&self, a: &AtRest, hash: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.open_blob(hash)?;
        let (size, prefix) = open_sealed(a, &file, hash)?;
        let mut out = Vec::with_capacity(len);
        sealed_chunks(a, &file, size, &prefix, offset, len, |b| out.extend_from_slice(b))?;
        Ok(out)
    }

    /// Re-reads the blob and checks its size and hash. Blocking.
    pub fn verify(&self, id: &BlobId) -> io::Result<bool> {
        let mut f = match self.open_blob(&id.hash) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() != self.file_len(id.size) {
            return Ok(false);
        }
        if let Some(a) = &self.at_rest {
            // One open, one header check, then every chunk in order into the keyed hasher.
            let mut hasher = a.name_hasher();
            let read = open_sealed(a, &f, &id.hash).and_then(|(size, prefix)| {
                sealed_chunks(a, &f, size, &prefix, 0, size as usize, |b| {
                    hasher.update(b);
                })
            });
            return match read {
                Ok(()) => Ok(hasher.finalize().to_hex().as_str() == id.hash),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(false),
                Err(e) => Err(e),
            };
        }
        let mut hasher = blake3::Hasher::new();
        // Sized to the blob: a zeroed 256 KiB buffer for a 1 KiB body cost more than hashing it.
        let mut buf = vec![0u8; id.size.clamp(1, 256 * 1024) as usize];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().to_hex().as_str() == id.hash)
    }

    /// Deletes a blob file (missing is fine).
    pub fn remove(&self, hash: &str) -> io::Result<()> {
        if let Ok(mut h) = self.handles.lock() {
            h.pop(hash);
        }
        if let Ok(mut h) = self.hot.lock() {
            if let Some(b) = h.map.pop(hash) {
                h.bytes -= b.len();
            }
        }
        match self.path(hash).map(fs::remove_file) {
            Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every file that looks like a blob: (hash, plaintext size, where it is). A file not at the place its
    /// name maps to is misplaced; callers treat it as an orphan. A sealed file whose length no blob can
    /// have reports `u64::MAX`. Blocking; used by startup cleanup and verify.
    pub fn list(&self) -> io::Result<Vec<(String, u64, PathBuf)>> {
        let mut out = Vec::new();
        for l1 in fs::read_dir(&self.root)? {
            let l1 = l1?;
            if l1.file_name() == "tmp" || !l1.file_type()?.is_dir() {
                continue;
            }
            for l2 in fs::read_dir(l1.path())? {
                let l2 = l2?;
                if !l2.file_type()?.is_dir() {
                    continue;
                }
                for f in fs::read_dir(l2.path())? {
                    let f = f?;
                    let name = f.file_name().to_string_lossy().into_owned();
                    if is_hex_hash(&name) {
                        let len = f.metadata()?.len();
                        let size = if self.sealed() {
                            crypt::plain_len(len).unwrap_or(u64::MAX)
                        } else {
                            len
                        };
                        out.push((name, size, f.path()));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The plaintext size and nonce prefix of an open sealed blob file named `hash` (its header checked).
fn open_sealed(a: &AtRest, file: &File, hash: &str) -> io::Result<(u64, [u8; 16])> {
    let size = crypt::plain_len(file.metadata()?.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "sealed blob has an impossible length"))?;
    let mut header = [0u8; crypt::HEADER];
    crate::platform::read_exact_at(file, &mut header, 0)?;
    Ok((size, a.open_header(&header, hash)?))
}

/// Opens the chunks holding plaintext bytes `offset..offset+len` and hands those bytes to `sink` in order.
fn sealed_chunks(
    a: &AtRest,
    file: &File,
    size: u64,
    prefix: &[u8; 16],
    offset: u64,
    len: usize,
    mut sink: impl FnMut(&[u8]),
) -> io::Result<()> {
    let end = offset
        .checked_add(len as u64)
        .filter(|e| *e <= size)
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the blob"))?;
    let last = crypt::chunks(size) - 1;
    let chunk = crypt::CHUNK as u64;
    let first = (offset / chunk).min(last);
    let until = if len == 0 { first } else { (end - 1) / chunk };
    for i in first..=until {
        let (at, sealed) = crypt::chunk_span(size, i);
        let mut buf = vec![0u8; sealed];
        crate::platform::read_exact_at(file, &mut buf, at)?;
        a.open_chunk(prefix, i, i == last, &mut buf)?;
        let from = (offset.max(i * chunk) - i * chunk) as usize;
        let to = ((end - i * chunk) as usize).min(buf.len());
        if from < to {
            sink(&buf[from..to]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_bytes_make_one_file_named_by_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None).unwrap();
        let mut a = store.begin().unwrap();
        a.write(b"hello ").unwrap();
        a.write(b"world").unwrap();
        let ida = store.finish(a).unwrap();
        let mut b = store.begin().unwrap();
        b.write(b"hello world").unwrap();
        let idb = store.finish(b).unwrap();
        assert_eq!(ida, idb);
        assert_eq!(ida.hash, blake3::hash(b"hello world").to_hex().to_string());
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.verify(&ida).unwrap());
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(),
            0,
            "no temp files left"
        );
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None).unwrap();
        let mut w = store.begin().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(), 0);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None).unwrap();
        let mut w = store.begin().unwrap();
        w.write(b"original bytes").unwrap();
        let id = store.finish(w).unwrap();
        fs::write(store.path(&id.hash).unwrap(), b"original bytez").unwrap();
        assert!(!store.verify(&id).unwrap());
        assert!(store.path("../../etc/passwd").is_none(), "only hashes map to paths");
    }

    fn sealed_store(dir: &Path, key: u8) -> BlobStore {
        BlobStore::open(dir, Some(Arc::new(AtRest::new(&[key; 32])))).unwrap()
    }

    fn put(store: &BlobStore, bytes: &[u8]) -> BlobId {
        let mut w = store.begin().unwrap();
        for part in bytes.chunks(10_000) {
            w.write(part).unwrap();
        }
        store.finish(w).unwrap()
    }

    #[test]
    fn sealed_blobs_read_back_whole_and_by_range_at_every_chunk_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(dir.path(), 7);
        let c = crypt::CHUNK;
        for size in [0, 1, 1000, c - 1, c, c + 1, 3 * c + 17] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let id = put(&store, &bytes);
            assert_eq!(id.size, size as u64);
            assert_ne!(id.hash, blake3::hash(&bytes).to_hex().to_string(), "names are keyed");
            let on_disk = fs::read(store.path(&id.hash).unwrap()).unwrap();
            assert_eq!(on_disk.len() as u64, crypt::sealed_len(size as u64));
            if size >= 1000 {
                assert!(!on_disk.windows(64).any(|w| bytes.windows(64).take(50).any(|b| b == w)));
            }
            assert!(store.verify(&id).unwrap(), "size {size}");
            assert_eq!(store.read_small(&id.hash, size as u64).unwrap(), bytes);
            for (start, len) in [
                (0, size),
                (0, size.min(1)),
                (size / 2, size - size / 2),
                (c - 3, 7),
                (c, c + 1),
            ] {
                if start + len > size {
                    continue;
                }
                let got = store.read_range(&id.hash, start as u64, len).unwrap();
                assert_eq!(got, &bytes[start..start + len], "size {size} range {start}+{len}");
            }
            assert!(store.read_range(&id.hash, size as u64, 1).is_err(), "beyond the end");
        }
        assert_eq!(store.list().unwrap().len(), 7);
        assert!(store.list().unwrap().iter().all(|(_, size, _)| *size != u64::MAX));
    }

    #[test]
    fn sealed_blobs_that_were_changed_cut_or_swapped_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(dir.path(), 7);
        let a: Vec<u8> = (0..3 * crypt::CHUNK).map(|i| (i % 253) as u8).collect();
        let b: Vec<u8> = a.iter().map(|x| x ^ 0x55).collect();
        let (ia, ib) = (put(&store, &a), put(&store, &b));
        let (pa, pb) = (store.path(&ia.hash).unwrap(), store.path(&ib.hash).unwrap());
        let (fa, fb) = (fs::read(&pa).unwrap(), fs::read(&pb).unwrap());

        // One flipped bit in the middle chunk: that chunk fails, the others still read.
        let mut flipped = fa.clone();
        flipped[crypt::HEADER + crypt::CHUNK + 100] ^= 1;
        fs::write(&pa, &flipped).unwrap();
        assert!(!store.verify(&ia).unwrap());
        let err = store.read_range(&ia.hash, crypt::CHUNK as u64, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(store.read_range(&ia.hash, 0, 10).unwrap(), &a[..10]);

        // Cut after a whole chunk: the new last chunk was not sealed as last.
        fs::write(&pa, &fa[..crypt::HEADER + 2 * (crypt::CHUNK + 16)]).unwrap();
        assert!(!store.verify(&ia).unwrap());
        assert!(store.read_range(&ia.hash, crypt::CHUNK as u64, 10).is_err());

        // B's file under A's name: the sealed name does not match.
        fs::write(&pa, &fb).unwrap();
        assert!(!store.verify(&ia).unwrap());
        assert!(store.read_range(&ia.hash, 0, 10).is_err());
        assert!(store.read_small(&ia.hash, 10).is_err());

        // Another key: nothing reads.
        fs::write(&pa, &fa).unwrap();
        let other = sealed_store(dir.path(), 8);
        assert!(!other.verify(&ia).unwrap());
        assert!(other.read_range(&ia.hash, 0, 10).is_err());
        assert!(
            store.verify(&ia).unwrap() && store.verify(&ib).unwrap(),
            "the right key still reads both"
        );
    }
}
