//! `outpost verify`: a full consistency check of a data directory, and its repair.
//!
//! Checks every blob file against its name (BLAKE3 of the bytes) and its record, every entry against the
//! blob it points at, every refcount against the entries that really reference the blob, the retention
//! index and the access order against the entries, and that every outbox record decodes. Repair
//! deletes what cannot be trusted (corrupt or orphan blob files, entries whose body is gone, undecodable
//! entries, stale index keys, inline body copies that do not match their blob, access records of gone
//! entries), gives entries without an access record one, and rewrites refcounts; an entry dropped here is
//! only a future cache miss. Outbox records are never deleted: they are the user's writes, so an
//! undecodable one is reported for a person to look at.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::entry::Record;
use super::{BlobId, BlobRecord, Store, StoreError};

/// What a verify pass found (and, with repair, fixed).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blob files read and hashed.
    pub blob_files: u64,
    /// Entries read.
    pub entries: u64,
    /// Outbox records read.
    pub outbox_items: u64,
    /// Blob files no record knows.
    pub orphan_files: u64,
    /// Blob files whose bytes do not hash to their name, or whose size differs from the record.
    pub corrupt_blobs: u64,
    /// Blob records without a file.
    pub missing_blobs: u64,
    /// Entries pointing at a missing or corrupt blob.
    pub entries_without_body: u64,
    /// Entries that do not decode.
    pub undecodable_entries: u64,
    /// Entries whose inline copy of their body does not hash to their blob (repair drops the copy; the
    /// blob file answers).
    pub corrupt_inline_bodies: u64,
    /// Blob records whose refcount differed from the entries that reference them.
    pub refcounts_wrong: u64,
    /// Retention-index keys pointing at no entry.
    pub stale_index_keys: u64,
    /// Entries without an access record (the evictor would never see them; repair gives them one).
    pub entries_without_access: u64,
    /// Access records of entries that are gone (not a problem: one can outlive its entry by a moment;
    /// repair deletes them).
    pub stale_access_keys: u64,
    /// Outbox records that do not decode (never deleted).
    pub undecodable_outbox_items: u64,
}

impl VerifyReport {
    /// Problems found (counts of things that are wrong).
    pub fn problems(&self) -> u64 {
        self.orphan_files
            + self.corrupt_blobs
            + self.missing_blobs
            + self.entries_without_body
            + self.undecodable_entries
            + self.corrupt_inline_bodies
            + self.refcounts_wrong
            + self.stale_index_keys
            + self.entries_without_access
            + self.undecodable_outbox_items
    }
}

impl Store {
    /// Checks the whole data directory; with `repair`, fixes what it can (see the module docs).
    /// Blocking; reads every blob file.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, StoreError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = VerifyReport::default();

        // Blob files: is each one what its name says, and known?
        let mut good: HashSet<String> = HashSet::new();
        let mut bad: HashSet<String> = HashSet::new();
        let mut records: HashMap<String, BlobRecord> = HashMap::new();
        for item in self.scan("blobs") {
            let (k, v) = item?;
            let hash = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice::<BlobRecord>(&v) {
                Ok(r) => {
                    records.insert(hash, r);
                }
                Err(_) => {
                    // An unreadable record: its blob is treated as unknown and rebuilt below if referenced.
                    bad.insert(hash);
                }
            }
        }
        for (hash, size, path) in self.blobs.list()? {
            report.blob_files += 1;
            let misplaced = self.blobs.path(&hash).as_ref() != Some(&path);
            let rec = records.get(&hash);
            if misplaced || rec.is_none() {
                report.orphan_files += 1;
                if repair {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            let Some(rec) = rec else { continue };
            let ok = size == rec.size
                && self.blobs.verify(&BlobId {
                    hash: hash.clone(),
                    size: rec.size,
                })?;
            if ok {
                good.insert(hash);
            } else {
                report.corrupt_blobs += 1;
                bad.insert(hash);
            }
        }
        for hash in records.keys() {
            if !good.contains(hash) && !bad.contains(hash) {
                report.missing_blobs += 1;
                bad.insert(hash.clone());
            }
        }

        // Entries: does each point at a good blob? Count the real references.
        let mut refs: HashMap<String, u64> = HashMap::new();
        let mut batch = rocksdb::WriteBatch::default();
        let mut entry_keys: HashSet<Vec<u8>> = HashSet::new();
        for item in self.scan("entries") {
            let (k, v) = item?;
            match self.decode_record_whole(&k, &v) {
                Some(Record::Vary(_)) => {}
                Some(Record::Entry(e)) => {
                    report.entries += 1;
                    if e.body_dropped {
                        entry_keys.insert(k.to_vec());
                        continue;
                    }
                    if good.contains(&e.blob) {
                        *refs.entry(e.blob.clone()).or_default() += 1;
                        entry_keys.insert(k.to_vec());
                        if e.inline.as_ref().is_some_and(|b| self.blobs.name_of(b) != e.blob) {
                            report.corrupt_inline_bodies += 1;
                            let mut e = e;
                            e.inline = None;
                            batch.put_cf(self.cf("entries"), &k, self.encode_record(&k, &Record::Entry(e)));
                        }
                    } else {
                        report.entries_without_body += 1;
                        batch.delete_cf(self.cf("entries"), &k);
                    }
                }
                None => {
                    report.undecodable_entries += 1;
                    batch.delete_cf(self.cf("entries"), &k);
                }
            }
        }

        // Refcounts must equal the references just counted; bad blobs go entirely.
        for (hash, rec) in &records {
            if bad.contains(hash) {
                batch.delete_cf(self.cf("blobs"), hash.as_bytes());
                continue;
            }
            let real = refs.get(hash).copied().unwrap_or(0);
            if rec.refcount != real {
                report.refcounts_wrong += 1;
                let fixed = BlobRecord {
                    size: rec.size,
                    refcount: real,
                };
                batch.put_cf(
                    self.cf("blobs"),
                    hash.as_bytes(),
                    serde_json::to_vec(&fixed).unwrap_or_default(),
                );
            }
        }
        for hash in &bad {
            if !records.contains_key(hash) {
                // An undecodable record.
                batch.delete_cf(self.cf("blobs"), hash.as_bytes());
            }
        }

        // The retention index: every key names an entry (group, 0, 8-byte time, entry key).
        for item in self.scan("groups") {
            let (k, _) = item?;
            let entry_key = k.iter().position(|b| *b == 0).and_then(|i| k.get(i + 9..));
            if entry_key.is_none_or(|ek| !entry_keys.contains(ek)) {
                report.stale_index_keys += 1;
                batch.delete_cf(self.cf("groups"), &k);
            }
        }

        // The access order: one record per entry, and none for an entry that is gone.
        let mut accessed: HashSet<Vec<u8>> = HashSet::new();
        for item in self.scan("access") {
            let (k, _) = item?;
            if entry_keys.contains(k.as_ref()) {
                accessed.insert(k.to_vec());
            } else {
                report.stale_access_keys += 1;
                batch.delete_cf(self.cf("access"), &k);
            }
        }
        let now = crate::clock::now_ms();
        for k in entry_keys.difference(&accessed) {
            report.entries_without_access += 1;
            batch.put_cf(self.cf("access"), k, now.to_be_bytes());
        }

        // The outbox: report, never delete.
        for item in self.scan("outbox") {
            let (k, v) = item?;
            report.outbox_items += 1;
            let readable = self.open_outbox_value(&k, &v).is_ok_and(|r| {
                super::outbox::split_outbox_record(&r).is_some_and(|(head, _)| {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(head).is_ok()
                })
            });
            if !readable {
                report.undecodable_outbox_items += 1;
                tracing::error!(key = ?k, "undecodable outbox record (kept; needs a person)");
            }
        }

        if repair && (report.problems() > 0 || report.stale_access_keys > 0) {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(batch, &wo)?;
            for hash in &bad {
                self.blobs.remove(hash)?;
            }
            self.forget(None);
        }
        Ok(report)
    }
}
