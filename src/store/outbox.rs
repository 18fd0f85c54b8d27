//! The durable outbox's storage: queued requests in the `outbox` column family, keyed by sequence number,
//! as opaque records (their format belongs to `queue`). Every write here is synced: a request is
//! acknowledged to the app only after `outbox_put` returned.

use rocksdb::WriteOptions;

use super::{Store, StoreError};

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl Store {
    /// Writes (inserts or replaces) a record durably; sealed when encrypted (it holds the app's
    /// headers, credentials included).
    pub fn outbox_put(&self, seq: u64, record: Vec<u8>) -> Result<(), StoreError> {
        let key = seq.to_be_bytes();
        let v = self.seal(&key, record);
        self.db.put_cf_opt(self.cf("outbox"), key, v, &synced())?;
        Ok(())
    }

    /// Writes several new records in one synced batch (group commit: one fsync for all).
    pub fn outbox_put_all(&self, records: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        for (seq, record) in records {
            let key = seq.to_be_bytes();
            let v = self.seal(&key, record);
            batch.put_cf(self.cf("outbox"), key, v);
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Deletes a record durably.
    pub fn outbox_delete(&self, seq: u64) -> Result<(), StoreError> {
        self.db.delete_cf_opt(self.cf("outbox"), seq.to_be_bytes(), &synced())?;
        Ok(())
    }

    /// A stored value opened (unsealed); `Err` when it fails authentication.
    pub(super) fn open_outbox_value<'a>(
        &self,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, String> {
        self.unseal(key, stored)
            .ok_or_else(|| "failed authentication".to_string())
    }

    /// Every record in sequence order (records that fail authentication are reported and skipped).
    pub fn outbox_all(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("outbox"), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            match self.open_outbox_value(&k, &v) {
                Ok(r) => out.push((seq_of(&k), r.into_owned())),
                Err(e) => tracing::error!(key = ?k, error = %e, "unreadable outbox record skipped"),
            }
        }
        Ok(out)
    }

    /// One record by sequence number (`None` when absent or unreadable).
    pub fn outbox_get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.db.get_pinned_cf(self.cf("outbox"), seq.to_be_bytes())? else {
            return Ok(None);
        };
        match self.open_outbox_value(&seq.to_be_bytes(), &v) {
            Ok(r) => Ok(Some(r.into_owned())),
            Err(e) => {
                tracing::error!(seq, error = %e, "unreadable outbox record skipped");
                Ok(None)
            }
        }
    }

    /// The highest sequence number in use (0 when empty).
    pub fn outbox_last_seq(&self) -> Result<u64, StoreError> {
        let mut it = self.db.iterator_cf(self.cf("outbox"), rocksdb::IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(seq_of(&k))
            }
            None => Ok(0),
        }
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 8 {
        b.copy_from_slice(key);
    }
    u64::from_be_bytes(b)
}
