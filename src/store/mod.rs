//! Durable state in the data directory: RocksDB for metadata (one column family per record type) and
//! content-addressed blob files under `blobs/`.
//!
//! Promises: one process per data directory (a second start fails with a clear error); the schema version
//! is checked at open so an incompatible layout is refused, never misread; writes that must survive a
//! crash are synced. With an encryption key, response entries, queued requests and blobs are sealed
//! ([`crypt`]), and a data dir is only ever opened with the key it was written with (or, if it was
//! written without one, without a key).

mod blob;
mod crypt;
mod entry;
mod frame;
mod health;
mod memory;
mod outbox;
mod pins;
mod purge;
mod recent;
mod record;
mod salvage;
mod seam;
mod tally;
mod verify;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

pub use blob::{BlobId, BlobStore, BlobWriter, HOT_BLOB_MAX, INLINE_MAX};
pub use crypt::{parse_key, AtRest, KeyError, CHUNK as SEALED_CHUNK};
pub use entry::{BlobRecord, Entry, Lookup, RetainDrop, Retained, StoredHeaders};
pub use health::{watch as watch_health, Trouble};
pub use memory::MemoryStorage;
pub use outbox::{frame_outbox_record, split_outbox_record};
pub use pins::PinSet;
pub use salvage::Salvaged;
pub use seam::{Budget, Commit, DiskStorage, FillSink, Storage, Unbounded};
pub use verify::VerifyReport;

/// Separator between a primary cache key and a variant's fingerprint (the key layout is the cache's,
/// see `cache::key`; the store needs these two facts to invalidate variants and clear by user).
pub const VARIANT_SEP: u8 = 0x01;

/// The partition part of a cache key: everything before the first NUL.
pub fn key_partition(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == 0) {
        Some(i) => &key[..i],
        None => key,
    }
}

/// Layout version written in `meta`; bump on incompatible changes. 2: queue records may be framed as a
/// head and a raw body (`outbox::frame_outbox_record`), which builds reading 1 would skip as undecodable,
/// losing queued writes; so they are told to refuse the data dir instead. 3: `entries` values may be
/// framed as the record's JSON and the entry's inline body, which builds reading 2 would skip (leaving
/// blob references they can never release). 4: entries are written in a binary layout
/// (`store::record`), which builds reading 3 would skip the same way. 5: every entry has an `access`
/// record from its commit on, and the evictor loads its order from `access` alone; builds writing 4
/// would commit entries without one, which would then never be evicted.
pub const SCHEMA_VERSION: u32 = 5;

/// Older versions this build reads and upgrades in place (only newer builds can read what it writes
/// from then on). The one change made to what is stored: entries get access records (below 5).
const SCHEMA_UPGRADES_FROM: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];

/// Memory for hot answers until [`Store::set_memory`] says otherwise (`[cache] memory`).
pub const DEFAULT_MEMORY: usize = 64 << 20;

/// Column families: response entries, blob records, access order, metadata, the mutation outbox, and
/// the retention-group index (group, time, entry key; added in place: older data dirs get it empty).
pub const COLUMN_FAMILIES: [&str; 6] = ["entries", "blobs", "access", "meta", "outbox", "groups"];

const SCHEMA_KEY: &[u8] = b"schema_version";
/// `none`, or the check value of the key the data dir is sealed with.
const ENCRYPTION_KEY: &[u8] = b"encryption";

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
    /// A file of the database is damaged (truncated or corrupt); nothing was read from it.
    #[error(
        "data dir {dir} is damaged ({reason}); nothing was served from it. Stop Outpost, copy the \
         directory if it matters, and run `outpost verify --repair --data-dir {dir}`: it rebuilds the \
         database from what can still be read (records in unreadable files are lost)"
    )]
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// RocksDB's words.
        reason: String,
    },
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
    /// The configured encryption key (or its absence) does not fit the data dir.
    #[error("data dir {dir}: {reason}")]
    Encryption {
        /// The data directory.
        dir: PathBuf,
        /// What does not fit, and what to do.
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
    /// Hot records (see [`recent::RecordCache`]).
    records: Mutex<recent::RecordCache>,
    /// Whole-store counts kept between writes (see [`tally`]).
    tallies: tally::Tallies,
    /// RocksDB's block cache, shared by every family (resized with [`Store::set_memory`]).
    block_cache: rocksdb::Cache,
    /// Whether writes succeed (see [`health`]).
    health: health::Health,
    /// Set when the data dir is encrypted at rest.
    at_rest: Option<std::sync::Arc<AtRest>>,
    // Held for the process lifetime: the OS lock is what keeps a second instance out.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) a data directory that is not encrypted.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_key(dir, None)
    }

    /// Opens (creating if needed) the data directory; with `key`, everything stored is sealed with it. A
    /// new data dir takes the mode it is first opened with; later opens must match it.
    pub fn open_with_key(dir: &Path, key: Option<&[u8; 32]>) -> Result<Store, StoreError> {
        let data_err = |reason: String| StoreError::DataDir {
            dir: dir.to_path_buf(),
            reason,
        };
        if dir.exists() && !dir.is_dir() {
            return Err(data_err(
                "is a file, not a directory: pass a directory for data_dir".to_string(),
            ));
        }
        crate::platform::create_private_dir(dir).map_err(|e| data_err(format!("cannot create: {e}")))?;
        if let Some(mode) = crate::platform::open_to_others(dir) {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data dir is open to other users (cached answers, queued requests and their credentials): chmod 700 it"
            );
        }
        let lock = lock_dir(dir)?;
        let block_cache = rocksdb::Cache::new_lru_cache(block_cache_share(DEFAULT_MEMORY));
        let (opts, cfs) = db_options(&block_cache);
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs).map_err(|e| salvage::damaged(dir, e))?;
        let at_rest = key.map(|k| std::sync::Arc::new(AtRest::new(k)));
        // Nothing is read or cleaned up before the key is known to fit the data dir.
        let schema = check_schema(&db, dir)?;
        check_encryption(&db, dir, schema == Schema::New, at_rest.as_deref())?;
        let store = Store {
            blobs: BlobStore::open(dir, at_rest.clone())?,
            db,
            dir: dir.to_path_buf(),
            commit_lock: Mutex::new(()),
            records: Mutex::new(recent::RecordCache::new(record_share(DEFAULT_MEMORY))),
            tallies: Default::default(),
            block_cache,
            health: health::Health::default(),
            at_rest,
            _lock: lock,
        };
        if let Schema::Upgrade(from) = schema {
            // Backfilled before the version moves, so an interrupted upgrade is redone at the next open.
            let n = store.backfill_access()?;
            put_synced(&store.db, SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            tracing::info!(from = %from, to = SCHEMA_VERSION, access_records = n, "data dir layout upgraded");
        }
        Ok(store)
    }

    /// Bounds the memory kept for hot answers to about `bytes`: five eighths for decoded records, a
    /// quarter for small bodies, an eighth for RocksDB's block cache (the families other than `entries`,
    /// whose blocks are read from the page cache, see `db_options`). More keeps more distinct answers
    /// off the disk (large working sets); it is filled only by use.
    pub fn set_memory(&self, bytes: usize) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resize(record_share(bytes));
        self.blobs.set_hot_bytes(bytes / 4);
        let mut cache = self.block_cache.clone();
        cache.set_capacity(block_cache_share(bytes));
    }

    /// Hot records held decoded: (records, bytes as counted against their share, that share).
    pub fn hot_records(&self) -> (usize, usize, usize) {
        let c = self.records.lock().unwrap_or_else(|p| p.into_inner());
        (c.map.len(), c.bytes(), c.cap())
    }

    /// Every record of a column family, in key order, read without filling the block cache (a pass over
    /// everything would push out the blocks hits use, and hold memory for nothing afterwards).
    pub(crate) fn scan(&self, cf: &str) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.fill_cache(false);
        self.db.iterator_cf_opt(self.cf(cf), ro, rocksdb::IteratorMode::Start)
    }

    /// Seals a record value stored under `key` (unchanged when not encrypted).
    pub(crate) fn seal(&self, key: &[u8], plain: Vec<u8>) -> Vec<u8> {
        match &self.at_rest {
            None => plain,
            Some(a) => a.seal_record(key, &plain),
        }
    }

    /// Opens a record value stored under `key`; `None` if it fails authentication.
    pub(crate) fn unseal<'a>(&self, key: &[u8], stored: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        match &self.at_rest {
            None => Some(std::borrow::Cow::Borrowed(stored)),
            Some(a) => a.open_record(key, stored).map(std::borrow::Cow::Owned),
        }
    }

    /// True when the data dir is encrypted at rest.
    pub fn encrypted(&self) -> bool {
        self.at_rest.is_some()
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The families are created at open, so a missing one is a programming error, not bad data.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is opened by Store::open"))
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

/// Takes the data dir's lock file: the OS lock is what keeps a second process out (held while the
/// returned file is open).
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let data_err = |reason: String| StoreError::DataDir {
        dir: dir.to_path_buf(),
        reason,
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("outpost.lock"))
        .map_err(|e| data_err(format!("cannot open lock file: {e}")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(data_err(format!("cannot lock: {e}"))),
    }
}

/// The decoded-record cache's share of `[cache] memory`.
fn record_share(bytes: usize) -> usize {
    bytes / 8 * 5
}

/// The block cache's share of `[cache] memory`.
fn block_cache_share(bytes: usize) -> usize {
    bytes / 8
}

/// RocksDB's options for the data dir, and its column families.
fn db_options(cache: &rocksdb::Cache) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(3);
    // Table files are read through memory maps: a hit whose record is not in the record cache reads its
    // block where the kernel's page cache holds it, instead of a pread() into a fresh buffer (see
    // `entries` below). Those pages are shared and reclaimable, but count towards RSS once touched, so
    // nothing at start reads every entry (the evictor's order loads from `access`). A disk's own read
    // error on a mapped page ends the process (SIGBUS) instead of failing one read; corrupt bytes are
    // still caught by RocksDB's checksums, and the data dir is crash-safe.
    opts.set_allow_mmap_reads(true);
    opts.set_max_log_file_size(1 << 20);
    // A sidecar on a phone or laptop: one small block cache shared by every family and small
    // memtables, instead of RocksDB's server-sized defaults (a cache and 64 MB memtables per family).
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point lookups (every cache hit not in the record cache) skip files that cannot hold the key.
    table.set_bloom_filter(10.0, false);
    // `entries` bypasses the block cache: its blocks are stored uncompressed and mapped, so a cached
    // copy would only duplicate the page cache, and filling it cost about 4 % of a hit's CPU at 100k
    // distinct URLs (with mmap reads and no block cache: 0.86x the CPU per hit; docs/benchmarks.md).
    let mut mapped = rocksdb::BlockBasedOptions::default();
    mapped.disable_cache();
    mapped.set_bloom_filter(10.0, false);
    mapped.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
    mapped.set_data_block_hash_ratio(0.75);
    let cf_opts = |name: &str| {
        let mut o = Options::default();
        o.set_write_buffer_size(4 << 20);
        o.set_max_write_buffer_number(2);
        if name == "entries" {
            o.set_block_based_table_factory(&mapped);
            // Records carry small bodies inline (JSON, already compact on the wire): a block read on a
            // record-cache miss is served without decompressing it (measured: about 7 % of a hit's CPU
            // at 100k distinct URLs went to LZ4 and its copies).
            o.set_compression_type(rocksdb::DBCompressionType::None);
            o.set_optimize_filters_for_hits(true);
        } else {
            o.set_block_based_table_factory(&table);
        }
        o
    };
    opts.set_block_based_table_factory(&table);
    // The default family's memtable too: RocksDB sizes its write-ahead-log preallocation and, after a
    // full disk, the free space it waits for before resuming writes by the largest memtable (64 MB by
    // default, which a nearly full phone may not get back for a long time).
    opts.set_write_buffer_size(4 << 20);
    // Named, or the crate adds "default" with RocksDB's 64 MB memtable.
    let cfs = std::iter::once(&"default")
        .chain(COLUMN_FAMILIES.iter())
        .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts(n)))
        .collect();
    (opts, cfs)
}

fn meta(db: &DB) -> &rocksdb::ColumnFamily {
    // The families are created at open, so a missing one is a programming error, not bad data.
    db.cf_handle("meta")
        .unwrap_or_else(|| panic!("column family meta is opened by Store::open"))
}

fn put_synced(db: &DB, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    Ok(db.put_cf_opt(meta(db), key, value, &wo)?)
}

/// What the data dir's layout version asks of this open.
#[derive(Debug, PartialEq, Eq)]
enum Schema {
    New,
    Current,
    /// An older layout this build upgrades (from the version named).
    Upgrade(String),
}

/// Checks the layout version (a new data dir is stamped with this build's).
fn check_schema(db: &DB, dir: &Path) -> Result<Schema, StoreError> {
    match db.get_cf(meta(db), SCHEMA_KEY)? {
        None => {
            put_synced(db, SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            Ok(Schema::New)
        }
        Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => Ok(Schema::Current),
        Some(v) if SCHEMA_UPGRADES_FROM.contains(&&v[..]) => {
            Ok(Schema::Upgrade(String::from_utf8_lossy(&v).into_owned()))
        }
        Some(v) => Err(StoreError::Schema {
            dir: dir.to_path_buf(),
            found: String::from_utf8_lossy(&v).into_owned(),
        }),
    }
}

/// Refuses a key that does not fit the data dir. Data dirs from before encryption existed are plain.
fn check_encryption(db: &DB, dir: &Path, new: bool, at_rest: Option<&AtRest>) -> Result<(), StoreError> {
    let wanted = at_rest.map_or("none", |a| a.check_value());
    let found = match db.get_cf(meta(db), ENCRYPTION_KEY)? {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None if new => return put_synced(db, ENCRYPTION_KEY, wanted.as_bytes()),
        None => "none".to_string(),
    };
    if found == wanted {
        return Ok(());
    }
    let reason = match (found.as_str(), at_rest) {
        ("none", _) => {
            "was written without encryption, but an encryption key is configured; existing data is not \
             converted: start with a new data dir, or remove the key"
        }
        (_, None) => {
            "is encrypted at rest; configure its key (encryption.key_file or encryption.key_env in the \
             config, or --key-file/--key-env)"
        }
        (_, Some(_)) => {
            "the encryption key does not match the key this data dir was written with; nothing was read \
             or served"
        }
    };
    Err(StoreError::Encryption {
        dir: dir.to_path_buf(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
impl Store {
    /// Stamps the data dir with another layout version (to open it as an older build left it).
    pub(crate) fn set_schema_for_test(&self, v: &[u8]) {
        put_synced(&self.db, SCHEMA_KEY, v).unwrap();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_dir_that_is_a_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let e = super::Store::open(&file).err().unwrap().to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
    }

    #[test]
    fn an_older_layout_is_upgraded_in_place_and_an_unknown_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set = |v: &[u8]| super::Store::open(dir.path()).unwrap().set_schema_for_test(v);
        for old in [&b"1"[..], b"2", b"3", b"4"] {
            set(old);
            let store = super::Store::open(dir.path()).expect("an older data dir opens");
            let now = store.db.get_cf(super::meta(&store.db), super::SCHEMA_KEY).unwrap();
            assert_eq!(now.as_deref(), Some(super::SCHEMA_VERSION.to_string().as_bytes()));
        }
        set(b"9");
        let e = super::Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("schema version 9, this build reads 5"), "{e}");
    }
}
