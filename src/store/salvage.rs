//! A data dir RocksDB cannot open because one of its files is damaged (a truncated or corrupt table
//! file, from a disk fault or a copy cut short, not from a crash of Outpost: its writes are synced).
//!
//! Opening such a dir fails with [`StoreError::Damaged`], which says what to run. [`Store::salvage`]
//! (behind `outpost verify --repair`) runs RocksDB's repair, which rebuilds the database from every
//! file it can still read and sets unreadable ones aside under `db/lost/`; the regular verify pass then
//! drops entries whose body went with them. Cached answers lost this way are only future misses;
//! queued writes in an unreadable file cannot be recovered, and the report says how many remain.

use std::path::Path;

use rocksdb::DB;

use super::{db_options, lock_dir, Store, StoreError};

/// Maps an open error: damage to [`StoreError::Damaged`], anything else as it is.
pub(super) fn damaged(dir: &Path, e: rocksdb::Error) -> StoreError {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StoreError::Damaged {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        },
        _ => StoreError::Db(e),
    }
}

/// What a salvage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Files RocksDB could not read and moved to `db/lost/`.
    pub set_aside: Vec<String>,
}

impl Store {
    /// Rebuilds a damaged data dir's database from what can still be read. Takes the data dir's lock
    /// (Outpost must not be running on it). Run [`Store::verify`] with repair after it.
    pub fn salvage(dir: &Path) -> Result<Salvaged, StoreError> {
        let _lock = lock_dir(dir)?;
        let db_dir = dir.join("db");
        let lost = db_dir.join("lost");
        let before = list(&lost);
        let (opts, _) = db_options(&rocksdb::Cache::new_lru_cache(8 << 20));
        DB::repair(&opts, &db_dir)?;
        let set_aside = list(&lost).into_iter().filter(|f| !before.contains(f)).collect();
        Ok(Salvaged { set_aside })
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
