//! Content-addressed blob files: `blobs/<h0h1>/<h2h3>/<blake3 hex>`.
//!
//! Promises: a blob file exists under its final name only once its bytes are durable (temp file in
//! `blobs/tmp/` → write → fsync → rename → fsync the directory); its name is the BLAKE3 hash of its bytes,
//! so identical bodies share one file; a file whose size or hash does not match is never handed out.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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
    handles: std::sync::Mutex<lru::LruCache<String, std::sync::Arc<memmap2::Mmap>>>,
    /// Fault injection (tests, drills): every write and commit of a blob fails like a full disk.
    fail_writes: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Blob maps kept.
const HANDLES: usize = 16;

/// A shared map as the owner of `Bytes`.
struct MappedBlob(std::sync::Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MappedBlob {
    fn as_ref(&self) -> &[u8] {
        &self.0
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
}

/// Blobs up to this size are kept in memory once read.
pub const HOT_BLOB_MAX: u64 = 256 * 1024;
/// Memory for hot blobs.
const HOT_BYTES: usize = 8 << 20;

/// A blob being written. Dropping it without [`BlobWriter::finish`] deletes the temp file.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
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
    /// Opens `dir/blobs`, creating it, and removes temp files a crash left behind.
    pub fn open(data_dir: &Path) -> io::Result<BlobStore> {
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
            }),
            handles: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(HANDLES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            fail_writes: Default::default(),
        })
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
        Ok(BlobWriter {
            file: tempfile::Builder::new().prefix("fill-").tempfile_in(&self.tmp)?,
            hasher: blake3::Hasher::new(),
            size: 0,
            fail: self.fail_writes.clone(),
        })
    }

    /// Fault injection: while on, every blob write fails as on a full disk (reads keep working).
    pub fn inject_write_failures(&self, on: bool) {
        self.fail_writes.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes the blob durable under its hash. If that blob already exists the new copy is dropped
    /// (one copy per content). Blocking: call from a blocking context.
    pub fn finish(&self, w: BlobWriter) -> io::Result<BlobId> {
        let BlobWriter {
            file,
            hasher,
            size,
            fail,
        } = w;
        injected(&fail)?;
        let hash = hasher.finalize().to_hex().to_string();
        let Some(dest) = self.path(&hash) else {
            return Err(io::Error::other("hash is not hex"));
        };
        if dest.exists() && fs::metadata(&dest).map(|m| m.len() == size).unwrap_or(false) {
            return Ok(BlobId { hash, size });
        }
        file.as_file().sync_all()?;
        let dir = dest
            .parent()
            .ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(dir)?;
        file.persist(&dest).map_err(|e| e.error)?;
        File::open(dir)?.sync_all()?;
        Ok(BlobId { hash, size })
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
        let cached = self.handles.lock().ok().and_then(|mut h| h.get(hash).cloned());
        let map = match cached {
            Some(m) => m,
            None => {
                let m = std::sync::Arc::new(map_blob(&self.open_blob(hash)?)?);
                if let Ok(mut h) = self.handles.lock() {
                    h.put(hash.to_string(), m.clone());
                }
                m
            }
        };
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= map.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range beyond the blob"))?;
        Ok(bytes::Bytes::from_owner(MappedBlob(map)).slice(start..end))
    }

    /// The whole content of a blob of `size` ≤ [`HOT_BLOB_MAX`] bytes, from memory when it was read
    /// recently. Blocking (one positioned read on a miss).
    pub fn read_small(&self, hash: &str, size: u64) -> io::Result<bytes::Bytes> {
        if let Some(b) = self.hot.lock().ok().and_then(|mut h| h.map.get(hash).cloned()) {
            return Ok(b);
        }
        let file = self.open_blob(hash)?;
        let mut buf = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0)?;
        let b = bytes::Bytes::from(buf);
        if size <= HOT_BLOB_MAX {
            if let Ok(mut h) = self.hot.lock() {
                if h.map.put(hash.to_string(), b.clone()).is_none() {
                    h.bytes += b.len();
                }
                while h.bytes > HOT_BYTES {
                    match h.map.pop_lru() {
                        Some((_, old)) => h.bytes -= old.len(),
                        None => break,
                    }
                }
            }
        }
        Ok(b)
    }

    /// Re-reads the blob and checks its size and hash. Blocking.
    pub fn verify(&self, id: &BlobId) -> io::Result<bool> {
        let mut f = match self.open_blob(&id.hash) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() != id.size {
            return Ok(false);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
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

    /// Every file that looks like a blob: (hash, size, where it is). A file not at the place its name
    /// maps to is misplaced; callers treat it as an orphan. Blocking; used by startup cleanup and verify.
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
                        out.push((name, f.metadata()?.len(), f.path()));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_bytes_make_one_file_named_by_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
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
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.begin().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(), 0);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.begin().unwrap();
        w.write(b"original bytes").unwrap();
        let id = store.finish(w).unwrap();
        fs::write(store.path(&id.hash).unwrap(), b"original bytez").unwrap();
        assert!(!store.verify(&id).unwrap());
        assert!(store.path("../../etc/passwd").is_none(), "only hashes map to paths");
    }
}
