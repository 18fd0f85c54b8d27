//! Durable state in the data directory: RocksDB for metadata (one column family per record type) and,
//! later, content-addressed blob files under `blobs/`.
//!
//! Promises: one process per data directory (a second start fails with a clear error); the schema version
//! is checked at open so an incompatible layout is refused, never misread; writes that must survive a
//! crash are synced.

mod blob;
mod entry;
mod outbox;
mod verify;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

pub use blob::{BlobId, BlobStore, BlobWriter, HOT_BLOB_MAX};
pub use entry::{BlobRecord, Entry, Lookup, RetainDrop, Retained};
pub use outbox::{ItemState, OutboxRecord};
pub use verify::VerifyReport;

/// Layout version written in `meta`; bump on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Column families: response entries, blob records, access order, metadata, the mutation outbox, and
/// the retention-group index (group, time, entry key; added in place: older data dirs get it empty).
pub const COLUMN_FAMILIES: [&str; 6] = ["entries", "blobs", "access", "meta", "outbox", "groups"];

const SCHEMA_KEY: &[u8] = b"schema_version";

/// Opening or using the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem trouble (creating the directory, the lock file).
    #[error("data dir {dir}: {reason}")]
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error("data dir {0} is in use by another Outpost process")]
    Locked(PathBuf),
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// Blob file I/O failed.
    #[error("blob store: {0}")]
    Blob(#[from] std::io::Error),
    /// A stored record could not be decoded (treated as absent by readers).
    #[error("corrupt record in {cf}: {reason}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// The data was written by an incompatible version.
    #[error("data dir {dir} has schema version {found}, this build reads {SCHEMA_VERSION}")]
    Schema {
        /// The data directory.
        dir: PathBuf,
        /// Version found on disk.
        found: String,
    },
}

/// The opened data directory.
pub struct Store {
    db: DB,
    dir: PathBuf,
    blobs: BlobStore,
    /// Serialises read-modify-write of blob refcounts; held only around a WriteBatch.
    commit_lock: Mutex<()>,
    /// Hot records (see [`entry::RecordCache`]).
    records: Mutex<entry::RecordCache>,
    /// Fills that could not be stored (disk full, I/O errors), for stats.
    write_errors: std::sync::atomic::AtomicU64,
    // Held for the process lifetime: the OS lock is what keeps a second instance out.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the data directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let data_err = |reason: String| StoreError::DataDir {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| data_err(format!("cannot create: {e}")))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("outpost.lock"))
            .map_err(|e| data_err(format!("cannot open lock file: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(data_err(format!("cannot lock: {e}"))),
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(3);
        opts.set_max_log_file_size(1 << 20);
        // A sidecar on a phone or laptop: one small block cache shared by every family and small
        // memtables, instead of RocksDB's server-sized defaults (a cache and 64 MB memtables per family).
        let cache = rocksdb::Cache::new_lru_cache(8 << 20);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(4 << 20);
            o.set_max_write_buffer_number(2);
            o
        };
        opts.set_block_based_table_factory(&table);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            blobs: BlobStore::open(dir)?,
            commit_lock: Mutex::new(()),
            records: Mutex::new(entry::RecordCache::new(4096)),
            write_errors: std::sync::atomic::AtomicU64::new(0),
            _lock: lock,
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let meta = self.cf("meta");
        match self.db.get_cf(meta, SCHEMA_KEY)? {
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(meta, SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes(), &wo)?;
                Ok(())
            }
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => Ok(()),
            Some(v) => Err(StoreError::Schema {
                dir: self.dir.clone(),
                found: String::from_utf8_lossy(&v).into_owned(),
            }),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The families are created at open, so a missing one is a programming error, not bad data.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is opened by Store::open"))
    }

    /// Counts a fill that could not be stored (the answer was still served).
    pub fn note_write_error(&self) {
        self.write_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fills that could not be stored since start.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes memtables and the WAL (called last at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }
}
